"""Effective Block Analyzer cost: a 17-block analysis against 17 full first applies of the LoRA.

    PYTHONPATH=. .venv/bin/python bench/analyzer.py [--rank 32] [--algo lora|locon|loha] [--low 0]

Model: every SD1.5 U-Net and CLIP-L layer at its real shape (tests/fixtures/sd15 manifest), random fp16
weights (about 2 GB of RAM). The renders themselves are not timed: both ways
render the same 18 images; what differs is the LoRA work per image.

- baseline, per block: what a fresh activation costs (LBW clears its loaded LoRAs before every cell): a
  new Patcher (empty delta cache, no backups) applies the LoRA with that block at `low`, then restores.
  Reported without and with reading the file (load_network), the latter being what LBW pays.
- analysis: one Patcher; the all-1 source apply, then one apply per block; between two cells only the
  layers of the two blocks whose weight changed are rewritten (from the backups and the cached deltas).

Prints the analysis time over the baseline's (target <= 0.1).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def vectors(low: float) -> list[tuple[str, list[float]]]:
    from lib_lora.analyzer import block_names
    from lib_lora.blocks import SLOT, expand
    out = []
    for name in block_names("sd1"):
        vals = [1.0] * 17
        vals[block_names("sd1").index(name)] = low
        vec, _ = expand(vals)
        assert vec[SLOT[name]] == low
        out.append((name, vec))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--algo", default="lora", choices=("lora", "locon", "loha"))
    ap.add_argument("--low", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from lib_lora.host import Host
    from lib_lora.network import load_network
    from lib_lora.patcher import ActiveLora, Patcher
    from tests.factory import write_lora
    from tests.models import build_model

    t0 = time.perf_counter()
    model = build_model("sd15", dtype=torch.float16, seed=0)
    host = Host.from_named_modules(model.named_modules(), arch="sd1")
    tmp = tempfile.mkdtemp(prefix="lora_studio_bench_analyzer_")
    family = "kohya" if args.algo == "lora" else "lycoris"
    path = write_lora(os.path.join(tmp, "l.safetensors"), model="sd15", algo=args.algo, family=family,
                      rank=args.rank, layers="all", seed=1)
    net = load_network(path)
    nparams = sum(p.numel() for p in model.parameters())
    print(f"model: {nparams / 1e6:.0f}M fp16 params, LoRA {args.algo} rank {args.rank}: {len(net.modules)} modules "
          f"(setup {time.perf_counter() - t0:.1f}s)")
    cells = vectors(args.low)

    # baseline: 17 first applies
    load_s = apply_s = 0.0
    for _name, vec in cells:
        gc.collect()
        t = time.perf_counter()
        n = load_network(path)
        load_s += time.perf_counter() - t
        p = Patcher(host, backup_device="cpu")
        t = time.perf_counter()
        p.apply([ActiveLora(n, blocks=vec)])
        apply_s += time.perf_counter() - t
        p.restore()
        p.forget()
        del p, n

    # analysis: source + 17 cells on one patcher
    gc.collect()
    p = Patcher(host, backup_device="cpu")
    t = time.perf_counter()
    p.apply([ActiveLora(net)])
    src_s = time.perf_counter() - t
    written = 0
    t = time.perf_counter()
    for _name, vec in cells:
        rep = p.apply([ActiveLora(net, blocks=vec)])
        written += rep.layers_written + rep.layers_restored
    cells_s = time.perf_counter() - t
    p.restore()
    analysis_s = src_s + cells_s

    print(f"baseline: 17 first applies {apply_s:.2f}s (+ reading the file 17x: {load_s:.2f}s)")
    print(f"analysis: source apply {src_s:.2f}s + 17 cells {cells_s:.2f}s = {analysis_s:.2f}s "
          f"({written} layer writes in the cells, {len(host.layers) if hasattr(host, 'layers') else '?'} layers)")
    print(f"ratio analysis / 17 first applies          = {analysis_s / apply_s:.3f}")
    print(f"ratio analysis / 17 (read + first apply)    = {analysis_s / (apply_s + load_s):.3f}  (target <= 0.1)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
