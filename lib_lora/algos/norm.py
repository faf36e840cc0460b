"""Norm layers (LyCORIS train_norm): γ' = γ + w_norm, β' = β + b_norm; either may be absent."""
from __future__ import annotations

import torch

from .algorithm import Algorithm
from ._common import LoraStudioError, f32, fro, mismatch

SUFFIXES = frozenset(("w_norm", "b_norm"))


def delta(module, base_weight: torch.Tensor, base_bias=None, dyn=None):
    dev = base_weight.device
    w, b = module.tensors.get("w_norm"), module.tensors.get("b_norm")
    if w is None and b is None:
        raise LoraStudioError(f"{module.key}: norm module has neither w_norm nor b_norm; the file is incomplete")
    if w is not None:
        w = f32(w, dev).reshape(-1)
        if w.shape != base_weight.shape:
            raise mismatch(module.key, w.shape, base_weight.shape)
    if b is not None:
        b = f32(b, dev).reshape(-1)
        ref = base_bias.shape if base_bias is not None else base_weight.shape
        if b.shape != ref:
            raise mismatch(module.key, b.shape, ref)
    return w, b


def norm(module) -> float:
    w = module.tensors.get("w_norm")
    return fro(w) if w is not None else 0.0


ALGORITHM = Algorithm(name="norm", suffixes=SUFFIXES, claims=lambda t: "w_norm" in t or "b_norm" in t, delta=delta,
                      norm=norm, linear_in=("w_norm", "b_norm"), linear_all=True, cache=False)
