"""LoRA / LoCon / DyLoRA: ΔW = (alpha/r)·up·down, with an optional Tucker core (`lora_mid`)."""
from __future__ import annotations

import math
from typing import Optional

import torch

from .algorithm import Algorithm
from ._common import check_inner, check_tucker, f32, factor_dims, first, fit, mat, need, rank_scale, tucker

DOWN = ("lora_down.weight", "lora_A.weight")
UP = ("lora_up.weight", "lora_B.weight")
MID = "lora_mid.weight"
SUFFIXES = frozenset(DOWN + UP + (MID, "alpha", "scale", "dora_scale"))


# -- kernels: factors in, delta out ------------------------------------------------------------------
def kernel(up: torch.Tensor, down: torch.Tensor, scale: float = 1.0, mid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """scale·up·down as (out, in·kh·kw); with a Tucker core mid (r, r, kh, kw): (out, in, kh, kw).
    Shapes must agree (the adapter checks them)."""
    u, d = mat(up), mat(down)
    if mid is None:
        return (u * scale) @ d
    return tucker(mid, (u * scale).t(), d)


def keep_ranks(up: torch.Tensor, down: torch.Tensor, mid: Optional[torch.Tensor], n: int):
    """The first n ranks (DyLoRA's dyn=): up (out, n), down (n, …), mid (n, n, …)."""
    return up[:, :n], down[:n], None if mid is None else mid[:n, :n]


def kernel_norm(up: torch.Tensor, down: torch.Tensor, scale: float = 1.0, mid: Optional[torch.Tensor] = None) -> float:
    """‖scale·up·down‖_F via r×r Gram matrices, ‖UD‖² = Σ (UᵀU) ⊙ (DDᵀ), never forming ΔW."""
    d = down.float().reshape(down.shape[0], -1)
    if mid is not None:  # Tucker: fold the core into the down factor, (r, in·kh·kw)
        d = torch.einsum("abhw,bi->aihw", mid.float(), d).reshape(mid.shape[0], -1)
    u = up.float().reshape(up.shape[0], -1)
    # r×r Gram products in fp32 (short sums), their contraction in float64
    sq = max(float(torch.sum((u.T @ u).double() * (d @ d.T).double())), 0.0)
    return scale * math.sqrt(sq)


# -- adapter: a module's tensors by suffix ------------------------------------------------------------
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


def _factors(module, dyn, dev):
    """(up, down, mid, scale) in fp32 on dev; dyn keeps the first N ranks but the scale stays alpha / full
    rank (A1111 DyLoRA convention)."""
    down, up = _down_up(module)
    mid = module.tensors.get(MID)
    r = int(down.shape[0])
    scale = rank_scale(module, r)
    if dyn and 0 < dyn < r:
        up, down, mid = keep_ranks(up, down, mid, dyn)
    return f32(up, dev), f32(down, dev), None if mid is None else f32(mid, dev), scale


def delta(module, base_weight: torch.Tensor, base_bias=None, dyn: Optional[int] = None):
    up, down, mid, scale = _factors(module, dyn, base_weight.device)
    check_inner(module.key, mat(up), mat(down), "lora_up/lora_down")
    if mid is not None:
        check_tucker(module.key, mid, mat(up).t(), down, "lora_mid")
    return fit(module.key, kernel(up, down, scale, mid), base_weight.shape), None


def norm(module) -> float:
    down, up = _down_up(module)
    return kernel_norm(up, down, rank_scale(module, int(down.shape[0])), module.tensors.get(MID))


def compact(module, dyn, device):
    """("lowrank", up·scale, down) as fp32 2-D matrices, the form the patcher writes with one addmm (3×3 LoCon:
    down [r, in·3·3]); None with a Tucker core. Equals `delta` once multiplied out."""
    if module.tensors.get(MID) is not None:
        return None
    up, down, _, scale = _factors(module, dyn, device)
    u, d = mat(up), mat(down)
    if u.shape[1] != d.shape[0]:
        return None
    return u * scale, d


def in_width(get) -> Optional[int]:
    d = get("lora_down.weight")
    if d is None:
        d = get("lora_A.weight")
    return int(d.shape[1]) if d is not None and d.dim() >= 2 else None


def narrow(suffix: str, t: torch.Tensor, n: int) -> torch.Tensor:
    if suffix in DOWN:
        return t[:n].contiguous()
    if suffix in UP:
        return t[:, :n].contiguous()
    if suffix == MID:
        return t[:n, :n].contiguous()
    return t


def factorise(delta: torch.Tensor, rank: int) -> dict:
    """ΔW → this algorithm's tensors: the optimal rank-`rank` LoRA (conv: LoCon layout), alpha = rank (scale 1).
    The SVD lives in lib_lora.merge.svd (resize, extraction and LoRA merges share it)."""
    from lib_lora.merge.svd import factorise as best_factors

    up, down = best_factors(delta, rank)
    return {"lora_down.weight": down, "lora_up.weight": up, "alpha": torch.tensor(float(up.shape[1]))}


ALGORITHM = Algorithm(
    name="lora", suffixes=SUFFIXES, claims=lambda t: any(s in t for s in DOWN + UP), delta=delta, check=check,
    rank=rank, norm=norm, linear_in=("lora_up.weight", "lora_B.weight"), compact_kind="lowrank", compact=compact, in_width=in_width,
    narrow=narrow, factorise=factorise)
