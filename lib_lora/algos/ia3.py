"""IA3 (Linear only): W' = W·(1 + w) with w broadcast over output rows (on_input 0) or input columns (1)."""
from __future__ import annotations

import torch

from .algorithm import Algorithm
from ._common import UnsupportedModule, f32, mismatch, need

SUFFIXES = frozenset(("weight", "on_input"))


def kernel(W: torch.Tensor, w: torch.Tensor, on_input: bool) -> torch.Tensor:
    """ΔW = W scaled per output row by w (on_input False) or per input column (True): it depends on W."""
    return W * (w[None, :] if on_input else w[:, None])


def delta(module, base_weight: torch.Tensor, base_bias=None, dyn=None):
    w = need(module, "weight")
    flag = module.tensors.get("on_input")
    on_input = bool(flag.item()) if flag is not None else False
    if base_weight.dim() != 2 or w.dim() != 1:
        raise UnsupportedModule(
            f"{module.key}: IA3 on a convolution is not supported (only Linear layers); the module is skipped"
        )
    if w.shape[0] != base_weight.shape[1 if on_input else 0]:
        raise mismatch(module.key, w.shape, base_weight.shape)
    dev = base_weight.device
    return kernel(f32(base_weight, dev), f32(w, dev), on_input), None


ALGORITHM = Algorithm(name="ia3", suffixes=SUFFIXES, claims=lambda t: "on_input" in t, delta=delta,
                      linear_in=("weight",), cache=False)
