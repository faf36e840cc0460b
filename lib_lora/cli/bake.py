"""`python -m lib_lora bake`: merge the LoRAs of a prompt into a checkpoint."""

from __future__ import annotations

HELP = "merge every <lora:…> tag of a prompt (block weights included) into a checkpoint"


def add_arguments(parser) -> None:
    parser.add_argument("--base", required=True, metavar="CKPT", help="checkpoint (.safetensors) to start from")
    parser.add_argument("--prompt", required=True, help='text with LoRA tags, e.g. "<lora:style:0.8:face>"')
    parser.add_argument("--lora-dir", required=True, metavar="DIR", help="folder the LoRA names are looked up in")
    parser.add_argument("--out", required=True, help="output .safetensors")
    parser.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), help="store weights in this type (default: as the base)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--presets", metavar="FILE", help="extra block-weight preset file (LBW format)")
    parser.add_argument("--seed", type=int, default=0, help="seed for R/U block-weight letters (default 0)")


def run(args) -> int:
    import time

    from lib_lora.bake import bake_checkpoint

    t = time.perf_counter()
    res = bake_checkpoint(args.base, args.prompt, args.lora_dir, args.out, dtype=args.dtype,
                          overwrite=args.overwrite, presets_path=args.presets, seed=args.seed)
    for msg in res.messages:
        print(f"warning: {msg}")
    for r, lr in zip(res.loras, res.report.loras):
        extra = (f", {lr.zero} at weight 0" if lr.zero else "") + (f", {len(lr.skipped)} skipped" if lr.skipped else "")
        print(f"{r.network.name}: te {r.active.te:g}, unet {r.active.unet:g}, "
              f"{lr.applied} modules merged{extra}")
        for key, why in lr.skipped[:5]:
            print(f"  skipped {key}: {why}")
    print(f"wrote {res.out} ({res.report.layers_written} layers changed, {time.perf_counter() - t:.1f} s)")
    return 0
