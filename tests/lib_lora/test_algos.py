"""lib_lora.algos against lycoris-lora (functional oracles, module forward on toy layers) or plain formulas."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Dict, Optional

os.environ["LYCORIS_KERNEL_BACKEND"] = "torch"  # before importing lycoris: no fused/compiled kernels

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

lycoris = pytest.importorskip("lycoris")
from lycoris.functional import boft as f_boft  # noqa: E402
from lycoris.functional import diag_oft as f_oft  # noqa: E402
from lycoris.functional import general as f_general  # noqa: E402
from lycoris.functional import locon as f_locon  # noqa: E402
from lycoris.functional import loha as f_loha  # noqa: E402
from lycoris.functional import lokr as f_lokr  # noqa: E402
from lycoris.modules.full import FullModule  # noqa: E402
from lycoris.modules.glora import GLoRAModule  # noqa: E402
from lycoris.modules.ia3 import IA3Module  # noqa: E402
from lycoris.modules.norms import NormModule  # noqa: E402

from lib_lora.algos import Delta, UnsupportedModule, compute_delta, detect_algo, rank_of, unknown_suffixes  # noqa: E402
from lib_lora.errors import LoraStudioError  # noqa: E402


@dataclass
class _LocalModule:  # structurally identical to keys.LoraModule (ARCHITECTURE.md)
    key: str
    layer: str
    qkv: Optional[int]
    algo: str
    tensors: Dict[str, torch.Tensor]
    alpha: Optional[float]
    scale: Optional[float]
    dora_scale: Optional[torch.Tensor]
    slot: Optional[int]
    is_te: bool
    peft_dora: bool = field(default=False)


try:
    from lib_lora.keys import LoraModule as _Real
except Exception:  # keys.py not written yet
    _Real = None


def mk(algo, tensors, alpha=None, scale=None, dora_scale=None, key="lora_unet_test", peft_dora=False):
    kw = dict(key=key, layer="model.diffusion_model.test", qkv=None, algo=algo, tensors=tensors, alpha=alpha,
              scale=scale, dora_scale=dora_scale, slot=None, is_te=False)
    if _Real is not None:
        try:
            m = _Real(**kw)
            if peft_dora:
                m.peft_dora = True
            return m
        except TypeError:
            pass
    return _LocalModule(**kw, peft_dora=peft_dora)


torch.manual_seed(0)
G = torch.Generator().manual_seed(1234)


def rnd(*shape, std=1.0):
    return torch.randn(*shape, generator=G) * std


def close(a, b, tol=1e-4):
    assert a.dtype == torch.float32
    assert a.shape == b.shape, (a.shape, b.shape)
    err = (a - b.float()).abs().max().item()
    ref = b.float().abs().max().item()
    assert err <= tol * max(ref, 1.0), f"max error {err} vs scale {ref}"


# ---------------------------------------------------------------- LoRA / LoCon

LORA_CASES = {
    # name: (weight shape, down, up, mid)
    "linear": ((12, 10), (4, 10), (12, 4), None),
    "conv1x1": ((12, 10, 1, 1), (4, 10, 1, 1), (12, 4, 1, 1), None),
    "conv1x1_2d_factors": ((12, 10, 1, 1), (4, 10), (12, 4), None),
    "linear_4d_factors": ((12, 10), (4, 10, 1, 1), (12, 4, 1, 1), None),
    "conv3x3": ((12, 10, 3, 3), (4, 10, 3, 3), (12, 4, 1, 1), None),
    "conv3x3_tucker": ((12, 10, 3, 3), (4, 10, 1, 1), (12, 4, 1, 1), (4, 4, 3, 3)),
    "conv3x3_flat_down": ((12, 10, 3, 3), (4, 90), (12, 4), None),
}


@pytest.mark.parametrize("case", sorted(LORA_CASES))
def test_lora_matches_lycoris(case):
    wshape, dshape, ushape, mshape = LORA_CASES[case]
    down, up = rnd(*dshape), rnd(*ushape)
    mid = rnd(*mshape) if mshape else None
    t = {"lora_down.weight": down, "lora_up.weight": up}
    if mid is not None:
        t["lora_mid.weight"] = mid
    d = compute_delta(mk("lora", t, alpha=3.0), torch.zeros(wshape))
    assert isinstance(d, Delta) and d.bias is None
    ref = f_locon.diff_weight(down, up, mid, gamma=3.0 / 4)
    close(d.weight, ref.reshape(wshape))


def test_lora_dyn_keeps_first_ranks_with_full_rank_scale():
    down, up = rnd(8, 10), rnd(12, 8)
    m = mk("lora", {"lora_down.weight": down, "lora_up.weight": up}, alpha=4.0)
    d = compute_delta(m, torch.zeros(12, 10), dyn=3)
    close(d.weight, (up[:, :3] @ down[:3]) * (4.0 / 8))
    # dyn ≥ rank is the full module
    close(compute_delta(m, torch.zeros(12, 10), dyn=99).weight, up @ down * 0.5)


def test_lora_dyn_tucker():
    down, up, mid = rnd(6, 5, 1, 1), rnd(7, 6, 1, 1), rnd(6, 6, 3, 3)
    t = {"lora_down.weight": down, "lora_up.weight": up, "lora_mid.weight": mid}
    d = compute_delta(mk("lora", t, alpha=2.0), torch.zeros(7, 5, 3, 3), dyn=2)
    ref = f_locon.diff_weight(down[:2], up[:, :2], mid[:2, :2], gamma=2.0 / 6)
    close(d.weight, ref)


@pytest.mark.parametrize("alpha", [None, 0.0])
def test_missing_or_zero_alpha_is_scale_one(alpha):
    down, up = rnd(4, 10), rnd(12, 4)
    d = compute_delta(mk("lora", {"lora_down.weight": down, "lora_up.weight": up}, alpha=alpha), torch.zeros(12, 10))
    close(d.weight, up @ down)


def test_explicit_scale_overrides_alpha():
    down, up = rnd(4, 10), rnd(12, 4)
    m = mk("lora", {"lora_down.weight": down, "lora_up.weight": up}, alpha=1.0, scale=0.7)
    close(compute_delta(m, torch.zeros(12, 10)).weight, up @ down * 0.7)


def test_peft_names_and_fp16_factors():
    down, up = rnd(4, 10).half(), rnd(12, 4).bfloat16()
    d = compute_delta(mk("lora", {"lora_A.weight": down, "lora_B.weight": up}, alpha=2.0), torch.zeros(12, 10).half())
    close(d.weight, (up.float() @ down.float()) * 0.5)


# ---------------------------------------------------------------- LoHa

def test_loha_linear():
    w1a, w1b, w2a, w2b = rnd(12, 4), rnd(4, 10), rnd(12, 4), rnd(4, 10)
    t = {"hada_w1_a": w1a, "hada_w1_b": w1b, "hada_w2_a": w2a, "hada_w2_b": w2b}
    d = compute_delta(mk("loha", t, alpha=2.0), torch.zeros(12, 10))
    close(d.weight, f_loha.diff_weight(w1b, w1a, w2b, w2a, None, None, gamma=0.5))


def test_loha_conv_flattened():
    w1a, w1b, w2a, w2b = rnd(12, 4), rnd(4, 90), rnd(12, 4), rnd(4, 90)
    t = {"hada_w1_a": w1a, "hada_w1_b": w1b, "hada_w2_a": w2a, "hada_w2_b": w2b}
    d = compute_delta(mk("loha", t, alpha=6.0), torch.zeros(12, 10, 3, 3))
    ref = f_loha.diff_weight(w1b, w1a, w2b, w2a, None, None, gamma=1.5)
    close(d.weight, ref.reshape(12, 10, 3, 3))


def test_loha_tucker():
    r = 4
    w1a, w1b, w2a, w2b = rnd(r, 12), rnd(r, 10), rnd(r, 12), rnd(r, 10)
    t1, t2 = rnd(r, r, 3, 3), rnd(r, r, 3, 3)
    t = {"hada_w1_a": w1a, "hada_w1_b": w1b, "hada_w2_a": w2a, "hada_w2_b": w2b, "hada_t1": t1, "hada_t2": t2}
    d = compute_delta(mk("loha", t, alpha=1.0), torch.zeros(12, 10, 3, 3))
    close(d.weight, f_loha.diff_weight(w1b, w1a, w2b, w2a, t1, t2, gamma=1.0 / r))


# ---------------------------------------------------------------- LoKr

LOKR_FORMS = {
    # name: (weight shape, {suffix: shape}); out 12 = 3·4, in 10 = 2·5
    "full_full_linear": ((12, 10), {"lokr_w1": (3, 2), "lokr_w2": (4, 5)}),
    "full_lowrank_linear": ((12, 10), {"lokr_w1": (3, 2), "lokr_w2_a": (4, 2), "lokr_w2_b": (2, 5)}),
    "both_lowrank_linear": ((12, 10), {"lokr_w1_a": (3, 2), "lokr_w1_b": (2, 2), "lokr_w2_a": (4, 2), "lokr_w2_b": (2, 5)}),
    "lowrank_full_linear": ((12, 10), {"lokr_w1_a": (3, 1), "lokr_w1_b": (1, 2), "lokr_w2": (4, 5)}),
    "full_full_conv": ((12, 10, 3, 3), {"lokr_w1": (3, 2), "lokr_w2": (4, 5, 3, 3)}),
    "full_lowrank_conv": ((12, 10, 3, 3), {"lokr_w1": (3, 2), "lokr_w2_a": (4, 2), "lokr_w2_b": (2, 45)}),
    "full_lowrank_conv1x1": ((12, 10, 1, 1), {"lokr_w1": (3, 2), "lokr_w2_a": (4, 2), "lokr_w2_b": (2, 5)}),
}


@pytest.mark.parametrize("form", sorted(LOKR_FORMS))
def test_lokr_forms(form):
    wshape, shapes = LOKR_FORMS[form]
    t = {k: rnd(*s) for k, s in shapes.items()}
    alpha = 5.0
    d = compute_delta(mk("lokr", t, alpha=alpha), torch.zeros(wshape))
    g = t.get
    # lokr.diff_weight takes the RAW alpha (divides by the rank itself; both full ⇒ scale 1)
    ref = f_lokr.diff_weight(g("lokr_w1"), g("lokr_w1_a"), g("lokr_w1_b"), g("lokr_w2"), g("lokr_w2_a"),
                             g("lokr_w2_b"), None, gamma=alpha)
    close(d.weight, ref.reshape(wshape))


def test_lokr_full_full_ignores_alpha():
    t = {"lokr_w1": rnd(3, 2), "lokr_w2": rnd(4, 5)}
    d = compute_delta(mk("lokr", t, alpha=0.01), torch.zeros(12, 10))
    close(d.weight, torch.kron(t["lokr_w1"], t["lokr_w2"]))
    assert rank_of(mk("lokr", t)) is None


def test_lokr_tucker():
    r = 2
    t = {"lokr_w1": rnd(3, 2), "lokr_t2": rnd(r, r, 3, 3), "lokr_w2_a": rnd(r, 4), "lokr_w2_b": rnd(r, 5)}
    d = compute_delta(mk("lokr", t, alpha=3.0), torch.zeros(12, 10, 3, 3))
    ref = f_lokr.kron_weight(t["lokr_w1"], None, None, None, t["lokr_w2_a"], t["lokr_w2_b"], t["lokr_t2"], scale=3.0 / r)
    close(d.weight, ref)
    assert rank_of(mk("lokr", t)) == r


# ---------------------------------------------------------------- IA3 (module forward on a toy Linear)

@pytest.mark.parametrize("on_input", [0, 1])
def test_ia3_matches_module_forward(on_input):
    lin = nn.Linear(10, 12)
    W0, b0 = lin.weight.detach().clone(), lin.bias.detach().clone()
    mod = IA3Module("t", lin, 1.0, train_on_input=bool(on_input))
    w = rnd(10 if on_input else 12)
    with torch.no_grad():
        mod.weight.copy_(w)
    mod.apply_to()
    x = rnd(5, 10)
    with torch.no_grad():
        y = lin(x)
    d = compute_delta(mk("ia3", {"weight": w, "on_input": torch.tensor(on_input)}), W0, b0)
    assert d.bias is None
    close(F.linear(x, W0 + d.weight, b0), y)


def test_conv_ia3_is_skipped_with_reason():
    m = mk("ia3", {"weight": rnd(1, 12, 1, 1), "on_input": torch.tensor(0)})
    with pytest.raises(UnsupportedModule, match="IA3 on a convolution"):
        compute_delta(m, torch.zeros(12, 10, 3, 3))


# ---------------------------------------------------------------- full / norm

def test_full_matches_module_forward():
    conv = nn.Conv2d(6, 8, 3, padding=1)
    W0, b0 = conv.weight.detach().clone(), conv.bias.detach().clone()
    diff, diff_b = rnd(8, 6, 3, 3, std=0.1), rnd(8, std=0.1)
    with torch.no_grad():  # lycoris' own loader (modules.make_module) runs under no_grad
        mod = FullModule.make_module_from_state_dict("t", conv, diff, diff_b)
    mod.apply_to()
    x = rnd(2, 6, 5, 5)
    with torch.no_grad():
        y = conv(x)
    d = compute_delta(mk("full", {"diff": diff, "diff_b": diff_b}), W0, b0)
    close(F.conv2d(x, W0 + d.weight, b0 + d.bias, padding=1), y)
    d.weight.mul_(0)  # the delta is fresh: scaling it in place leaves the file's tensor alone
    assert diff.abs().sum() > 0


@pytest.mark.parametrize("kind", ["layer", "group"])
def test_norm_matches_module_forward(kind):
    layer = nn.LayerNorm(8) if kind == "layer" else nn.GroupNorm(2, 8)
    with torch.no_grad():
        layer.weight.copy_(rnd(8))
        layer.bias.copy_(rnd(8))
    W0, b0 = layer.weight.detach().clone(), layer.bias.detach().clone()
    wn, bn = rnd(8, std=0.1), rnd(8, std=0.1)
    with torch.no_grad():
        mod = NormModule.make_module_from_state_dict("t", layer, wn, bn)
    mod.apply_to()
    x = rnd(3, 8) if kind == "layer" else rnd(3, 8, 4, 4)
    with torch.no_grad():
        y = layer(x)
    d = compute_delta(mk("norm", {"w_norm": wn, "b_norm": bn}), W0, b0)
    if kind == "layer":
        ref = F.layer_norm(x, (8,), W0 + d.weight, b0 + d.bias)
    else:
        ref = F.group_norm(x, 2, W0 + d.weight, b0 + d.bias)
    close(ref, y)


def test_norm_either_alone():
    wn = rnd(8)
    d = compute_delta(mk("norm", {"w_norm": wn}), torch.ones(8), torch.zeros(8))
    close(d.weight, wn)
    assert d.bias is None
    d = compute_delta(mk("norm", {"b_norm": wn}), torch.ones(8), torch.zeros(8))
    assert d.weight is None
    close(d.bias, wn)


# ---------------------------------------------------------------- GLoRA

def _glora_oracle(layer, r, alpha, x):
    mod = GLoRAModule("t", layer, 1.0, lora_dim=r, alpha=alpha)
    with torch.no_grad():
        for p in (mod.a1, mod.a2, mod.b1, mod.b2):
            p.weight.copy_(rnd(*p.weight.shape, std=0.3))
    sd = {k: v.detach().clone() for k, v in mod.state_dict().items() if k.endswith(".weight")}
    mod.apply_to()
    with torch.no_grad():
        y = layer(x)
    return sd, y


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("layout", ["current", "old"])
def test_glora_matches_module_forward(kind, layout):
    layer = nn.Linear(10, 12) if kind == "linear" else nn.Conv2d(10, 12, 3, padding=1)
    W0, b0 = layer.weight.detach().clone(), layer.bias.detach().clone()
    x = rnd(3, 10) if kind == "linear" else rnd(2, 10, 5, 5)
    sd, y = _glora_oracle(layer, 3, 6.0, x)
    if layout == "old":  # old files: a1↔a2 and b1↔b2 swap roles (W·a2·a1 + b2·b1)
        sd = {"a1.weight": sd["a2.weight"], "a2.weight": sd["a1.weight"],
              "b1.weight": sd["b2.weight"], "b2.weight": sd["b1.weight"]}
    m = mk("glora", sd, alpha=6.0)
    d = compute_delta(m, W0, b0)
    ref = F.linear(x, W0 + d.weight, b0) if kind == "linear" else F.conv2d(x, W0 + d.weight, b0, padding=1)
    close(ref, y)
    assert rank_of(m) == 3


def test_glora_tucker_plain_formula():
    # LyCORIS never builds a Tucker GLoRA (its use_tucker condition is self-contradictory): plain formula
    W = rnd(12, 10, 3, 3)
    a1, a2, b1, b2, bm = rnd(10, 2, 1, 1), rnd(2, 10, 1, 1), rnd(12, 2, 1, 1), rnd(2, 10, 1, 1), rnd(2, 2, 3, 3)
    t = {"a1.weight": a1, "a2.weight": a2, "b1.weight": b1, "b2.weight": b2, "bm.weight": bm}
    d = compute_delta(mk("glora", t, alpha=1.0), W)
    A = a1.reshape(10, 2) @ a2.reshape(2, 10)
    wa = torch.einsum("oihw,ij->ojhw", W, A)
    wb = torch.einsum("oa,abhw,bi->oihw", b1.reshape(12, 2), bm, b2.reshape(2, 10))
    close(d.weight, (wa + wb) * 0.5)


# ---------------------------------------------------------------- OFT family

@pytest.mark.parametrize("shape", [(16, 10), (16, 6, 3, 3)])
@pytest.mark.parametrize("alpha", [None, 0.0, 1e-3, 10.0])
@pytest.mark.parametrize("rescaled", [False, True])
def test_diag_oft_matches_lycoris(shape, alpha, rescaled):
    W = rnd(*shape)
    blocks = rnd(4, 4, 4, std=0.3)
    t = {"oft_blocks": blocks}
    rescale = None
    if rescaled:
        rescale = 1 + rnd(shape[0], *[1] * (len(shape) - 1), std=0.1)
        t["rescale"] = rescale
    d = compute_delta(mk("oft", t, alpha=alpha, key="lycoris_test"), W)
    c = alpha * shape[0] if alpha else None  # LyCORIS: constraint = alpha·out_dim, 0/None = none
    close(d.weight, f_oft.diff_weight(W, blocks, rescale, constraint=c))


def test_diag_oft_constraint_is_active():
    W, blocks = rnd(16, 10), rnd(4, 4, 4)
    free = compute_delta(mk("oft", {"oft_blocks": blocks}, alpha=None, key="lycoris_x"), W).weight
    capped = compute_delta(mk("oft", {"oft_blocks": blocks}, alpha=1e-3, key="lycoris_x"), W).weight
    assert capped.norm() < 0.5 * free.norm()


def test_kohya_oft_always_clamps():
    W, blocks = rnd(16, 10), rnd(4, 4, 4, std=0.3)
    key = "oft_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    # alpha 0 in a kohya file: constraint 0 ⇒ R = I ⇒ no change (LyCORIS would read it as "no constraint")
    d0 = compute_delta(mk("oft", {"oft_blocks": blocks}, alpha=0.0, key=key), W).weight
    assert d0.abs().max() < 1e-5
    for alpha in (1e-3, 10.0):
        d = compute_delta(mk("oft", {"oft_blocks": blocks}, alpha=alpha, key=key), W).weight
        close(d, f_oft.diff_weight(W, blocks, None, constraint=alpha * 16))


def test_old_oft_diag_stores_r():
    W, blocks = rnd(16, 10), rnd(4, 4, 4, std=0.3)
    R = f_oft.get_r(blocks)  # what an old LyCORIS file stores
    d = compute_delta(mk("oft", {"oft_diag": R}, alpha=1.0, key="lycoris_x"), W)
    close(d.weight, f_oft.diff_weight(W, blocks, None, constraint=None))


@pytest.mark.parametrize("shape", [(16, 10), (16, 6, 3, 3)])
@pytest.mark.parametrize("alpha", [None, 1e-3])
@pytest.mark.parametrize("rescaled", [False, True])
@pytest.mark.parametrize("stages", [1, 3])
def test_boft_matches_lycoris_at_m1(shape, alpha, rescaled, stages):
    W = rnd(*shape)
    blocks = rnd(stages, 4, 4, 4, std=0.3)  # 4 blocks of 4 rows; stage i mixes rows 2^i·2 apart
    t = {"oft_blocks": blocks}
    rescale = None
    if rescaled:
        rescale = 1 + rnd(shape[0], *[1] * (len(shape) - 1), std=0.1)
        t["rescale"] = rescale
    # algo "oft" with 4-D blocks is dispatched to BOFT as well
    for algo in ("boft", "oft"):
        d = compute_delta(mk(algo, t, alpha=alpha, key="lycoris_x"), W)
        c = alpha * shape[0] if alpha else None
        close(d.weight, f_boft.diff_weight(W, blocks, rescale, constraint=c, scale=1))


# ---------------------------------------------------------------- DoRA (ΔW = W_dora − W0, linear convention)

def _dora_ref(W0, scaled, g, on_out):
    return f_general.weight_decompose(W0 + scaled, g, multiplier=1, wd_on_out=on_out) - W0


@pytest.mark.parametrize("shape", [(12, 10), (12, 10, 3, 3)])
@pytest.mark.parametrize("on_out", [True, False])
def test_dora_on_lora_both_axes(shape, on_out):
    W0 = rnd(*shape)
    k = shape[2:]
    down, up = rnd(4, 10, *k, std=0.3), rnd(12, 4, *[1] * len(k), std=0.3)
    nd = len(shape) - 1
    g = (rnd(12, *[1] * nd) if on_out else rnd(1, 10, *[1] * (nd - 1))).abs() + 0.5
    m = mk("lora", {"lora_down.weight": down, "lora_up.weight": up}, alpha=2.0, dora_scale=g)
    d = compute_delta(m, W0)
    scaled = f_locon.diff_weight(down, up, None, gamma=0.5)
    close(d.weight, _dora_ref(W0, scaled, g, on_out))


def test_dora_on_loha_and_lokr():
    W0 = rnd(12, 10)
    g = rnd(12, 1).abs() + 0.5
    t = {"hada_w1_a": rnd(12, 4), "hada_w1_b": rnd(4, 10), "hada_w2_a": rnd(12, 4), "hada_w2_b": rnd(4, 10)}
    d = compute_delta(mk("loha", t, alpha=2.0, dora_scale=g), W0)
    scaled = f_loha.diff_weight(t["hada_w1_b"], t["hada_w1_a"], t["hada_w2_b"], t["hada_w2_a"], None, None, gamma=0.5)
    close(d.weight, _dora_ref(W0, scaled, g, True))
    gi = rnd(1, 10).abs() + 0.5
    t = {"lokr_w1": rnd(3, 2), "lokr_w2_a": rnd(4, 2), "lokr_w2_b": rnd(2, 5)}
    d = compute_delta(mk("lokr", dict(t, dora_scale=gi), alpha=1.0), W0)  # dora_scale among the tensors
    scaled = f_lokr.diff_weight(t["lokr_w1"], None, None, None, t["lokr_w2_a"], t["lokr_w2_b"], None, gamma=1.0)
    close(d.weight, _dora_ref(W0, scaled, gi, False))


def test_peft_magnitude_vector_is_output_axis():
    # PEFT conv magnitude (1, out, 1, 1) looks like an input-axis scale; the flag says output axis
    W0 = rnd(8, 8, 3, 3)
    down, up = rnd(2, 8, 3, 3, std=0.3), rnd(8, 2, 1, 1, std=0.3)
    g = rnd(1, 8, 1, 1).abs() + 0.5
    t = {"lora_down.weight": down, "lora_up.weight": up}
    d = compute_delta(mk("lora", t, alpha=None, dora_scale=g, peft_dora=True), W0)
    scaled = f_locon.diff_weight(down, up, None, gamma=1.0)
    close(d.weight, _dora_ref(W0, scaled, g.reshape(8, 1, 1, 1), True))
    g1 = rnd(8).abs() + 0.5  # Linear PEFT (out,)
    W1 = rnd(8, 6)
    t = {"lora_A.weight": rnd(2, 6), "lora_B.weight": rnd(8, 2)}
    d = compute_delta(mk("lora", t, alpha=None, dora_scale=g1, peft_dora=True), W1)
    close(d.weight, _dora_ref(W1, t["lora_B.weight"] @ t["lora_A.weight"], g1.reshape(8, 1), True))


def test_dora_bad_scale_shape():
    m = mk("lora", {"lora_down.weight": rnd(2, 10), "lora_up.weight": rnd(12, 2)}, dora_scale=rnd(5, 1))
    with pytest.raises(LoraStudioError, match="DoRA scale has shape"):
        compute_delta(m, rnd(12, 10))


# ---------------------------------------------------------------- dtypes, devices, errors, detection

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_base_weights(dtype):
    W = rnd(16, 10).to(dtype)
    blocks = rnd(4, 4, 4, std=0.3)
    d = compute_delta(mk("oft", {"oft_blocks": blocks}, key="lycoris_x"), W)
    assert d.weight.dtype == torch.float32
    close(d.weight, f_oft.diff_weight(W.float(), blocks, None, constraint=None))
    g = rnd(16, 1).abs() + 0.5
    down, up = rnd(2, 10).to(dtype), rnd(16, 2).to(dtype)
    d = compute_delta(mk("lora", {"lora_down.weight": down, "lora_up.weight": up}, dora_scale=g.to(dtype)), W)
    close(d.weight, _dora_ref(W.float(), up.float() @ down.float(), g.to(dtype).float(), True))
    d = compute_delta(mk("ia3", {"weight": rnd(16).to(dtype), "on_input": torch.tensor(0)}), W)
    assert d.weight.dtype == torch.float32


@pytest.mark.parametrize("algo,tensors,shape", [
    ("lora", {"lora_down.weight": (4, 768), "lora_up.weight": (320, 4)}, (320, 1024)),
    ("loha", {"hada_w1_a": (320, 4), "hada_w1_b": (4, 768), "hada_w2_a": (320, 4), "hada_w2_b": (4, 768)}, (320, 1024)),
    ("lokr", {"lokr_w1": (16, 24), "lokr_w2": (20, 32)}, (320, 1024)),
    ("full", {"diff": (320, 768)}, (320, 1024)),
    ("oft", {"oft_blocks": (10, 32, 32)}, (640, 768)),
    ("lora", {"lora_down.weight": (4, 10, 1, 1), "lora_up.weight": (12, 4, 1, 1)}, (12, 10, 3, 3)),
])
def test_shape_mismatch_names_key_and_shapes(algo, tensors, shape):
    m = mk(algo, {k: rnd(*s) for k, s in tensors.items()}, alpha=1.0, key="lora_te_text_model_encoder_layers_0_mlp_fc1")
    with pytest.raises(LoraStudioError) as e:
        compute_delta(m, torch.zeros(shape))
    msg = str(e.value)
    assert "lora_te_text_model_encoder_layers_0_mlp_fc1" in msg and str(tuple(shape)) in msg


def test_missing_tensor_and_unknown_algo():
    with pytest.raises(LoraStudioError, match="hada_w2_b"):
        compute_delta(mk("loha", {"hada_w1_a": rnd(4, 2), "hada_w1_b": rnd(2, 3), "hada_w2_a": rnd(4, 2)}),
                      torch.zeros(4, 3))
    with pytest.raises(UnsupportedModule, match="tlora"):
        compute_delta(mk("tlora", {"lambda_layer": rnd(4)}), torch.zeros(4, 3))


def test_glora_layout_mismatch_and_lokr_t1():
    t = {"a1.weight": rnd(10, 2), "a2.weight": rnd(2, 10), "b1.weight": rnd(12, 2), "b2.weight": rnd(2, 10)}
    with pytest.raises(LoraStudioError, match="neither GLoRA layout"):
        compute_delta(mk("glora", t, alpha=1.0), torch.zeros(12, 768))
    t = {"lokr_w1": rnd(3, 2), "lokr_t1": rnd(2, 2, 3, 3), "lokr_w2": rnd(4, 5, 3, 3)}
    with pytest.raises(UnsupportedModule, match="lokr_t1"):
        compute_delta(mk("lokr", t), torch.zeros(12, 10, 3, 3))


def test_qkv_slice_base_weight():
    # a fused in_proj module: the caller passes the q/k/v slice (a non-contiguous-free row view)
    in_proj = rnd(3 * 8, 8)
    W = in_proj[8:16]
    down, up = rnd(2, 8), rnd(8, 2)
    d = compute_delta(mk("lora", {"lora_down.weight": down, "lora_up.weight": up}), W)
    assert d.weight.shape == (8, 8)
    close(d.weight, up @ down)


def test_detect_algo_order():
    assert detect_algo({"lora_up.weight", "lora_down.weight", "alpha"}) == "lora"
    assert detect_algo({"lora_A.weight", "lora_B.weight"}) == "lora"
    assert detect_algo({"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha", "dora_scale"}) == "loha"
    assert detect_algo({"weight", "on_input"}) == "ia3"
    assert detect_algo({"lokr_w1", "lokr_w2"}) == "lokr"
    assert detect_algo({"lokr_w1_a", "lokr_w1_b", "lokr_w2"}) == "lokr"
    assert detect_algo({"diff", "diff_b"}) == "full"
    assert detect_algo({"w_norm", "b_norm"}) == "norm"
    assert detect_algo({"b_norm"}) == "norm"
    assert detect_algo({"oft_blocks", "alpha"}) == "oft"
    assert detect_algo({"oft_blocks": torch.zeros(2, 4, 4, 4), "alpha": torch.tensor(0.0)}) == "boft"
    assert detect_algo({"oft_blocks": (4, 4, 4)}) == "oft"
    assert detect_algo({"oft_diag"}) == "oft"
    assert detect_algo({"a1.weight", "a2.weight", "b1.weight", "b2.weight"}) == "glora"
    assert detect_algo({"q_layer.weight", "p_layer.weight", "lambda_layer", "alpha"}) is None
    assert detect_algo(set()) is None
    assert unknown_suffixes("lora", {"lora_up.weight", "lora_down.weight", "alpha", "lambda_layer"}) == {"lambda_layer"}


def test_rank_of():
    assert rank_of(mk("lora", {"lora_down.weight": rnd(6, 10), "lora_up.weight": rnd(12, 6)})) == 6
    assert rank_of(mk("loha", {"hada_w1_a": rnd(12, 5), "hada_w1_b": rnd(5, 10)})) == 5
    assert rank_of(mk("lokr", {"lokr_w1": rnd(3, 2), "lokr_w2_a": rnd(4, 7), "lokr_w2_b": rnd(7, 5)})) == 7
    assert rank_of(mk("ia3", {"weight": rnd(4), "on_input": torch.tensor(0)})) is None
    assert rank_of(mk("oft", {"oft_blocks": rnd(2, 4, 4)})) is None
