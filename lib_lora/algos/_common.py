"""Helpers shared by the algorithm files: fp32 upcast, scale rule, shape checks."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from ..errors import LoraStudioError


class UnsupportedModule(LoraStudioError):
    """A module this project deliberately does not apply (e.g. conv IA3); the caller skips and reports it."""


def f32(t: torch.Tensor, device) -> torch.Tensor:
    """fp32 on `device`; no copy when it already is."""
    return t.to(device=device, dtype=torch.float32)


def need(module, suffix: str) -> torch.Tensor:
    t = module.tensors.get(suffix)
    if t is None:
        raise LoraStudioError(
            f"{module.key}: tensor '{suffix}' is missing for algorithm '{module.algo}'; the file is incomplete, re-export it"
        )
    return t


def first(module, *suffixes: str) -> Optional[torch.Tensor]:
    for s in suffixes:
        t = module.tensors.get(s)
        if t is not None:
            return t
    return None


def _num(x) -> Optional[float]:
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        return float(x.float().item())
    return float(x)


def rank_scale(module, rank: Optional[int]) -> float:
    """alpha / rank; an explicit `scale` wins; missing or 0 alpha means alpha = rank (scale 1)."""
    scale = _num(getattr(module, "scale", None))
    if scale is not None:
        return scale
    alpha = _num(module.alpha)
    if alpha is None or alpha == 0 or not rank:
        return 1.0
    return alpha / rank


def ndim(v) -> Optional[int]:
    """Dimensions of a tensor or a shape; None when unknown (only the suffix was given)."""
    if v is None:
        return None
    if isinstance(v, torch.Tensor):
        return v.dim()
    try:
        return len(v)
    except TypeError:
        return None


def mat(t: torch.Tensor) -> torch.Tensor:
    """View as (rows, everything else): 4-D (…,1,1) factors and flattened conv factors alike."""
    return t.reshape(t.shape[0], -1)


def mismatch(key: str, what: Sequence[int], target: Sequence[int]) -> LoraStudioError:
    return LoraStudioError(
        f"{key}: LoRA shape {tuple(what)} does not fit the model weight {tuple(target)}; "
        "the LoRA was made for another model (SD1/SD2/SDXL) — use it with a matching checkpoint"
    )


def check_inner(key: str, left: torch.Tensor, right: torch.Tensor, names: str) -> None:
    """left (a, r) · right (r, b) must agree on r; say which factors disagree."""
    if left.shape[1] != right.shape[0]:
        raise LoraStudioError(
            f"{key}: factors {names} have incompatible shapes {tuple(left.shape)} and {tuple(right.shape)}; the file is corrupt"
        )


def fit(key: str, delta: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Reshape a delta to the target weight shape (the 2-D ↔ (…,1,1) and flattened-conv cases)."""
    shape = tuple(shape)
    if tuple(delta.shape) == shape:
        return delta
    if not shape or delta.shape[0] != shape[0] or delta.numel() != math.prod(shape):
        raise mismatch(key, delta.shape, shape)
    return delta.reshape(shape)


def tucker(t: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor, key: str = "module") -> torch.Tensor:
    """W[p,q,h,w] = Σ_ij t[i,j,h,w]·wa[i,p]·wb[j,q] (LoHa/LoKr Tucker chain)."""
    r1, r2 = t.shape[0], t.shape[1]
    wa, wb = mat(wa), mat(wb)
    if wa.shape[0] != r1 or wb.shape[0] != r2:
        raise LoraStudioError(
            f"{key}: Tucker core {tuple(t.shape)} does not match its factors {tuple(wa.shape)} and {tuple(wb.shape)}; the file is corrupt"
        )
    return torch.einsum("ij...,ip,jq->pq...", t, wa, wb)


def fro(t: torch.Tensor) -> float:
    """Frobenius norm with a float64 accumulator (a plain fp32 norm drifts ~1e-4 on 6M-element layers)."""
    t = t.float()
    return math.sqrt(float(torch.sum(t * t, dtype=torch.float64)))


def all_finite(t: torch.Tensor) -> bool:
    """No NaN/Inf in t. The min and the max are both finite exactly when every element is (a NaN propagates to
    both, an infinity is one of them): one read-only pass, ~15x faster on CPU than a float32/float64 sum or
    isfinite().all() of the same tensor (bench/README.md, bake, session 7)."""
    if t.numel() == 0:
        return True
    if t.element_size() > 1:
        try:
            lo, hi = torch.aminmax(t)
            return math.isfinite(float(lo)) and math.isfinite(float(hi))
        except RuntimeError:   # a dtype/device without an aminmax kernel: the accumulator test below
            pass
    if t.dtype == torch.float16:
        return math.isfinite(float(torch.sum(t, dtype=torch.float32)))
    if t.dtype in (torch.bfloat16, torch.float32):
        return math.isfinite(float(torch.sum(t, dtype=torch.float64)))
    return bool(torch.isfinite(t.float() if t.element_size() == 1 else t).all())  # fp64, fp8


def check_values(module) -> None:
    """Raise for what no model can make right: an empty tensor (rank 0) or NaN/Inf anywhere in the module."""
    tensors = dict(module.tensors)
    d = getattr(module, "dora_scale", None)
    if d is not None:
        tensors["dora_scale"] = d
    for suffix, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            continue
        if t.numel() == 0:
            raise LoraStudioError(f"{module.key}: tensor '{suffix}' is empty (shape {tuple(t.shape)}, rank 0); "
                                  f"the file is broken, re-export it")
        if t.is_floating_point() and not all_finite(t):
            raise LoraStudioError(f"{module.key}: tensor '{suffix}' holds NaN/Inf values; the training diverged "
                                  f"or the file is damaged, use an earlier epoch or re-export it")
    for name in ("alpha", "scale"):
        v = getattr(module, name, None)
        if v is not None and not math.isfinite(float(v)):
            raise LoraStudioError(f"{module.key}: {name} is {float(v)}; the file is damaged, re-export it")


def factor_dims(key: str, t: torch.Tensor, suffix: str) -> None:
    """A factor of a low-rank product is a matrix or a (…,kh,kw) conv factor."""
    if t.dim() not in (2, 4):
        raise LoraStudioError(f"{key}: factor '{suffix}' has shape {tuple(t.shape)}; a factor has 2 or 4 dimensions, "
                              f"the file is corrupt")


def check_tucker(key: str, t: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor, names: str) -> None:
    if t.dim() != 4 or t.shape[0] != mat(wa).shape[0] or t.shape[1] != mat(wb).shape[0]:
        raise LoraStudioError(
            f"{key}: Tucker core {tuple(t.shape)} does not match its factors {tuple(wa.shape)} and {tuple(wb.shape)} "
            f"({names}); the file is corrupt"
        )
