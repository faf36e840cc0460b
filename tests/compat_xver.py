"""Cross-version numeric check of lib_lora.algos.compute_delta (not collected by pytest; needs two environments).

    python tests/compat_xver.py make    DIR      # any env: LoRA files for every algorithm/family (sd15 + sdxl)
    python tests/compat_xver.py compute DIR      # in each env: deltas -> DIR/out_<torch version>.safetensors
    python tests/compat_xver.py compare A B      # max relative difference per (model, family, algo, base dtype)

Base weights come from numpy's PCG64 keyed by crc32(layer), so every Python/torch version sees the same ones
(Python's str hash changed in 3.11, and torch's RNG streams are not promised stable across releases).
"""

from __future__ import annotations

import os
import sys
import zlib

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ALGOS = ("lora", "locon", "loha", "lokr", "ia3", "full", "norm", "dora", "glora", "oft", "boft")
CASES = [(a, "lycoris") for a in ALGOS] + [("lora", "kohya"), ("oft", "kohya"), ("dora", "kohya"),
                                           ("lora", "peft"), ("dora", "peft")]
MODELS = ("sd15", "sdxl")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def make(d: str) -> None:
    from tests.factory import write_lora

    os.makedirs(d, exist_ok=True)
    for model in MODELS:
        for algo, fam in CASES:
            write_lora(os.path.join(d, f"{model}_{fam}_{algo}.safetensors"), model=model, family=fam, algo=algo,
                       layers=8, seed=1)


def _base(layer: str, shape, qkv):
    r = np.random.default_rng(zlib.crc32(layer.encode()))
    w = torch.from_numpy((r.standard_normal(shape) * 0.05).astype("float32"))
    b = torch.from_numpy((r.standard_normal(shape[0]) * 0.01).astype("float32"))
    if qkv is not None:
        c = shape[0] // 3
        w, b = w[qkv * c:(qkv + 1) * c], b[qkv * c:(qkv + 1) * c]
    return w, b


def compute(d: str) -> str:
    from safetensors.torch import save_file

    from lib_lora.algos import compute_delta
    from lib_lora.network import load_network
    from tests.factory import fixture_layers

    out = {}
    for model in MODELS:
        shapes = fixture_layers(model)
        for algo, fam in CASES:
            net = load_network(os.path.join(d, f"{model}_{fam}_{algo}.safetensors"))
            for key, m in net.modules.items():
                w, b = _base(m.layer, shapes[m.layer], m.qkv)
                for dt in DTYPES:
                    delta = compute_delta(m, w.to(dt), b.to(dt))
                    tag = f"{model}|{fam}|{algo}|{key}|{str(dt)[6:]}"
                    if delta.weight is not None:
                        out[tag + "|w"] = delta.weight.contiguous()
                    if delta.bias is not None:
                        out[tag + "|b"] = delta.bias.contiguous()
    name = os.path.join(d, f"out_{torch.__version__.split('+')[0]}.safetensors")
    save_file(out, name)
    print(f"{len(out)} deltas -> {name}")
    return name


def compare(a: str, b: str) -> float:
    from safetensors.torch import load_file

    da, db = load_file(a), load_file(b)
    if da.keys() != db.keys():
        raise SystemExit(f"different delta sets: {sorted(set(da) ^ set(db))[:5]}")
    worst: dict[str, float] = {}
    for k in da:
        x, y = da[k].double(), db[k].double()
        rel = ((x - y).abs().max() / x.abs().max().clamp_min(1e-30)).item()
        parts = k.split("|")
        group = "|".join(parts[:3] + [parts[4]])
        worst[group] = max(worst.get(group, 0.0), rel)
    for g, r in sorted(worst.items(), key=lambda t: -t[1])[:10]:
        print(f"{r:.2e}  {g}")
    top = max(worst.values())
    print(f"{len(da)} deltas in {len(worst)} groups; max relative difference {top:.2e}")
    return top


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] in ("make", "compute"):
        {"make": make, "compute": compute}[sys.argv[1]](sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        compare(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(__doc__)
