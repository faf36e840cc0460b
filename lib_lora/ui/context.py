"""What every tab needs from its host (WebUI or standalone app), in one object.

A tab module exposes `build(ctx: UiContext) -> None`; it creates its components inside the caller's open
Gradio context (the standalone app wraps each in `gr.Tab`, the WebUI in its own `gr.Blocks` via on_ui_tabs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from lib_lora.errors import LoraStudioError

if TYPE_CHECKING:   # the store loads the shipped presets: built by the host, not on import
    from lib_lora.presets import PresetStore

WRITES_BLOCKED = (
    "Writing files is disabled because the server listens on the network "
    "(--listen/--share without --enable-insecure-extension-access; standalone: add --allow-writes)."
)


@dataclass(slots=True)   # slots: a misspelt or ad-hoc attribute is an AttributeError, not a silent extra
class UiContext:
    lora_dirs: list[Path]
    checkpoint_dirs: list[Path]
    tagger_models_dir: Path
    presets: PresetStore | None = None      # None: unavailable, `presets_problem` says why
    presets_path: Path | None = None        # the user presets file the Presets tab saves to
    presets_problem: str | None = None
    # Folders the tagger reads images from and writes captions into (WebUI setting
    # lora_studio_tagger_image_dirs, app option --image-dir); empty: the LoRA and checkpoint folders.
    image_dirs: list[Path] = field(default_factory=list)
    writes_allowed: bool = True
    writes_blocked_reason: str = WRITES_BLOCKED
    # Long GPU actions inside the WebUI run under its queue lock; standalone: identity.
    wrap_gpu_call: Callable[[Callable], Callable] = field(default=lambda fn: fn)
    # The checkpoints the Merge tab offers, {shown name: file path}. WebUI: its own checkpoint list
    # (modules.sd_models); None: the .safetensors files in checkpoint_dirs.
    checkpoint_list: Callable[[], dict] | None = None
    # The VAE files the Merge tab can bake in, {shown name: file path}. WebUI: its VAE list (modules.sd_vae);
    # None: the .safetensors files of a `VAE` folder beside the checkpoint folders (ui.files.vae_dirs).
    vae_list: Callable[[], dict] | None = None
    # Called after a checkpoint / LoRA file was written, so the host lists it without a restart
    # (WebUI: sd_models.list_models() / the LoRA library rescan); None: nothing to refresh.
    refresh_checkpoints: Callable[[], None] | None = None
    refresh_loras: Callable[[], None] | None = None
    # The loaded model's live merge: an object with apply(...), restore(), save(...), each returning a summary
    # line (WebUI: lora_studio_webui.live_merge; standalone: `loaded_model`); None: this host has no model.
    live_merge: Callable[[], object] | None = None
    # Standalone only: the model the Merge tab loads itself (lib_lora.ui.merge_live.LoadedModel: "Load model
    # A", "Generate preview"); None in the WebUI, whose loaded model is its own.
    loaded_model: object | None = None
    # Checkpoint-merge presets (a PresetStore); None until the Merge tab builds it (merge_blocks.merge_store).
    merge_presets: object | None = None
    # Training tab: the folder for run configs, user presets and run TOMLs (None: `lora_studio_train` beside
    # the first LoRA folder), and how a run trains: `train_host(run, cancel_event)` (None: in this process;
    # WebUI: a subprocess, lora_studio_webui.train_host).
    train_dir: Path | None = None
    train_host: Callable | None = None
    # The tagger tab's setting components (model, model folder, provider, download, existing, batch size, then
    # its tag options), set when it builds, so the Training tab's "Tag this folder" uses the current settings.
    tagger_settings: list | None = None

    def check_writes(self) -> None:
        """Call first in every action that writes a file."""
        if not self.writes_allowed:
            raise LoraStudioError(self.writes_blocked_reason)

    def under_queue_lock(self, fn: Callable[[], object], what: str = "the action"):
        """fn() under the host's queue lock (`wrap_gpu_call`), so no generation runs meanwhile. A1111's
        wrapper appends a stats string to the result and turns exceptions into HTML: the result and any
        error travel through a closure instead, and are returned / raised here unchanged."""
        box: dict = {}

        def work(*_):
            try:
                box["result"] = fn()
            except BaseException as exc:  # noqa: BLE001 — re-raised below, outside the wrapper
                box["error"] = exc
            return ("",)

        try:
            self.wrap_gpu_call(work)()
        except Exception:  # noqa: BLE001 — a wrapper failing after our work ran must not lose the result
            if not box:
                raise
        if "error" in box:
            raise box["error"]
        if "result" not in box:
            raise LoraStudioError(f"{what} did not run; see the console.")
        return box["result"]

    def resolve_inside(self, name: str, roots: list[Path], what: str = "file") -> Path:
        """A user-given name → an existing path inside one of `roots` (fileio.resolve_inside: lexical, so
        links the user placed in a folder are followed as the WebUI does; '..' and outside paths refused)."""
        from lib_lora.fileio import resolve_inside
        path = resolve_inside(name, roots, what)
        if not path.exists():
            raise LoraStudioError(f"{what} '{name}' was not found in {', '.join(str(r) for r in roots)}; "
                                  f"press Refresh to update the list.")
        return path
