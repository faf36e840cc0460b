"""LoRA Studio's trainer against kohya sd-scripts' train_network.py on the same config (same checkpoint, data,
network, optimizer, steps). Target: at least sd-scripts' steps/s at no more peak memory.

Each trainer runs in its own process; steps/s is measured from the progress callbacks after a warm-up (model
loading and latent caching excluded), peak memory is the process' peak RSS (sd-scripts: its largest process,
the training one under `accelerate launch`). Needs an sd-scripts checkout with a working venv (its packages,
diffusers among them, cannot be installed in this project's environment): without one the script says it
was skipped and why.

    .venv/bin/python bench/train_sdscripts.py --sd-scripts DIR --config RUN.toml [--steps 40] [--warmup 5]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run_cfg(a, out: Path):
    sys.path.insert(0, str(ROOT))
    from lib_lora.train.config import load_config

    cfg = load_config(a.config)
    cfg.max_train_epochs = None
    cfg.max_train_steps = a.steps
    cfg.save_every_n_epochs = cfg.save_every_n_steps = None
    cfg.save_state = False
    cfg.output_dir, cfg.output_name = str(out), "bench"
    return cfg


def _rate(times: list) -> float:
    """steps/s between the warm-up step and the last one seen."""
    if len(times) < 2:
        return float("nan")
    (s0, t0), (s1, t1) = times[0], times[-1]
    return (s1 - s0) / (t1 - t0) if t1 > t0 else float("nan")


def child(a) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-sds-"))
    cfg = _run_cfg(a, tmp / a.child)
    times = []

    def progress(p):
        if p.step >= a.warmup:
            times.append((p.step, time.perf_counter()))

    if a.child == "ours":
        from lib_lora.train.trainer import Trainer

        Trainer(cfg, progress=progress, log=lambda m: None).run()
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    else:
        from lib_lora.train import sdscripts

        exp = sdscripts.export(cfg, tmp / "export")
        lines = []
        code = sdscripts.launch(a.sd_scripts, exp, progress=progress, log=lines.append, python=a.python)
        if code != 0:
            print(json.dumps({"error": f"sd-scripts exit code {code}", "log": lines[-15:]}))
            return
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"steps_per_s": _rate(times), "peak_mb": peak_kb / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sd-scripts", help="sd-scripts checkout with its venv")
    ap.add_argument("--python", help="that checkout's python (default: DIR/venv)")
    ap.add_argument("--config", help="training config (TOML) both trainers run")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--child", choices=("ours", "sdscripts"))
    a = ap.parse_args()
    if a.child:
        child(a)
        return
    sys.path.insert(0, str(ROOT))
    from lib_lora.errors import LoraStudioError
    from lib_lora.train import sdscripts

    if not a.sd_scripts:
        print("skipped: no --sd-scripts DIR given (an sd-scripts checkout with its own venv; its packages, "
              "diffusers among them, are not installed in this environment)")
        return
    if not a.config:
        print("skipped: give --config RUN.toml (a real checkpoint: sd-scripts cannot load the tiny test models)")
        return
    try:
        probe = sdscripts.Export("", None, ["accelerate", "launch", "train_network.py"])
        sdscripts.launch_argv(a.sd_scripts, probe, a.python)
    except LoraStudioError as exc:
        print(f"skipped: {exc}")
        return
    results = {}
    for which in ("ours", "sdscripts"):
        args = [sys.executable, __file__, "--child", which, "--config", a.config, "--steps", str(a.steps),
                "--warmup", str(a.warmup), "--sd-scripts", a.sd_scripts] + (["--python", a.python] if a.python else [])
        r = subprocess.run(args, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        last = (r.stdout.strip().splitlines() or ["{}"])[-1]
        try:
            results[which] = json.loads(last)
        except json.JSONDecodeError:
            results[which] = {"error": (r.stderr.strip().splitlines() or ["no output"])[-1]}
        print(f"{which:10s} {results[which]}")
    ours, theirs = results["ours"], results["sdscripts"]
    if "error" in ours or "error" in theirs:
        print("no ratio: a run failed (above)")
        return
    print(f"steps/s ratio (LoRA Studio / sd-scripts): {ours['steps_per_s'] / theirs['steps_per_s']:.3f} "
          "(target >= 1.0)")
    print(f"peak memory ratio (LoRA Studio / sd-scripts): {ours['peak_mb'] / theirs['peak_mb']:.3f} "
          "(target <= 1.0)")


if __name__ == "__main__":
    main()
