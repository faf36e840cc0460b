"""The checkpoint merge's arithmetic: every mode in float64, cast once to the output type, on cache-sized pieces
(`_Scratch.combine_into`, the streamed merge's and the live merge's kernel) or on whole chunks of any shape
(`_combine`, A's extra input channels)."""

from __future__ import annotations

# Every path evaluates the same float64 expressions, operation by operation (no fused multiply-add), and
# casts the result once to the output type:
#   weighted:   a·(1−m) + b·m
#   add-diff:   (b − c)·m + a
#   train-diff: a + (q·(b − c))·(1.8·m), q = |b − a| / (|b − c| + |b − a|), q = 0 where that sum is 0
# train-diff is supermerger's "trainDifference" (it computes in float32; here float64). Its published form
# sign(b−c)·q·|b−c| equals q·(b − c) bit for bit (q ≥ 0, rounding is symmetric). Where B equals C the
# difference is 0 and A's value is kept exactly (supermerger keeps A for a key whose B and C are equal).
TRAIN_DIFF_GAIN = 1.8


def _train_diff_into(x, y, a, m: float, s=None):
    """x = b − c, y = b − a on entry (float64 pieces); x ← a + q·(b − c)·(1.8·m). y (and `s`, a buffer of
    the same length) are clobbered."""
    import torch

    y.abs_()
    s = torch.abs(x, out=s) if s is not None else torch.abs(x)
    s.add_(y)
    y.div_(s)
    y.masked_fill_(s == 0, 0.0)
    x.mul_(y)
    x.mul_(TRAIN_DIFF_GAIN * m)
    x.add_(a)
    return x


def _combine(mode: str, a, b, c, m: float):
    """float64 result of one chunk of any shape (used for the partial-channel case)."""
    import torch

    f64 = torch.float64
    if mode == "weighted":
        out = a.to(f64, copy=True)
        out.mul_(1.0 - m)
        out.add_(b.to(f64, copy=True).mul_(m))
        return out
    d = b.to(f64, copy=True)
    d.sub_(c.to(f64))
    if mode == "train-diff":
        y = b.to(f64, copy=True)
        y.sub_(a.to(f64))
        return _train_diff_into(d, y, a.to(f64), m)
    d.mul_(m)
    d.add_(a.to(f64))
    return d


class _Scratch:
    """float64 buffers small enough to stay in the CPU cache: the arithmetic then costs about one read of
    the inputs and one write of the output (a 16 MB chunk at a time was 3-4x slower). Half-precision inputs
    are widened through float32 (exact, and about twice as fast as torch's direct half → double copy).
    SIZE stays under torch's parallel grain (32768 elements): each op then runs on the calling thread only, so
    the writer's worker threads do not also split every op over torch's thread pool (with torch's default
    threads that made a full SD1.5 merge ≈ 1.5× slower), and nothing global (torch.set_num_threads) changes."""
    SIZE = 30 << 10

    def __init__(self):
        import torch

        self.x = torch.empty(self.SIZE, dtype=torch.float64)
        self.y = torch.empty(self.SIZE, dtype=torch.float64)
        self.z = torch.empty(self.SIZE, dtype=torch.float64)
        self.s = torch.empty(self.SIZE, dtype=torch.float64)
        self.w = torch.empty(self.SIZE, dtype=torch.float32)

    def combine_into(self, mode: str, a, b, c, m: float, out) -> None:
        """out[:] = formula(a, b, c) for 1-D tensors of one length, in float64 pieces.

        Written flat on purpose: the pieces come from one `split` per operand and the loads are inline; per-piece
        slices and helper calls made the old loop ~20 % slower for the same operations (bench/README.md, merge,
        session 7)."""
        import itertools

        import torch

        S = self.SIZE
        half = (torch.float16, torch.bfloat16)
        ha, hb = a.dtype in half, b.dtype in half   # half precision: widened through the float32 buffer
        hc = c is not None and c.dtype in half
        cs = c.split(S) if c is not None else itertools.repeat(None)
        c1 = 1.0 - m
        x, y, z, s, w = self.x, self.y, self.z, self.s, self.w
        for ai, bi, ci, oi in zip(a.split(S), b.split(S), cs, out.split(S)):
            k = oi.numel()
            if k != S:   # the last, shorter piece
                x, y, z, s, w = x[:k], y[:k], z[:k], s[:k], w[:k]
            if mode == "weighted":
                x.copy_(w.copy_(ai) if ha else ai)
                x.mul_(c1)
                y.copy_(w.copy_(bi) if hb else bi)
                y.mul_(m)
                x.add_(y)
            elif mode == "add-diff":
                x.copy_(w.copy_(bi)) if hb else x.copy_(bi)
                x.sub_(y.copy_(w.copy_(ci)) if hc else y.copy_(ci))
                x.mul_(m)
                x.add_(y.copy_(w.copy_(ai)) if ha else y.copy_(ai))
            else:
                if torch.equal(bi, ci):   # no difference: A exactly (also its signed zeros)
                    oi.copy_(ai)
                    continue
                x.copy_(w.copy_(bi)) if hb else x.copy_(bi)
                x.sub_(y.copy_(w.copy_(ci)) if hc else y.copy_(ci))    # x = b − c
                y.copy_(w.copy_(bi)) if hb else y.copy_(bi)
                y.sub_(z.copy_(w.copy_(ai)) if ha else z.copy_(ai))    # y = b − a, z = a
                _train_diff_into(x, y, z, m, s)
            oi.copy_(x)
