"""`python -m lib_lora bake-lora`: write a LoRA whose weights include a multiplier and block weights."""

from __future__ import annotations

from lib_lora.options import BakeLoraOptions, add_arguments as add_options, from_args

HELP = "write a new LoRA with the multiplier and block weights of one <lora:…> tag built in"


def add_arguments(parser) -> None:
    add_options(parser, BakeLoraOptions)


def run(args) -> int:
    import sys

    from lib_lora.merge.bake_lora import bake_lora

    o = from_args(BakeLoraOptions, args)
    out, stats, messages = bake_lora(o.prompt, o.lora_dir, o.out, overwrite=o.overwrite,
                                     presets_path=o.presets, seed=o.seed)
    for msg in messages:
        print(f"warning: {msg}", file=sys.stderr)
    print(f"{stats['name']}: {stats['modules']} modules, {stats['scaled']} rescaled, "
          f"{stats['dropped']} dropped (multiplier 0)")
    print(f"wrote {out}")
    return 0
