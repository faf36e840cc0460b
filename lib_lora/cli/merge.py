"""`python -m lib_lora merge`: merge two or three checkpoints per block, streamed (lib_lora.merge.checkpoint)."""

from __future__ import annotations

HELP = "merge checkpoints: weighted sum A·(1−m)+B·m or add difference A+(B−C)·m, m per block"


def add_arguments(parser) -> None:
    parser.add_argument("--a", required=True, metavar="A", help="primary model (.safetensors); the output has its "
                        "keys and shapes (an inpainting model must be A)")
    parser.add_argument("--b", required=True, metavar="B", help="secondary model")
    parser.add_argument("--c", metavar="C", help="tertiary model, subtracted from B (--mode add-diff only)")
    parser.add_argument("--mode", required=True, choices=("weighted", "add-diff"),
                        help="weighted: A·(1−m)+B·m; add-diff: A+(B−C)·m")
    parser.add_argument("--alpha", required=True, type=float, metavar="M", help="m for every block")
    parser.add_argument("--block-weights", metavar="LIST_OR_PRESET",
                        help="m per block instead of --alpha: 26 values for SD1/SD2 or 20 for SDXL (BASE first; "
                             "25/19 without BASE), separated by commas, or a preset name with such values")
    parser.add_argument("--base-alpha", type=float, metavar="X", help="m for BASE (text encoders and VAE)")
    parser.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), help="output weights in this type "
                        "(default: as in A)")
    parser.add_argument("--presets", metavar="FILE", help="user block-weight presets file for preset names")
    parser.add_argument("--allow-pickle", action="store_true", help="accept .ckpt/.pt inputs (weights only; "
                        "loaded whole into memory)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--out", required=True, help="output file, ending in .safetensors")
    parser.add_argument("--quiet", action="store_true", help="no progress line")


def run(args) -> int:
    import os
    import time

    from lib_lora import fileio
    from lib_lora.errors import LoraFileError

    # The output is checked before anything is opened or imported.
    fileio.check_target(args.out, args.overwrite, ".safetensors")
    presets = None
    if args.presets:
        if not os.path.isfile(args.presets):
            raise LoraFileError(f"preset file '{args.presets}' not found; check --presets")
        from lib_lora.presets import default_store

        presets = default_store(user_path=args.presets)

    from lib_lora.cli.progress import PhaseProgress
    from lib_lora.merge.checkpoint import merge_checkpoints

    bar = PhaseProgress({"merge": "bytes"}, enabled=False if args.quiet else None)
    t = time.perf_counter()
    try:
        res = merge_checkpoints(args.a, args.b, args.out, mode=args.mode, alpha=args.alpha, c=args.c,
                                block_weights=args.block_weights, base_alpha=args.base_alpha, dtype=args.dtype,
                                overwrite=args.overwrite, allow_pickle=args.allow_pickle, presets=presets,
                                progress=lambda done, total: bar("merge", done, total))
    finally:
        bar.close()
    notes = []
    if res.missing_in_others:
        notes.append(f"{res.missing_in_others} taken from A because B{'/C' if args.c else ''} lacks them")
    if res.left_out:
        notes.append(f"{res.left_out} keys only in B{'/C' if args.c else ''} left out")
    if res.partial:
        notes.append(f"{len(res.partial)} merged on A's first input channels only ({res.partial[0]})")
    print(f"wrote {res.out} ({res.arch}, {res.merged} tensors merged, {res.copied} copied from A"
          + (f"; {'; '.join(notes)}" if notes else "") + f"; {time.perf_counter() - t:.1f} s)")
    return 0
