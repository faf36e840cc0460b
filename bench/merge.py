"""Checkpoint merge: peak anonymous memory and time of a two-model SD1.5-shaped weighted merge.

    .venv/bin/python bench/merge.py [--scale 1] [--dtype fp16] [--reps 2] [--dir DIR]

Two random checkpoints with every key of tests/fixtures/sd15_checkpoint_compvis.json (U-Net, CLIP-L, VAE,
schedule; `--scale N` divides the widths by N) are written to DIR, then each measurement runs in a fresh
process (so the runtime, torch included, is counted as a user would see it):

- peak RssAnon: /proc/self/status sampled every 10 ms by a thread in the merging process. Pages of the
  memory-mapped inputs and the page cache of the output are file-backed and do not count. Ratio against one
  input file's size (target ≤ 0.5).
- merge time (python start-up excluded; the torch import and hashing the inputs for the recipe included)
  against a process that reads both inputs and writes
  an output of the same size with fsync, nothing else (target ≤ 1.5). Reps alternate baseline/merge; the
  minimum of each is used. The files stay in the page cache between runs (22 GB RAM here), so both sides
  read from memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# The child process's clock and RssAnon sampler (every 10 ms), shared with bench/bake.py.
PRELUDE = r"""
import json, sys, threading, time
def anon():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
peak = [anon()]
stop = []
def sample():
    while not stop:
        peak[0] = max(peak[0], anon())
        time.sleep(0.01)
t0 = time.perf_counter()
threading.Thread(target=sample, daemon=True).start()
import torch
torch.set_num_threads(1)
"""

MERGE = PRELUDE + r"""
from lib_lora.merge import checkpoint as mc
from lib_lora.merge.checkpoint import merge_checkpoints
if sys.argv[4] == "nohash":   # diagnostic only: what the recipe's input hashes cost
    class NoHash(mc._Hashes):
        def run(self):
            self.result = {role: "0" * 64 for role in self.paths}
    mc._Hashes = NoHash
runtime = anon()
merge_checkpoints(sys.argv[1], sys.argv[2], sys.argv[3], mode="weighted", alpha=0.4, overwrite=True)
t1 = time.perf_counter()
stop.append(1)
peak[0] = max(peak[0], anon())
print(json.dumps({"seconds": t1 - t0, "peak_anon": peak[0], "runtime_anon": runtime}))
"""

COPY = r"""
import json, os, sys, time
t0 = time.perf_counter()
buf = bytearray(16 << 20)
mv = memoryview(buf)
total = 0
for p in sys.argv[1:3]:
    with open(p, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            total += n
size = os.path.getsize(sys.argv[1])
fd = os.open(sys.argv[3], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
left = size
while left:
    left -= os.write(fd, mv[: min(left, len(buf))])
os.fsync(fd)
os.close(fd)
print(json.dumps({"seconds": time.perf_counter() - t0}))
"""


def _run(code, *args) -> dict:
    import resource

    env = dict(os.environ, PYTHONPATH=ROOT)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env,
                       cwd=ROOT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode:
        sys.exit(r.stderr)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["cpu"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=int, default=1, help="divide widths by this (1 = full-size SD1.5)")
    ap.add_argument("--dtype", default="fp16", choices=("fp16", "fp32"))
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--dir", help="where to write the models (default: a temporary folder, removed after)")
    args = ap.parse_args()

    import torch

    from tests.checkpoints import write_checkpoint

    dtype = {"fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    tmp = args.dir or tempfile.mkdtemp(prefix="bench-merge-")
    os.makedirs(tmp, exist_ok=True)
    a, b, out, copy = (os.path.join(tmp, n) for n in ("a.safetensors", "b.safetensors", "out.safetensors",
                                                        "copy.bin"))
    t = time.perf_counter()
    for path, seed in ((a, 1), (b, 2)):
        if not os.path.exists(path):
            write_checkpoint(path, "sd15", scale=args.scale, seed=seed, dtype=dtype)
    size = os.path.getsize(a)
    print(f"SD1.5-shaped checkpoints (scale 1/{args.scale}, {args.dtype}): {size / 1e9:.2f} GB each "
          f"(made in {time.perf_counter() - t:.0f} s)")
    merges, copies, nohash = [], [], []
    try:
        for _ in range(args.reps):
            copies.append(_run(COPY, a, b, copy))
            merges.append(_run(MERGE, a, b, out, "hash"))
            nohash.append(_run(MERGE, a, b, out, "nohash"))
    finally:
        for p in (out, copy) + (() if args.dir else (a, b)):
            if os.path.exists(p):
                os.unlink(p)
        if not args.dir:
            os.rmdir(tmp)
    m = min(merges, key=lambda r: r["seconds"])
    peak = max(r["peak_anon"] for r in merges)
    c = min(r["seconds"] for r in copies)
    n = min(r["seconds"] for r in nohash)
    cpu_m, cpu_n, cpu_c = (min(r["cpu"] for r in rs) for rs in (merges, nohash, copies))
    print(f"runtime RssAnon after imports: {m['runtime_anon'] / 1e6:.0f} MB; peak RssAnon during merge: "
          f"{peak / 1e6:.0f} MB")
    print(f"peak anonymous memory / one model file: {peak / size:.3f}   (target <= 0.5)")
    print(f"merge {m['seconds']:.1f} s vs read+write of the same bytes {c:.1f} s: {m['seconds'] / c:.2f}x   "
          f"(target <= 1.5)")
    print(f"  without hashing the inputs for the recipe (diagnostic): {n:.1f} s, {n / c:.2f}x")
    print(f"  process CPU time (user+sys, python start-up and imports included): merge {cpu_m:.1f} s, "
          f"without hashes {cpu_n:.1f} s, read+write {cpu_c:.1f} s: {cpu_m / cpu_c:.2f}x / {cpu_n / cpu_c:.2f}x")


if __name__ == "__main__":
    main()
