"""The loaded AUTOMATIC1111 model as a `lib_lora.merge.live.LiveMerge` (the merge tab's "apply to the loaded
model", the X/Y/Z merge axes).

- Tensors: `lib_lora.merge.live.checkpoint_tensors(sd_model)` (the Parameters themselves, so a later device
  move still writes the model), keys as in a checkpoint file: A1111's `.wrapped` wrappers dropped, canonical
  text-encoder spelling. The VAE is not merged: it stays what the WebUI's VAE setting loaded (a VAE reload would otherwise
  replace half a merge); it is saved as loaded.
- LoRA Studio's own LoRA patches: before a live merge writes, the engine takes its LoRAs off and drops their
  backups (the built-in Lora puts back what it merged and forgets its backups too), so the merge becomes the
  base the next generation's LoRA backups hold; the next generation reapplies the tags.
- Text conditioning cached by prompt text is dropped after a text-encoder tensor changed.
- A new checkpoint loaded in place drops the state (the weights are the new file's: nothing to restore); a
  VAE reload (same tensors, unchanged) keeps it; a different model object gets the old one restored first.
"""

from __future__ import annotations

import os

from lib_lora.errors import LoraStudioError

from . import env

NO_MODEL = "no model is loaded in the WebUI; load a checkpoint first, then apply the merge"
FORGE = ("live merges need AUTOMATIC1111; on Forge, save the merge to a file and load that checkpoint")
KEEP_AS_LOADED = ("first_stage_model.",)
_TE_ROOTS = ("cond_stage_model.", "conditioner.")


def _checkpoint_file(sd_model):
    return getattr(sd_model, "sd_model_checkpoint", None) or \
        getattr(getattr(sd_model, "sd_checkpoint_info", None), "filename", None)


def drop_conds() -> None:
    """Empty A1111's class-level conditioning caches (keyed by prompt text, not by weights)."""
    from .engine import drop_cached_conds
    try:
        from modules import processing
    except Exception:
        return
    for name in ("StableDiffusionProcessing", "StableDiffusionProcessingTxt2Img", "StableDiffusionProcessingImg2Img",
                 "Processing"):
        cls = getattr(processing, name, None)
        if cls is not None:
            drop_cached_conds(cls)


def _stamps(live) -> tuple:
    """Identity and in-place version of every tensor the merge wrote: a reload in place changes them."""
    return tuple((k, id(t), t._version) for k, t in live.tensors.items() if k in live._orig)


class LiveMergeHost:
    """`HOST()` → the LiveMerge of the loaded model, or a one-line LoraStudioError."""

    def __init__(self):
        self.live = None
        self.model = None
        self.checkpoint = None
        self.stamps = None

    def __call__(self):
        from .engine import ENGINE
        if env.is_forge():
            raise LoraStudioError(FORGE)
        sd_model = env.loaded_model()
        if sd_model is None:
            raise LoraStudioError(NO_MODEL)
        if self.live is not None and (sd_model is not self.model or _checkpoint_file(sd_model) != self.checkpoint):
            self.drop(sd_model)
        if self.live is None:
            from lib_lora.merge.live import LiveMerge, checkpoint_tensors, file_dtypes
            ckpt = _checkpoint_file(sd_model)
            self.live = LiveMerge(
                checkpoint_tensors(sd_model), name=os.path.basename(ckpt) if ckpt else "loaded model",
                presets=ENGINE.presets(), allow_pickle=bool(env.opt(env.PREFIX + "allow_pickle", False)),
                keep=KEEP_AS_LOADED, before_write=self._before_write, before_read=self._before_read,
                after_write=self._after_write, file_dtypes=file_dtypes(ckpt))
            self.model, self.checkpoint, self.stamps = sd_model, ckpt, None
        return self.live

    # -- hooks -----------------------------------------------------------------------------------------
    def _before_write(self):
        from .engine import ENGINE
        with ENGINE.lock:
            ENGINE.flush_builtin(self.model)
            _drop_builtin_backups(self.model)
            ENGINE.restore()
            ENGINE.forget()

    def _before_read(self):
        from .engine import ENGINE
        with ENGINE.lock:
            ENGINE.flush_builtin(self.model)
            ENGINE.restore()

    def _after_write(self, keys):
        if any(k.startswith(_TE_ROOTS) for k in keys):
            drop_conds()
        self.restamp()

    def restamp(self):
        """After our writes and the engine's (LoRA patches on top of the merge are ours too)."""
        if self.live is not None:
            self.stamps = _stamps(self.live)

    # -- model changes ---------------------------------------------------------------------------------
    def on_model_loaded(self, sd_model):
        if self.live is None:
            return
        if sd_model is self.model and _checkpoint_file(sd_model) == self.checkpoint \
                and (self.stamps is None or _stamps(self.live) == self.stamps):
            return                        # a VAE reload: the merged tensors are untouched
        self.drop(sd_model)

    def drop(self, sd_model=None):
        """Forget the live merge. Its model, when it is not the one just loaded and its merged tensors are as
        we left them (A1111 keeps it in its model cache), gets its own weights back first."""
        live, self.live = self.live, None
        if live is None:
            return
        if sd_model is not None and sd_model is not self.model and self.stamps is not None \
                and _stamps(live) == self.stamps:
            live.after_write = live.before_write = None
            try:
                live.restore()
            except Exception:
                live.forget()
        else:
            live.forget()
        self.model = self.checkpoint = self.stamps = None

    def unload(self):
        """Reload UI / script unload: put the loaded weights back."""
        live, self.live = self.live, None
        if live is not None:
            live.restore()
        self.model = self.checkpoint = self.stamps = None


def _drop_builtin_backups(sd_model) -> None:
    """The built-in Lora keeps CPU copies of weights it merged once; after a live merge they are stale and it
    would copy them back over the merge. Its own rule on reloaded weights is to drop them: do the same."""
    if env.builtin_lora() is None or not hasattr(sd_model, "modules"):
        return
    for mod in sd_model.modules():
        for attr in ("network_weights_backup", "network_bias_backup"):
            if getattr(mod, attr, None) is not None:
                setattr(mod, attr, None)


HOST = LiveMergeHost()
_GRID = {"before": None, "running": False}   # the recipe to return to after an X/Y/Z merge grid (xyz_merge.py)


def grid_running() -> bool:
    return _GRID["running"]


def finish_grid() -> str:
    """Put the model back as it was before the grid."""
    before, _GRID["before"], _GRID["running"] = _GRID["before"], None, False
    live = HOST.live
    if live is None:
        return "nothing to put back"
    if before is None:
        return live.restore()
    return live.apply(b=before.b, c=before.c, mode=before.mode, alpha=before.alpha,
                      block_weights=before.block_weights, base_alpha=before.base_alpha)


def provider():
    """The zero-arg callable of `UiContext.live_merge`: the loaded model's LiveMerge (a merge grid that ran
    since is put back first: the tab acts on the state the user chose)."""
    if grid_running():
        finish_grid()
    return HOST()
