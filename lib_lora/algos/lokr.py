"""LoKr: ΔW = scale·kron(W1, W2); each factor full or low-rank, W2 optionally Tucker.

scale = alpha/r when a factor is low-rank (r from its `_b` half), 1 when both are stored full.
"""
from __future__ import annotations

from typing import Optional

import torch

from ._common import LoraStudioError, UnsupportedModule, check_inner, check_tucker, f32, fit, mat, need, rank_scale, tucker

SUFFIXES = frozenset(
    ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "alpha", "scale", "dora_scale")
)


def rank(module) -> Optional[int]:
    t = module.tensors
    if t.get("lokr_w1") is None and t.get("lokr_w1_b") is not None:
        return int(t["lokr_w1_b"].shape[0])
    if t.get("lokr_w2") is None and t.get("lokr_w2_b") is not None:
        return int(t["lokr_w2_b"].shape[0])
    return None  # both factors full


def _factor1(module, dev) -> torch.Tensor:
    w1 = module.tensors.get("lokr_w1")
    if w1 is not None:
        return mat(f32(w1, dev))
    a, b = mat(f32(need(module, "lokr_w1_a"), dev)), mat(f32(need(module, "lokr_w1_b"), dev))
    check_inner(module.key, a, b, "lokr_w1_a/lokr_w1_b")
    return a @ b


def _factor2(module, dev) -> torch.Tensor:
    """W2 flattened to (b, d·kh·kw): kron of the flat matrix reshapes to the conv weight exactly."""
    w2 = module.tensors.get("lokr_w2")
    if w2 is not None:
        return mat(f32(w2, dev))
    a, b = f32(need(module, "lokr_w2_a"), dev), f32(need(module, "lokr_w2_b"), dev)
    t2 = module.tensors.get("lokr_t2")
    if t2 is not None:
        return mat(tucker(f32(t2, dev), a, b, module.key))
    a, b = mat(a), mat(b)
    check_inner(module.key, a, b, "lokr_w2_a/lokr_w2_b")
    return a @ b


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


def delta(module, base_weight: torch.Tensor, base_bias=None, dyn=None):
    if module.tensors.get("lokr_t1") is not None:
        raise UnsupportedModule(f"{module.key}: LoKr with a Tucker core on W1 (lokr_t1) is not supported; the module is skipped")
    dev = base_weight.device
    r = rank(module)
    # r is None for full W1 and W2: alpha is ignored there (LyCORIS, A1111, ComfyUI agree)
    scale = rank_scale(module, r)
    w1 = _factor1(module, dev) * scale
    w2 = _factor2(module, dev)
    a, c = w1.shape
    b, d = w2.shape
    if a * b != base_weight.shape[0]:
        raise LoraStudioError(
            f"{module.key}: LoKr factors {tuple(w1.shape)} ⊗ {tuple(w2.shape)} give {a * b} output rows "
            f"but the model weight is {tuple(base_weight.shape)}; the LoRA was made for another model"
        )
    w = (w1[:, None, :, None] * w2[None, :, None, :]).reshape(a * b, c * d)
    return fit(module.key, w, base_weight.shape), None
