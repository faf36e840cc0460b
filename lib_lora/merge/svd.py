"""The one home of "ΔW → low-rank factors": exact thin SVDs (of a dense ΔW, or of a product up·down without
forming it), the rank rules of the dynamic resize methods, and truncation to up/down factors.

Matrices are 2-D here: a conv ΔW is flattened to (out, in·kh·kw) by the caller, factors to (out, r) and (r, n).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

MIN_SV = 1e-6  # a largest singular value at or below this is a zero matrix (rank 1 is kept, as sd-scripts does)


@dataclass
class Svd:
    """Thin SVD W = U·diag(S)·Vh with S descending; `length` = min(out, n), the length a full SVD's spectrum
    has (S may be shorter: the missing values are 0)."""
    U: torch.Tensor
    S: torch.Tensor
    Vh: torch.Tensor
    length: int


def dense_svd(w: torch.Tensor, dtype=torch.float64) -> Svd:
    """Thin SVD of a dense 2-D matrix (the straightforward route: extraction, other algorithms' ΔW)."""
    w = w.reshape(w.shape[0], -1).to(dtype)
    U, S, Vh = torch.linalg.svd(w, full_matrices=False)
    return Svd(U, S, Vh, min(w.shape))


def lowrank_svd(up: torch.Tensor, down: torch.Tensor, dtype=torch.float64) -> Svd:
    """Exact thin SVD of up·down without forming it: up = Q1·R1, downᵀ = Q2·R2, core C = R1·R2ᵀ (r×r),
    C = Uc·Σ·Vcᵀ, so up·down = (Q1·Uc)·Σ·(Q2·Vc)ᵀ. Cost O((out + n)·r²) instead of O(out·n·min(out, n));
    the singular values equal a full SVD's nonzero ones, the vectors agree up to sign."""
    u = up.reshape(up.shape[0], -1).to(dtype)
    d = down.reshape(down.shape[0], -1).to(dtype)
    q1, r1 = torch.linalg.qr(u)
    q2, r2 = torch.linalg.qr(d.t())
    uc, s, vch = torch.linalg.svd(r1 @ r2.t(), full_matrices=False)
    return Svd(q1 @ uc, s, vch @ q2.t(), min(u.shape[0], d.shape[1]))


def select_rank(S: torch.Tensor, length: int, method: str = "none", param: Optional[float] = None,
                cap: int = 1) -> int:
    """Rank the resize keeps, with sd-scripts' rules for the same parameter. `cap` is the requested rank
    (the maximum for dynamic methods). The criteria see the spectrum padded with zeros to `length`:
      sv_ratio t:      k = count of S_i > S_0 / t
      sv_cumulative t: k = smallest count with ΣS_<k / ΣS ≥ t
      sv_fro t:        k = smallest count with ΣS²_<k / ΣS² ≥ t²
    then rank = min(cap, clamp(k, 1, length − 1) + 1) (one more than the criterion needs, as sd-scripts
    does); a zero matrix (S_0 ≤ 1e-6) keeps rank 1."""
    s = S.double()
    if s.numel() == 0 or float(s[0]) <= MIN_SV:
        return 1
    if method == "none":
        return max(1, min(cap, length))
    if method == "sv_ratio":
        k = int(torch.sum(s > s[0] / param))
    elif method in ("sv_cumulative", "sv_fro"):
        v = s if method == "sv_cumulative" else s * s
        target = param if method == "sv_cumulative" else param * param
        share = torch.cumsum(v, 0) / torch.sum(v)
        # the padded zeros repeat the last share, so a target above it lands past the end (length)
        k = int(torch.searchsorted(share, torch.tensor([target], dtype=share.dtype))[0]) + 1
        if k > s.numel():
            k = length
    else:
        raise ValueError(f"unknown method {method!r}")
    return min(cap, max(1, min(k, length - 1)) + 1)


def retained(S: torch.Tensor, rank: int) -> tuple:
    """(Frobenius share kept, nuclear share kept) when the first `rank` values are kept; 1.0 for a zero matrix."""
    s = S.double()
    fro = float(torch.sum(s * s))
    total = float(torch.sum(s))
    if fro <= 0.0:
        return 1.0, 1.0
    return math.sqrt(float(torch.sum(s[:rank] ** 2)) / fro), float(torch.sum(s[:rank])) / total


def truncate(svd: Svd, rank: int, dtype=torch.float32) -> tuple:
    """(up (out, rank), down (rank, n)) = the best rank-`rank` factors, up = U·diag(S); ranks beyond the
    available singular values are zero columns/rows (their singular value is 0)."""
    k = min(rank, svd.S.numel())
    up = svd.U[:, :k] * svd.S[:k]
    down = svd.Vh[:k]
    if k < rank:
        up = torch.cat([up, up.new_zeros(up.shape[0], rank - k)], 1)
        down = torch.cat([down, down.new_zeros(rank - k, down.shape[1])], 0)
    return up.to(dtype).contiguous(), down.to(dtype).contiguous()


def factorise(delta: torch.Tensor, rank: int, dtype=torch.float32) -> tuple:
    """Optimal rank-`rank` factors (up, down) of a dense ΔW (conv: (out, in, kh, kw) → down (r, in, kh, kw),
    up (out, r, 1, 1)); alpha = rank reproduces ΔW's best approximation."""
    svd = dense_svd(delta)
    r = max(1, min(rank, svd.length))
    up, down = truncate(svd, r, dtype)
    return shape_factors(up, down, tuple(delta.shape))


def shape_factors(up: torch.Tensor, down: torch.Tensor, shape: tuple) -> tuple:
    """2-D factors in the layout LoRA files use for a weight of `shape` (conv: 4-D up and down)."""
    if len(shape) == 4:
        return up.reshape(shape[0], -1, 1, 1), down.reshape(down.shape[0], *shape[1:])
    return up, down


def clamp(up: torch.Tensor, down: torch.Tensor, quantile: float) -> tuple:
    """sd-scripts' optional clamp: both factors limited to ±(the `quantile` of |concat(up, down)|). Lossy:
    applied only when asked."""
    flat = torch.cat([up.reshape(-1), down.reshape(-1)]).abs().float()
    if flat.numel() > 1 << 24:  # torch.quantile's input limit: a strided sample keeps the estimate
        flat = flat[:: flat.numel() // (1 << 24) + 1]
    hi = float(torch.quantile(flat, quantile))
    return up.clamp(-hi, hi), down.clamp(-hi, hi)
