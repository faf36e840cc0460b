"""X/Y/Z axes "Merge: model B", "Merge: block weights" and "Merge: alpha": a grid of live merges, nothing
written to disk.

An axis only notes its value on the cell's copy of `p`; the merge is applied once per cell when the cell's
generation starts (`process`, from our AlwaysVisible script), so the axes combine in one grid (alpha on
X, block weights on Y, model B on Z). B, C and the mode come from the merge tab's last recipe (`TAB_RECIPE`,
set by the tab) or else the live merge active on the model; with a "Merge: model B" axis neither is needed
(weighted, alpha 0.5 unless an alpha axis says otherwise), so an API client can run a merge grid alone. The first generation after the grid that is not a cell puts
the model back as it was before the grid (the recipe active then, or the loaded weights).

Block-weight values: preset names or weight lists; in a text box lists are separated by `|` (or quoted,
as the WebUI's comma-separated axes allow).
"""

from __future__ import annotations

import csv
import io

from lib_lora.errors import LoraStudioError

from .live_merge import _GRID, finish_grid, grid_running  # noqa: F401  (the grid state lives with the host)
from .xyz import LABEL_PREFIX, _require_values

ATTR = "_lora_studio_merge"          # on a cell's copy of p: {"alpha": …, "block_weights": …}
TAB_RECIPE: dict | None = None       # the merge tab's last recipe: b, c, mode, alpha, block_weights, base_alpha


def _host():
    from .live_merge import HOST
    return HOST


DEFAULT_RECIPE = {"b": None, "c": None, "mode": "weighted", "alpha": 0.5, "block_weights": None, "base_alpha": None}


def base_recipe(live, need_b: bool = True) -> dict:
    """B/C/mode (and alpha, block weights, base alpha) every cell starts from; `need_b` False (a model B
    axis gives B): the defaults when there is no recipe yet."""
    if TAB_RECIPE and TAB_RECIPE.get("b"):
        return dict(TAB_RECIPE)
    r = _GRID["before"] if _GRID["running"] and _GRID["before"] is not None else live.active
    if r is None and not need_b:
        return dict(DEFAULT_RECIPE)
    if r is None:
        raise LoraStudioError("no merge recipe yet: pick model B (and C) in the Merge tab and apply it to the "
                              "loaded model once, then run the grid")
    return {"b": r.b, "c": r.c, "mode": r.mode, "alpha": r.alpha, "block_weights": r.block_weights,
            "base_alpha": r.base_alpha}


def _kwargs(r: dict) -> dict:
    return {k: r.get(k) for k in ("b", "c", "mode", "alpha", "block_weights", "base_alpha")}


def _fail(what: str, exc: Exception) -> RuntimeError:
    return RuntimeError(f"{LABEL_PREFIX}{what}: {exc}")


# -- values ----------------------------------------------------------------------------------------------
def prepare_blocks(text: str) -> list:
    """Text-box values: `|`-separated lists, or the WebUI's comma-separated (quotes keep a list whole); a
    text that is only numbers is one weight list."""
    text = str(text or "").strip()
    if not text:
        return []
    if "|" in text:
        return [v.strip() for v in text.split("|")]
    items = [v.strip() for v in next(csv.reader(io.StringIO(text), skipinitialspace=True))]
    if len(items) > 1 and all(_is_number(v) for v in items):
        return [text]
    return items


def _is_number(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def _check(p, xs, what, choices, **vary) -> None:
    _require_values(xs, what, choices)
    try:
        live = _host()()
        recipe = base_recipe(live, need_b=not _has_b_axis(p))
        from lib_lora.merge.checkpoint import resolve_weights
        for v in xs:
            r = {**recipe, **{k: (v if fn is None else fn(v)) for k, fn in vary.items()}}
            if "alpha" in vary:
                r["block_weights"] = None
            resolve_weights(live.arch, r["alpha"], r["block_weights"], r["base_alpha"], live.presets)
    except LoraStudioError as e:
        raise _fail(what, e) from None


def confirm_blocks(p, xs):
    _check(p, xs, "Merge: block weights", True, block_weights=lambda v: str(v).strip())


def confirm_alpha(p, xs):
    _check(p, xs, "Merge: alpha", False, alpha=float)


def checkpoints() -> dict:
    """{name: file} of the WebUI's checkpoint list (what its own model dropdown shows)."""
    from .tabs import webui_checkpoints
    return webui_checkpoints()


B_LABEL = LABEL_PREFIX + "Merge: model B"


def _grid_labels() -> list[str] | None:
    """The labels of the X/Y/Z grid being confirmed: the confirm callbacks run from the X/Y/Z script's
    run(), one axis after another, and only its arguments tell whether a later axis gives model B. None when
    the caller is not that script (another fork): then every axis needs a recipe of its own."""
    import sys

    frame = sys._getframe(1)
    for _ in range(8):
        frame = frame.f_back
        if frame is None:
            return None
        f = frame.f_locals
        options = getattr(f.get("self"), "current_axis_options", None)
        if options is not None and all(k in f for k in ("x_type", "y_type", "z_type")):
            try:
                return [str(options[f[k]].label) for k in ("x_type", "y_type", "z_type")]
            except (IndexError, TypeError, AttributeError):
                return None
    return None


def _has_b_axis(p) -> bool:
    """Whether this grid also varies model B (then the other merge axes need no recipe)."""
    if getattr(p, "_lora_studio_b_axis", False):
        return True
    labels = _grid_labels()
    return bool(labels) and B_LABEL in labels


def confirm_b(p, xs):
    _require_values(xs, "Merge: model B", True)
    listed = checkpoints()
    missing = [x for x in xs if str(x) not in listed]
    if missing:
        raise _fail("Merge: model B", LoraStudioError(
            f"{', '.join(repr(str(x)) for x in missing)} not in the checkpoint list; pick models from the list "
            "(refresh it after adding files)"))
    p._lora_studio_b_axis = True        # the other merge axes of this grid need no recipe then


def apply_b(p, x, xs):
    listed = checkpoints()
    setattr(p, ATTR, {**(getattr(p, ATTR, None) or {}), "b": listed.get(str(x), str(x))})


def apply_blocks(p, x, xs):
    setattr(p, ATTR, {**(getattr(p, ATTR, None) or {}), "block_weights": str(x).strip()})


def apply_alpha(p, x, xs):
    setattr(p, ATTR, {**(getattr(p, ATTR, None) or {}), "alpha": float(x)})


def choices_blocks():
    """The presets a merge of the loaded model can take (numbers only, 26/25 or 20/19 values)."""
    try:
        from lib_lora.merge.checkpoint import resolve_weights

        from .engine import ENGINE
        store = ENGINE.presets()
        try:
            arch = _host()().arch
        except LoraStudioError:
            return store.names()
        out = []
        for name in store.names():
            try:
                resolve_weights(arch, 0.5, name, None, store)
            except LoraStudioError:
                continue
            out.append(name)
        return out
    except Exception:
        return []


def format_label(p, opt, x):
    from lib_lora import syntax
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        x = syntax.format_number(x)
    return f"{opt.label[len(LABEL_PREFIX):]}: {x}"


def axes(xyz):
    from . import env
    if env.is_forge():               # live merges need A1111's model (live_merge.FORGE)
        return []
    A = xyz.AxisOption
    return [
        A(LABEL_PREFIX + "Merge: block weights", str, apply_blocks, format_value=format_label,
          confirm=confirm_blocks, choices=choices_blocks, prepare=prepare_blocks),
        A(LABEL_PREFIX + "Merge: alpha", float, apply_alpha, format_value=format_label, confirm=confirm_alpha),
        A(B_LABEL, str, apply_b, format_value=format_label, confirm=confirm_b,
          choices=lambda: list(checkpoints())),
    ]


# -- per generation --------------------------------------------------------------------------------------
def process(p) -> None:
    """Before each generation: a grid cell gets its merge; the first other generation ends the grid."""
    from . import env
    cell = getattr(p, ATTR, None)
    host = _host()
    try:
        if cell is None:
            if _GRID["running"]:
                finish_grid()
            return
        live = host()
        if not _GRID["running"]:
            _GRID["before"], _GRID["running"] = live.active, True
        recipe = base_recipe(live, need_b="b" not in cell)
        if "alpha" in cell and "block_weights" not in cell:
            recipe["block_weights"] = None       # an alpha sweep is uniform
        recipe.update(cell)
        line = live.apply(**_kwargs(recipe))
        env.log.info(line)
    except LoraStudioError as e:
        env.emit(p, f"merge cell not applied: {e}")
    finally:
        _note_merge(p, host)


FIELD = "LoRA Studio merge"   # infotext: the model hash names A, so a live merge must say what was merged in


def _note_merge(p, host) -> None:
    """Write the active live merge (this cell's, or the one the user applied) into the generation
    parameters: without it an image made on a live merge would claim to come from model A alone."""
    live = getattr(host, "live", None)
    active = getattr(live, "active", None) if live is not None else None
    params = getattr(p, "extra_generation_params", None)
    if active is not None and isinstance(params, dict):
        params[FIELD] = active.describe()
