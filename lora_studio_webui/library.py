"""The WebUI's LoRA files: the core file library (lib_lora.library) over the folders the WebUI configures."""

from __future__ import annotations

from lib_lora import library as core

from . import env


class Library(core.Library):
    """LoRA files of `dirs_fn()` (default: the WebUI's LoRA folders, re-read at every scan)."""

    def __init__(self, dirs_fn=env.lora_dirs):
        super().__init__(dirs_fn, core.LORA_EXTENSIONS, "LoRA")

    def not_found_message(self, name: str) -> str:
        return self.missing_message(name, "it was skipped")
