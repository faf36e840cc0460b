"""Delta computation time of lib_lora.algos vs lycoris-lora's functional oracle on SDXL-sized layers.

Prints, per case, ms per call for both and the ratio lib_lora / lycoris (lower is better), measured in this run.
Run: .venv/bin/python bench/bench_algos.py
"""
import os
import sys
import time
from dataclasses import dataclass, field

os.environ.setdefault("LYCORIS_KERNEL_BACKEND", "torch")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from lycoris.functional import diag_oft, locon, loha, lokr  # noqa: E402

from lib_lora.algos import compute_delta  # noqa: E402


@dataclass
class M:
    algo: str
    tensors: dict
    alpha: float = None
    key: str = "lycoris_bench"
    layer: str = ""
    qkv: int = None
    scale: float = None
    dora_scale: torch.Tensor = None
    slot: int = None
    is_te: bool = False
    extra: dict = field(default_factory=dict)


def ms(fn, n=5):
    fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1000


def main():
    torch.manual_seed(0)
    C = 1280
    W = torch.randn(C, C).half()
    Wc = torch.randn(C, C, 3, 3).half()
    d, u = torch.randn(32, C).half(), torch.randn(C, 32).half()
    dc, uc = torch.randn(32, C, 3, 3).half(), torch.randn(C, 32, 1, 1).half()
    dt, ut, mt = torch.randn(32, C, 1, 1), torch.randn(C, 32, 1, 1), torch.randn(32, 32, 3, 3)
    h = [torch.randn(C, 16), torch.randn(16, C), torch.randn(C, 16), torch.randn(16, C)]
    k1, k2 = torch.randn(32, 32), torch.randn(40, 40)
    ob = torch.randn(320, 4, 4) * 0.1
    cases = [
        ("lora linear r32", M("lora", {"lora_down.weight": d, "lora_up.weight": u}, 16.0), W,
         lambda: locon.diff_weight(d.float(), u.float(), None, gamma=0.5)),
        ("locon 3x3 r32", M("lora", {"lora_down.weight": dc, "lora_up.weight": uc}, 16.0), Wc,
         lambda: locon.diff_weight(dc.float(), uc.float(), None, gamma=0.5)),
        ("locon tucker r32", M("lora", {"lora_down.weight": dt, "lora_up.weight": ut, "lora_mid.weight": mt}, 16.0), Wc,
         lambda: locon.diff_weight(dt, ut, mt, gamma=0.5)),
        ("loha linear r16", M("loha", dict(zip(("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"), h)), 8.0), W,
         lambda: loha.diff_weight(h[1], h[0], h[3], h[2], None, None, gamma=0.5)),
        ("lokr full+full", M("lokr", {"lokr_w1": k1, "lokr_w2": k2}), W,
         lambda: lokr.diff_weight(k1, None, None, k2, None, None, None, gamma=1.0)),
        ("diag-oft bs4", M("oft", {"oft_blocks": ob}), W,
         lambda: diag_oft.diff_weight(W.float(), ob, None, constraint=None)),
    ]
    print(f"{'case':20s} {'lib_lora ms':>12s} {'lycoris ms':>12s} {'ratio':>7s}")
    for name, mod, base, ref in cases:
        a = ms(lambda: compute_delta(mod, base))
        b = ms(ref)
        print(f"{name:20s} {a:12.1f} {b:12.1f} {a / b:7.2f}")


if __name__ == "__main__":
    main()
