"""LoHa: ΔW = (alpha/r)·(w1_a·w1_b) ⊙ (w2_a·w2_b), Tucker variant with `hada_t1/t2` (w?_a stored (r, out))."""
from __future__ import annotations

import torch

from ._common import check_inner, check_tucker, f32, factor_dims, fit, mat, mismatch, need, rank_scale, tucker

SUFFIXES = frozenset(
    ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "alpha", "scale", "dora_scale")
)


def rank(module) -> int:
    return int(need(module, "hada_w1_b").shape[0])


def check(module) -> None:
    key = module.key
    w1a, w1b = need(module, "hada_w1_a"), need(module, "hada_w1_b")
    w2a, w2b = need(module, "hada_w2_a"), need(module, "hada_w2_b")
    t1, t2 = module.tensors.get("hada_t1"), module.tensors.get("hada_t2")
    if (t1 is None) != (t2 is None):
        need(module, "hada_t2" if t2 is None else "hada_t1")
    for s, t in (("hada_w1_a", w1a), ("hada_w1_b", w1b), ("hada_w2_a", w2a), ("hada_w2_b", w2b)):
        factor_dims(key, t, s)
    if t1 is not None:
        check_tucker(key, t1, w1a, w1b, "hada_t1")
        check_tucker(key, t2, w2a, w2b, "hada_t2")
        return
    a1, b1, a2, b2 = mat(w1a), mat(w1b), mat(w2a), mat(w2b)
    check_inner(key, a1, b1, "hada_w1_a/hada_w1_b")
    check_inner(key, a2, b2, "hada_w2_a/hada_w2_b")
    if (a1.shape[0], b1.shape[1]) != (a2.shape[0], b2.shape[1]):
        raise mismatch(key, (a2.shape[0], b2.shape[1]), (a1.shape[0], b1.shape[1]))


def delta(module, base_weight: torch.Tensor, base_bias=None, dyn=None):
    dev = base_weight.device
    key = module.key
    w1a, w1b = f32(need(module, "hada_w1_a"), dev), f32(need(module, "hada_w1_b"), dev)
    w2a, w2b = f32(need(module, "hada_w2_a"), dev), f32(need(module, "hada_w2_b"), dev)
    scale = rank_scale(module, int(w1b.shape[0]))
    t1, t2 = module.tensors.get("hada_t1"), module.tensors.get("hada_t2")
    if (t1 is None) != (t2 is None):
        need(module, "hada_t2" if t2 is None else "hada_t1")
    if t1 is not None:
        w1 = tucker(f32(t1, dev), w1a, w1b, key)
        w2 = tucker(f32(t2, dev), w2a, w2b, key)
    else:
        a1, b1, a2, b2 = mat(w1a), mat(w1b), mat(w2a), mat(w2b)
        check_inner(key, a1, b1, "hada_w1_a/hada_w1_b")
        check_inner(key, a2, b2, "hada_w2_a/hada_w2_b")
        w1 = (a1 * scale) @ b1
        w2 = a2 @ b2
        scale = 1.0
    if w1.shape != w2.shape:
        raise mismatch(key, w2.shape, w1.shape)
    w = w1.mul_(w2)
    if scale != 1.0:
        w.mul_(scale)
    return fit(key, w, base_weight.shape), None
