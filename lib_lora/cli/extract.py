"""`python -m lib_lora extract`: a LoRA from the difference of two checkpoints."""

from __future__ import annotations

from dataclasses import dataclass

from lib_lora.options import add_arguments as add_options, from_args, option

HELP = "extract a LoRA (LoCon with --conv-rank) from the difference of two checkpoints"


@dataclass
class ExtractOptions:
    """`extract`: tuned − base as a LoRA."""
    base: str = option(help="the original checkpoint (.safetensors)", metavar="A", label="Base model")
    tuned: str = option(help="the fine-tuned checkpoint (.safetensors)", metavar="B", label="Tuned model")
    rank: int = option(help="rank of linear and 1×1 conv modules", low=1, label="Rank")
    out: str = option(help="output file, ending in .safetensors", label="Output file")
    conv_rank: int | None = option(None, low=1, metavar="R2", label="Conv rank",
                                   help="also extract ResNet/sampler layers, 3×3 convs at this rank")
    clamp_quantile: float | None = option(None, low=0.0, high=1.0, metavar="Q", label="Clamp quantile",
                                          help="clamp the factors at this quantile of their |values| "
                                               "(sd-scripts uses 0.99; lossy, off by default)")
    min_diff: float = option(0.01, low=0.0, label="Text encoder threshold",
                             help="leave the text encoder out when no weight differs by more (default 0.01)")
    overwrite: bool = option(False, help="replace --out if it exists", label="Replace the output file")
    quiet: bool = option(False, help="no progress line")


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
