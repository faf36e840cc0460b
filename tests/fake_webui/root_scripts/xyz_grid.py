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
