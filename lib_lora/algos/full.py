"""Full / diff: ΔW = diff, Δb = diff_b (no alpha)."""
from __future__ import annotations

import torch

from ._common import f32, fit, mismatch, need

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
