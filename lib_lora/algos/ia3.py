"""IA3 (Linear only): W' = W·(1 + w) with w broadcast over output rows (on_input 0) or input columns (1)."""
from __future__ import annotations

import torch

from ._common import UnsupportedModule, f32, mismatch, need

SUFFIXES = frozenset(("weight", "on_input"))


def delta(module, base_weight: torch.Tensor, base_bias=None, dyn=None):
    w = need(module, "weight")
    flag = module.tensors.get("on_input")
    on_input = bool(flag.item()) if flag is not None else False
    if base_weight.dim() != 2 or w.dim() != 1:
        raise UnsupportedModule(
            f"{module.key}: IA3 on a convolution is not supported (only Linear layers); the module is skipped"
        )
    axis = 1 if on_input else 0
    if w.shape[0] != base_weight.shape[axis]:
        raise mismatch(module.key, w.shape, base_weight.shape)
    dev = base_weight.device
    w = f32(w, dev)
    W = f32(base_weight, dev)
    # ΔW depends on the original weight: rows (on_input 0) or columns (1) scaled by w
    d = W * (w[None, :] if on_input else w[:, None])
    return d, None
