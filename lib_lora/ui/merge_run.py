"""The Merge tab's merge runs: the checkpoint merge written to a file (the same options and core call as
`python -m lib_lora merge`), and the live merge of the loaded model (the WebUI's, or model A the standalone
app loads: merge_live.py): apply, restore, save what is applied. Each returns one summary or "⚠ …" line; every
write calls ctx.check_writes() first."""

from __future__ import annotations

import time

from lib_lora import options
from lib_lora.errors import LoraStudioError
from lib_lora.options import MergeOptions
from lib_lora.ui.files import checkpoint_path, model_arch, output_dtype, output_path, refresh_note, vae_path
from lib_lora.ui.jobs import Jobs, Reporter, error_line
from lib_lora.ui.merge_blocks import block_text, merge_store
from lib_lora.ui.merge_live import wait_note


def merge_options(ctx, a, b, c, mode, alpha, per_block, dtype, out_name, overwrite, values,
                  discard=None, vae=None) -> MergeOptions:
    """The tab's values → MergeOptions (the same declaration and core call as `python -m lib_lora merge`)."""
    if not b:
        raise LoraStudioError("Pick model B (the model merged into A).")
    c_path = checkpoint_path(ctx, c, "C") if c else None
    a_path, b_path = checkpoint_path(ctx, a, "A"), checkpoint_path(ctx, b, "B")
    arch = model_arch(a_path) if per_block else None
    o = MergeOptions(a=a_path, b=b_path, c=c_path, mode=mode, alpha=float(alpha),
                     block_weights=block_text(arch, values) if per_block else None,
                     dtype=output_dtype(dtype),
                     out=output_path(ctx, out_name, ctx.checkpoint_dirs, "checkpoint", bool(overwrite)),
                     overwrite=bool(overwrite), quiet=True, discard=str(discard or "").strip() or None,
                     vae=vae_path(ctx, vae))
    return options.validate(o, "label")


def run_merge(ctx, jobs: Jobs, a, b, c, mode, alpha, per_block, dtype, out_name, overwrite, *values,
              progress=None, discard=None, vae=None) -> str:
    """Merge button → the summary line (or one ⚠ line)."""
    from lib_lora.cli import merge as cli_merge
    try:
        ctx.check_writes()
        o = merge_options(ctx, a, b, c, mode, alpha, per_block, dtype, out_name, overwrite, values, discard, vae)
        with jobs.job() as cancel:
            rep = Reporter(progress, cancel, {"merge": "bytes"})
            t = time.perf_counter()
            res = cli_merge.merge(o, progress=rep.bytes("merge"), presets=merge_store(ctx))
        line = cli_merge.summary(res, o, time.perf_counter() - t)
    except Exception as exc:  # noqa: BLE001 — shown as one line (error_line)
        return error_line(exc)
    return "✓ " + line + refresh_note(ctx.refresh_checkpoints, "checkpoint")


# ---- live merge of the loaded model (the WebUI's, or the one the standalone app loads: merge_live) -------

LIVE_UNAVAILABLE = ("Apply to loaded model is unavailable here: this host has no loaded model to merge into; use "
                    "the Merge button to write the merge to a file instead.")


def _live(ctx):
    if ctx.live_merge is None:
        raise LoraStudioError(LIVE_UNAVAILABLE)
    return ctx.live_merge()


def live_apply(ctx, jobs: Jobs, b, c, mode, alpha, per_block, a, *values, progress=None) -> str:
    try:
        if not b:
            raise LoraStudioError("Pick model B (the model merged into the loaded one).")
        b_path = checkpoint_path(ctx, b, "B")
        c_path = checkpoint_path(ctx, c, "C") if c else None
        _live(ctx)                                 # no loaded model: say so before waiting for the queue

        def run():
            live = _live(ctx)    # under the queue lock: a model loaded meanwhile is the one merged into
            arch = None
            if per_block:
                arch = getattr(live, "arch", None)     # the loaded model is A here
                if not isinstance(arch, str):
                    arch = model_arch(checkpoint_path(ctx, a, "A")) if a else None
            return live.apply(b=b_path, c=c_path, mode=mode, alpha=float(alpha),
                              block_weights=block_text(arch, values) if per_block else None, base_alpha=None,
                              presets=merge_store(ctx), progress=rep.bytes("apply"), cancel=rep.cancelled)

        with jobs.job() as cancel:
            rep = Reporter(progress, cancel, {"apply": "tensors"})
            wait_note(ctx, progress)
            return "✓ " + ctx.under_queue_lock(run)
    except Exception as exc:  # noqa: BLE001 — shown as one line (error_line)
        return error_line(exc)


def live_restore(ctx, progress=None) -> str:
    try:
        _live(ctx)
        wait_note(ctx, progress)
        return "✓ " + ctx.under_queue_lock(lambda: _live(ctx).restore())
    except Exception as exc:  # noqa: BLE001 — shown as one line (error_line)
        return error_line(exc)


def live_save(ctx, jobs: Jobs, dtype, out_name, overwrite, progress=None) -> str:
    try:
        ctx.check_writes()
        out = output_path(ctx, out_name, ctx.checkpoint_dirs, "checkpoint", bool(overwrite))
        _live(ctx)
        with jobs.job() as cancel:
            rep = Reporter(progress, cancel, {"save": "bytes"})
            wait_note(ctx, progress)
            line = ctx.under_queue_lock(lambda: _live(ctx).save(out, dtype=output_dtype(dtype),
                                                           overwrite=bool(overwrite), progress=rep.bytes("save")))
    except Exception as exc:  # noqa: BLE001 — shown as one line (error_line)
        return error_line(exc)
    return "✓ " + line + refresh_note(ctx.refresh_checkpoints, "checkpoint")
