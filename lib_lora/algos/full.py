"""Full / diff: ΔW = diff, Δb = diff_b (no alpha)."""
from __future__ import annotations

import torch

from .algorithm import Algorithm
from ._common import f32, fit, fro, mismatch, need

SUFFIXES = frozenset(("diff", "diff_b"))


def delta(module, base_weight: torch.Tensor, base_bias=None, dyn=None):
    dev = base_weight.device
    w = fit(module.key, f32(need(module, "diff"), dev), base_weight.shape)
    b = module.tensors.get("diff_b")
    if b is not None:
        b = f32(b, dev).reshape(-1)
        if base_bias is not None and b.shape != base_bias.shape:
            raise mismatch(module.key, b.shape, base_bias.shape)
    return w, b


def in_width(get):
    d = get("diff")
    return int(d.shape[1]) if d is not None and d.dim() >= 2 else None


ALGORITHM = Algorithm(name="full", suffixes=SUFFIXES, claims=lambda t: "diff" in t, delta=delta,
                      norm=lambda m: fro(need(m, "diff")), linear_in=("diff", "diff_b"), linear_all=True,
                      cache=False, in_width=in_width)
