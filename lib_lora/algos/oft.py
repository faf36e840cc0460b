"""Orthogonal fine-tuning with block-diagonal R: LyCORIS diag-OFT, kohya OFT, old LyCORIS `oft_diag`.

W' = rescale ⊙ (R_kᵀ·W_k per block of output rows), ΔW = W' − W (linear in the multiplier, A1111 style).
R is the Cayley transform of Q = B − Bᵀ, computed in fp32; `alpha` is a constraint on ‖Q‖_F.
"""
from __future__ import annotations

from typing import Optional

import torch

from .algorithm import Algorithm
from ._common import LoraStudioError, _num, f32, need

SUFFIXES = frozenset(("oft_blocks", "oft_diag", "rescale", "alpha"))


def is_kohya(module) -> bool:
    flag = getattr(module, "kohya_oft", None)
    if flag is not None:
        return bool(flag)
    return module.key.startswith("oft_")  # kohya networks.oft writes `oft_unet_…`


def skew(blocks: torch.Tensor, alpha: Optional[float], out_dim: int, kohya: bool) -> torch.Tensor:
    """Q = B − Bᵀ, with ‖Q‖ (all blocks jointly) capped at alpha·out_dim."""
    q = blocks - blocks.transpose(-1, -2)
    if kohya:
        # kohya always clamps: alpha 0 (or missing) means R = I
        c = (alpha or 0.0) * out_dim
        n = torch.linalg.vector_norm(q)
        return q * ((torch.clamp(n, max=c) + 1e-8) / (n + 1e-8))
    if alpha is not None and alpha > 0:
        c = alpha * out_dim
        n = torch.linalg.vector_norm(q)
        if n > c:
            q = q * (c / n)
    return q


def cayley(q: torch.Tensor) -> torch.Tensor:
    """R = (I+Q)(I−Q)⁻¹; both factors are functions of Q and commute, so R = solve(I−Q, I+Q)."""
    eye = torch.eye(q.shape[-1], device=q.device, dtype=q.dtype)
    return torch.linalg.solve(eye - q, eye + q)


def _rescale(module, dev, out_dim: int, ndim: int) -> Optional[torch.Tensor]:
    s = module.tensors.get("rescale")
    if s is None:
        return None
    if s.numel() != out_dim:
        raise LoraStudioError(
            f"{module.key}: OFT rescale has shape {tuple(s.shape)} but the model weight has {out_dim} output rows; wrong model"
        )
    return f32(s, dev).reshape(out_dim, *([1] * (ndim - 1)))


def check(module) -> None:
    blocks = module.tensors.get("oft_blocks")
    if blocks is None:
        blocks = need(module, "oft_diag")
    if blocks.dim() != 3 or blocks.shape[1] != blocks.shape[2]:
        raise LoraStudioError(f"{module.key}: OFT blocks must be (n, bs, bs), got {tuple(blocks.shape)}; corrupt file")


def kernel(W: torch.Tensor, r: torch.Tensor, rescale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """ΔW = rescale ⊙ (Rᵀ·W per block of output rows) − W, for R (n, bs, bs) with n·bs = W.shape[0]; rescale
    shaped to broadcast over W's rows ((out, 1[, 1, 1]))."""
    n, bs = r.shape[0], r.shape[1]
    eye = torch.eye(bs, device=W.device, dtype=W.dtype)
    # ΔW = (R − I)ᵀ·W blockwise: no W-sized subtraction, and exact for tiny rotations
    d = torch.matmul((r - eye).transpose(1, 2), W.reshape(n, bs, -1)).reshape(W.shape)
    if rescale is not None:
        d.mul_(rescale).add_(W * (rescale - 1))  # s·RᵀW − W
    return d


def delta(module, base_weight: torch.Tensor, base_bias=None, dyn=None):
    dev = base_weight.device
    out_dim = base_weight.shape[0]
    stored_r = module.tensors.get("oft_blocks") is None
    blocks = f32(need(module, "oft_diag") if stored_r else need(module, "oft_blocks"), dev)
    if blocks.dim() != 3 or blocks.shape[1] != blocks.shape[2]:
        raise LoraStudioError(f"{module.key}: OFT blocks must be (n, bs, bs), got {tuple(blocks.shape)}; corrupt file")
    n, bs = blocks.shape[0], blocks.shape[1]
    if n * bs != out_dim:
        raise LoraStudioError(
            f"{module.key}: OFT blocks {tuple(blocks.shape)} cover {n * bs} output rows but the model weight is "
            f"{tuple(base_weight.shape)}; the LoRA was made for another model"
        )
    if stored_r:
        r = blocks  # old LyCORIS OFT stores R itself
    else:
        r = cayley(skew(blocks, _num(module.alpha), out_dim, is_kohya(module)))
    W = f32(base_weight, dev)
    return kernel(W, r, _rescale(module, dev, out_dim, W.dim())), None


ALGORITHM = Algorithm(name="oft", suffixes=SUFFIXES, claims=lambda t: "oft_blocks" in t or "oft_diag" in t,
                      delta=delta, check=check, alpha_constraint=True)
