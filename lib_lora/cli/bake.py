"""`python -m lib_lora bake`: merge the LoRAs of a prompt into a checkpoint."""

from __future__ import annotations

from lib_lora.options import BakeOptions, add_arguments as add_options, from_args

HELP = "merge every <lora:…> tag of a prompt (block weights included) into a checkpoint"


def add_arguments(parser) -> None:
    add_options(parser, BakeOptions)


def lora_lines(report) -> list[str]:
    """Per LoRA of a patcher ApplyReport: what was merged, at which multipliers (each report names its own
    ActiveLora, so nothing depends on the order of the reports)."""
    lines = []
    for lrep in report.loras:
        a = lrep.active
        extra = (f", {lrep.zero} at weight 0" if lrep.zero else "") + (f", {len(lrep.skipped)} skipped" if lrep.skipped else "")
        mult = f"te {a.te:g}, unet {a.unet:g}, " if a is not None else ""
        lines.append(f"{a.network.name if a is not None else lrep.name}: {mult}{lrep.applied} modules merged{extra}")
        lines += [f"  skipped {key}: {why}" for key, why in lrep.skipped[:5]]
    return lines


def run(args) -> int:
    import sys
    import time

    from lib_lora.fileio.prefill import Prefill, room_for

    o = from_args(BakeOptions, args)
    t = time.perf_counter()
    # The baked file is mostly the checkpoint byte for byte: its copy (and disk writeback) starts now and runs
    # while torch is imported (~1 s); the writer then adds only the patched layers and the header. The header
    # gets room for the recipe (the prompt, a few hundred bytes per LoRA). A --dtype cast changes every offset.
    prefill = None if o.dtype else Prefill.start(o.base, o.out, o.overwrite,
                                                 reserve=room_for(o.prompt, o.prompt.count("<")))

    from lib_lora.merge.bake import bake_checkpoint
    from lib_lora.cli.progress import PhaseProgress
    phases: dict = {}

    bar = PhaseProgress({"merge": "layers", "write": "bytes"},   # nothing is read up front: the base is mapped
                        enabled=False if o.quiet else None)

    def progress(phase, done, total):
        phases.setdefault(phase, time.perf_counter())
        bar(phase, done, total)

    try:
        res = bake_checkpoint(o.base, o.prompt, o.lora_dir, o.out, dtype=o.dtype,
                              overwrite=o.overwrite, presets_path=o.presets, seed=o.seed,
                              allow_overflow=o.allow_overflow, progress=progress, prefill=prefill)
    finally:
        bar.close()
        if prefill is not None:
            prefill.close()   # an error before the write: the copy stops, its nameless temporary goes
    for msg in res.messages:
        print(f"warning: {msg}", file=sys.stderr)
    for line in lora_lines(res.report):
        print(line)
    end = time.perf_counter()
    marks = sorted(phases.items(), key=lambda kv: kv[1]) + [("", end)]
    timing = ", ".join(f"{p} {marks[i + 1][1] - s:.1f} s" for i, (p, s) in enumerate(marks[:-1]))
    print(f"wrote {res.out} ({res.report.layers_written} layers changed in {end - t:.1f} s"
          + (f": {timing}" if timing else "") + ")")
    return 0
