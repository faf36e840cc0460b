"""`python -m lib_lora extract`: a LoRA from the difference of two checkpoints."""

from __future__ import annotations

from lib_lora.options import ExtractOptions, add_arguments as add_options, from_args

HELP = "extract a LoRA (LoCon with --conv-rank) from the difference of two checkpoints"


def add_arguments(parser) -> None:
    add_options(parser, ExtractOptions)


def run(args) -> int:
    import sys

    from lib_lora.cli.progress import PhaseProgress
    from lib_lora.merge.extract import extract_lora

    o = from_args(ExtractOptions, args)
    bar = PhaseProgress({"extract": "layers", "write": "bytes"}, enabled=False if o.quiet else None)
    try:
        res = extract_lora(o.base, o.tuned, o.out, o.rank, o.conv_rank, overwrite=o.overwrite,
                           clamp_quantile=o.clamp_quantile, min_diff=o.min_diff, progress=bar)
    finally:
        bar.close()
    for msg in res.messages:
        print(f"warning: {msg}", file=sys.stderr)
    print("relative error per block: " + ", ".join(f"{b} {e:.2%}" for b, e in res.blocks.items()))
    print(f"wrote {res.out} ({len(res.modules)} modules)")
    return 0
