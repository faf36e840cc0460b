"""`python -m lib_lora bake-lora`: write a LoRA whose weights include a multiplier and block weights."""

from __future__ import annotations

HELP = "write a new LoRA with the multiplier and block weights of one <lora:…> tag built in"


def add_arguments(parser) -> None:
    parser.add_argument("--prompt", required=True, help='one LoRA tag, e.g. "<lora:style:0.8:face>"')
    parser.add_argument("--lora-dir", required=True, metavar="DIR", help="folder the LoRA name is looked up in")
    parser.add_argument("--out", required=True, help="output file, ending in .safetensors")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--presets", metavar="FILE",
                        help="user block-weight presets file (default: lora_studio_presets.txt in --lora-dir, "
                             "the file the app's Presets tab saves to)")
    parser.add_argument("--seed", type=int, default=0, help="seed for R/U block-weight letters (default 0)")


def run(args) -> int:
    import sys

    from lib_lora.bake_lora import bake_lora

    out, stats, messages = bake_lora(args.prompt, args.lora_dir, args.out, overwrite=args.overwrite,
                                     presets_path=args.presets, seed=args.seed)
    for msg in messages:
        print(f"warning: {msg}", file=sys.stderr)
    print(f"{stats['name']}: {stats['modules']} modules, {stats['scaled']} rescaled, "
          f"{stats['dropped']} dropped (multiplier 0)")
    print(f"wrote {out}")
    return 0
