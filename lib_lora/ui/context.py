"""What every tab needs from its host (WebUI or standalone app), in one object.

A tab module exposes `build(ctx: UiContext) -> None`; it creates its components inside the caller's open
Gradio context (the standalone app wraps each in `gr.Tab`, the WebUI in its own `gr.Blocks` via on_ui_tabs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lib_lora.errors import LoraStudioError

WRITES_BLOCKED = (
    "Writing files is disabled because the server listens on the network "
    "(--listen/--share without --enable-insecure-extension-access; standalone: add --allow-writes)."
)


@dataclass
class UiContext:
    lora_dirs: list[Path]
    checkpoint_dirs: list[Path]
    tagger_models_dir: Path
    presets: Any = None                     # lib_lora.presets.PresetStore
    writes_allowed: bool = True
    writes_blocked_reason: str = WRITES_BLOCKED
    # Long GPU actions inside the WebUI run under its queue lock; standalone: identity.
    wrap_gpu_call: Callable[[Callable], Callable] = field(default=lambda fn: fn)

    def check_writes(self) -> None:
        """Call first in every action that writes a file."""
        if not self.writes_allowed:
            raise LoraStudioError(self.writes_blocked_reason)

    def resolve_inside(self, name: str, roots: list[Path], what: str = "file") -> Path:
        """A user-given name → an existing path inside one of `roots` (fileio.resolve_inside: lexical, so
        links the user placed in a folder are followed as the WebUI does; '..' and outside paths refused)."""
        from lib_lora.fileio import resolve_inside
        path = resolve_inside(name, roots, what)
        if not path.exists():
            raise LoraStudioError(f"{what} '{name}' was not found in {', '.join(str(r) for r in roots)}; "
                                  f"press Refresh to update the list.")
        return path
