"""GLoRA: ΔW = (alpha/r)·(W·A + B), A an (in, in) low-rank product, B a LoRA-like product.

Two layouts exist (tensor names swap roles):
  current LyCORIS: a1 (in,r), a2 (r,in), b1 (out,r), b2 (r,in[·k])  → A = a1·a2, B = b1·b2, r = a2.shape[0]
  old LyCORIS:     a1 (r,in), a2 (in,r), b1 (r,in[·k]), b2 (out,r)  → A = a2·a1, B = b2·b1, r = a1.shape[0]
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from .algorithm import Algorithm
from ._common import LoraStudioError, check_inner, check_tucker, f32, mat, mismatch, need, rank_scale, tucker

SUFFIXES = frozenset(("a1.weight", "a2.weight", "b1.weight", "b2.weight", "bm.weight", "alpha", "scale"))


def _layout(module, out_dim: Optional[int], in_dim: Optional[int]) -> str:
    a1, a2 = mat(need(module, "a1.weight")), mat(need(module, "a2.weight"))
    b1, b2 = mat(need(module, "b1.weight")), mat(need(module, "b2.weight"))
    r_new, r_old = a2.shape[0], a1.shape[0]
    fits_new = a1.shape[1] == r_new and b1.shape[1] == r_new and b2.shape[0] == r_new
    fits_old = a2.shape[1] == r_old and b2.shape[1] == r_old and b1.shape[0] == r_old
    if in_dim is not None:
        fits_new = fits_new and a1.shape[0] == in_dim and a2.shape[1] == in_dim
        fits_old = fits_old and a2.shape[0] == in_dim and a1.shape[1] == in_dim
    if out_dim is not None:
        fits_new = fits_new and b1.shape[0] == out_dim
        fits_old = fits_old and b2.shape[0] == out_dim
    if fits_new and fits_old:
        # degenerate square case: old only for a square W with a2.shape[0] == out (docs/spec/formats.md §2.7)
        return "old" if (out_dim == in_dim and a2.shape[0] == out_dim) else "new"
    if fits_new:
        return "new"
    if fits_old:
        return "old"
    raise LoraStudioError(
        f"{module.key}: GLoRA shapes a1 {tuple(a1.shape)}, a2 {tuple(a2.shape)}, b1 {tuple(b1.shape)}, "
        f"b2 {tuple(b2.shape)} fit neither GLoRA layout for a weight of {out_dim}×{in_dim}; wrong model or corrupt file"
    )


def _parts(module, out_dim=None, in_dim=None) -> Tuple[str, str, str, str, int]:
    """(left A, right A, left B, right B) tensor names, and the rank."""
    if _layout(module, out_dim, in_dim) == "new":
        return "a1.weight", "a2.weight", "b1.weight", "b2.weight", int(module.tensors["a2.weight"].shape[0])
    return "a2.weight", "a1.weight", "b2.weight", "b1.weight", int(module.tensors["a1.weight"].shape[0])


def rank(module) -> int:
    return _parts(module)[4]


def check(module) -> None:
    _layout(module, None, None)  # raises when the four factors fit neither layout


def kernel(W: torch.Tensor, a_l: torch.Tensor, a_r: torch.Tensor, b_l: torch.Tensor, b_r: torch.Tensor,
           scale: float = 1.0, bm: Optional[torch.Tensor] = None) -> torch.Tensor:
    """scale·(W·a_l·a_r + b_l·b_r) in fp32 (a_l (in, r), a_r (r, in), b_l (out, r), b_r (r, in·k)); with a Tucker
    core bm the B term is the LoCon Tucker chain. The B term comes back flat when W is a conv: `fit` it."""
    a_l, a_r, b_l, b_r = mat(a_l), mat(a_r), mat(b_l), mat(b_r)
    # W contracted on its input axis with (a_l·a_r), in two thin products
    if W.dim() == 2:
        wa = (W @ (a_l * scale)) @ a_r
    else:
        wa = torch.einsum("oi...,ir->or...", W, a_l * scale)
        wa = torch.einsum("or...,ri->oi...", wa, a_r)
    if bm is not None:
        # Tucker B path (no reference loader supports it): same chain as LoCon Tucker
        wb = tucker(bm, (b_l * scale).t(), b_r)
    else:
        wb = (b_l * scale) @ b_r
    return wa.add_(wb.reshape(wa.shape))


def delta(module, base_weight: torch.Tensor, base_bias=None, dyn=None):
    dev = base_weight.device
    out_dim, in_dim = base_weight.shape[0], base_weight.shape[1]
    la, ra, lb, rb, r = _parts(module, out_dim, in_dim)
    t = module.tensors
    b_l, b_r, bm = mat(t[lb]), mat(t[rb]), t.get("bm.weight")
    if bm is None:
        check_inner(module.key, b_l, b_r, f"{lb}/{rb}")
    else:
        check_tucker(module.key, bm, b_l.t(), b_r, "bm.weight")
    b_shape = (b_l.shape[0], b_r.shape[1]) + (() if bm is None else tuple(bm.shape[2:]))
    if b_shape[0] != out_dim or math.prod(b_shape) != base_weight.numel():
        raise mismatch(module.key, b_shape, base_weight.shape)
    w = kernel(f32(base_weight, dev), f32(t[la], dev), f32(t[ra], dev), f32(t[lb], dev), f32(t[rb], dev),
               rank_scale(module, r), None if bm is None else f32(bm, dev))
    return w, None


ALGORITHM = Algorithm(name="glora", suffixes=SUFFIXES, claims=lambda t: "a1.weight" in t, delta=delta, check=check,
                      rank=rank, linear_in=("a1.weight", "b1.weight"), linear_all=True)
