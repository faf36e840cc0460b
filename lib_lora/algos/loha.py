"""LoHa: ΔW = (alpha/r)·(w1_a·w1_b) ⊙ (w2_a·w2_b), Tucker variant with `hada_t1/t2` (w?_a stored (r, out))."""
from __future__ import annotations

from typing import Optional

import torch

from .algorithm import Algorithm
from ._common import check_inner, check_tucker, f32, factor_dims, fit, fro, mat, mismatch, need, rank_scale, tucker

SUFFIXES = frozenset(
    ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "alpha", "scale", "dora_scale")
)


# -- kernels -------------------------------------------------------------------------------------------
def kernel(w1a, w1b, w2a, w2b, scale: float = 1.0, t1: Optional[torch.Tensor] = None,
           t2: Optional[torch.Tensor] = None) -> torch.Tensor:
    """scale·(w1a·w1b) ⊙ (w2a·w2b), or the Tucker chains t1/t2 (then (out, in, kh, kw)); fp32 in, shapes checked
    by the caller."""
    if t1 is not None:
        w = tucker(t1, w1a, w1b).mul_(tucker(t2, w2a, w2b))
    else:
        # the scale rides on the first product (one pass fewer over ΔW)
        return ((mat(w1a) * scale) @ mat(w1b)).mul_(mat(w2a) @ mat(w2b))
    if scale != 1.0:
        w.mul_(scale)
    return w


def kernel_norm(w1a, w1b, w2a, w2b, scale: float = 1.0, t1=None, t2=None) -> float:
    return scale * fro(kernel(w1a.float(), w1b.float(), w2a.float(), w2b.float(), 1.0,
                               None if t1 is None else t1.float(), None if t2 is None else t2.float()))


# -- adapter -------------------------------------------------------------------------------------------
def rank(module) -> int:
    return int(need(module, "hada_w1_b").shape[0])


def _tensors(module):
    w = [need(module, s) for s in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")]
    t1, t2 = module.tensors.get("hada_t1"), module.tensors.get("hada_t2")
    if (t1 is None) != (t2 is None):
        need(module, "hada_t2" if t2 is None else "hada_t1")
    return w, t1, t2


def check(module) -> None:
    key = module.key
    (w1a, w1b, w2a, w2b), t1, t2 = _tensors(module)
    for s, t in (("hada_w1_a", w1a), ("hada_w1_b", w1b), ("hada_w2_a", w2a), ("hada_w2_b", w2b)):
        factor_dims(key, t, s)
    if t1 is not None:
        check_tucker(key, t1, w1a, w1b, "hada_t1")
        check_tucker(key, t2, w2a, w2b, "hada_t2")
        s1 = (mat(w1a).shape[1], mat(w1b).shape[1]) + tuple(t1.shape[2:])
        s2 = (mat(w2a).shape[1], mat(w2b).shape[1]) + tuple(t2.shape[2:])
        if s1 != s2:
            raise mismatch(key, s2, s1)
        return
    a1, b1, a2, b2 = mat(w1a), mat(w1b), mat(w2a), mat(w2b)
    check_inner(key, a1, b1, "hada_w1_a/hada_w1_b")
    check_inner(key, a2, b2, "hada_w2_a/hada_w2_b")
    if (a1.shape[0], b1.shape[1]) != (a2.shape[0], b2.shape[1]):
        raise mismatch(key, (a2.shape[0], b2.shape[1]), (a1.shape[0], b1.shape[1]))


def delta(module, base_weight: torch.Tensor, base_bias=None, dyn=None):
    dev = base_weight.device
    w, t1, t2 = _tensors(module)
    check(module)
    w1a, w1b, w2a, w2b = (f32(t, dev) for t in w)
    scale = rank_scale(module, int(w1b.shape[0]))
    t1, t2 = (None, None) if t1 is None else (f32(t1, dev), f32(t2, dev))
    return fit(module.key, kernel(w1a, w1b, w2a, w2b, scale, t1, t2), base_weight.shape), None


def norm(module) -> float:
    w, t1, t2 = _tensors(module)
    return kernel_norm(*w, rank_scale(module, rank(module)), t1, t2)


def compact(module, dyn, device):
    """("hada", w1a·scale, w1b, w2a, w2b) as fp32 2-D matrices, the form the patcher writes in cache-sized row
    blocks without a dense ΔW; None with a Tucker core. Equals `delta` once multiplied out."""
    w, t1, _ = _tensors(module)
    if t1 is not None:
        return None
    check(module)
    a1, b1, a2, b2 = (mat(f32(t, device)) for t in w)
    return a1 * rank_scale(module, int(b1.shape[0])), b1, a2, b2


def in_width(get) -> Optional[int]:
    b = get("hada_w1_b")  # (r, in[, kh, kw]), Tucker too
    return int(b.shape[1]) if b is not None and b.dim() >= 2 else None


ALGORITHM = Algorithm(
    name="loha", suffixes=SUFFIXES, claims=lambda t: "hada_w1_a" in t, delta=delta, check=check, rank=rank,
    norm=norm, linear_in=("hada_w1_a",), compact_kind="hada", compact=compact, in_width=in_width)
