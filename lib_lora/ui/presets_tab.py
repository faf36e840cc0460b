"""Presets tab: the layout and wiring of the block-weight preset table editor (`presets_table.py`), the LBW
file import/export (`presets_io.py`), the elemental preset editor (`presets_elemental.py`) and the LoRA bars
and "copy tag" panel (`presets_lora.py`).

Every callback is a plain function of (ctx, inputs) so it is unit-tested without a browser; `build`
only wires them to components. Edits are kept in the table until "Save", which writes the user
presets file (ctx.check_writes first) and reloads the store, so prompts use them without a restart.
"""

from __future__ import annotations

from lib_lora.ui import lora_tab
# The tab's callbacks, importable from here as before (tests).
from lib_lora.ui.presets_elemental import (element_delete, element_load, element_names, element_save,  # noqa: F401
                                           element_text, validate_element)
from lib_lora.ui.presets_io import MAX_IMPORT_BYTES, export_file, import_file  # noqa: F401
from lib_lora.ui.presets_lora import lora_chart, make_tag, preset_weights, tag_callback, token_weights  # noqa: F401
from lib_lora.ui.presets_table import (FORMAT_CHOICES, FORMAT_ORDER, after_import, change_format,  # noqa: F401
                                       columns, count_of, delete_row, load_table, parse_values_text, preset_rows,
                                       preset_values, reload_store, row_at, save_table, set_row, unsaved_count,
                                       validate_row)


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
    # presets_io._uploaded_text) before our check runs.
    import_btn.click(lambda u: import_file(ctx, u), inputs=[up], outputs=[status], preprocess=False) \
        .then(lambda f, t, o: after_import(ctx, f, t, o), inputs=[fmt, table, orig], outputs=[table, orig]) \
        .then(preset_choices, inputs=[], outputs=[preset])
    export_btn.click(lambda: export_file(ctx), inputs=[], outputs=[down, status])
    refresh.click(lambda: compat.update(choices=lora_tab.list_loras(ctx)), inputs=[], outputs=[lora])
    for trigger in (lora.change, preset.change):
        trigger(lambda n, p: lora_chart(ctx, n, p), inputs=[lora, preset], outputs=[chart, summary])
    copy_btn.click(tag_callback, inputs=[lora, weight, preset], outputs=[tag, tag_status]) \
        .then(None, inputs=[tag], outputs=[tag], **compat.js_kwargs(COPY_JS))
