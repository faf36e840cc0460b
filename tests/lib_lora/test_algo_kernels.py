"""The pure tensor kernels of lib_lora/algos (factors in, delta out) against float64 formulas and lycoris-lora,
and the registry's contracts (every algorithm one descriptor; `linear_in` really is linear)."""
from __future__ import annotations

import importlib
import os
import pkgutil

os.environ.setdefault("LYCORIS_KERNEL_BACKEND", "torch")

import pytest
import torch

import lib_lora.algos as algos
from lib_lora.algos import boft, dora, glora, ia3, loha, lokr, lora, oft
from lib_lora.keys import LoraModule

G = torch.Generator().manual_seed(7)


def rnd(*shape, std=1.0):
    return torch.randn(*shape, generator=G) * std


def d64(*ts):
    return [t.double() for t in ts]


def close(a, ref, tol=1e-5):
    assert a.dtype == torch.float32 and tuple(a.shape) == tuple(ref.shape), (a.shape, ref.shape)
    err = (a.double() - ref).abs().max().item()
    assert err <= tol * max(ref.abs().max().item(), 1.0), err


def test_lora_kernel_plain_and_tucker():
    up, down = rnd(12, 4), rnd(4, 10)
    close(lora.kernel(up, down, 0.5), 0.5 * (up.double() @ down.double()))
    mid, down3 = rnd(4, 4, 3, 3), rnd(4, 6)
    u, m, d = d64(up, mid, down3)
    close(lora.kernel(up, down3, 0.5, mid), 0.5 * torch.einsum("ijhw,pi,jq->pqhw", m, u, d))
    assert lora.kernel_norm(up, down, 0.5) == pytest.approx(float(torch.linalg.norm(0.5 * (up.double() @ down.double()))),
                                                             rel=1e-6)


def test_loha_kernel_and_norm():
    a1, b1, a2, b2 = rnd(12, 4), rnd(4, 10), rnd(12, 4), rnd(4, 10)
    x1, y1, x2, y2 = d64(a1, b1, a2, b2)
    ref = 0.25 * (x1 @ y1) * (x2 @ y2)
    close(loha.kernel(a1, b1, a2, b2, 0.25), ref)
    assert loha.kernel_norm(a1, b1, a2, b2, 0.25) == pytest.approx(float(torch.linalg.norm(ref)), rel=1e-6)


def test_lokr_kernel_is_kron():
    w1, w2 = rnd(3, 4), rnd(5, 6)
    close(lokr.kernel(w1, w2), torch.kron(w1.double(), w2.double()))
    a, b = rnd(5, 2), rnd(2, 6)
    close(lokr.factor(None, a, b), a.double() @ b.double())
    t, a3, b3 = rnd(2, 2, 3, 3), rnd(2, 5), rnd(2, 4)  # Tucker W2 flattened to (rows, cols·kh·kw)
    ref = torch.einsum("ijhw,ip,jq->pqhw", *d64(t, a3, b3)).reshape(5, -1)
    close(lokr.factor(None, a3, b3, t), ref)
    assert lokr.kernel_norm(w1, w2, 2.0) == pytest.approx(float(2 * torch.linalg.norm(torch.kron(*d64(w1, w2)))),
                                                          rel=1e-6)


@pytest.mark.parametrize("on_input", [False, True])
def test_ia3_kernel(on_input):
    W, w = rnd(6, 4), rnd(4 if on_input else 6)
    ref = W.double() * (w.double()[None, :] if on_input else w.double()[:, None])
    close(ia3.kernel(W, w, on_input), ref)


def test_glora_kernel():
    W, a1, a2, b1, b2 = rnd(8, 6), rnd(6, 2), rnd(2, 6), rnd(8, 2), rnd(2, 6)
    x, p, q, r, s = d64(W, a1, a2, b1, b2)
    close(glora.kernel(W, a1, a2, b1, b2, 0.5), 0.5 * (x @ p @ q + r @ s))


def test_oft_kernel_against_lycoris():
    f_oft = pytest.importorskip("lycoris.functional.diag_oft")
    W, blocks = rnd(16, 10), rnd(4, 4, 4, std=0.1)
    r = oft.cayley(oft.skew(blocks, None, 16, kohya=False))
    close(oft.kernel(W, r), f_oft.diff_weight(W, blocks, None, constraint=None).double(), tol=1e-4)
    assert oft.kernel(W, torch.eye(4).expand(4, 4, 4)).abs().max() == 0  # R = I: no change


def test_boft_kernel_against_lycoris():
    f_boft = pytest.importorskip("lycoris.functional.boft")
    W, blocks = rnd(16, 10), rnd(3, 4, 4, 4, std=0.1)
    r = oft.cayley(oft.skew(blocks, None, 16, kohya=False))
    close(boft.kernel(W, r), f_boft.diff_weight(W, blocks, None, constraint=None, scale=1).double(), tol=1e-4)


@pytest.mark.parametrize("axis", [0, 1])
def test_dora_kernel(axis):
    W0, dw = rnd(6, 5), rnd(6, 5, std=0.1)
    g = rnd(6, 1) if axis == 0 else rnd(1, 5)
    V = W0.double() + dw.double()
    n = torch.linalg.norm(V, dim=1, keepdim=True) if axis == 0 else torch.linalg.norm(V, dim=0, keepdim=True)
    close(dora.kernel(W0, dw.clone(), g, axis), V * g.double() / n - W0.double(), tol=1e-4)


# ---------------------------------------------------------------- the registry


def test_every_algorithm_file_has_one_descriptor_in_the_registry():
    names = {m.name for m in pkgutil.iter_modules(algos.__path__) if not m.name.startswith("_")}
    described = {n for n in names if hasattr(importlib.import_module(f"lib_lora.algos.{n}"), "ALGORITHM")}
    assert {a.name for a in algos.REGISTRY} == described
    assert names - described == {"algorithm", "dora"}  # the descriptor type and the DoRA variant


def _mod(algo, tensors, alpha=None):
    return LoraModule(key="lora_unet_x", layer="model.diffusion_model.x", qkv=None, algo=algo, tensors=tensors,
                      alpha=alpha)


_SAMPLES = {
    "lora": ({"lora_up.weight": rnd(8, 3), "lora_down.weight": rnd(3, 6)}, (8, 6)),
    "loha": ({"hada_w1_a": rnd(8, 2), "hada_w1_b": rnd(2, 6), "hada_w2_a": rnd(8, 2), "hada_w2_b": rnd(2, 6)}, (8, 6)),
    "lokr": ({"lokr_w1": rnd(2, 3), "lokr_w2_a": rnd(4, 2), "lokr_w2_b": rnd(2, 2)}, (8, 6)),
    "ia3": ({"weight": rnd(8), "on_input": torch.tensor(False)}, (8, 6)),
    "full": ({"diff": rnd(8, 6), "diff_b": rnd(8)}, (8, 6)),
    "norm": ({"w_norm": rnd(8), "b_norm": rnd(8)}, (8,)),
    "glora": ({"a1.weight": rnd(6, 2), "a2.weight": rnd(2, 6), "b1.weight": rnd(8, 2), "b2.weight": rnd(2, 6)}, (8, 6)),
}


@pytest.mark.parametrize("name", sorted(_SAMPLES))
def test_linear_in_factors_really_scale_the_delta(name):
    """bake-lora folds a multiplier into `linear_in`: ΔW (and Δb) of the scaled module is m × the original."""
    algo = algos.get(name)
    tensors, shape = _SAMPLES[name]
    W, b = rnd(*shape), rnd(shape[0])
    base = algos.compute_delta(_mod(name, dict(tensors), alpha=2.0), W, b)
    present = [s for s in algo.linear_in if s in tensors]
    scaled = dict(tensors)
    for s in present if algo.linear_all else present[:1]:
        scaled[s] = tensors[s] * 0.3
    got = algos.compute_delta(_mod(name, scaled, alpha=2.0), W, b)
    for x, y in ((got.weight, base.weight), (got.bias, base.bias)):
        if y is not None:
            close(x, 0.3 * y.double())


def test_dora_variant_wraps_any_base():
    m = _mod("full", {"diff": rnd(8, 6)})
    m.dora_scale = rnd(8, 1).abs() + 1
    a = algos.algorithm_of(m)
    assert a.name == "full+dora" and a.base is algos.get("full") and not a.linear and a.norm is None
    W = rnd(8, 6)
    close(algos.compute_delta(m, W).weight, dora.kernel(W, m.tensors["diff"].clone(), m.dora_scale, 0).double())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64,
                                   torch.float8_e4m3fn])
def test_all_finite_finds_one_nan_or_infinity_anywhere(dtype):
    from lib_lora.algos._common import all_finite

    g = torch.Generator().manual_seed(3)
    scale = 1.0 if dtype == torch.float8_e4m3fn else 100.0   # e4m3fn tops out at 448
    clean = (torch.randn(4099, generator=g) * scale).to(dtype)
    assert all_finite(clean) and all_finite(clean[:0]) and all_finite(clean[::7])
    for bad in (float("nan"), float("inf"), -float("inf")):
        for pos in (0, 1234, 4098):
            t = clean.clone()
            t[pos] = torch.tensor(bad).to(dtype)   # (e4m3fn has no infinity: the cast saturates)
            assert all_finite(t) == bool(torch.isfinite(t.float()).all()), (bad, pos)
            if not (dtype == torch.float8_e4m3fn and bad in (float("inf"), -float("inf"))):
                assert not all_finite(t), (bad, pos)
