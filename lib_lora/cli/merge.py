"""`python -m lib_lora merge`: merge two or three checkpoints per block, streamed (lib_lora.merge.checkpoint).
Options: lib_lora.options.MergeOptions (the Merge tab reads the same declaration)."""

from __future__ import annotations

from lib_lora.options import MergeOptions, add_arguments as add_options, from_args

HELP = "merge checkpoints: weighted sum A·(1−m)+B·m or add difference A+(B−C)·m, m per block"


def add_arguments(parser) -> None:
    add_options(parser, MergeOptions)


def summary(res, o: MergeOptions, seconds: float) -> str:
    """The one result line (CLI and Merge tab)."""
    import os

    others = "B/C" if o.c else "B"
    notes = []
    if res.missing_in_others:
        notes.append(f"{res.missing_in_others} taken from A because {others} lacks them")
    if res.left_out:
        notes.append(f"{res.left_out} keys only in {others} left out")
    if res.discarded:
        notes.append(f"{res.discarded} keys discarded (matching {o.discard})")
    if getattr(res, "vae_baked", 0):
        notes.append(f"VAE from {os.path.basename(str(o.vae))} ({res.vae_baked} tensors)")
    if res.partial:
        notes.append(f"{len(res.partial)} merged on A's first input channels only ({res.partial[0]})")
    return (f"wrote {res.out} ({res.arch}, {res.merged} tensors merged, {res.copied} copied from A"
            + (f"; {'; '.join(notes)}" if notes else "") + f"; {seconds:.1f} s)")


def merge(o: MergeOptions, progress=None, presets=None, processes: int = 0):
    """Run the merge an options object describes (CLI and Merge tab). `progress(done_bytes, total_bytes)`;
    `presets`: a PresetStore for preset names (the tab's, shared with generation) instead of o.presets;
    `processes`: forked writer processes (the CLI's own process only: never inside a WebUI or the app's server)."""
    import os

    from lib_lora import fileio
    from lib_lora.errors import LoraFileError

    # The output is checked before anything is opened or imported.
    fileio.check_target(o.out, o.overwrite, ".safetensors")
    if presets is None and o.presets:
        if not os.path.isfile(o.presets):
            raise LoraFileError(f"preset file '{o.presets}' not found; check --presets")
        from lib_lora import presets as store_module

        # the merge presets store where the core has one (merge presets differ from LoRA block presets)
        factory = getattr(store_module, "default_merge_store", None) or store_module.default_store
        presets = factory(user_path=o.presets)
    from lib_lora.merge.checkpoint import merge_checkpoints

    return merge_checkpoints(o.a, o.b, o.out, mode=o.mode, alpha=o.alpha, c=o.c, block_weights=o.block_weights,
                             base_alpha=o.base_alpha, dtype=o.dtype, overwrite=o.overwrite,
                             allow_pickle=o.allow_pickle, presets=presets, progress=progress,
                             vae=o.vae, processes=processes, discard=o.discard)


def run(args) -> int:
    import time

    from lib_lora.cli.progress import PhaseProgress
    from lib_lora.fileio.forked import fork_processes

    o = from_args(MergeOptions, args)
    bar = PhaseProgress({"merge": "bytes"}, enabled=False if o.quiet else None)
    t = time.perf_counter()
    try:
        # this process is the CLI's own: the merge's tensors are computed by forked processes (threads do not
        # scale torch's many small operations: each hands the GIL over; bench/README.md, session 8)
        res = merge(o, progress=lambda done, total: bar("merge", done, total), processes=fork_processes())
    finally:
        bar.close()
    print(summary(res, o, time.perf_counter() - t))
    return 0
