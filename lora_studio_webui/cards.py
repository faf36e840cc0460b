"""The LoRA cards page, registered only when the built-in Lora extension is disabled (otherwise its own
"Lora" page is used, and its cards insert tags that we handle). Distinct title, so HTML ids never collide.

Its card editor shows the training record (lib_lora.sidecar: tags by frequency, datasets, resolutions, learning
rates, epochs, base model, network) and edits the WebUI's own sidecar `<stem>.json` with the built-in editor's
keys plus "preferred preset", which a card click writes as the tag's block weights."""

from __future__ import annotations

import html
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
            preset = str(um.get(sidecar.PRESET) or "").strip()
            if any(c in preset for c in ":<>"):      # hand-edited sidecar: never break the tag
                preset = ""
            item["prompt"] = (quote_js(f"<lora:{alias}:") + " + "
                              + (str(weight) if weight else "opts.extra_networks_default_multiplier")
                              + " + " + quote_js((f":{preset}" if preset else "") + ">"))
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
            return make_editor_class()(ui, tabname, self)

    return LoraStudioCards()


def make_editor_class():
    """The card editor: the WebUI's UserMetadataEditor with the training record, the training tags (a click
    adds one to the activation text) and the LoRA fields, saved through lib_lora.sidecar (atomic, keys kept)."""
    import gradio as gr
    from modules import ui_extra_networks_user_metadata

    from lib_lora.ui import compat

    class LoraStudioMetadataEditor(ui_extra_networks_user_metadata.UserMetadataEditor):
        def get_metadata_table(self, name):
            table = super().get_metadata_table(name)
            metadata = self.page.items.get(name, {}).get("metadata") or {}
            return table + [(f"{label}:", html.escape(value)) for label, value in sidecar.training_record(metadata)]

        def put_values_into_components(self, name):
            values = list(super().put_values_into_components(name))[:5]
            um = self.get_user_metadata(name)
            metadata = self.page.items.get(name, {}).get("metadata") or {}
            tags = [(tag, str(n)) for tag, n in sidecar.tag_frequency(metadata)[:40]]
            try:
                weight = float(um.get(sidecar.WEIGHT) or 0)
            except (TypeError, ValueError):
                weight = 0.0
            return [*values, um.get(sidecar.SD_VERSION) or "Unknown",
                    gr.update(value=tags, visible=bool(tags)), um.get(sidecar.ACTIVATION, ""), weight,
                    um.get(sidecar.PRESET, ""), um.get(sidecar.NEGATIVE, "")]

        def save_card(self, name, description, sd_version, activation, weight, preset, negative, notes):
            item = self.page.items.get(name, {})
            try:
                data = sidecar.write_sidecar(item["filename"], {
                    sidecar.DESCRIPTION: description, sidecar.SD_VERSION: sd_version, sidecar.ACTIVATION: activation,
                    sidecar.WEIGHT: weight, sidecar.PRESET: preset, sidecar.NEGATIVE: negative, sidecar.NOTES: notes})
            except (LoraStudioError, KeyError) as exc:
                env.log.warning(f"card of '{name}' not saved: {exc}")
                raise gr.Error(f"not saved: {exc}") from None   # shown in the browser; the file is unchanged
            item["user_metadata"] = data
            lister = getattr(self.page, "lister", None)
            if lister is not None and hasattr(lister, "update_file_entry"):
                lister.update_file_entry(str(sidecar.sidecar_path(item["filename"])))

        def create_editor(self):
            self.create_default_editor_elems()
            self.sd_version = gr.Dropdown(list(sidecar.SD_VERSIONS), value="Unknown",
                                          label="Stable Diffusion version", interactive=True)
            self.taginfo = gr.HighlightedText(label="Training tags (click one: add it to the activation text)")
            self.activation = gr.Textbox(label="Activation text", info="added to the prompt after the tag")
            self.weight = gr.Slider(label="Preferred weight", info="0: the default multiplier", minimum=0.0,
                                    maximum=2.0, step=0.01)
            self.preset = gr.Textbox(label="Preferred preset", info="block-weight preset the tag gets (e.g. face)")
            self.negative = gr.Textbox(label="Negative prompt", info="added to the negative prompt")
            self.edit_notes = gr.TextArea(label="Notes", lines=4)
            self.create_default_buttons()
            self.taginfo.select(fn=compat.with_select_index(add_tag, 1, "value"), inputs=[self.activation],
                                outputs=[self.activation], show_progress=False)
            shown = [self.edit_name, self.edit_description, self.html_filedata, self.html_preview, self.edit_notes,
                     self.sd_version, self.taginfo, self.activation, self.weight, self.preset, self.negative]
            self.button_edit.click(fn=self.put_values_into_components, inputs=[self.edit_name_input], outputs=shown)\
                .then(fn=lambda: gr.update(visible=True), inputs=[], outputs=[self.box])
            self.setup_save_handler(self.button_save, self.save_card,
                                    [self.edit_description, self.sd_version, self.activation, self.weight, self.preset,
                                     self.negative, self.edit_notes])

    return LoraStudioMetadataEditor


def add_tag(activation: str, value):
    """A click on a training tag ([tag, count]): add it to the activation text, or take it out when there."""
    tag = str(value[0] if isinstance(value, (list, tuple)) else value or "").strip()
    if not tag:
        return activation
    words = [w.strip() for w in (activation or "").split(",") if w.strip()]
    if tag in words:
        return ", ".join(w for w in words if w != tag)
    return ", ".join([*words, tag])


def on_before_ui():
    if env.builtin_lora() is not None or env.builtin_lora_enabled():
        return
    from modules import ui_extra_networks
    if any(getattr(p, "title", None) == TITLE for p in ui_extra_networks.extra_pages):
        return
    ui_extra_networks.register_page(make_page())


