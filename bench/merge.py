"""Checkpoint merge: peak anonymous memory and time of a two-model SD1.5-shaped weighted merge.

    .venv/bin/python bench/merge.py [--scale 1] [--dtype fp16] [--reps 2] [--dir DIR]

Two random checkpoints with every key of tests/fixtures/sd15_checkpoint_compvis.json (U-Net, CLIP-L, VAE,
schedule; `--scale N` divides the widths by N) are written to DIR, then each measurement runs in a fresh
process (so the runtime, torch included, is counted as a user would see it):

- peak RssAnon: /proc/self/status sampled every 10 ms by a thread in the merging process; while its forked
  writer processes run (the CLI's way, `fileio.forked.fork_processes()`; `--processes 0` for threads), the
  RssAnon of it and its children summed (an upper bound: each child also counts the pages it shares
  copy-on-write with its parent). Pages of the
  memory-mapped inputs and the page cache of the output are file-backed and do not count. Ratio against one
  input file's size (target ≤ 0.5).
- merge time (python start-up excluded; the torch import and the recipe's input hashes included) against a
  process that reads both inputs and writes an output of the same size with fsync, nothing else (target
  ≤ 1.5). The baseline imports nothing, so a line also gives the warm merge timed from after its imports
  (≈ 1.2 s of torch import here): what a merge costs in a process that has torch loaded (the WebUI). The input
  hashes go through the hash cache (`fileio.cached_model_hash`, a cache file in DIR): each rep runs the
  baseline, a merge with the cache emptied first (both inputs hashed: "cold"), a merge with it filled ("warm":
  what a user re-merging the same models sees), a diagnostic merge without hashes, and a warm merge with writer
  threads (how the WebUI and the standalone app merge: they do not fork). Medians over the reps
  are printed; each ratio is against the baseline of the same rep. The inputs stay in the page cache between
  runs (22 GB RAM here), so both sides read from memory; before each run its output file is deleted and the
  page cache synced, outside the timing, so no run pays for dropping the last one's output.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# The child process's clock and RssAnon sampler (every 10 ms), shared with bench/bake.py.
PRELUDE = r"""
import json, os, sys, threading, time
def anon(pid="self"):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:   # a child that has ended
        pass
    return 0
# Forked children (the merge CLI's writer processes, fileio.forked): while they live, their RssAnon is added to
# this process's. A child's RssAnon also counts the pages it still shares copy-on-write with this process (the
# runtime, ~150 MB), so the sum is an upper bound. (Pss_Anon from smaps_rollup would count them once, but reading
# it walks the page tables of 4 GB of mapped inputs and holds the children's page faults up: +1 s per merge.)
kids = []
_fork = os.fork
def fork():
    pid = _fork()
    if pid:
        kids.append(pid)
    return pid
os.fork = fork
peak = [anon()]
stop = []
def sample():
    while not stop:
        peak[0] = max(peak[0], anon() + sum(anon(pid) for pid in kids))
        time.sleep(0.01)
t0 = time.perf_counter()
threading.Thread(target=sample, daemon=True).start()
import torch
torch.set_num_threads(1)
"""

# The merge runs with torch's default thread count, as `python -m lib_lora merge` does (the prelude's one thread
# is for bench/bake.py, where both sides get it).
MERGE = PRELUDE.replace("torch.set_num_threads(1)\n", "") + r"""
from lib_lora.merge import checkpoint as mc
from lib_lora.merge.checkpoint import merge_checkpoints
if sys.argv[4] == "nohash":   # diagnostic only: what the recipe's input hashes cost
    class NoHash(mc._Hashes):
        def run(self):
            self.result = {role: "0" * 64 for role in self.paths}
    mc._Hashes = NoHash
runtime = anon()
t_ready = time.perf_counter()   # imports done: what a merge costs inside a process that has torch loaded (the WebUI)
res = merge_checkpoints(sys.argv[1], sys.argv[2], sys.argv[3], mode="weighted", alpha=0.4, overwrite=True,
                       processes=int(sys.argv[5]))
t1 = time.perf_counter()
stop.append(1)
peak[0] = max(peak[0], anon())
print(json.dumps({"seconds": t1 - t0, "after_imports": t1 - t_ready, "peak_anon": peak[0],
                  "runtime_anon": runtime, "hashes_cached": sorted(res.hashes_cached), "forked": len(kids)}))
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


def fresh(path) -> None:
    """Every timed run starts alike: no output left by the run before (deleting a 2 GB file costs ~0.5 s, and
    one written without fsync still has dirty pages) and nothing dirty in the page cache (os.sync)."""
    if os.path.exists(path):
        os.unlink(path)
    os.sync()


def _run(code, *args, env=None) -> dict:
    """args[2] is the run's output file (cleared first, outside the timing)."""
    import resource

    fresh(args[2])

    env = dict(env or os.environ, PYTHONPATH=ROOT)
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
    ap.add_argument("--processes", type=int, default=None,
                    help="forked writer processes of the timed merges (default: what the CLI uses here)")
    args = ap.parse_args()
    from lib_lora.fileio.forked import fork_processes

    procs = fork_processes() if args.processes is None else args.processes

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
    # the recipe's input hashes go through the hash cache (fileio.cached_model_hash): a file of the bench's own,
    # deleted before each "cold" run (both inputs hashed) and kept for the "warm" run (both from the cache)
    cache = os.path.join(tmp, "model-hashes.json")
    env = dict(os.environ, LORA_STUDIO_HASH_CACHE=cache)
    cold, warm, copies, nohash, threads = [], [], [], [], []
    ratios = {"cold": [], "warm": [], "nohash": [], "warm_loaded": [], "threads": []}
    try:
        for _ in range(args.reps):
            copies.append(_run(COPY, a, b, copy))
            if os.path.exists(cache):
                os.unlink(cache)
            cold.append(_run(MERGE, a, b, out, "hash", procs, env=env))
            warm.append(_run(MERGE, a, b, out, "hash", procs, env=env))
            nohash.append(_run(MERGE, a, b, out, "nohash", procs, env=env))
            threads.append(_run(MERGE, a, b, out, "hash", 0, env=env))   # the WebUI's and the app's way
            assert cold[-1]["hashes_cached"] == [] and warm[-1]["hashes_cached"] == ["A", "B"], (cold, warm)
            assert warm[-1]["forked"] == (procs if procs > 1 else 0) and threads[-1]["forked"] == 0
            for name, rs in (("cold", cold), ("warm", warm), ("nohash", nohash), ("threads", threads)):
                ratios[name].append(rs[-1]["seconds"] / copies[-1]["seconds"])
            ratios["warm_loaded"].append(warm[-1]["after_imports"] / copies[-1]["seconds"])
            print(f"  rep: read+write {copies[-1]['seconds']:.2f} s; merge cold {cold[-1]['seconds']:.2f} s, "
                  f"warm {warm[-1]['seconds']:.2f} s, no hashes {nohash[-1]['seconds']:.2f} s; warm with threads "
                  f"{threads[-1]['seconds']:.2f} s", flush=True)
    finally:
        for p in (out, copy, cache) + (() if args.dir else (a, b)):
            if os.path.exists(p):
                os.unlink(p)
        if not args.dir:
            shutil.rmtree(tmp, ignore_errors=True)   # with the hash cache's lock file

    def med(xs):
        return statistics.median(xs)

    merges = cold + warm + threads
    peak = max(r["peak_anon"] for r in merges)
    c = med([r["seconds"] for r in copies])
    tc, tw, tn = (med([r["seconds"] for r in rs]) for rs in (cold, warm, nohash))
    cpu_cold, cpu_warm, cpu_n, cpu_c, cpu_t = (med([r["cpu"] for r in rs])
                                               for rs in (cold, warm, nohash, copies, threads))
    print(f"runtime RssAnon after imports: {merges[0]['runtime_anon'] / 1e6:.0f} MB; peak RssAnon during merge: "
          f"{peak / 1e6:.0f} MB")
    print(f"peak anonymous memory / one model file: {peak / size:.3f}   (target <= 0.5)")
    print(f"medians of {args.reps} reps (ratios: median of the per-rep ratios, each against the read+write of "
          f"the same rep):")
    print(f"timed merges: {procs} forked writer processes (the CLI's way here)" if procs > 1 else
          "timed merges: writer threads (no fork here)")
    print(f"merge, input hashes cached (warm): {tw:.1f} s vs read+write of the same bytes {c:.1f} s: "
          f"{med(ratios['warm']):.2f}x   (target <= 1.5)")
    print(f"merge, input hashes computed (cold cache): {tc:.1f} s: {med(ratios['cold']):.2f}x")
    tl = med([r["after_imports"] for r in warm])
    print(f"  warm, torch and lib_lora already imported (as in the WebUI; the read+write side imports nothing): "
          f"{tl:.1f} s, {med(ratios['warm_loaded']):.2f}x")
    print(f"  without any recipe hashes (diagnostic): {tn:.1f} s, {med(ratios['nohash']):.2f}x")
    tt = med([r["seconds"] for r in threads])
    print(f"  warm, writer threads instead of processes (the WebUI's and the app's way): {tt:.1f} s, "
          f"{med(ratios['threads']):.2f}x")
    print(f"  process CPU time (user+sys, python start-up and imports included): merge cold {cpu_cold:.1f} s, "
          f"warm {cpu_warm:.1f} s, without hashes {cpu_n:.1f} s, threads {cpu_t:.1f} s, read+write {cpu_c:.1f} s")


if __name__ == "__main__":
    main()
