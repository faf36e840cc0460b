"""Presets tab: table editor for block-weight presets, LBW file import/export, LoRA bars and "copy tag".

Every callback is a plain function of (ctx, inputs) so it is unit-tested without a browser; `build`
only wires them to components. Edits are kept in the table until "Save", which writes the user
presets file (ctx.check_writes first) and reloads the store, so prompts use them without a restart.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from lib_lora.blocks import FORMAT_LABELS, FORMATS, expand, format_names
from lib_lora.errors import LoraStudioError
from lib_lora.syntax import format_number, short_tag
from lib_lora.ui import lora_tab

FORMAT_ORDER = (17, 26, 12, 20)
FORMAT_CHOICES = [f"{n} · {FORMAT_LABELS[n]}" for n in FORMAT_ORDER]
MAX_IMPORT_BYTES = 1 << 20
_NUMBER_RE = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$")


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


# ---- callbacks: table editor ------------------------------------------------------------------------


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


# ---- callbacks: import / export ---------------------------------------------------------------------


def _uploaded_text(file_value) -> tuple[str, str]:
    """(text, file name) of a presets file the user uploaded; anything else is refused with one line.

    The value arrives unprocessed (preprocess=False): a server path is accepted only inside Gradio's upload
    folder (where /upload puts real uploads), never e.g. /etc/passwd named by a crafted request; a FIFO is
    refused at once (read_small_text)."""
    from lib_lora.fileio import read_small_text, resolve_inside
    from lib_lora.ui.compat import raw_upload_path, upload_dir
    path, data = raw_upload_path(file_value)
    if data is not None:
        if len(data) > MAX_IMPORT_BYTES:
            raise LoraStudioError("That file is over 1 MB; a presets file is a small text file.")
        try:
            return data.decode("utf-8-sig"), "upload"
        except UnicodeDecodeError:
            raise LoraStudioError("That file is not UTF-8 text; save it as UTF-8 and import again.") from None
    if not path:
        raise LoraStudioError("Choose a presets file (lbwpresets.txt) to import first.")
    try:
        inside = resolve_inside(path, [upload_dir()], "presets file")
    except LoraStudioError:
        raise LoraStudioError("Only a file uploaded with the Import box can be imported; choose the file "
                              "there.") from None
    return read_small_text(inside, "presets file", MAX_IMPORT_BYTES), inside.name


def import_file(ctx, file_value) -> str:
    """Merge an uploaded LBW presets file into the user presets and save. Messages name line numbers,
    never the file's content."""
    try:
        ctx.check_writes()
        store = _need_store(ctx)
        text, name = _uploaded_text(file_value)
        skipped: list[int] = []
        try:
            names, _warnings = store.import_text(text, source=name, skipped=skipped)
            if not names:
                raise LoraStudioError("No preset found in that file (expected lines NAME:w1,...,wN with "
                                      "12/17/20/26 values); nothing imported.")
            store.save()
        finally:
            store.reload()
    except LoraStudioError as exc:
        return f"⚠ {exc}"
    shown = ", ".join(names[:20]) + (" …" if len(names) > 20 else "")
    msg = f"Imported {len(names)} presets ({shown}) into {store.user_path}."
    if skipped:
        lines = ", ".join(map(str, sorted(set(skipped))[:10])) + (" …" if len(set(skipped)) > 10 else "")
        msg += (f" Skipped {len(set(skipped))} line(s) that are not valid presets (line {lines}); "
                "a name used twice keeps the later line.")
    return msg


_EXPORT_DIR: str | None = None


def export_file(ctx):
    """Write the LBW-format text of every preset to a temp file for download: (path, status)."""
    try:
        text = _need_store(ctx).export_text()
    except LoraStudioError as exc:
        return None, f"⚠ {exc}"
    global _EXPORT_DIR
    if _EXPORT_DIR is None or not os.path.isdir(_EXPORT_DIR):
        _EXPORT_DIR = tempfile.mkdtemp(prefix="lora_studio_export_")   # one per process, reused
    fd, tmp = tempfile.mkstemp(dir=_EXPORT_DIR, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    path = os.path.join(_EXPORT_DIR, "lbwpresets.txt")
    os.replace(tmp, path)
    n = len([ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")])
    return path, f"Exported {n} presets (LoRA Block Weight format)."


# ---- callbacks: elemental presets (lbwe=NAME) ---------------------------------------------------------
# The elemental presets live in their own user file beside the block presets (ElementPresetStore); a save
# goes through the store's `update`: under its lock, merged into the file as it is now, written atomically.


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


# ---- callbacks: LoRA bars and tag -------------------------------------------------------------------


def make_tag(lora_name: str, weight, preset: str) -> str:
    """`<lora:NAME:W:PRESET>`; NAME is the file name without folder and extension (as the WebUI uses)."""
    if not lora_name:
        raise LoraStudioError("Pick a LoRA file first.")
    stem = Path(lora_name).stem
    return short_tag(stem, round(float(weight), 4), preset)  # rounded: the slider's float noise (0.30000000000000004)


def tag_callback(lora_name, weight, preset):
    try:
        return make_tag(lora_name, weight, preset), ""
    except LoraStudioError as exc:
        return "", f"⚠ {exc}"


def preset_weights(ctx, preset: str, arch: str | None):
    """26 slot weights of a preset as the LoRA's arch resolves it (R/U/X letters → None), or None."""
    store = ctx.presets
    if store is None or not preset:
        return None
    return token_weights(store.get(preset, arch if arch in ("sd1", "sd2", "sdxl") else None))


def token_weights(vals):
    """26 slot weights of a 12/17/20/26-token block list (letters → None, unlisted slots 0), or None."""
    if not vals or len(vals) not in FORMATS:
        return None
    nums = [float(x) if _NUMBER_RE.match(x) else 0.0 for x in vals]
    vec, _listed = expand(nums)
    letters = {slot for slot, x in zip(FORMATS[len(vals)], vals) if not _NUMBER_RE.match(x)}
    return [None if i in letters else vec[i] for i in range(26)]


def lora_chart(ctx, lora_name: str, preset: str):
    """(bar chart html, summary) for the picked LoRA with the chosen preset's weights overlaid."""
    if not lora_name:
        return "", ""
    try:
        report = lora_tab.inspect_lora(ctx, lora_name)
    except LoraStudioError as exc:
        return "", f"⚠ {exc}"
    weights = preset_weights(ctx, preset, report.get("arch"))
    title = f"{Path(lora_name).stem}: weight norm per block" + (f", preset {preset}" if preset else "")
    return (lora_tab.render_bars(lora_tab.block_norms(report), weights, title, arch=report.get("arch")),
            lora_tab.summary_markdown(lora_name, report))


# ---- layout -----------------------------------------------------------------------------------------

# Copies the tag to the clipboard; falls back to a hidden textarea where navigator.clipboard is refused
# (plain http on a LAN address is not a secure context). Returns the tag unchanged.
COPY_JS = """(tag) => {
  window.loraStudioLastCopied = tag;
  const fallback = () => { const t = document.createElement('textarea'); t.value = tag;
    document.body.appendChild(t); t.select(); try { document.execCommand('copy'); } catch (e) {} t.remove(); };
  if (tag) { if (navigator.clipboard && window.isSecureContext) navigator.clipboard.writeText(tag).catch(fallback);
             else fallback(); }
  return [tag];
}"""


# Unsaved table edits: the browser asks before the page is left or reloaded (the server cannot know).
# Set on every edit (Set row, Delete row, typing in a cell); cleared by a successful Save or Reload.
UNSAVED_HOOK_JS = """() => {
  if (!window.loraStudioUnloadHooked) {
    window.loraStudioUnloadHooked = true;
    window.addEventListener('beforeunload', (e) => {
      if (window.loraStudioPresetsDirty) { e.preventDefault(); e.returnValue = ''; return ''; } });
  }
  window.loraStudioPresetsDirty = false;
  return [];
}"""
MARK_UNSAVED_JS = "(...args) => { window.loraStudioPresetsDirty = true; return []; }"
CLEAR_UNSAVED_JS = """(status) => {
  // the Markdown value arrives rendered as HTML
  if (/Saved: |Reloaded from the presets files/.test(String(status || ''))) window.loraStudioPresetsDirty = false;
  return [];
}"""


# Compact cells so a 26-column table fits; no sort buttons (a sorted view would not match row indexes).
TABLE_CSS = """<style>
#lora_studio_presets_table table { font-size: 12px; }
#lora_studio_presets_table th span, #lora_studio_presets_table td span { padding: 4px 3px !important; }
#lora_studio_presets_table .sort-button { display: none !important; }
</style>"""


def build(ctx) -> None:
    import gradio as gr
    from lib_lora.ui import compat

    store = ctx.presets
    names = list(store.names()) if store is not None else []
    table0, orig0, status0 = load_table(ctx, FORMAT_CHOICES[0])
    where = ctx.presets_path or getattr(store, "user_path", None)
    gr.Markdown("Block-weight presets: click a row to edit it (or edit cells), **Set row**, then **Save**; "
                "prompts use the change at once." + (f" User presets file: `{where}`." if where else ""))
    with gr.Row():
        fmt = gr.Dropdown(choices=FORMAT_CHOICES, value=FORMAT_CHOICES[0], label="Format (value count)",
                          elem_id="lora_studio_presets_format", scale=1)
        row_name = gr.Textbox(label="Preset name", elem_id="lora_studio_presets_row_name", scale=1)
        row_values = gr.Textbox(label="Values (comma-separated)", scale=3, elem_id="lora_studio_presets_row_values")
    with gr.Row():
        set_btn = gr.Button("Set row", elem_id="lora_studio_presets_set")
        del_btn = gr.Button("Delete row", elem_id="lora_studio_presets_delete")
        save_btn = gr.Button("Save", variant="primary", elem_id="lora_studio_presets_save")
        reload_btn = gr.Button("Reload from file", elem_id="lora_studio_presets_reload")
    status = gr.Markdown(status0, elem_id="lora_studio_presets_status")
    gr.HTML(TABLE_CSS, visible=True)
    table = gr.Dataframe(value=table0, headers=columns(17), datatype="str", type="array", height=360,
                         row_count=(1, "dynamic"), col_count=(18, "fixed"), interactive=True,
                         label="Presets", elem_id="lora_studio_presets_table")
    with gr.Accordion("Import / export (LoRA Block Weight presets file)", open=False):
        with gr.Row():
            up = gr.File(label="Import lbwpresets.txt", file_types=[".txt"], elem_id="lora_studio_presets_import_file")
            down = gr.File(label="Exported file", interactive=False, elem_id="lora_studio_presets_export_file")
        with gr.Row():
            import_btn = gr.Button("Import", elem_id="lora_studio_presets_import")
            export_btn = gr.Button("Export", elem_id="lora_studio_presets_export")
    with gr.Accordion("Elemental presets (lbwe=NAME)", open=False):
        gr.Markdown("One entry per line: `blocks:elements:ratio`, e.g. `IN05-OUT05:attn:0.5` (blocks: IDs and "
                    "ranges, elements: parts of layer names, either may start with NOT; later entries win)."
                    + (f" Saved to `{store.elemental.user_path}`." if store is not None
                       and getattr(store.elemental, "user_path", None) else ""))
        with gr.Row():
            el_pick = gr.Dropdown(choices=element_names(ctx), label="Elemental preset", scale=2,
                                  elem_id="lora_studio_elem_pick")
            el_name = gr.Textbox(label="Name", scale=2, elem_id="lora_studio_elem_name")
        el_text = gr.Textbox(label="Entries", lines=5, elem_id="lora_studio_elem_entries")
        with gr.Row():
            el_save = gr.Button("Save elemental preset", variant="primary", elem_id="lora_studio_elem_save")
            el_del = gr.Button("Delete elemental preset", elem_id="lora_studio_elem_delete")
        el_status = gr.Markdown(elem_id="lora_studio_elem_status")
    gr.Markdown("### LoRA blocks and tag")
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Row():
                lora = gr.Dropdown(choices=lora_tab.list_loras(ctx), label="LoRA", scale=4,
                                   elem_id="lora_studio_presets_lora")
                refresh = gr.Button("Refresh", scale=1, size="sm", min_width=80,
                                    elem_id="lora_studio_presets_lora_refresh")
            chart = gr.HTML(elem_id="lora_studio_presets_chart")
        with gr.Column(scale=2):
            weight = gr.Slider(-2, 2, value=1.0, step=0.05, label="Weight", elem_id="lora_studio_presets_weight")
            preset = gr.Dropdown(choices=[""] + names, value="", label="Preset",
                                 elem_id="lora_studio_presets_preset")
            copy_btn = gr.Button("Copy tag", variant="primary", elem_id="lora_studio_presets_copy")
            tag = gr.Textbox(label="Tag", interactive=True, elem_id="lora_studio_presets_tag")
            tag_status = gr.Markdown(elem_id="lora_studio_presets_tag_status")
            summary = gr.Markdown(elem_id="lora_studio_presets_lora_summary")
    orig = gr.State(orig0)
    reload_armed = gr.State(False)

    def preset_choices():
        s = ctx.presets
        return compat.update(choices=[""] + (list(s.names()) if s is not None else []))

    def page_load():
        # Component values are fixed when the UI is built; each page load shows the files as they are now.
        if ctx.presets is not None:
            ctx.presets.reload()
            ctx.presets.elemental.reload()
        return (*load_table(ctx, FORMAT_CHOICES[0]), preset_choices(),
                compat.update(choices=lora_tab.list_loras(ctx)), compat.update(choices=element_names(ctx)))

    compat.on_page_load(page_load, outputs=[table, orig, status, preset, lora, el_pick])
    el_pick.change(lambda n: element_load(ctx, n), inputs=[el_pick], outputs=[el_name, el_text, el_status])
    el_save.click(lambda n, t: element_save(ctx, n, t), inputs=[el_name, el_text], outputs=[el_pick, el_status])
    el_del.click(lambda n: element_delete(ctx, n), inputs=[el_name], outputs=[el_pick, el_status])

    compat.on_page_load_js(UNSAVED_HOOK_JS)
    for edited in (table.input, set_btn.click, del_btn.click):
        edited(None, inputs=None, outputs=None, **compat.js_kwargs(MARK_UNSAVED_JS))

    fmt.change(lambda f, t, o: change_format(ctx, f, t, o), inputs=[fmt, table, orig],
               outputs=[table, orig, status, fmt])
    table.select(compat.with_select_index(row_at, 1), inputs=[table], outputs=[row_name, row_values])
    set_btn.click(lambda t, f, n, v: set_row(t, f, n, v, ctx), inputs=[table, fmt, row_name, row_values],
                  outputs=[table, status])
    del_btn.click(lambda t, f, n: delete_row(t, f, n, ctx), inputs=[table, fmt, row_name], outputs=[table, status])
    save_btn.click(lambda t, f, o: save_table(ctx, t, f, o), inputs=[table, fmt, orig],
                   outputs=[table, orig, status]).then(preset_choices, inputs=[], outputs=[preset]) \
        .then(None, inputs=[status], outputs=None, **compat.js_kwargs(CLEAR_UNSAVED_JS))
    reload_btn.click(lambda f, t, o, a: reload_store(ctx, f, t, o, a), inputs=[fmt, table, orig, reload_armed],
                     outputs=[table, orig, status, reload_armed]) \
        .then(preset_choices, inputs=[], outputs=[preset]) \
        .then(None, inputs=[status], outputs=None, **compat.js_kwargs(CLEAR_UNSAVED_JS))
    # preprocess=False: Gradio 3 would otherwise copy any server path named in the request (see
    # _uploaded_text) before our check runs.
    import_btn.click(lambda u: import_file(ctx, u), inputs=[up], outputs=[status], preprocess=False) \
        .then(lambda f, t, o: after_import(ctx, f, t, o), inputs=[fmt, table, orig], outputs=[table, orig]) \
        .then(preset_choices, inputs=[], outputs=[preset])
    export_btn.click(lambda: export_file(ctx), inputs=[], outputs=[down, status])
    refresh.click(lambda: compat.update(choices=lora_tab.list_loras(ctx)), inputs=[], outputs=[lora])
    for trigger in (lora.change, preset.change):
        trigger(lambda n, p: lora_chart(ctx, n, p), inputs=[lora, preset], outputs=[chart, summary])
    copy_btn.click(tag_callback, inputs=[lora, weight, preset], outputs=[tag, tag_status]) \
        .then(None, inputs=[tag], outputs=[tag], **compat.js_kwargs(COPY_JS))
