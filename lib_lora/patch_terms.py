"""Terms: what one LoRA module adds to its layer at multiplier 1, in the form the patcher writes it. Each term
has `rows`, `nbytes`, `bias`, `dense()` (the full ΔW), `add_from(src, out, t0, t1, m)` (out = src + m·ΔW[t0:t1]
in one fused op where the dtypes allow; False: use add_to) and `add_to(out, t0, t1, m)` (out += m·ΔW[t0:t1]).
`Dense` (a full ΔW), `LowRank` (up @ down), `Hada` (LoHa in row blocks), `Kron` (LoKr's two factors).
"""

from __future__ import annotations

import torch


def fits(rows: int, cols: int, shape) -> bool:
    """Factors giving a rows × cols product make a weight of `shape` (first dim rows, same element count)."""
    n = 1
    for d in shape:
        n *= int(d)
    return len(shape) > 0 and rows == int(shape[0]) and rows * cols == n


HALF = (torch.float16, torch.bfloat16)


class Dense:
    """A full ΔW (and Δb), shaped like the target: fp32, or the weight's dtype on fp16/bf16 models.

    Why the weight dtype there: a change is then one fused read-read-write of 2-byte tensors
    (torch.add(W0, ΔW, alpha=m, out=W)), 1.6-2.9× the copy bound where the fp32 form costs 5-7× (fp16 → fp32
    scratch, add, cast back), and the cache holds half the bytes. torch computes that add in fp32 and casts
    once, but rounds ΔW and m to the weight dtype first; so |W − (W0 + m·ΔW)| ≤ ½ ulp(W) + 2·u·|m·ΔW|, with
    u = 2⁻¹¹ (fp16) / 2⁻⁸ (bf16) — the error of a weight whose delta was stored in the model's dtype, below
    the built-in Lora's (which computes ΔW and m·ΔW in that dtype). Tested against float64 in
    tests/lib_lora/test_patcher.py; measured in bench/README.md. Fresh apply and rescale use the same form,
    so they agree bit for bit; restore copies the exact backup as always."""

    def __init__(self, delta, dtype=torch.float32):
        w = delta.weight
        if w is not None and dtype in HALF:
            w = w.to(dtype)
        self.weight, self.bias = w, delta.bias
        self.rows = 0 if self.weight is None else int(self.weight.shape[0])

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.weight, self.bias) if t is not None)

    def dense(self):
        return self.weight

    def add_from(self, src, out, t0, t1, m) -> bool:
        # same dtype only: a mixed fp16+fp32 add measured 2-4x slower than converting W0 first (same result)
        if self.weight is None or not src.dtype == out.dtype == self.weight.dtype:
            return False
        torch.add(src, self.weight[t0:t1], alpha=m, out=out)
        return True

    def add_to(self, out, t0, t1, m) -> None:
        if self.weight is not None:
            out.add_(self.weight[t0:t1], alpha=m)


class LowRank:
    """up [rows, r] (already × alpha/rank) and down [r, cols]: ΔW = up @ down, never materialised."""

    bias = None

    def __init__(self, up, down, shape):
        self.up, self.down, self.shape = up.contiguous(), down.contiguous(), tuple(shape)
        self.rows = int(up.shape[0])
        self.nbytes = (up.numel() + down.numel()) * 4

    def dense(self):
        return (self.up @ self.down).reshape(self.shape)

    def add_from(self, src, out, t0, t1, m) -> bool:
        if src.dtype != torch.float32:
            return False
        torch.addmm(src.view(t1 - t0, -1), self.up[t0:t1], self.down, alpha=m, out=out.view(t1 - t0, -1))
        return True

    def add_to(self, out, t0, t1, m) -> None:
        out.view(t1 - t0, -1).addmm_(self.up[t0:t1], self.down, alpha=m)


_BLOCK = 1 << 17   # elements per row block of a factor write (512 KB in fp32): a few such blocks stay in L2/L3


def _row_blocks(t0: int, t1: int, cols: int):
    step = max(1, _BLOCK // max(1, cols))
    for r0 in range(t0, t1, step):
        yield r0, min(r0 + step, t1)


class Hada:
    """LoHa: a1 [rows, r1] (already × scale), b1 [r1, cols], a2 [rows, r2], b2 [r2, cols]; ΔW = (a1@b1) ⊙ (a2@b2).

    Used where the dense ΔW does not fit the cache (budget 0 = no memory beyond the backups, the built-in Lora's
    overhead): written in row blocks that stay in the CPU cache (both products, then one fused
    W = W0 + m·P1⊙P2 per block in fp32, cast once), so main memory sees one read of W0 and one write of W, and no
    ΔW-sized buffer is ever allocated. The products cost 2·(r1+r2) flops per weight (bench/README.md)."""

    bias = None

    def __init__(self, a1, b1, a2, b2, shape):
        self.a1, self.b1, self.a2, self.b2 = (t.contiguous() for t in (a1, b1, a2, b2))
        self.shape = tuple(shape)
        self.rows = int(a1.shape[0])
        self.nbytes = sum(t.numel() for t in (a1, b1, a2, b2)) * 4

    def dense(self):
        return (self.a1 @ self.b1).mul_(self.a2 @ self.b2).reshape(self.shape)

    def _products(self, r0, r1, buf):
        n = (r1 - r0) * self.b1.shape[1]
        p1, p2 = buf[:n].view(r1 - r0, -1), buf[_BLOCK:_BLOCK + n].view(r1 - r0, -1)
        torch.mm(self.a1[r0:r1], self.b1, out=p1)
        torch.mm(self.a2[r0:r1], self.b2, out=p2)
        return p1, p2

    def _buf(self, n: int):
        return torch.empty(n * _BLOCK, dtype=torch.float32, device=self.a1.device)

    def add_from(self, src, out, t0, t1, m) -> bool:
        cols = self.b1.shape[1]
        if out.dtype not in (torch.float32,) + HALF or src.dtype != out.dtype or cols > _BLOCK:
            return False
        s2, o2 = src.view(t1 - t0, cols), out.view(t1 - t0, cols)
        fp32 = out.dtype == torch.float32
        buf = self._buf(2 if fp32 else 3)
        for r0, r1 in _row_blocks(t0, t1, cols):
            p1, p2 = self._products(r0, r1, buf)
            if fp32:
                torch.addcmul(s2[r0 - t0:r1 - t0], p1, p2, value=m, out=o2[r0 - t0:r1 - t0])
            else:  # W0 to fp32 inside the block, one cast on the way out
                acc = buf[2 * _BLOCK:2 * _BLOCK + p1.numel()].view(p1.shape)
                acc.copy_(s2[r0 - t0:r1 - t0])
                acc.addcmul_(p1, p2, value=m)
                o2[r0 - t0:r1 - t0].copy_(acc)
        return True

    def add_to(self, out, t0, t1, m) -> None:
        cols = self.b1.shape[1]
        if cols > _BLOCK:
            out.add_(self.dense()[t0:t1], alpha=m)
            return
        o2, buf = out.view(t1 - t0, cols), self._buf(2)
        for r0, r1 in _row_blocks(t0, t1, cols):
            p1, p2 = self._products(r0, r1, buf)
            o2[r0 - t0:r1 - t0].addcmul_(p1, p2, value=m)


class Kron:
    """LoKr: w1 [a, c] (already × scale) ⊗ w2 [b, d]; row i·b+k, column j·d+l holds w1[i,j]·w2[k,l].
    Cached as the two factors (many times smaller than ΔW) and written with one broadcast addcmul."""

    bias = None

    def __init__(self, w1, w2, shape):
        self.w1, self.w2, self.shape = w1.contiguous(), w2.contiguous(), tuple(shape)
        self.rows = int(w1.shape[0] * w2.shape[0])
        self.nbytes = (w1.numel() + w2.numel()) * 4

    def dense(self):
        a, c = self.w1.shape
        b, d = self.w2.shape
        return (self.w1[:, None, :, None] * self.w2[None, :, None, :]).reshape(a * b, c * d).reshape(self.shape)

    def _views(self, t0, t1):
        """Broadcast views for rows t0..t1 when they are whole rows of w1, else None."""
        b = self.w2.shape[0]
        if t0 % b or t1 % b:
            return None
        g, c, d = (t1 - t0) // b, self.w1.shape[1], self.w2.shape[1]
        return self.w1[t0 // b:t1 // b].view(g, 1, c, 1), self.w2.view(1, b, 1, d), (g, b, c, d)

    def add_from(self, src, out, t0, t1, m) -> bool:
        v = self._views(t0, t1)
        if v is None or src.dtype != torch.float32:
            return False
        torch.addcmul(src.view(v[2]), v[0], v[1], value=m, out=out.view(v[2]))
        return True

    def add_to(self, out, t0, t1, m) -> None:
        v = self._views(t0, t1)
        if v is None:  # a q/k/v slice cutting through a row of w1
            out.add_(self.dense()[t0:t1], alpha=m)
        else:
            out.view(v[2]).addcmul_(v[0], v[1], value=m)
