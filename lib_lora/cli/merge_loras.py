"""`python -m lib_lora merge-loras`: several LoRAs (tags with multipliers and block weights) into one."""

from __future__ import annotations

from dataclasses import dataclass

from lib_lora.options import add_arguments as add_options, from_args, option

HELP = "merge LoRAs given as <lora:…> tags into one: exact concatenation, or SVD to a rank"


@dataclass
class MergeLorasOptions:
    """`merge-loras`: LoRA + LoRA, each with its multiplier and block weights."""
    tags: list[str] = option(flag="", nargs="+", metavar="TAG",
                             help='LoRA tags, e.g. "<lora:a:0.5>" "<lora:b:0.7:face>"')
    lora_dir: str = option(help="folder the LoRA names are looked up in", metavar="DIR", label="LoRA folder")
    out: str = option(help="output file, ending in .safetensors", label="Output file")
    mode: str = option("concat", choices="lib_lora.merge.lora_merge:MODES", label="Mode",
                       help="concat: exact (ranks add up, alpha = rank); svd: best approximation at --rank")
    rank: int | None = option(None, low=1, label="Rank", help="rank of the merged LoRA (--mode svd)")
    conv_rank: int | None = option(None, low=1, metavar="R2", label="Conv rank",
                                   help="rank of 3×3 conv modules with --mode svd (default: --rank)")
    clamp_quantile: float | None = option(None, low=0.0, high=1.0, metavar="Q", label="Clamp quantile",
                                          help="clamp the SVD factors at this quantile of their |values| "
                                               "(sd-scripts uses 0.99; lossy, off by default)")
    overwrite: bool = option(False, help="replace --out if it exists", label="Replace the output file")
    presets: str | None = option(None, metavar="FILE", label="User presets file",
                                 help="user block-weight presets file (default: lora_studio_presets.txt in --lora-dir)")
    seed: int = option(0, help="seed for R/U block-weight letters (default 0)", label="Seed for R/U letters")
    quiet: bool = option(False, help="no progress line")


def add_arguments(parser) -> None:
    add_options(parser, MergeLorasOptions)


def run(args) -> int:
    import sys

    from lib_lora.cli.progress import PhaseProgress
    from lib_lora.merge.lora_merge import merge_loras

    o = from_args(MergeLorasOptions, args)
    bar = PhaseProgress({"merge": "modules", "write": "bytes"}, enabled=False if o.quiet else None)
    try:
        res = merge_loras(o.tags, o.lora_dir, o.out, mode=o.mode, rank=o.rank, conv_rank=o.conv_rank,
                          overwrite=o.overwrite, presets_path=o.presets, seed=o.seed,
                          clamp_quantile=o.clamp_quantile, progress=bar)
    finally:
        bar.close()
    for msg in res.messages:
        print(f"warning: {msg}", file=sys.stderr)
    for tag, name, used in res.inputs:
        print(f"{tag}: {used} modules from {name}")
    ranks = sorted(set(res.ranks.values()))
    line = f"{res.modules} modules, rank {ranks[0]}" + (f"–{ranks[-1]}" if len(ranks) > 1 else "")
    if res.fro_retained:
        f = list(res.fro_retained.values())
        line += f", Frobenius norm of the summed deltas kept: mean {sum(f) / len(f):.1%}, min {min(f):.1%}"
    print(line)
    print(f"wrote {res.out}")
    return 0
