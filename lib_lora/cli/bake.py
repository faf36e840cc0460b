"""`python -m lib_lora bake`: merge the LoRAs of a prompt into a checkpoint."""

from __future__ import annotations

HELP = "merge every <lora:…> tag of a prompt (block weights included) into a checkpoint"


def add_arguments(parser) -> None:
    parser.add_argument("--base", required=True, metavar="CKPT", help="checkpoint (.safetensors) to start from")
    parser.add_argument("--prompt", required=True, help='text with LoRA tags, e.g. "<lora:style:0.8:face>"')
    parser.add_argument("--lora-dir", required=True, metavar="DIR", help="folder the LoRA names are looked up in")
    parser.add_argument("--out", required=True, help="output file, ending in .safetensors")
    parser.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), help="store weights in this type (default: as the base)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--presets", metavar="FILE",
                        help="user block-weight presets file (default: lora_studio_presets.txt in --lora-dir, "
                             "the file the app's Presets tab saves to)")
    parser.add_argument("--seed", type=int, default=0, help="seed for R/U block-weight letters (default 0)")
    parser.add_argument("--allow-overflow", action="store_true",
                        help="write even if merged weights overflow to ±Inf/NaN (refused by default)")
    parser.add_argument("--quiet", action="store_true", help="no progress line")


def run(args) -> int:
    import sys
    import time

    from lib_lora.bake import bake_checkpoint
    from lib_lora.cli.progress import PhaseProgress

    t = time.perf_counter()
    phases: dict = {}

    bar = PhaseProgress({"read": "bytes", "merge": "layers", "write": "bytes"},
                        enabled=False if args.quiet else None)

    def progress(phase, done, total):
        phases.setdefault(phase, time.perf_counter())
        bar(phase, done, total)

    try:
        res = bake_checkpoint(args.base, args.prompt, args.lora_dir, args.out, dtype=args.dtype,
                              overwrite=args.overwrite, presets_path=args.presets, seed=args.seed,
                              allow_overflow=args.allow_overflow, progress=progress)
    finally:
        bar.close()
    for msg in res.messages:
        print(f"warning: {msg}", file=sys.stderr)
    for r, lr in zip(res.loras, res.report.loras):
        extra = (f", {lr.zero} at weight 0" if lr.zero else "") + (f", {len(lr.skipped)} skipped" if lr.skipped else "")
        print(f"{r.network.name}: te {r.active.te:g}, unet {r.active.unet:g}, "
              f"{lr.applied} modules merged{extra}")
        for key, why in lr.skipped[:5]:
            print(f"  skipped {key}: {why}")
    end = time.perf_counter()
    marks = sorted(phases.items(), key=lambda kv: kv[1]) + [("", end)]
    timing = ", ".join(f"{p} {marks[i + 1][1] - s:.1f} s" for i, (p, s) in enumerate(marks[:-1]))
    print(f"wrote {res.out} ({res.report.layers_written} layers changed in {end - t:.1f} s"
          + (f": {timing}" if timing else "") + ")")
    return 0
