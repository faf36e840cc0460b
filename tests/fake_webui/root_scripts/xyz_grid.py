"""Fake of scripts/xyz_grid.py: AxisOption list and a cell runner with copy(p) shallow semantics."""
from copy import copy

from modules import scripts
from modules.processing import process_images


def format_value_add_label(p, opt, x):
    return f"{opt.label}: {x}"


class AxisOption:
    def __init__(self, label, type, apply, format_value=format_value_add_label, confirm=None, cost=0.0,
                 choices=None, prepare=None):
        self.label, self.type, self.apply, self.format_value = label, type, apply, format_value
        self.confirm, self.cost, self.choices, self.prepare = confirm, cost, choices, prepare


def _nothing(p, x, xs):
    pass


axis_options = [AxisOption("Nothing", str, _nothing), AxisOption("Seed", int, lambda p, x, xs: setattr(p, "seed", x))]


def run_axis(p, opt, xs):
    """One row of cells: confirm once, then for each value a shallow copy of p, apply, generate."""
    xs = [opt.type(x) for x in xs]
    if opt.confirm:
        opt.confirm(p, xs)
    out = []
    for x in xs:
        pc = copy(p)
        opt.apply(pc, x, xs)
        out.append((x, pc, process_images(pc)))
    return out


class Script(scripts.Script):
    def title(self):
        return "X/Y/Z plot"

    # A1111's run() in miniature: the axes are confirmed X, Y, Z in turn (a confirm can read the script's
    # arguments x_type/y_type/z_type in this frame, as in the real script), then every cell is generated.
    current_axis_options = axis_options

    def run(self, p, x_type, x_values, y_type, y_values, z_type=0, z_values=("",)):
        def process_axis(opt, vals):
            vals = [opt.type(v) for v in vals]
            if opt.confirm:
                opt.confirm(p, vals)
            return vals

        x_opt, y_opt, z_opt = (self.current_axis_options[t] for t in (x_type, y_type, z_type))
        xs, ys, zs = process_axis(x_opt, x_values), process_axis(y_opt, y_values), process_axis(z_opt, z_values)
        out = []
        for z in zs:
            for y in ys:
                for x in xs:
                    pc = copy(p)
                    for opt, v, vs in ((x_opt, x, xs), (y_opt, y, ys), (z_opt, z, zs)):
                        opt.apply(pc, v, vs)
                    out.append(((x, y, z), pc, process_images(pc)))
        return out
