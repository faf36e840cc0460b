"""Writing a checkpoint-sized .safetensors: fileio.atomic_save_safetensors (streamed into an O_TMPFILE, fsync,
linked in; progress per 16 MB) vs safetensors.torch.save_file + fsync, in this run, same folder.

Prints seconds for each (best of --reps) and the ratio fileio / safetensors (target ≤ 1.1), plus the peak
extra resident memory of each, measured in a child process (target: fileio adds ≤ 1 chunk, not a file copy).
Run: .venv/bin/python bench/write.py [--mb 1024] [--reps 3] [--dir .]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import os, resource, sys, time, torch
sys.path.insert(0, sys.argv[4])
from safetensors.torch import save_file
from lib_lora import fileio
mb, how, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ts = {f"model.diffusion_model.k{i}.weight": torch.randn(2048, 1024).half() for i in range(mb // 4)}  # 4 MB each
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
if how == "fileio":
    fileio.atomic_save_safetensors(ts, path, {"k": "v"}, overwrite=True)
else:
    save_file(ts, path, metadata={"k": "v"})
    fd = os.open(path, os.O_RDONLY); os.fsync(fd); os.close(fd)
dt = time.perf_counter() - t
print(dt, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dir", default=ROOT)
    a = ap.parse_args()
    best = {}
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        for _ in range(a.reps):
            for how in ("safetensors", "fileio"):
                out = subprocess.run([sys.executable, "-c", CHILD, str(a.mb), how, os.path.join(d, how + ".safetensors"),
                                      ROOT], capture_output=True, text=True, check=True).stdout.split()
                s, mem = float(out[0]), float(out[1])
                if how not in best or s < best[how][0]:
                    best[how] = (s, mem)
    (st, st_mem), (fi, fi_mem) = best["safetensors"], best["fileio"]
    print(f"{a.mb} MB fp16: safetensors.save_file+fsync {st:.2f} s (+{st_mem:.0f} MB RSS), "
          f"fileio {fi:.2f} s (+{fi_mem:.0f} MB RSS)")
    print(f"ratio fileio / safetensors: {fi / st:.2f}  (target <= 1.1)")


if __name__ == "__main__":
    main()
