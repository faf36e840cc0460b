"""Butterfly OFT: `oft_blocks (stages, n, b, b)`; stage i mixes rows 2^i·b/2 apart. ΔW = rescale ⊙ B(W) − W."""
from __future__ import annotations

import torch

from .algorithm import Algorithm
from ._common import LoraStudioError, _num, f32, ndim, need
from .oft import _rescale, cayley, skew

SUFFIXES = frozenset(("oft_blocks", "rescale", "alpha"))


def check(module) -> None:
    blocks = need(module, "oft_blocks")
    if blocks.dim() != 4 or blocks.shape[2] != blocks.shape[3] or blocks.shape[2] % 2:
        raise LoraStudioError(f"{module.key}: BOFT blocks must be (stages, n, b, b) with even b, got {tuple(blocks.shape)}")


def kernel(W: torch.Tensor, r: torch.Tensor, rescale=None) -> torch.Tensor:
    """ΔW = rescale ⊙ B(W) − W for rotations r (stages, n, b, b); stage i mixes rows 2^i·b/2 apart."""
    stages, n, b = r.shape[0], r.shape[1], r.shape[2]
    out_dim = W.shape[0]
    x = W.reshape(out_dim, -1)
    cols = x.shape[1]
    for i in range(stages):
        k = 2**i * (b // 2)
        # rows (c, 2, k) → (c, k, 2) → blocks of b; each block multiplied by R_i (not transposed)
        y = x.reshape(-1, 2, k, cols).transpose(1, 2).reshape(n, b, cols)
        y = torch.matmul(r[i], y)
        x = y.reshape(-1, k, 2, cols).transpose(1, 2).reshape(out_dim, cols)
    new = x.reshape(W.shape)
    if rescale is not None:
        new = new * rescale
    return new - W


def _is_boft(t) -> bool:
    return ndim(t.get("oft_blocks")) == 4


def delta(module, base_weight: torch.Tensor, base_bias=None, dyn=None):
    dev = base_weight.device
    blocks = f32(need(module, "oft_blocks"), dev)
    if blocks.dim() != 4 or blocks.shape[2] != blocks.shape[3] or blocks.shape[2] % 2:
        raise LoraStudioError(f"{module.key}: BOFT blocks must be (stages, n, b, b) with even b, got {tuple(blocks.shape)}")
    stages, n, b = blocks.shape[0], blocks.shape[1], blocks.shape[2]
    out_dim = base_weight.shape[0]
    if n * b != out_dim or out_dim % (2 ** (stages - 1) * b):
        raise LoraStudioError(
            f"{module.key}: BOFT blocks {tuple(blocks.shape)} do not fit the model weight {tuple(base_weight.shape)}; wrong model"
        )
    # one constraint over all stages (LyCORIS); LyCORIS BOFT never uses kohya's always-clamp
    r = cayley(skew(blocks, _num(module.alpha), out_dim, kohya=False))
    W = f32(base_weight, dev)
    return kernel(W, r, _rescale(module, dev, out_dim, W.dim())), None


# Listed before OFT: both store `oft_blocks`, BOFT's is 4-D (stages, n, b, b).
ALGORITHM = Algorithm(name="boft", suffixes=SUFFIXES, claims=_is_boft, delta=delta, check=check, alpha_constraint=True)
