"""Per-block sliders under the txt2img / img2img prompt: a small Gradio HTML block that
javascript/lora_studio_sliders.js fills with one slider per block of the `<lora:…>` tag under the cursor.

The block names of each format come from lib_lora.blocks (one home); the presets' values are embedded
so a tag written with a preset shows its weights (as the page was built: a preset saved later shows after
a reload of the page).
"""

from __future__ import annotations

import html
import json
import os
import threading

from lib_lora.blocks import FORMATS, format_names

FORMAT_ORDER = (17, 26, 12, 20)
_NORMS: dict = {}        # (path, mtime_ns, size) → (26 block norms, arch): a LoRA is inspected once per version
_NORMS_LOCK = threading.Lock()


def block_norms_of(path) -> tuple[list, str | None]:
    """The LoRA's per-block ΔW norms (the LoRAs/Presets tabs' inspect report) and its arch, cached per file version."""
    from lib_lora.lora_info import inspect_file
    from lib_lora.ui.lora_tab import block_norms
    st = os.stat(path)
    key = (os.fspath(path), st.st_mtime_ns, st.st_size)
    with _NORMS_LOCK:
        hit = _NORMS.get(key)
    if hit is None:
        report = inspect_file(os.fspath(path), with_hash=False)
        hit = (block_norms(report), report.get("arch"))
        with _NORMS_LOCK:
            for old in [k for k in _NORMS if k[0] == key[0]]:
                del _NORMS[old]
            _NORMS[key] = hit
    return hit


def preview_html(request: str, library=None) -> str:
    """The norms chart beside the sliders for a request {"name": LoRA, "values": [block tokens]} (the JS sends
    it): lora_tab.render_bars, the one chart of per-block norms, with the sliders' values overlaid."""
    from lib_lora.errors import LoraStudioError
    from lib_lora.ui.lora_tab import render_bars
    from lib_lora.ui.presets_lora import token_weights
    try:
        req = json.loads(request or "{}")
        name = str(req.get("name") or "").strip()
        values = [str(v) for v in (req.get("values") or [])]
    except (ValueError, AttributeError, TypeError):
        return ""
    if not name:
        return ""
    if library is None:
        from .engine import ENGINE
        library = ENGINE.library
    entry = library.find(name)
    if entry is None:
        return f'<p class="lora-studio-problem">LoRA \'{html.escape(name)}\' is not in the LoRA folders.</p>'
    try:
        norms, arch = block_norms_of(entry.path)
    except (LoraStudioError, OSError) as exc:
        return f'<p class="lora-studio-problem">⚠ {html.escape(str(exc))}</p>'
    return render_bars(norms, token_weights(values), title=f"{name}: weight norm per block", arch=arch)


def save_preset(store, name: str, request: str, replace: bool, writes_allowed: bool = True) -> str:
    """"Save as preset": the weights the sliders show (the chart request's values) as a user preset; one line,
    and nothing replaced unless asked."""
    from lib_lora.errors import LoraStudioError

    name = (name or "").strip()
    try:
        values = [str(v) for v in (json.loads(request or "{}").get("values") or [])]
    except (ValueError, AttributeError, TypeError):
        values = []
    try:
        if not writes_allowed:
            raise LoraStudioError("Writing files is disabled because the WebUI listens on the network; start it "
                                  "with --enable-insecure-extension-access to save presets.")
        if store is None:
            raise LoraStudioError("the presets could not be loaded; see the console.")
        if not name:
            raise LoraStudioError("type a name for the preset.")
        if not values:
            raise LoraStudioError("put the cursor in a <lora:…> tag first: the weights its sliders show are saved.")
        if store.get(name) is not None and not replace:
            raise LoraStudioError(f"a preset named '{name}' exists; tick Replace to overwrite it, or pick another name.")
        store.update({name: ",".join(values)})
    except LoraStudioError as exc:
        return f"⚠ {exc}"
    return f"✓ saved preset '{name}' ({len(values)} values); use it in a tag as <lora:NAME:1:{name}>"


def panel_html(prompt_id: str, presets=None) -> str:
    formats = {str(n): format_names(n) for n in FORMATS}
    values = {}
    if presets is not None:
        for name in presets.names():
            tokens = presets.get(name)
            if tokens and len(tokens) in FORMATS:
                values[name] = list(tokens)
    options = "".join(f'<option value="{n}">{n} values</option>' for n in FORMAT_ORDER)
    return (f'<div class="lora-studio-sliders" data-prompt="{html.escape(prompt_id)}" '
            f'data-formats="{html.escape(json.dumps(formats))}" data-presets="{html.escape(json.dumps(values))}">'
            f'<div class="lora-studio-sliders-top"><span class="lora-studio-sliders-head">Put the cursor in a '
            f'&lt;lora:…&gt; tag.</span> <select class="lora-studio-sliders-format">{options}</select></div>'
            f'<div class="lora-studio-sliders-body"></div></div>')


def build(is_img2img: bool, presets=None):
    """The accordion (inside a script's ui()); returns no inputs."""
    import gradio as gr
    if presets is None:
        try:
            from .engine import ENGINE
            presets = ENGINE.presets()
        except Exception:       # the sliders still work on lists without the presets' values
            presets = None
    tab = "img2img" if is_img2img else "txt2img"
    with gr.Accordion("LoRA block weights (tag under the cursor)", open=False,
                      elem_id=f"lora_studio_sliders_{tab}"):
        gr.HTML(panel_html(f"{tab}_prompt", presets))
        chart = gr.HTML(elem_id=f"lora_studio_sliders_{tab}_chart")
        # the JS writes the request here and clicks the button; shown by CSS as nothing (kept in the DOM on
        # Gradio 3 and 4, where an invisible component is not rendered)
        request = gr.Textbox(elem_id=f"lora_studio_sliders_{tab}_req", elem_classes=["lora-studio-hidden"],
                             show_label=False)
        go = gr.Button(elem_id=f"lora_studio_sliders_{tab}_go", elem_classes=["lora-studio-hidden"])
        go.click(fn=preview_html, inputs=[request], outputs=[chart], show_progress="hidden")
        with gr.Row():
            name = gr.Textbox(label="Save the sliders' weights as preset", elem_id=f"lora_studio_sliders_{tab}_preset",
                              scale=3)
            replace = gr.Checkbox(False, label="Replace", elem_id=f"lora_studio_sliders_{tab}_replace", scale=1)
            save = gr.Button("Save as preset", elem_id=f"lora_studio_sliders_{tab}_save", scale=1)
        status = gr.Markdown(elem_id=f"lora_studio_sliders_{tab}_status")

        def on_save(n, req, r):
            from . import env
            allowed = not bool(env.cmd_opt("disable_extension_access", False))
            return save_preset(presets, n, req, bool(r), allowed), False

        save.click(on_save, [name, request, replace], [status, replace])
    return []
