"""Cost of the load-time module checks (NaN/Inf, rank 0, factor shapes) in `load_network`.

A rank-32 fp16 LoCon on every SDXL layer (~256 MB) is written to a temporary folder and loaded with and
without the checks, best of 3 each (the file is in the page cache after the first read, so the ratio is the
worst case: reading from disk makes the checks' share smaller). Prints the ratio checked / unchecked.
Run: .venv/bin/python bench/load_checks.py [--threads 1]
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from lib_lora import keys  # noqa: E402
from lib_lora.network import load_network  # noqa: E402
from tests.factory import write_lora  # noqa: E402


def best(fn, n=3) -> float:
    out = float("inf")
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as d:
        path = write_lora(os.path.join(d, "big.safetensors"), model="sdxl", algo="locon", rank=32, layers="all",
                          dtype=torch.float16)
        print(f"file: {os.path.getsize(path) / 1e6:.0f} MB, {len(load_network(path).modules)} modules")
        checked = best(lambda: load_network(path))
        real = keys._check
        keys._check = lambda module: None  # the loader exactly as before the checks
        try:
            plain = best(lambda: load_network(path))
        finally:
            keys._check = real
    print(f"load_network with checks {checked:.3f} s, without {plain:.3f} s: ratio {checked / plain:.2f}")


if __name__ == "__main__":
    main()
