"""`python -m lib_lora merge-loras`: several LoRAs (tags with multipliers and block weights) into one."""

from __future__ import annotations

from lib_lora.options import MergeLorasOptions, add_arguments as add_options, from_args

HELP = "merge LoRAs given as <lora:…> tags into one: exact concatenation, or SVD to a rank"


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
