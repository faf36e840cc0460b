"""Per-block sliders under the txt2img / img2img prompt: a small Gradio HTML block that
javascript/lora_studio_sliders.js fills with one slider per block of the `<lora:…>` tag under the cursor.

The block names of each format come from lib_lora.blocks (one home); the presets' values are embedded
so a tag written with a preset shows its weights (as the page was built: a preset saved later shows after
a reload of the page).
"""

from __future__ import annotations

import html
import json

from lib_lora.blocks import FORMATS, format_names

FORMAT_ORDER = (17, 26, 12, 20)


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


def save_preset(store, name: str, weights: str, replace: bool, writes_allowed: bool = True) -> str:
    """"Save as preset": the weights the sliders show, as a user preset (one line; nothing replaced unless asked)."""
    from lib_lora.errors import LoraStudioError

    name = (name or "").strip()
    try:
        if not writes_allowed:
            raise LoraStudioError("Writing files is disabled because the WebUI listens on the network; start it "
                                  "with --enable-insecure-extension-access to save presets.")
        if store is None:
            raise LoraStudioError("the presets could not be loaded; see the console.")
        if not name:
            raise LoraStudioError("type a name for the preset.")
        if not (weights or "").strip():
            raise LoraStudioError("put the cursor in a <lora:…> tag first: its weights are what is saved.")
        if store.get(name) is not None and not replace:
            raise LoraStudioError(f"a preset named '{name}' exists; tick Replace to overwrite it, or pick "
                                  "another name.")
        store.update({name: weights})
    except LoraStudioError as exc:
        return f"⚠ {exc}"
    return f"✓ saved preset '{name}' ({len(weights.split(','))} values); write it in a tag as <lora:NAME:1:{name}>"


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
        with gr.Row():
            weights = gr.Textbox(label="Weights shown", elem_id=f"lora_studio_sliders_vector_{tab}", scale=3)
            name = gr.Textbox(label="Save as preset named", elem_id=f"lora_studio_sliders_preset_{tab}", scale=2)
            replace = gr.Checkbox(False, label="Replace", elem_id=f"lora_studio_sliders_replace_{tab}", scale=1)
            save = gr.Button("Save as preset", elem_id=f"lora_studio_sliders_save_{tab}", scale=1)
        status = gr.Markdown(elem_id=f"lora_studio_sliders_status_{tab}")

        def on_save(n, w, r):
            from . import env
            return save_preset(presets, n, w, bool(r), not bool(env.cmd_opt("disable_extension_access", False))), False

        save.click(on_save, [name, weights, replace], [status, replace])
    return []
