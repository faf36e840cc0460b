"""LoKr: ΔW = scale·kron(W1, W2); each factor full or low-rank, W2 optionally Tucker.

scale = alpha/r when a factor is low-rank (r from its `_b` half), 1 when both are stored full.
"""
from __future__ import annotations

from typing import Optional

import torch

from .algorithm import Algorithm
from ._common import (LoraStudioError, UnsupportedModule, check_inner, check_tucker, f32, fit, fro, mat, need,
                      rank_scale, tucker)

SUFFIXES = frozenset(
    ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "alpha", "scale", "dora_scale")
)


# -- kernels -------------------------------------------------------------------------------------------
def factor(full: Optional[torch.Tensor], a: Optional[torch.Tensor] = None, b: Optional[torch.Tensor] = None,
           t: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One Kronecker factor flattened to (rows, cols·kh·kw): stored full, a·b, or the Tucker chain t×a×b
    (kron of the flat matrices reshapes to the conv weight exactly)."""
    if full is not None:
        return mat(full)
    if t is not None:
        return mat(tucker(t, a, b))
    return mat(a) @ mat(b)


def kernel(w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """kron(w1, w2) of two 2-D factors: row i·b+k, column j·d+l holds w1[i,j]·w2[k,l]."""
    a, c = w1.shape
    b, d = w2.shape
    return (w1[:, None, :, None] * w2[None, :, None, :]).reshape(a * b, c * d)


def kernel_norm(w1: torch.Tensor, w2: torch.Tensor, scale: float = 1.0) -> float:
    """‖kron(A, B)‖_F = ‖A‖_F·‖B‖_F (float64 accumulation)."""
    return scale * fro(w1) * fro(w2)


# -- adapter -------------------------------------------------------------------------------------------
def rank(module) -> Optional[int]:
    t = module.tensors
    if t.get("lokr_w1") is None and t.get("lokr_w1_b") is not None:
        return int(t["lokr_w1_b"].shape[0])
    if t.get("lokr_w2") is None and t.get("lokr_w2_b") is not None:
        return int(t["lokr_w2_b"].shape[0])
    return None  # both factors full


def check(module) -> None:
    key, t = module.key, module.tensors
    if t.get("lokr_w1") is None:
        a, b = need(module, "lokr_w1_a"), need(module, "lokr_w1_b")
        check_inner(key, mat(a), mat(b), "lokr_w1_a/lokr_w1_b")
    if t.get("lokr_w2") is None:
        a, b = need(module, "lokr_w2_a"), need(module, "lokr_w2_b")
        if t.get("lokr_t2") is not None:
            check_tucker(key, t["lokr_t2"], a, b, "lokr_t2")
        else:
            check_inner(key, mat(a), mat(b), "lokr_w2_a/lokr_w2_b")


def _raw(module, dev):
    """(W1, W2) in fp32 on dev, 2-D, unscaled."""
    if module.tensors.get("lokr_t1") is not None:
        raise UnsupportedModule(f"{module.key}: LoKr with a Tucker core on W1 (lokr_t1) is not supported; the module is skipped")
    check(module)
    t = module.tensors

    def get(s):
        v = t.get(s)
        return None if v is None else f32(v, dev)

    return (factor(get("lokr_w1"), get("lokr_w1_a"), get("lokr_w1_b")),
            factor(get("lokr_w2"), get("lokr_w2_a"), get("lokr_w2_b"), get("lokr_t2")))


def _factors(module, dev):
    """(W1·scale, W2). r is None for full W1 and W2: alpha is ignored there (LyCORIS, A1111, ComfyUI agree)."""
    w1, w2 = _raw(module, dev)
    return w1 * rank_scale(module, rank(module)), w2


def delta(module, base_weight: torch.Tensor, base_bias=None, dyn=None):
    w1, w2 = _factors(module, base_weight.device)
    if w1.shape[0] * w2.shape[0] != base_weight.shape[0]:
        raise LoraStudioError(
            f"{module.key}: LoKr factors {tuple(w1.shape)} ⊗ {tuple(w2.shape)} give {w1.shape[0] * w2.shape[0]} "
            f"output rows but the model weight is {tuple(base_weight.shape)}; the LoRA was made for another model"
        )
    return fit(module.key, kernel(w1, w2), base_weight.shape), None


def norm(module) -> float:
    w1, w2 = _raw(module, "cpu")
    return kernel_norm(w1, w2, rank_scale(module, rank(module)))


def compact(module, dyn, device):
    """("kron", W1·scale, W2): the patcher caches the two factors and writes them with one broadcast addcmul."""
    if module.tensors.get("lokr_t1") is not None:
        return None
    w1, w2 = _factors(module, device)
    return w1, w2


def in_width(get) -> Optional[int]:
    w1 = get("lokr_w1")
    if w1 is None:
        w1 = get("lokr_w1_b")
    w2 = get("lokr_w2")
    if w2 is None:
        w2 = get("lokr_w2_b")
    if w1 is None or w2 is None or w1.dim() != 2 or w2.dim() < 2:
        return None
    return int(w1.shape[1]) * int(w2.shape[1])  # in = c · d


ALGORITHM = Algorithm(
    name="lokr", suffixes=SUFFIXES, claims=lambda t: "lokr_w1" in t or "lokr_w1_a" in t, delta=delta, check=check,
    rank=rank, norm=norm, linear_in=("lokr_w1", "lokr_w1_a"), compact_kind="kron", compact=compact, in_width=in_width)
