"""DoRA, a variant of any base algorithm: W_dora = V·g/‖V‖_axis with V = W0 + ΔW_base; returns W_dora − W0.

W0 is the ORIGINAL weight (order independent, linear in the multiplier; A1111/ComfyUI convention).
The norm axis comes from the shape of g: (out,1[,1,1]) or (out,) → per output row; (1,in[,1,1]) → per
input channel. PEFT's `lora_magnitude_vector` is always output-axis ((1,out,1,1) on convs included).
"""
from __future__ import annotations

import dataclasses
import functools

import torch

from .algorithm import Algorithm
from ._common import LoraStudioError, f32

EPS = torch.finfo(torch.float32).eps


def axis_of(key: str, g: torch.Tensor, shape, peft: bool = False) -> int:
    """0 = norm per output row, 1 = norm per input channel."""
    out_dim, in_dim = shape[0], shape[1] if len(shape) > 1 else 1
    n = g.numel()
    if peft or g.dim() == 1:
        if n == out_dim:
            return 0
    elif n == out_dim and g.shape[0] == out_dim:
        return 0
    elif n == in_dim and g.dim() > 1 and g.shape[1] == in_dim:
        return 1
    raise LoraStudioError(
        f"{key}: DoRA scale has shape {tuple(g.shape)}, which fits neither axis of the model weight {tuple(shape)}; wrong model"
    )


def kernel(W0: torch.Tensor, delta: torch.Tensor, g: torch.Tensor, axis: int) -> torch.Tensor:
    """V·g/‖V‖_axis − W0 with V = W0 + delta, all fp32; `delta` is reused as the output."""
    V = W0 + delta  # new tensor: delta may be reused below
    if axis == 0:
        norm = torch.linalg.vector_norm(V.reshape(V.shape[0], -1), dim=1)
        view = (V.shape[0],) + (1,) * (V.dim() - 1)
    else:
        norm = torch.linalg.vector_norm(V.transpose(0, 1).reshape(V.shape[1], -1), dim=1)
        view = (1, V.shape[1]) + (1,) * (V.dim() - 2)
    factor = g.reshape(view) / (norm.reshape(view) + EPS)
    return V.mul_(factor).sub_(W0)


def magnitude(module):
    """The module's DoRA magnitude g, or None (plain module)."""
    d = getattr(module, "dora_scale", None)
    if d is None:
        d = module.tensors.get("dora_scale")
    return d


@functools.lru_cache(maxsize=None)
def variant(base: Algorithm) -> Algorithm:
    """`base` with DoRA on top: same tensors, detection and rank; no norm without the model weight, and not
    linear in any factor (a multiplier cannot be folded into the file)."""

    def delta(module, base_weight, base_bias=None, dyn=None):
        w, b = base.delta(module, base_weight, base_bias, dyn)
        if w is None:
            return w, b
        dev = base_weight.device
        W0 = f32(base_weight, dev)
        g = magnitude(module)
        axis = axis_of(module.key, g, W0.shape, bool(getattr(module, "peft_dora", False)))
        return kernel(W0, w, f32(g, dev), axis), b

    return dataclasses.replace(base, name=base.name + "+dora", delta=delta, norm=None, linear_in=(),
                               compact_kind=None, compact=None, cache=True, base=base)
