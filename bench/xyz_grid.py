"""X/Y/Z-style sweep through the patcher: 10 weights × 10 presets, full-size SD1.5 layers (CPU).

    .venv/bin/python bench/xyz_grid.py [--rank 32] [--threads N]

Each grid cell is one `Patcher.apply` (what a WebUI X/Y/Z cell does before sampling). The grid's total
LoRA time is compared with 100 first applies (what a loader without delta cache and per-layer change
tracking pays per cell); the first-apply time is the median of 3 fresh patchers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PRESETS = ["ALL", "face", "Nface", "ware", "pose", "paint", "char", "back", "soft", "MIDD"]
WEIGHTS = [round(0.2 * i, 1) for i in range(1, 11)]  # 0.2 … 2.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1, see bench/README.md)")
    ap.add_argument("--all-layers", action="store_true",
                    help="LoRA on every Linear/1x1 conv (kohya default set, ~3x slower) instead of attention + TE")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from lib_lora.blocks import expand
    from lib_lora.host import Host
    from lib_lora.network import load_network
    from lib_lora.patcher import ActiveLora, Patcher
    from lib_lora.presets import PresetStore
    from tests.factory import write_lora
    from tests.models import build_model

    t = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="lora_xyz_")
    pick = "all" if args.all_layers else (lambda l: ".attn1." in l or ".attn2." in l or ".self_attn." in l)
    net = load_network(write_lora(os.path.join(tmp, "style.safetensors"), model="sd15", algo="lora",
                                  rank=args.rank, layers=pick, seed=3))
    layers = {m.layer for m in net.modules.values()}
    root = build_model("sd15", include=tuple(layers), seed=0)  # the touched layers at full size, real names
    host = Host.from_named_modules(root.named_modules())
    touched = sum(host[n].weight.numel() for n in layers)
    print(f"SD1.5 layers built: {len(host)}; LoRA rank {args.rank}: {len(net.modules)} modules, "
          f"{touched / 1e6:.0f}M weights touched (setup {time.perf_counter() - t:.1f} s, "
          f"{torch.get_num_threads()} threads)")

    store = PresetStore()
    vectors = {name: expand([float(v) for v in store.get(name, "sd1")])[0] for name in PRESETS}

    firsts = []
    for _ in range(3):
        p = Patcher(host, cache_bytes=touched * 4 + (64 << 20))
        t = time.perf_counter()
        p.apply([ActiveLora(net, 1.0, 1.0)])
        firsts.append(time.perf_counter() - t)
        p.restore()
    t_first = statistics.median(firsts)

    p = Patcher(host, cache_bytes=touched * 4 + (64 << 20))
    cell_times, written, computed = [], 0, 0
    for w in WEIGHTS:          # X axis (outer)
        for name in PRESETS:   # Y axis (inner)
            t = time.perf_counter()
            rep = p.apply([ActiveLora(net, w, w, vectors[name])])
            cell_times.append(time.perf_counter() - t)
            written += rep.layers_written + rep.layers_restored
            computed += rep.deltas_computed
    p.restore()
    grid = sum(cell_times)

    print(f"\n  first apply (median of 3 fresh patchers)          {t_first:8.3f} s")
    print(f"  grid of {len(cell_times)} cells, total LoRA time            {grid:8.3f} s "
          f"(first cell {cell_times[0]:.3f} s, later cells median {statistics.median(cell_times[1:]):.3f} s)")
    print(f"  100 first applies (100 × median)                  {100 * t_first:8.3f} s")
    print(f"\n  ratio grid / 100 first applies                    {grid / (100 * t_first):8.3f}")
    print(f"  (deltas computed in the grid: {computed} = once per module; layer writes+restores: {written}, "
          f"vs {len(cell_times) * len(layers)} without change tracking)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
