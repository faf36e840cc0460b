"""The LoRA cards page, registered only when the built-in Lora extension is disabled (otherwise its own
"Lora" page is used, and its cards insert tags that we handle). Distinct title, so HTML ids never collide."""

from __future__ import annotations

import html
import json
import os

from lib_lora import sidecar
from lib_lora.errors import LoraStudioError

from . import env
from .engine import ENGINE

TITLE = "LoRA Studio"


def make_page():
    from modules import shared, ui_extra_networks
    from modules.ui_extra_networks import quote_js

    class LoraStudioCards(ui_extra_networks.ExtraNetworksPage):
        def __init__(self):
            super().__init__(TITLE)

        def refresh(self):
            ENGINE.library.scan()

        def create_item(self, name, index=None, enable_filter=True):
            entry = ENGINE.library.by_name.get(name)
            if entry is None:
                return None
            path = os.path.splitext(str(entry.path))[0]
            alias = entry.name if env.opt("lora_preferred_name", "Alias from file") == "Filename" else entry.alias
            item = {
                "name": entry.name,
                "filename": str(entry.path),
                "shorthash": entry._hash or "",
                "preview": self.find_preview(path),
                "description": self.find_description(path),
                "search_terms": [self.search_terms_from_path(str(entry.path)), entry.alias],
                "local_preview": f"{path}.{shared.opts.samples_format}",
                "metadata": entry.metadata,
                "sort_keys": {"default": index or 0, **self.get_sort_keys(str(entry.path))},
            }
            self.read_user_metadata(item)
            um = item.get("user_metadata") or {}
            weight = um.get("preferred weight") or 0
            item["prompt"] = (quote_js(f"<lora:{alias}:") + " + "
                              + (str(weight) if weight else "opts.extra_networks_default_multiplier")
                              + " + " + quote_js(">"))
            preset = str(um.get(sidecar.PRESET) or "").strip()
            if preset:   # ours: the card writes the preferred block-weight preset into the tag
                item["prompt"] = item["prompt"][:-len(quote_js(">"))] + quote_js(f":lbw={preset}>")
            if um.get("activation text"):
                item["prompt"] += " + " + quote_js(" " + um["activation text"])
            item["negative_prompt"] = quote_js("(" + um["negative text"] + ":1)") if um.get("negative text") else quote_js("")
            return item

        def list_items(self):
            ENGINE.library.scan()
            for index, entry in enumerate(ENGINE.library.all()):
                item = self.create_item(entry.name, index)
                if item is not None:
                    yield item

        def allowed_directories_for_previews(self):
            return [str(d) for d in env.lora_dirs() if d.is_dir()]

        def create_user_metadata_editor(self, ui, tabname):
            return make_editor(ui, tabname, self)

    return LoraStudioCards()


# --- the card's metadata view and user-metadata editor ----------------------------------------------------

def card_fields(item: dict) -> tuple:
    """(activation text, preferred weight, preferred preset, negative text) of a card's user metadata."""
    um = item.get("user_metadata") or {}
    try:
        weight = float(um.get(sidecar.WEIGHT) or 0.0)
    except (TypeError, ValueError):
        weight = 0.0
    return (str(um.get(sidecar.ACTIVATION, "")), weight, str(um.get(sidecar.PRESET, "")),
            str(um.get(sidecar.NEGATIVE, "")))


def card_training_html(item: dict, tabname: str) -> str:
    """The training facts and tags of a card (its file's ss_* header), tags as "add to prompt" buttons."""
    from lib_lora.ui.lora_tab import training_html
    return (f'<div class="lora-studio-card-meta" data-tabname="{html.escape(tabname)}">'
            + training_html(item.get("metadata") or {}, add_to_prompt=True) + "</div>")


def save_card(page, name: str, desc, activation, weight, preset, negative, notes) -> str:
    """Writes the card's user fields into the WebUI's sidecar (the weights file is never touched); returns a
    status line. Unknown keys already in the sidecar are kept; an unreadable sidecar is refused, not replaced."""
    item = page.items.get(name)
    if not item or not item.get("filename"):
        return f"⚠ LoRA card '{name}' is gone; refresh the page"
    preset = (preset or "").strip()
    try:
        if env.cmd_opt("disable_extension_access", False):    # --listen without insecure access: no writes
            from .tabs import WEBUI_WRITES_BLOCKED
            raise LoraStudioError(WEBUI_WRITES_BLOCKED)
        if preset and ENGINE.presets().get(preset) is None:
            raise LoraStudioError(f"preset '{preset}' is not known; leave it empty or use a preset name from "
                                  f"the Presets tab")
        data = sidecar.update_sidecar(item["filename"], {
            sidecar.DESCRIPTION: desc, sidecar.ACTIVATION: activation, sidecar.WEIGHT: weight,
            sidecar.PRESET: preset, sidecar.NEGATIVE: negative, sidecar.NOTES: notes})
    except LoraStudioError as exc:
        return f"⚠ {exc}"
    item["user_metadata"] = data
    item["description"] = data.get(sidecar.DESCRIPTION, "")
    lister = getattr(page, "lister", None)
    if lister is not None and hasattr(lister, "update_file_entry"):   # the WebUI caches which files exist
        lister.update_file_entry(sidecar.sidecar_path(item["filename"]))
    return "Saved."


def make_editor(ui, tabname, page):
    import gradio as gr
    from lib_lora.ui import compat
    from modules import ui_extra_networks_user_metadata as base

    class LoraStudioMetadataEditor(base.UserMetadataEditor):
        """The WebUI's own editor (description, notes, preview) plus activation text, preferred weight,
        preferred preset, negative text, and the training metadata with "add to prompt" tags."""

        def put_values_into_components(self, name):
            values = super().put_values_into_components(name)
            item = self.page.items.get(name, {})
            self.get_user_metadata(name)
            return [*values[0:5], *card_fields(item), card_training_html(item, self.tabname)]

        def save_lora_user_metadata(self, name, desc, notes, activation, weight, preset, negative):
            status = save_card(self.page, name, desc, activation, weight, preset, negative, notes)
            if status.startswith("⚠"):    # shown by Gradio; the popup stays open with the user's text
                raise gr.Error(status[2:])

        def create_editor(self):
            self.create_default_editor_elems()
            self.edit_activation = gr.Text(label="Activation text", info="added to the prompt with the tag")
            self.edit_weight = gr.Slider(label="Preferred weight (0 = the default)", minimum=0.0, maximum=2.0,
                                         step=0.01)
            try:
                presets = [""] + ENGINE.presets().names()
            except Exception:     # the editor still works without the presets list
                presets = [""]
            self.edit_preset = gr.Dropdown(label="Preferred block-weight preset (lbw=)", choices=presets, value="")
            self.edit_negative = gr.Text(label="Negative prompt text")
            self.edit_notes = gr.TextArea(label="Notes", lines=3)
            self.html_training = gr.HTML(elem_classes="lora-studio-card-training")
            self.create_default_buttons()
            outputs = [self.edit_name, self.edit_description, self.html_filedata, self.html_preview, self.edit_notes,
                       self.edit_activation, self.edit_weight, self.edit_preset, self.edit_negative, self.html_training]
            self.button_edit.click(fn=self.put_values_into_components, inputs=[self.edit_name_input],
                                   outputs=outputs)\
                .then(fn=lambda: gr.update(visible=True), inputs=[], outputs=[self.box])
            inputs = [self.edit_name_input, self.edit_description, self.edit_notes, self.edit_activation,
                      self.edit_weight, self.edit_preset, self.edit_negative]
            refresh = ("function(name){closePopup(); extraNetworksRefreshSingleCard(" + json.dumps(self.page.name)
                       + "," + json.dumps(self.tabname) + ", name);}")
            # .success: the popup closes only when the file was written
            self.button_save.click(fn=self.save_lora_user_metadata, inputs=inputs, outputs=[])\
                .success(fn=None, inputs=[self.edit_name_input], outputs=[], **compat.js_kwargs(refresh))

    return LoraStudioMetadataEditor(ui, tabname, page)


def on_before_ui():
    if env.builtin_lora() is not None or env.builtin_lora_enabled():
        return
    from modules import ui_extra_networks
    if any(getattr(p, "title", None) == TITLE for p in ui_extra_networks.extra_pages):
        return
    ui_extra_networks.register_page(make_page())


