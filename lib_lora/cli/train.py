"""`python -m lib_lora train --config FILE.toml [--validate-only]`: train a LoRA from an sd-scripts style
config; `accelerate launch -m lib_lora train …` runs it data-parallel. `--prepare-from` makes a
<repeats>_<concept> folder for a target step count instead."""

from __future__ import annotations

import sys

from lib_lora.options import add_arguments as add_options, from_args
from lib_lora.train.config import TrainCliOptions

HELP = ("train a LoRA/LyCORIS from kohya folders or a dataset TOML with an sd-scripts config (--validate-only: "
        "the dataset report and step count)")


def add_arguments(parser) -> None:
    add_options(parser, TrainCliOptions)
    g = parser.add_argument_group("kohya sd-scripts")
    g.add_argument("--export-sd-scripts", metavar="DIR", help="write the run as an sd-scripts config + dataset TOML "
                   "into DIR and print the accelerate command")
    g.add_argument("--sd-scripts", metavar="DIR", help="run the training with the sd-scripts checkout in DIR (its "
                   "own venv); the files go to --export-sd-scripts DIR or <output_dir>/sd-scripts")
    g.add_argument("--sd-scripts-python", metavar="FILE", help="that checkout's python (default: DIR/venv)")


def run(args) -> int:
    from lib_lora.errors import LoraStudioError

    o = from_args(TrainCliOptions, args)
    if o.prepare_from:
        from lib_lora.train.dataset import prepare_folder

        if not (o.into and o.concept):
            raise LoraStudioError("--prepare-from needs --into DIR and --concept NAME.")
        if o.enable_bucket and not o.resolution:
            raise LoraStudioError("--enable-bucket needs --resolution (the training resolution the buckets are "
                                  "formed at), e.g. --resolution 512.")
        buckets = None
        if o.resolution:
            from lib_lora.train.config import DatasetSpec, parse_resolution
            from lib_lora.train.dataset import folder_buckets
            buckets = folder_buckets(o.prepare_from, DatasetSpec(resolution=parse_resolution(o.resolution),
                                                                 enable_bucket=o.enable_bucket))
        dest = prepare_folder(o.prepare_from, o.into, o.concept, o.target_steps, o.epochs, o.batch_size,
                              mode=o.mode, buckets=buckets)
        print(f"prepared {dest}")
        return 0
    if not o.config:
        raise LoraStudioError("give --config FILE.toml (an sd-scripts style training config).")
    from lib_lora.train.config import load_config
    from lib_lora.train.dataset import validate

    cfg = load_config(o.config)
    if o.dataset_config:
        cfg.dataset_config = o.dataset_config
    if getattr(args, "export_sd_scripts", None) or getattr(args, "sd_scripts", None):
        from lib_lora.cli.train_sdscripts import run_sd_scripts

        return run_sd_scripts(cfg, args, o.quiet)
    if o.validate_only:
        report = validate(cfg, check_model=True)
        print(report.format())
        return 0 if report.ok else 1
    from lib_lora.cli.progress import PhaseProgress
    from lib_lora.train.trainer import Trainer

    bar = PhaseProgress({"train": "steps"}, enabled=False if (o.quiet or o.progress_json) else None)
    emit, cancel = _machine_channel() if o.progress_json else (None, None)

    def progress(p) -> None:
        if emit is not None:
            emit(event="progress", step=p.step, total=p.total, epoch=p.epoch, epochs=p.epochs, loss=p.loss,
                 eta=p.eta)
            return
        bar("train", p.step, p.total)
        if not bar.enabled and not o.quiet and (p.step == p.total or p.step % 50 == 0):   # logs: a line now and then
            eta = "" if p.eta is None else f", ETA {int(p.eta) // 60}:{int(p.eta) % 60:02d}"
            print(f"step {p.step}/{p.total} epoch {p.epoch}/{p.epochs} loss {p.loss:.4f}{eta}", file=sys.stderr)

    def log(msg: str) -> None:
        bar.close()
        print(msg, file=sys.stderr)

    try:
        result = Trainer(cfg, progress=progress, cancel=cancel, log=log).run()
    finally:
        bar.close()
    for f in result.files:
        if emit is None:
            print(f)
        else:
            emit(event="file", path=str(f))
    if emit is not None:
        emit(event="done", cancelled=result.cancelled, steps=result.steps)
    if result.log_kind:
        print(f"log: {result.log_path} ({result.log_kind})", file=sys.stderr)
    return 0


def _machine_channel():
    """--progress-json: (emit(**fields) → one JSON line on stdout, cancel() → True once stdin said "cancel" or
    ended, i.e. the parent asked to stop or went away)."""
    import json
    import threading

    stop = threading.Event()

    def watch() -> None:
        for line in sys.stdin:
            if line.strip() == "cancel":
                break
        stop.set()

    threading.Thread(target=watch, name="train-stdin", daemon=True).start()

    def emit(**fields) -> None:
        print(json.dumps(fields), flush=True)

    return emit, stop.is_set
