"""The Presets tab's block-preset table editor: one table per format (value count), rows set, deleted and
checked in the table, Save writing only this table's changes to the user presets file (ctx.check_writes first)
and reloading the store, so prompts use them without a restart."""

from __future__ import annotations

from lib_lora.blocks import FORMAT_LABELS, FORMATS, format_names
from lib_lora.errors import LoraStudioError
from lib_lora.syntax import format_number

FORMAT_ORDER = (17, 26, 12, 20)
FORMAT_CHOICES = [f"{n} · {FORMAT_LABELS[n]}" for n in FORMAT_ORDER]


def count_of(label) -> int:
    try:
        n = int(str(label).split("·")[0].strip())
    except ValueError:
        n = 0
    if n not in FORMATS:
        raise LoraStudioError(f"Unknown format '{label}'; pick one of {', '.join(FORMAT_CHOICES)}.")
    return n


def columns(count: int) -> list[str]:
    return ["name"] + format_names(count)


def _fmt(v) -> str:
    if isinstance(v, float):
        return format_number(v)
    return str(v).strip()


def preset_values(store, name: str) -> list[str]:
    """The stored values of a preset as strings (letters kept)."""
    return [_fmt(x) for x in store.get(name) or []]


def preset_rows(store, count: int) -> list[list[str]]:
    rows = []
    for name in store.names():
        vals = preset_values(store, name)
        if len(vals) == count:
            rows.append([name] + vals)
    return rows


def _frame(rows: list[list[str]], count: int):
    import pandas as pd
    return pd.DataFrame([list(map(str, r)) for r in rows], columns=columns(count))


def _need_store(ctx):
    store = ctx.presets
    if store is None:
        reason = ctx.presets_problem or "no presets store configured"
        raise LoraStudioError(f"Presets are unavailable: {reason}.")
    return store


def validate_row(row, count: int) -> tuple[str, list[str]]:
    """A table row → (name, values) or LoraStudioError naming the row and the fix."""
    from lib_lora.presets import name_problem, normalise_values, tokens_problem
    cells = ["" if c is None else str(c).strip() for c in row]
    cells = (cells + [""] * (count + 1))[:count + 1]   # tolerate short rows from the grid
    name, vals = cells[0], cells[1:]
    if not name:
        raise LoraStudioError("A row has no name; type a name in the first column or delete the row.")
    problem = name_problem(name)
    if problem:
        raise LoraStudioError(f"Preset name not allowed: {problem}.")
    missing = [format_names(count)[i] for i, v in enumerate(vals) if v == ""]
    if missing:
        raise LoraStudioError(f"Preset '{name}': no value for {', '.join(missing)}; fill every block.")
    vals = normalise_values([v.replace(" ", "") for v in vals])
    problem = tokens_problem(vals)
    if problem:
        raise LoraStudioError(f"Preset '{name}': {problem}.")
    return name, vals


def parse_values_text(text: str) -> list[str]:
    return [v.strip() for v in str(text or "").split(",") if v.strip() != ""]


def load_table(ctx, label):
    """(table, original {name: values} as loaded, status) for a format. The original is what Save diffs
    against, so only this tab's own edits are written (another tab's or process's saves are kept)."""
    count = count_of(label)
    try:
        store = _need_store(ctx)
    except LoraStudioError as exc:
        return _frame([], count), {}, f"⚠ {exc}"
    rows = preset_rows(store, count)
    mine = sum(1 for r in rows if r[0] in set(store.user_names()))
    return (_frame(rows, count), {r[0]: list(r[1:]) for r in rows},
            f"{len(rows)} presets with {count} values ({mine} from your presets file).")


def _table_rows(table) -> list[list[str]]:
    from lib_lora.ui.compat import dataframe_rows
    return [["" if c is None else str(c).strip() for c in r] for r in dataframe_rows(table)
            if any(str(c).strip() for c in r if c is not None)]


def unsaved_count(table, original) -> int:
    """How many rows of the table differ from what was loaded (added, edited or removed)."""
    rows = {r[0]: r[1:] for r in _table_rows(table)}
    orig = dict(original or {})
    changed = sum(1 for n, v in rows.items() if orig.get(n) != v)
    return changed + sum(1 for n in orig if n not in rows)


def set_row(table, label, name: str, values_text: str, ctx=None):
    """Add or replace the row `name` in the (unsaved) table from a comma-separated values text."""
    from lib_lora.ui.compat import dataframe_rows
    count = count_of(label)
    rows = [r for r in dataframe_rows(table) if any(str(c).strip() for c in r)]
    vals = parse_values_text(values_text)
    if len(vals) != count:
        return _frame(rows, count), (f"⚠ '{name or '?'}' has {len(vals)} values; this table needs {count} "
                                     f"({', '.join(format_names(count))}).")
    try:
        name, vals = validate_row([name] + vals, count)
        store = ctx.presets if ctx is not None else None
        clash = store.case_clash(name) if store is not None else None
        clash = clash or next((str(r[0]).strip() for r in rows
                               if str(r[0]).strip().lower() == name.lower() and str(r[0]).strip() != name), None)
        if clash:
            raise LoraStudioError(f"'{name}' differs from '{clash}' only by case and preset names are "
                                  f"case-insensitive; edit '{clash}' instead or choose another name.")
    except LoraStudioError as exc:
        return _frame(rows, count), f"⚠ {exc}"
    for r in rows:
        if str(r[0]).strip() == name:
            r[:] = [name] + vals
            break
    else:
        rows.append([name] + vals)
    return _frame(rows, count), f"Row '{name}' set; press Save to write the presets file."


def row_at(table, index) -> tuple[str, str]:
    """(name, comma-separated values) of the table row at `index` (a row number or [row, col])."""
    from lib_lora.ui.compat import dataframe_rows
    rows = dataframe_rows(table)
    i = index[0] if isinstance(index, (list, tuple)) else index
    if i is None or not 0 <= int(i) < len(rows):
        return "", ""
    row = ["" if c is None else str(c).strip() for c in rows[int(i)]]
    return row[0], ",".join(row[1:])


def delete_row(table, label, name: str, ctx=None):
    from lib_lora.ui.compat import dataframe_rows
    count = count_of(label)
    rows = dataframe_rows(table)
    name = (name or "").strip()
    store = ctx.presets if ctx is not None else None
    origin = store.origin(name) if store is not None else None
    if origin == "builtin":   # refused now, not only when Save is pressed
        return _frame(rows, count), (f"⚠ '{name}' is a shipped preset and cannot be deleted; edit its values "
                                     "instead (that saves a user preset overriding it).")
    kept = [r for r in rows if str(r[0]).strip() != name]
    if len(kept) == len(rows):
        return _frame(rows, count), f"⚠ No row named '{name}' in the table."
    shipped = store is not None and origin == "user" and name in getattr(store, "_builtin", {})
    return _frame(kept, count), (f"Row '{name}' removed; press Save to write the presets file"
                                 + (" (the shipped values of this name come back)." if shipped else "."))


def save_table(ctx, table, label, original):
    """Write this table's changes (new, edited, removed rows of this format, relative to `original`, the
    {name: values} it was loaded with) and reload the store. Returns (table, new original, status).

    The user file is re-read under a lock and only these changes are applied (PresetStore.update), so a
    save from another tab or process since this table was loaded is kept. Shipped presets are not copied.
    """
    count = count_of(label)
    rows = _table_rows(table)
    orig = dict(original or {})
    try:
        ctx.check_writes()
        store = _need_store(ctx)
        parsed = [validate_row(r, count) for r in rows]
        names = [n for n, _ in parsed]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise LoraStudioError(f"Preset name(s) {', '.join(dup)} appear twice; keep one row each.")
        removed = [n for n in orig if n not in names and store.origin(n) is not None]
        shipped = [n for n in removed if store.origin(n) == "builtin"]
        if shipped:
            raise LoraStudioError(f"'{shipped[0]}' is a shipped preset and cannot be deleted; "
                                  "edit its values instead (that saves a user preset overriding it).")

        changed = {n: v for n, v in parsed if orig.get(n) != v}
        try:
            store.update(changed, removed)
        finally:
            store.reload()   # unsaved in-memory edits must not leak into generation on failure
    except LoraStudioError as exc:
        return _frame(rows, count), original, f"⚠ {exc}"
    new_rows = preset_rows(store, count)
    path = ctx.presets_path or store.user_path
    return (_frame(new_rows, count), {r[0]: list(r[1:]) for r in new_rows},
            f"Saved: {len(changed)} changed, {len(removed)} removed → {path}. In use now, no restart needed.")


def change_format(ctx, label, table, original):
    """Format dropdown changed: show that format's table, unless the shown table has unsaved edits
    (then keep it, put the dropdown back, and say so)."""
    from lib_lora.ui.compat import update
    rows = _table_rows(table)
    shown = len(rows[0]) - 1 if rows else None
    if shown == count_of(label):   # our own revert (or no change): nothing to do
        return update(), update(), update(), update()
    n = unsaved_count(table, original)
    if n and shown in FORMATS:
        back = next(c for c in FORMAT_CHOICES if count_of(c) == shown)
        return (update(), update(), f"⚠ {n} unsaved row(s) in this table: press Save, or Reload from file to "
                                    "discard them, before switching format.", update(value=back))
    return (*load_table(ctx, label), update())


def reload_store(ctx, label, table=None, original=None, confirmed: bool = True):
    """Re-read the files. With unsaved edits in the table and not `confirmed`, nothing is discarded: the
    status asks to press Reload again. Returns (table, original, status, confirmed-next-time)."""
    from lib_lora.ui.compat import update
    n = unsaved_count(table, original) if table is not None else 0
    if n and not confirmed:
        return (update(), update(), f"⚠ {n} unsaved row(s) would be lost: press Reload from file again to "
                                    "discard them, or Save.", True)
    try:
        _need_store(ctx).reload()
    except LoraStudioError as exc:
        return _frame([], count_of(label)), {}, f"⚠ {exc}", False
    table, names, status = load_table(ctx, label)
    return table, names, "Reloaded from the presets files. " + status, False


def after_import(ctx, label, table, original):
    """The table after an import: the presets files as they are now, with this table's unsaved rows (added,
    edited, deleted since it was loaded) put back on top, still unsaved. Returns (table, original)."""
    count = count_of(label)
    orig = dict(original or {})
    rows = _table_rows(table)
    names = {r[0] for r in rows}
    edits = {r[0]: r for r in rows if orig.get(r[0]) != r[1:]}
    deleted = {n for n in orig if n not in names}
    fresh, fresh_orig, _ = load_table(ctx, label)
    from lib_lora.ui.compat import dataframe_rows
    out = [edits.pop(r[0], r) for r in (list(map(str, x)) for x in dataframe_rows(fresh)) if r[0] not in deleted]
    return _frame(out + list(edits.values()), count), fresh_orig
