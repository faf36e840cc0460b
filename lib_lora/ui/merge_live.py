"""The standalone app's loaded model, for the Merge tab's live merge (the WebUI has its own:
lora_studio_webui.live_merge).

Model A is loaded with lib_lora.sd (CUDA when present, else the CPU; fp32, as the Training tab's epoch grid
loads it); its tensors, named as in a checkpoint file (`merge.live.checkpoint_tensors`), are the `LiveMerge`
that "Apply to loaded model" / "Restore" / "Save" act on (`UiContext.live_merge`). "Generate preview" renders
one image with the epoch grid's generator (lib_lora.sd.sample.generate), so a block-weight change is seen
seconds after it is applied. LoRA tags in the preview prompt go on through the core patcher for that image
and come off exactly after it: the live merge is their base, as in the WebUI.

One lock orders the actions: an apply, a restore, a save and a preview never overlap (the merge's own lock),
and loading another model waits for them. The Training tab's "Compare epochs" borrows the model (`lend`) when
it needs the same checkpoint file without a live merge, under both locks, instead of loading a second copy.
"""

from __future__ import annotations

import contextlib
import threading
import time

from lib_lora.errors import LoraStudioError

NO_MODEL = "No model is loaded: pick model A above and press 'Load model A' first."
PREVIEW_SIZES = (64, 2048)


class LoadedModel:
    """`load(path, name)` → one line; calling it gives the loaded model's LiveMerge (the provider of
    `UiContext.live_merge`); `preview(...)` one image. `device`: None picks CUDA when present."""

    def __init__(self, device: str | None = None):
        self.device = device
        self.lock = threading.RLock()
        self.model = None
        self.live = None
        self.name: str | None = None
        self.file: tuple | None = None     # merge.live.file_identity of the loaded checkpoint
        self.lent_to: str | None = None    # who borrows the model now (`lend`): Merge-tab actions say they wait

    def __call__(self):
        live = self.live
        if live is None:
            raise LoraStudioError(NO_MODEL)
        return live

    def describe(self) -> str:
        live = self.live
        if live is None:
            return "No model is loaded."
        from lib_lora.arch import label
        merged = f"; live merge: {live.active.describe()}" if live.active is not None else ""
        return f"Loaded: {self.name} ({label(self.model.arch)}, {self._device_name()}, fp32){merged}"

    def _device_name(self) -> str:
        return str(next(self.model.parameters()).device)

    def load(self, path: str, name: str) -> str:
        """Load `path` as the model merges are tried on; a live merge on the previous model is dropped (it
        was never written anywhere). The previous model is let go first: two models need not fit at once."""
        import torch

        from lib_lora.merge.live import LiveMerge, checkpoint_tensors, file_dtypes, file_identity
        from lib_lora.sd import load_model

        t0 = time.perf_counter()
        with self.lock:
            old = self.live
            note = ""
            if old is not None:
                with old.lock:
                    if old.active is not None:
                        note = f"; the live merge on {self.name} was dropped (nothing had been saved)"
                    old.retire()
            self.model = self.live = self.name = self.file = None
            device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            ident = file_identity(path)   # before reading: a file replaced meanwhile is not taken for this one
            model = load_model(path, dtype=torch.float32)
            if device != "cpu":
                model = model.to(device)
            self.model, self.name, self.file = model, name, ident
            self.live = LiveMerge(checkpoint_tensors(model), name=name, file_dtypes=file_dtypes(path))
        return f"{self.describe()} in {time.perf_counter() - t0:.1f} s{note}"

    @contextlib.contextmanager
    def lend(self, path, by: str = "another action"):
        """`with loaded.lend(path) as (model, note):` the loaded model, when it is the checkpoint file `path`
        (`merge.live.file_identity`: the same file, unchanged since it was loaded) and holds no live merge,
        with both locks held for the whole block so no Merge-tab action (apply, restore, save, preview, load)
        changes its weights meanwhile; the borrower must leave them as it found them. Else (None, note):
        `note` says why it cannot be lent ('' when it is simply another file); no lock is kept then. `by` names
        the borrower in the line a Merge-tab action shows while it waits (`wait_note`)."""
        from lib_lora.merge.live import file_identity

        with contextlib.ExitStack() as held:
            held.enter_context(self.lock)
            live = self.live
            if live is None or self.file != file_identity(path):
                held.close()
                yield None, ""
                return
            held.enter_context(live.lock)
            if live.active is not None:
                held.close()
                yield None, (f"Model A in the Merge tab ({self.name}) holds a live merge, so the base model was "
                             f"loaded separately; Restore it there to have the grid reuse the loaded model.")
                return
            self.lent_to = by
            try:
                yield self.model, ""
            finally:
                self.lent_to = None

    def preview(self, prompt: str, negative: str = "", *, seed: int = 1, steps: int = 20, size: int = 512,
                cfg: float = 7.0, loras=None, progress=None):
        """One image of the model as it is now (with its live merge). `loras(prompt, arch)` → (prompt without
        its LoRA tags, [ActiveLora], [notes]) puts LoRA tags on for this image only."""
        from lib_lora.sd.sample import generate

        with self.lock:
            live = self()
            with live.lock:
                model = self.model
                text, actives, notes = (loras(prompt, model.arch) if loras is not None else (prompt, [], []))
                patcher = None
                if actives:
                    from lib_lora.patcher import Patcher
                    from lib_lora.train.trainer import model_host
                    patcher = Patcher(model_host(model))
                try:
                    if patcher is not None:
                        patcher.apply(actives)
                    image = generate(model, text, negative, seed=int(seed), steps=int(steps), cfg=float(cfg),
                                     width=int(size), height=int(size), progress=progress)
                finally:
                    if patcher is not None:
                        patcher.restore()
        return image, notes


# ---- the tab's callbacks (plain functions of ctx and the inputs; one ⚠ line on any problem) ---------------


def wait_note(ctx, progress=None) -> str:
    """The line a Merge-tab action shows before it waits for model A ('' when it is not lent): while the epoch
    grid borrows it, an apply/restore/save/preview/load starts only after the grid (`LoadedModel.lend`), and
    would otherwise look stuck. Given to `progress(0, desc=…)` when there is one."""
    by = getattr(ctx.loaded_model, "lent_to", None)
    if not by:
        return ""
    note = f"Waiting: model A is in use by {by}; this starts when it is done."
    if progress is not None:
        progress(0.0, desc=note)
    return note


def load_a(ctx, a_name, progress=None) -> str:
    """'Load model A' → one line."""
    from lib_lora.ui.merge_tab import checkpoint_path, error_line
    try:
        loaded = _loaded(ctx)
        path = checkpoint_path(ctx, a_name, "A")
        wait_note(ctx, progress)
        return "✓ " + ctx.under_queue_lock(lambda: loaded.load(path, str(a_name)), "loading model A")
    except Exception as exc:  # noqa: BLE001 — shown as one line (error_line)
        return error_line(exc)


def lora_tags(ctx):
    """`(prompt, arch)` → (the prompt without its LoRA tags, [ActiveLora], [notes]), the tags resolved in the
    LoRA folders as the bake tool resolves them (same rules, same messages)."""
    def resolve(prompt: str, arch: str):
        from lib_lora.library import Library
        from lib_lora.merge.bake import parse_tags, resolve_tag
        from lib_lora.syntax import rewrite_prompt

        found = parse_tags(prompt, None, library=Library(lambda: list(ctx.lora_dirs)), required=False,
                           fix="check the name, or press Refresh on the LoRA tab")
        if not found:
            return prompt, [], []
        notes: list = []
        actives = [resolve_tag(tag, path, arch, ctx.presets, 0, notes, gated="applied for the whole preview").active
                   for tag, path in found]
        return rewrite_prompt(prompt, lambda tag: ""), actives, notes
    return resolve


def preview(ctx, jobs, prompt, negative, seed, steps, size, progress=None):
    """'Generate preview' → (one line, image or None)."""
    from lib_lora.ui.merge_tab import Reporter, error_line
    try:
        loaded = _loaded(ctx)
        if not str(prompt or "").strip():
            raise LoraStudioError("Type a prompt for the preview.")
        size = int(size)
        if not PREVIEW_SIZES[0] <= size <= PREVIEW_SIZES[1] or size % 8:
            raise LoraStudioError(f"Preview size {size} must be a multiple of 8 from {PREVIEW_SIZES[0]} to "
                                  f"{PREVIEW_SIZES[1]}, e.g. 512.")
        with jobs.job() as cancel:
            rep = Reporter(progress, cancel, {"preview": "steps"})
            wait_note(ctx, progress)
            t0 = time.perf_counter()
            image, notes = ctx.under_queue_lock(lambda: loaded.preview(
                str(prompt), str(negative or ""), seed=int(seed), steps=int(steps), size=size,
                loras=lora_tags(ctx), progress=rep.bytes("preview")), "the preview")
    except Exception as exc:  # noqa: BLE001 — shown as one line (error_line)
        return error_line(exc), None
    # every note, not the first: a start=/stop= tag's note must not hide behind another tag's
    warn = f" {len(notes)} note(s): " + "; ".join(notes) if notes else ""
    return f"✓ {loaded.describe()}; seed {int(seed)}, {time.perf_counter() - t0:.1f} s.{warn}", image


def _loaded(ctx) -> LoadedModel:
    if ctx.loaded_model is None:
        from lib_lora.ui.merge_tab import LIVE_UNAVAILABLE
        raise LoraStudioError(LIVE_UNAVAILABLE)
    return ctx.loaded_model
