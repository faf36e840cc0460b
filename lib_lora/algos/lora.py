"""LoRA / LoCon / DyLoRA: ΔW = (alpha/r)·up·down, with an optional Tucker core (`lora_mid`)."""
from __future__ import annotations

from typing import Optional

import torch

from ._common import check_inner, check_tucker, f32, factor_dims, fit, mat, need, first, rank_scale, tucker

DOWN = ("lora_down.weight", "lora_A.weight")
UP = ("lora_up.weight", "lora_B.weight")
MID = "lora_mid.weight"
SUFFIXES = frozenset(DOWN + UP + (MID, "alpha", "scale", "dora_scale"))


def _down_up(module):
    down = first(module, *DOWN)
    up = first(module, *UP)
    if down is None:
        down = need(module, DOWN[0])
    if up is None:
        up = need(module, UP[0])
    return down, up


def rank(module) -> int:
    return int(_down_up(module)[0].shape[0])


def check(module) -> None:
    """Shapes the factors must agree on whatever the model (load-time validation)."""
    down, up = _down_up(module)
    factor_dims(module.key, down, "lora_down.weight")
    factor_dims(module.key, up, "lora_up.weight")
    check_inner(module.key, mat(up), mat(down), "lora_up/lora_down")
    mid = module.tensors.get(MID)
    if mid is not None:
        check_tucker(module.key, mid, mat(up).t(), down, "lora_mid")


def delta(module, base_weight: torch.Tensor, base_bias=None, dyn: Optional[int] = None):
    down, up = _down_up(module)
    mid = module.tensors.get(MID)
    r = int(down.shape[0])
    # dyn keeps the first N ranks but the scale stays alpha / full rank (A1111 DyLoRA convention)
    scale = rank_scale(module, r)
    if dyn and 0 < dyn < r:
        down, up = down[:dyn], up[:, :dyn]
        if mid is not None:
            mid = mid[:dyn, :dyn]
    dev = base_weight.device
    d, u = mat(f32(down, dev)), mat(f32(up, dev))
    check_inner(module.key, u, d, "lora_up/lora_down")
    if mid is None:
        w = (u * scale) @ d
    else:
        w = tucker(f32(mid, dev), (u * scale).t(), d, module.key)
    return fit(module.key, w, base_weight.shape), None
