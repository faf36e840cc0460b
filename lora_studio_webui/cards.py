"""The LoRA cards page, registered only when the built-in Lora extension is disabled (otherwise its own
"Lora" page is used, and its cards insert tags that we handle). Distinct title, so HTML ids never collide."""

from __future__ import annotations

import os

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

    return LoraStudioCards()


def on_before_ui():
    if env.builtin_lora() is not None or env.builtin_lora_enabled():
        return
    from modules import ui_extra_networks
    if any(getattr(p, "title", None) == TITLE for p in ui_extra_networks.extra_pages):
        return
    ui_extra_networks.register_page(make_page())


