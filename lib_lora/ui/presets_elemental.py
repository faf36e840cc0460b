"""The Presets tab's elemental preset editor (lbwe=NAME): load, check, save and delete one preset.

The elemental presets live in their own user file beside the block presets (ElementPresetStore); a save goes
through the store's `update`: under its lock, merged into the file as it is now, written atomically."""

from __future__ import annotations

from lib_lora.errors import LoraStudioError
from lib_lora.ui.presets_table import _need_store


def _need_elemental(ctx):
    store = getattr(_need_store(ctx), "elemental", None)
    if store is None:
        raise LoraStudioError("Elemental presets are unavailable: the presets store has none.")
    return store


def element_names(ctx) -> list[str]:
    try:
        return list(_need_elemental(ctx).names())
    except LoraStudioError:
        return []


def element_text(tokens) -> str:
    """Entries one per line, as the editor shows them (LBW's `blocks:elements:ratio`)."""
    return "\n".join(tokens)


def element_load(ctx, name: str):
    """(name, entries text, status) of an elemental preset, for the editor."""
    name = (name or "").strip()
    if not name:
        return "", "", ""
    try:
        store = _need_elemental(ctx)
    except LoraStudioError as exc:
        return name, "", f"⚠ {exc}"
    hit = store.lookup(name)
    if hit is None:
        return name, "", f"⚠ No elemental preset named '{name}'."
    where = "shipped (saving it keeps a user copy that overrides it)" if hit.origin == "builtin" else "yours"
    return hit.name, element_text(hit.tokens), f"'{hit.name}': {len(hit.tokens)} entries, {where}."


def validate_element(name: str, text: str) -> tuple[str, list[str]]:
    """(name, entries) from the editor, or LoraStudioError: one line naming the entry and the fix."""
    from lib_lora.presets import ELEMENT_BAD_NAME_CHARS, name_problem, normalise_entries
    from lib_lora.tag_weights import parse_element_entries
    name = str(name or "").strip()
    problem = name_problem(name, ELEMENT_BAD_NAME_CHARS)
    if problem:
        raise LoraStudioError(f"Elemental preset name not allowed: {problem}; type another name.")
    tokens = normalise_entries(str(text or ""))
    if not tokens:
        raise LoraStudioError(f"Elemental preset '{name}' has no entries; write one entry per line as "
                              "blocks:elements:ratio (e.g. IN05-OUT05:attn:0.5).")
    for i, tok in enumerate(tokens, 1):
        problem = parse_element_entries(tok, ":")[2]
        if problem:
            problem = problem.replace("entry 1 ", "", 1)
            raise LoraStudioError(f"Elemental preset '{name}', entry {i}: {problem}; fix that line and "
                                  "Save again.")
    return name, tokens


def element_save(ctx, name: str, text: str):
    """Save one elemental preset into the user elemental file. Returns (choices update, status)."""
    from lib_lora.ui.compat import update
    try:
        ctx.check_writes()
        store = _need_elemental(ctx)
        name, tokens = validate_element(name, text)
        clash = store.case_clash(name)
        if clash:
            raise LoraStudioError(f"'{name}' differs from '{clash}' only by case and preset names are "
                                  f"case-insensitive; load '{clash}' and edit it, or choose another name.")
        try:
            path = store.update({name: tokens}, [])
        finally:
            store.reload()
    except LoraStudioError as exc:
        return update(), f"⚠ {exc}"
    return (update(choices=list(store.names()), value=name),
            f"Saved elemental preset '{name}' ({len(tokens)} entries) → {path}. Use it as lbwe={name}.")


def element_delete(ctx, name: str):
    """Delete a user elemental preset (a shipped one of the same name comes back). (choices update, status)."""
    from lib_lora.ui.compat import update
    name = (name or "").strip()
    try:
        ctx.check_writes()
        store = _need_elemental(ctx)
        origin = store.origin(name)
        if origin is None:
            raise LoraStudioError(f"No elemental preset named '{name}'; pick one in the list.")
        if origin == "builtin":
            raise LoraStudioError(f"'{name}' is a shipped elemental preset and cannot be deleted; save a preset "
                                  "of the same name to override it.")
        shipped = name in store._builtin
        try:
            store.update({}, [name])
        finally:
            store.reload()
    except LoraStudioError as exc:
        return update(), f"⚠ {exc}"
    return (update(choices=list(store.names()), value=name if shipped else None),
            f"Deleted elemental preset '{name}'" + (" (the shipped one of that name is used again)." if shipped
                                                     else "."))
