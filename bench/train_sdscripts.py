"""LoRA Studio's trainer against kohya sd-scripts' train_network.py on the same run (same checkpoint, data,
network, optimizer, steps). Target: at least sd-scripts' steps/s at no more peak memory.

Without --config the script makes the run itself: a full-size SD1.5 single-file checkpoint with random weights
(the real key names and shapes of tests/fixtures/sd15_checkpoint_compvis.json, fp32), a synthetic
`<repeats>_<concept>` folder of small images with tag captions, and a TOML (CPU, mixed_precision "no", AdamW,
networks.lora dim 8, batch 1, U-Net and text encoder trained). LoRA Studio trains from that TOML with its
Trainer; sd-scripts runs LoRA Studio's own export of the same TOML (lib_lora/train/sdscripts.py), launched as
`python -m lib_lora train --sd-scripts` does — so a key the export gets wrong shows up as an sd-scripts error.

Each trainer runs in its own process with one torch thread (the export's accelerate argument
--num_cpu_threads_per_process 1, and OMP_NUM_THREADS=1 on our side), --reps times each, alternating; the best
counts. steps/s is measured from the progress callbacks after the warm-up steps, by wall time and by the CPU
time of the process tree (the shared machine's load moves wall time by tens of percent between identical runs).
The warm-up must cover the first epoch: with cache_latents LoRA Studio encodes each image when it is first
drawn, sd-scripts encodes all of them before step 1. Peak memory is the peak RSS (sd-scripts: its largest
process, the training one under `accelerate launch`). Afterwards the two LoRA files are compared: key set,
shapes, dtypes, `ss_*` metadata keys, and the values of shared keys that are not times, hashes or paths.

sd-scripts needs an internet-free CLIP tokenizer: it loads `openai/clip-vit-large-patch14` from the Hugging
Face hub, so its process gets HF_HOME pointing at a hub-cache snapshot made from tests/fixtures/clip-l-offline
and HF_HUB_OFFLINE=1. Needs an sd-scripts checkout with its own venv (bench/README.md says how it was made);
without one the script says "skipped" and why.

    .venv/bin/python bench/train_sdscripts.py --sd-scripts DIR [--steps 20] [--warmup 5] [--reps 2]
                                             [--config RUN.toml] [--ours-python PY] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIP_L = ROOT / "tests" / "fixtures" / "clip-l-offline"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json")
HUB_REPO = "models--openai--clip-vit-large-patch14"
OUTPUT_NAME = "bench"


def _run_cfg(a, work: Path, which: str):
    """The run's TrainConfig with the bench's step count and its own output folder; nothing saved on the way."""
    from lib_lora.train.config import load_config

    cfg = load_config(a.config)
    cfg.max_train_epochs = None
    cfg.max_train_steps = a.steps + a.warmup
    cfg.save_every_n_epochs = cfg.save_every_n_steps = None
    cfg.save_state = False
    cfg.sample_prompts = None
    cfg.output_dir, cfg.output_name = str(work / which), OUTPUT_NAME
    return cfg


def _rate(times: list, i: int = 1) -> float:
    """steps per second of wall time (i=1) or of CPU time (i=2) between the first step seen after the
    warm-up and the last one."""
    if len(times) < 2:
        return float("nan")
    s0, t0, s1, t1 = times[0][0], times[0][i], times[-1][0], times[-1][i]
    return (s1 - s0) / (t1 - t0) if t1 > t0 else float("nan")


def _tree_stats() -> tuple[float, int]:
    """(CPU seconds (user + system), major page faults) of this process and all its living descendants, from
    /proc (Linux): the machine is shared, so wall time per step moves with the other jobs' load while CPU time
    per step mostly does not; major faults are pages read back from disk (time off the CPU)."""
    parent, cpu, majflt = {}, {}, {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        parent[int(d)] = int(fields[1])
        cpu[int(d)] = int(fields[11]) + int(fields[12])
        majflt[int(d)] = int(fields[9])
    mine, todo = set(), [os.getpid()]
    while todo:
        p = todo.pop()
        mine.add(p)
        todo += [c for c, pp in parent.items() if pp == p and c not in mine]
    return (sum(cpu.get(p, 0) for p in mine) / os.sysconf("SC_CLK_TCK"),
            sum(majflt.get(p, 0) for p in mine))


# ---- the run made by the bench -----------------------------------------------------------------------------

def prepare(work: Path, a) -> Path:
    """Checkpoint, images and TOML under `work`; returns the TOML's path."""
    import torch

    from tests.checkpoints import write_checkpoint
    from tests.lib_lora.train.helpers import make_images

    ckpt = work / "sd15-random.safetensors"
    write_checkpoint(ckpt, "sd15", scale=1, seed=0, dtype=torch.float32)
    data = make_images(work / "data", repeats=1, size=(a.res, a.res))
    extra = sorted(p for p in (data / "1_toy").glob("img*.png"))[a.images:]
    for p in extra:                     # a small set: latent caching is excluded from the timing anyway
        p.unlink()
        p.with_suffix(".txt").unlink()
    lines = [
        f'pretrained_model_name_or_path = "{ckpt.as_posix()}"',
        f'train_data_dir = "{data.as_posix()}"',
        'caption_extension = ".txt"',
        f'resolution = "{a.res}"',
        "train_batch_size = 1",
        "cache_latents = true",
        "max_data_loader_n_workers = 0",     # 4 images: an epoch every 4 steps, no worker restarts
        'network_module = "networks.lora"',
        "network_dim = 8",
        "network_alpha = 8.0",
        'optimizer_type = "AdamW"',
        "learning_rate = 1e-4",
        "unet_lr = 1e-4",
        "text_encoder_lr = 5e-5",
        'lr_scheduler = "constant"',
        'mixed_precision = "no"',
        "max_train_steps = 10",
        "seed = 0",
        f'output_dir = "{(work / "out").as_posix()}"',
        f'output_name = "{OUTPUT_NAME}"',
    ]
    path = work / "run.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def hub_cache(work: Path) -> Path:
    """An HF_HOME whose hub cache holds the CLIP-L tokenizer files as a snapshot of openai/clip-vit-large-patch14
    (revision name made up: offline, the hub library only follows refs/main)."""
    home = work / "hf_home"
    repo = home / "hub" / HUB_REPO
    rev = "0" * 40
    snap = repo / "snapshots" / rev
    snap.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(CLIP_L / name, snap / name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(rev)
    return home


# ---- the two sides -----------------------------------------------------------------------------------------

def child(a) -> None:
    work = Path(a.work)
    if a.child == "prepare":
        print(json.dumps({"config": str(prepare(work, a))}))
        return
    cfg = _run_cfg(a, work, a.child)
    times = []

    def progress(p):
        if p.step >= a.warmup:
            times.append((p.step, time.perf_counter(), *_tree_stats()))

    if a.child == "ours":
        from lib_lora.train.trainer import Trainer

        Trainer(cfg, progress=progress, log=lambda *_: None).run()
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    else:
        from lib_lora.train import sdscripts

        exp = sdscripts.export(cfg, work / "export", overwrite=True)
        log_path = work / "sdscripts.log"
        with open(log_path, "w", encoding="utf-8") as log:
            code = sdscripts.launch(a.sd_scripts, exp, progress=progress,
                                    log=lambda line: log.write(line + "\n"), python=a.python)
        if code != 0:
            tail = log_path.read_text(encoding="utf-8").splitlines()[-15:]
            print(json.dumps({"error": f"sd-scripts exit code {code} (log: {log_path})", "log": tail}))
            return
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    n = times[-1][0] - times[0][0] if times else 0
    print(json.dumps({"steps_per_s": _rate(times), "steps_per_cpu_s": _rate(times, 2), "peak_mb": peak_kb / 1024,
                      "steps_timed": n, "majflt_per_step": (times[-1][3] - times[0][3]) / n if n else 0}))


# ---- the files -------------------------------------------------------------------------------------------

# Metadata whose values differ by nature (times, paths, hashes, versions, the session id).
_VOLATILE = ("ss_training_started_at", "ss_training_finished_at", "ss_session_id", "ss_output_name",
             "sshs_model_hash", "sshs_legacy_hash", "ss_new_sd_model_hash", "ss_sd_model_hash", "ss_sd_model_name",
             "ss_new_vae_hash", "ss_vae_hash", "ss_dataset_dirs", "ss_tag_frequency", "ss_sd_scripts_commit_hash",
             "ss_datasets", "ss_network_args")


def compare_files(ours: Path, theirs: Path) -> list[str]:
    """Differences between the two LoRA files (keys, shapes, dtypes, ss_* metadata); [] when they agree."""
    from lib_lora.fileio import read_safetensors_header

    out = []
    h1 = read_safetensors_header(str(ours))[1]
    h2 = read_safetensors_header(str(theirs))[1]
    m1, m2 = h1.get("__metadata__", {}), h2.get("__metadata__", {})
    k1, k2 = set(h1) - {"__metadata__"}, set(h2) - {"__metadata__"}
    out.append(f"tensors: ours {len(k1)}, sd-scripts {len(k2)}, common {len(k1 & k2)}")
    for name, only in (("only ours", sorted(k1 - k2)), ("only sd-scripts", sorted(k2 - k1))):
        if only:
            out.append(f"  {name} ({len(only)}): " + ", ".join(only[:6]) + (" …" if len(only) > 6 else ""))
    bad = [k for k in sorted(k1 & k2) if h1[k]["shape"] != h2[k]["shape"] or h1[k]["dtype"] != h2[k]["dtype"]]
    for k in bad[:6]:
        out.append(f"  {k}: ours {h1[k]['dtype']}{h1[k]['shape']}, sd-scripts {h2[k]['dtype']}{h2[k]['shape']}")
    if len(bad) > 6:
        out.append(f"  … {len(bad) - 6} more with other shapes/dtypes")
    s1 = {k for k in m1 if k.startswith("ss_")}
    s2 = {k for k in m2 if k.startswith("ss_")}
    out.append(f"ss_* metadata keys: ours {len(s1)}, sd-scripts {len(s2)}, common {len(s1 & s2)}")
    for name, only in (("only ours", sorted(s1 - s2)), ("only sd-scripts", sorted(s2 - s1))):
        if only:
            out.append(f"  {name}: " + ", ".join(only))
    for k in sorted(s1 & s2):
        if k not in _VOLATILE and m1[k] != m2[k]:
            out.append(f"  {k}: ours {m1[k][:60]!r}, sd-scripts {m2[k][:60]!r}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sd-scripts", help="sd-scripts checkout with its venv")
    ap.add_argument("--python", help="that checkout's python (default: DIR/venv)")
    ap.add_argument("--config", help="your own run TOML (a real checkpoint) instead of the bench's random one")
    ap.add_argument("--steps", type=int, default=20, help="timed steps (after the warm-up)")
    ap.add_argument("--warmup", type=int, default=5,
                    help="untimed steps; keep them past the first epoch (the bench's run: --images steps): "
                         "LoRA Studio encodes each image's latent on its first use, sd-scripts all before step 1")
    ap.add_argument("--res", type=int, default=64, help="image side of the bench's synthetic data")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--reps", type=int, default=2, help="runs of each side, alternating; the best counts")
    ap.add_argument("--ours-python", help="run LoRA Studio's side with this interpreter (e.g. the sd-scripts "
                    "venv's, to compare on the same torch build); default: this one")
    ap.add_argument("--work", help="keep the run's files here (default: a temporary folder, removed)")
    ap.add_argument("--child", choices=("prepare", "ours", "sdscripts"))
    a = ap.parse_args()
    if a.child:
        sys.path.insert(0, str(ROOT))
        child(a)
        return
    sys.path.insert(0, str(ROOT))
    from lib_lora.errors import LoraStudioError
    from lib_lora.train import sdscripts

    if not a.sd_scripts:
        print("skipped: no --sd-scripts DIR given (a kohya sd-scripts checkout with its own venv; bench/README.md "
              "says how the measured one was made)")
        return
    try:
        probe = sdscripts.Export("", None, ["accelerate", "launch", "train_network.py"])
        sdscripts.launch_argv(a.sd_scripts, probe, a.python)
    except LoraStudioError as exc:
        print(f"skipped: {exc}")
        return
    if a.work:
        work = Path(a.work).resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="bench-sds-"))
    try:
        run(a, work)
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)


def _child(a, work: Path, which: str, env: dict) -> dict:
    py = a.ours_python if which == "ours" and a.ours_python else sys.executable
    args = [py, __file__, "--child", which, "--work", str(work), "--steps", str(a.steps),
            "--warmup", str(a.warmup), "--res", str(a.res), "--images", str(a.images), "--reps", "1",
            "--sd-scripts", a.sd_scripts] + (["--config", a.config] if a.config else []) + \
        (["--python", a.python] if a.python else [])
    r = subprocess.run(args, capture_output=True, text=True, env=env)
    last = (r.stdout.strip().splitlines() or ["{}"])[-1]
    try:
        res = json.loads(last)
    except json.JSONDecodeError:
        res = {}
    if r.returncode != 0 or not res:
        res = {"error": (r.stderr.strip().splitlines() or ["no output"])[-1]}
    return res


def run(a, work: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    a.config_given = bool(a.config)
    if not a.config:
        t = time.perf_counter()
        prep = _child(a, work, "prepare", env)
        if "error" in prep:
            print(f"could not make the run: {prep['error']}")
            return
        a.config = prep["config"]
        print(f"run made in {time.perf_counter() - t:.0f} s: random full-size SD1.5 (fp32), {a.images} images "
              f"{a.res}x{a.res}, batch 1, networks.lora dim 8 (U-Net + text encoder), AdamW, CPU fp32")
    print(f"{a.warmup} warm-up + {a.steps} timed steps each, one torch thread each")
    if not a.config_given and a.warmup < a.images:
        print(f"note: the warm-up ends inside the first epoch ({a.images} steps): LoRA Studio's timed steps "
              "include VAE encodes that sd-scripts does before its first step")
    sds_env = dict(env, HF_HOME=str(hub_cache(work)), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    results = {}
    order = [("ours", env), ("sdscripts", sds_env)] * a.reps       # A-B-A-B: both sides see the same load drift
    for which, e in order:
        if (work / which).exists():       # a kept --work folder: this run's outputs replace the last run's
            shutil.rmtree(work / which)
        t = time.perf_counter()
        res = _child(a, work, which, e)
        if "error" in res:
            print(f"{which:10s} failed: {res['error']}")
            for line in res.get("log", []):
                print(f"    {line}")
            results[which] = res
            break
        print(f"{which:10s} {res['steps_per_s']:.3f} steps/s wall, {1 / res['steps_per_cpu_s']:.2f} CPU-s/step, "
              f"peak RSS {res['peak_mb']:.0f} MB, {res['majflt_per_step']:.0f} major faults/step "
              f"({res['steps_timed']} steps timed; whole run "
              f"{time.perf_counter() - t:.0f} s wall)")
        best = results.get(which)
        if best is None:
            results[which] = res
        else:                             # best of the reps on each measure (the slow ones met more load)
            results[which] = {"steps_per_s": max(best["steps_per_s"], res["steps_per_s"]),
                              "steps_per_cpu_s": max(best["steps_per_cpu_s"], res["steps_per_cpu_s"]),
                              "peak_mb": min(best["peak_mb"], res["peak_mb"])}
    if len(results) < 2 or any("error" in r for r in results.values()):
        print("no ratio: a run failed (above)")
        return
    if a.reps > 1:
        print(f"best of {a.reps}: " + "; ".join(
            f"{w} {r['steps_per_s']:.3f} steps/s wall, {1 / r['steps_per_cpu_s']:.2f} CPU-s/step, "
            f"{r['peak_mb']:.0f} MB" for w, r in results.items()))
    ours, theirs = results["ours"], results["sdscripts"]
    print(f"steps/s ratio (LoRA Studio / sd-scripts): {ours['steps_per_s'] / theirs['steps_per_s']:.3f} wall, "
          f"{ours['steps_per_cpu_s'] / theirs['steps_per_cpu_s']:.3f} on CPU time (target >= 1.0)")
    print(f"peak memory ratio (LoRA Studio / sd-scripts): {ours['peak_mb'] / theirs['peak_mb']:.3f} "
          "(target <= 1.0)")
    f1, f2 = work / "ours" / f"{OUTPUT_NAME}.safetensors", work / "sdscripts" / f"{OUTPUT_NAME}.safetensors"
    if f1.is_file() and f2.is_file():
        print("LoRA files:")
        for line in compare_files(f1, f2):
            print("  " + line)
    else:
        print(f"LoRA files not both written: {f1} {f1.is_file()}, {f2} {f2.is_file()}")


if __name__ == "__main__":
    main()
