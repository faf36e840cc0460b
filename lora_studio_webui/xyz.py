"""Axes for the WebUI's own X/Y/Z plot script (docs/spec/webui_integration.md §9).

Every axis rewrites the `<lora:…>` tag text in the prompt (and a non-empty hires prompt): A1111 caches
conditioning by prompt text, so changing the LoRA any other way would reuse stale text-encoder output.
The weight, blocks and x= axes act on the first LoRA tag of the prompt; the epoch axis on every tag of the
chosen LoRA's family (`name-000004`, …, `name`).
"""

from __future__ import annotations

from lib_lora import syntax

from .engine import ENGINE

LABEL_PREFIX = "[LoRA Studio] "
NO_LORA = "no LoRA"
PROMPT_FIELDS = ("prompt", "hr_prompt")


def find_xyz_module():
    from modules import scripts
    for data in getattr(scripts, "scripts_data", []):
        if data.script_class.__module__ == "xyz_grid.py" and hasattr(data.module, "AxisOption"):
            return data.module
    for data in getattr(scripts, "scripts_data", []):    # some forks load it under another module name
        if str(getattr(data, "path", "")).replace("\\", "/").endswith("/xyz_grid.py") and hasattr(data.module, "AxisOption"):
            return data.module
    return None


def _rewrite(p, fn, first_only: bool) -> None:
    """Replace LoRA tags of the prompt and hires prompt by fn(tag) (new text, "" = remove); first_only: only
    the first LoRA tag of each."""
    for attr in PROMPT_FIELDS:
        text = getattr(p, attr, None)
        if isinstance(text, str) and text:
            seen: list[object] = []

            def one(tag):
                seen.append(tag)
                return fn(tag) if not first_only or len(seen) == 1 else None

            new = syntax.rewrite_prompt(text, one)
            if new != text:
                setattr(p, attr, new)


def _require_tag(p, what):
    if not syntax.parse_prompt(getattr(p, "prompt", "")):
        raise RuntimeError(f"{LABEL_PREFIX}{what}: the prompt has no <lora:…> tag to vary; add one.")


def _require_values(xs, what, choices: bool) -> None:
    """Refuse an empty value list (the WebUI would make "0 images on a N×0 grid") the way the WebUI's own axes
    refuse bad values: a RuntimeError from confirm. An axis with choices reads its values from the dropdown
    list unless "Use text inputs instead of dropdowns" (csv_mode) is on: text given without it arrives empty."""
    if not xs:
        how = (" Pick them in the dropdown, or tick \"Use text inputs instead of dropdowns\" to type them (API: put "
               "them in the *_values_dropdown list, or set csv_mode to true with *_values as text)." if choices
               else " Type them comma-separated.")
        raise RuntimeError(f"{LABEL_PREFIX}{what}: no values given.{how}")
    for v in xs:
        if isinstance(v, str) and not v.strip():
            raise RuntimeError(f"{LABEL_PREFIX}{what}: an empty value in the list; remove the extra comma.")


# -- weight / blocks / x ------------------------------------------------------------------------------
def apply_weight(p, x, xs):
    _rewrite(p, lambda tag: syntax.edit_weight(tag, float(x)), first_only=True)


def apply_blocks(p, x, xs):
    value = str(x).strip()
    _rewrite(p, lambda tag: syntax.edit_blocks(tag, value), first_only=True)


def apply_x(p, x, xs):
    _rewrite(p, lambda tag: syntax.edit_key(tag, "x", syntax.format_number(float(x))), first_only=True)


def confirm_weight(p, xs):
    _require_values(xs, "LoRA weight", choices=False)
    _require_tag(p, "LoRA weight")


def confirm_x(p, xs):
    _require_values(xs, "LoRA x=", choices=False)
    _require_tag(p, "LoRA x=")


def confirm_blocks(p, xs):
    _require_values(xs, "LoRA block weights", choices=True)
    _require_tag(p, "LoRA block weights")
    presets = ENGINE.presets()
    for v in xs:
        tag = syntax.parse_params(["probe", "1"], {"lbw": str(v)})
        if tag.errors:
            raise RuntimeError(f"{LABEL_PREFIX}LoRA block weights: {'; '.join(tag.errors)}")
        if not syntax.is_block_list(tag.blocks) and presets.lookup(tag.blocks) is None:
            close = presets.close_matches(tag.blocks)
            raise RuntimeError(f"{LABEL_PREFIX}LoRA block weights: unknown preset '{v}'"
                               + (f" (close: {', '.join(close)})" if close else ""))


def choices_blocks():
    try:
        return ENGINE.presets().names()
    except Exception:
        return []


# -- epoch --------------------------------------------------------------------------------------------
def _family_of(name: str):
    entry = ENGINE.library.find(name)
    return entry.family if entry is not None else None


def apply_epoch(p, x, xs):
    fams = {_family_of(v) for v in xs if v != NO_LORA} - {None}

    def in_family(tag):
        return not fams or _family_of(tag.name) in fams

    if x == NO_LORA:
        _rewrite(p, lambda tag: "" if in_family(tag) else None, first_only=False)
    else:
        _rewrite(p, lambda tag: syntax.edit_name(tag, str(x)) if in_family(tag) else None, first_only=False)


def confirm_epoch(p, xs):
    _require_values(xs, "LoRA epoch", choices=True)
    _require_tag(p, "LoRA epoch")
    present = {_family_of(tag.name) for tag in syntax.parse_prompt(p.prompt)}
    for v in xs:
        if v == NO_LORA:
            continue
        fam = _family_of(v)
        if fam is None:
            raise RuntimeError(f"{LABEL_PREFIX}LoRA epoch: {ENGINE.library.not_found_message(v)}")
        if fam not in present:
            raise RuntimeError(f"{LABEL_PREFIX}LoRA epoch: '{v}' belongs to '{fam}', which is not in the prompt; "
                               f"add <lora:{fam}:1> (or one of its epochs) to the prompt.")


def choices_epoch():
    ENGINE.library.scan()
    out = [NO_LORA]
    for fam in ENGINE.library.families_with_epochs():
        members = [f for f in ENGINE.library.all() if f.family == fam]
        members.sort(key=lambda f: (f.epoch is None, f.epoch or 0))
        out += [f.name for f in members]
    return out


def format_label(p, opt, x):
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        x = syntax.format_number(x)  # the label shows the number the tag was given
    return f"{opt.label[len(LABEL_PREFIX):]}: {x}"


def axes(xyz):
    A = xyz.AxisOption
    return [
        A(LABEL_PREFIX + "LoRA epoch", str, apply_epoch, format_value=format_label, confirm=confirm_epoch,
          cost=0.5, choices=choices_epoch),
        A(LABEL_PREFIX + "LoRA weight", float, apply_weight, format_value=format_label, confirm=confirm_weight),
        A(LABEL_PREFIX + "LoRA block weights", str, apply_blocks, format_value=format_label,
          confirm=confirm_blocks, choices=choices_blocks),
        A(LABEL_PREFIX + "LoRA x=", float, apply_x, format_value=format_label, confirm=confirm_x),
    ]


def register(extra=()) -> int:
    """Append our axes once (guard: a label with our prefix already there). Returns how many were added.
    `extra`: more `axes(xyz)` builders (the live-merge axes), given by the caller so that their modules may
    import this one without a cycle."""
    xyz = find_xyz_module()
    if xyz is None:
        return 0
    if any(str(getattr(o, "label", "")).startswith(LABEL_PREFIX) for o in xyz.axis_options):
        return 0
    new = axes(xyz)
    import sys

    from . import forge, xyz_blocks
    new += xyz_blocks.axes(xyz, sys.modules[__name__])   # LBW's block axes: original weights, block ID
    for more in extra:
        new += more(xyz)
    if forge.active() and not forge.supported():   # Forge's own Lora handles the tags: block axes would do nothing
        new = [o for o in new if o.label.endswith(("LoRA epoch", "LoRA weight"))]
    xyz.axis_options.extend(new)
    return len(new)
