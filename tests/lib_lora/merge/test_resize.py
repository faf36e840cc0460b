"""Resize: the fast exact SVD equals a float64 full SVD; dynamic ranks follow sd-scripts' rules; files keep
alpha/rank and carry the best rank-r approximation."""
import math

import pytest
import torch
from safetensors.torch import load_file, safe_open

from lib_lora.errors import LoraStudioError
from lib_lora.merge import svd
from lib_lora.merge.resize import resize_lora
from tests.factory import write_lora


def _reference_rank(S, method, param, cap):
    """sd-scripts' rule written out from its description: criterion count k, clamp to [1, L-1], plus one."""
    S = [float(x) for x in S]
    L = len(S)
    if S[0] <= 1e-6:
        return 1
    if method == "none":
        return min(cap, L)  # (sd-scripts would fail to reshape beyond L; the project keeps what exists)
    if method == "sv_ratio":
        k = sum(1 for s in S if s > S[0] / param)
    else:
        v = S if method == "sv_cumulative" else [s * s for s in S]
        t = param if method == "sv_cumulative" else param * param
        total, acc, k = sum(v), 0.0, L + 1
        for i, x in enumerate(v):
            acc += x
            if acc / total >= t:
                k = i + 1
                break
    return min(cap, max(1, min(k, L - 1)) + 1)


def _factors(out, inn, r, seed, decay=0.7):
    g = torch.Generator().manual_seed(seed)
    # a decaying spectrum, so the dynamic criteria have distinct answers
    up = torch.randn(out, r, generator=g, dtype=torch.float64) * torch.tensor([decay ** i for i in range(r)], dtype=torch.float64)
    down = torch.randn(r, inn, generator=g, dtype=torch.float64)
    return up, down


@pytest.mark.parametrize("shape", [(320, 768, 16), (40, 30, 8), (64, 64 * 9, 12), (5, 200, 8)])
def test_lowrank_svd_equals_full_svd(shape):
    out, inn, r = shape
    up, down = _factors(out, inn, r, 1)
    fast = svd.lowrank_svd(up.float(), down.float())
    full = torch.linalg.svd(up @ down, full_matrices=False)
    k = min(r, out, inn)
    assert fast.length == min(out, inn)
    assert torch.allclose(fast.S[:k], full.S[:k], rtol=1e-5, atol=1e-9 * float(full.S[0]))
    for n in (1, k // 2 or 1, k):  # truncations equal the optimal rank-n approximation
        u, d = svd.truncate(fast, n, torch.float64)
        best = (full.U[:, :n] * full.S[:n]) @ full.Vh[:n]
        assert torch.allclose(u @ d, best, atol=1e-5 * float(full.S[0]))


@pytest.mark.parametrize("method,params", [("sv_ratio", (1.5, 2, 4, 10, 1000)),
                                           ("sv_fro", (0.3, 0.5, 0.9, 0.99)),
                                           ("sv_cumulative", (0.3, 0.5, 0.9, 0.99)),
                                           ("none", (None,))])
def test_dynamic_ranks_follow_the_sd_scripts_rule(method, params):
    # (a share of exactly 1.0 is left out: there a full SVD's rounding noise beyond rank r decides the count)
    for seed, (out, inn, r) in enumerate([(320, 768, 16), (40, 30, 32), (64, 576, 12), (8, 8, 8)]):
        up, down = _factors(out, inn, r, seed)
        full_S = torch.linalg.svdvals(up @ down)  # the whole spectrum, length min(out, in)
        fast = svd.lowrank_svd(up, down)
        for p in params:
            for cap in (4, 64):
                want = _reference_rank(full_S, method, p, cap)
                assert svd.select_rank(fast.S, fast.length, method, p, cap) == want, (method, p, cap, seed)


def test_zero_matrix_keeps_rank_one():
    s = svd.lowrank_svd(torch.zeros(8, 4), torch.zeros(4, 16))
    assert svd.select_rank(s.S, s.length, "sv_fro", 0.9, 8) == 1


def _small(layer):
    """A few 320-wide layers of each kind (linear, 1×1 and 3×3 conv): full float64 SVDs stay quick."""
    return "input_blocks.1." in layer and ("attn1" in layer or "in_layers.2" in layer or "proj_in" in layer)


def _module_product(sd, mk):
    up, down = sd[f"{mk}.lora_up.weight"].double(), sd[f"{mk}.lora_down.weight"].double()
    r = down.shape[0]
    scale = float(sd[f"{mk}.alpha"]) / r if f"{mk}.alpha" in sd else 1.0
    return scale * (up.reshape(up.shape[0], -1) @ down.reshape(r, -1)), down


def test_resize_file_to_fixed_rank_is_the_best_approximation(tmp_path):
    src = write_lora(tmp_path / "in.safetensors", algo="locon", rank=16, layers=_small, metadata={"ss_training_comment": "x"})
    res = resize_lora(src, tmp_path / "out.safetensors", rank=4, conv_rank=6)
    a, b = load_file(src), load_file(res.out)
    mods = {k.split(".")[0] for k in a}
    assert {m.key for m in res.modules} == mods
    for mk in mods:
        w, old_down = _module_product(a, mk)
        new, down = _module_product(b, mk)
        conv = old_down.dim() == 4
        r = 6 if conv else 4
        assert down.shape[0] == r and down.shape[1:] == old_down.shape[1:]
        assert float(b[f"{mk}.alpha"]) == pytest.approx(float(a[f"{mk}.alpha"]) / 16 * r)  # alpha/rank kept
        f = torch.linalg.svd(w, full_matrices=False)
        best = (f.U[:, :r] * f.S[:r]) @ f.Vh[:r]
        assert torch.allclose(new, best, atol=1e-5 * float(f.S[0]))
        kept = next(m for m in res.modules if m.key == mk).fro_retained
        assert kept == pytest.approx(float(torch.linalg.norm(best) / torch.linalg.norm(w)), rel=1e-6)
    with safe_open(res.out, "pt") as f:
        md = f.metadata()
    assert md["ss_network_dim"] == "4" and md["ss_training_comment"].startswith("dimension is resized from 16 to 4")


def test_resize_file_dynamic_ranks(tmp_path):
    src = write_lora(tmp_path / "in.safetensors", algo="locon", rank=16, layers=_small)
    res = resize_lora(src, tmp_path / "out.safetensors", rank=64, method="sv_fro", param=0.9)
    a, b = load_file(src), load_file(res.out)
    for m in res.modules:
        w, _ = _module_product(a, m.key)
        assert m.new_rank == _reference_rank(torch.linalg.svdvals(w), "sv_fro", 0.9, 64)
        assert b[f"{m.key}.lora_down.weight"].shape[0] == m.new_rank
        assert m.fro_retained >= 0.9
    md = safe_open(res.out, "pt").metadata()
    assert md["ss_training_comment"].startswith("Dynamic resize with sv_fro: 0.9 from 16")


def test_loha_resized_through_its_delta(tmp_path):
    from lib_lora.merge.resize import module_svd
    from lib_lora.network import load_network

    src = write_lora(tmp_path / "h.safetensors", algo="loha", rank=4, layers=_small, include_te=False)
    res = resize_lora(src, tmp_path / "o.safetensors", rank=8)
    net, new = load_network(src), load_file(res.out)
    for mk, mod in net.modules.items():
        w = new[f"{mk}.lora_up.weight"].double().reshape(-1, 8) @ new[f"{mk}.lora_down.weight"].double().reshape(8, -1)
        s = module_svd(mod)[0]
        ref = (s.U[:, :8] * s.S[:8]) @ s.Vh[:8]
        assert torch.allclose(w * float(new[f"{mk}.alpha"]) / 8, ref, atol=1e-5 * float(s.S[0]))


def test_bad_input_is_one_line_before_work(tmp_path):
    src = write_lora(tmp_path / "in.safetensors", algo="lora", rank=4)
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"keep")
    with pytest.raises(LoraStudioError, match="exists"):
        resize_lora(src, out, rank=2)
    for method, p in (("sv_fro", None), ("sv_fro", 1.5), ("sv_ratio", 0.5), ("bogus", 1)):
        with pytest.raises(LoraStudioError):
            resize_lora(src, tmp_path / "o2.safetensors", rank=2, method=method, param=p)
    assert out.read_bytes() == b"keep"


def test_lora_factorise_hook_is_exact_for_low_rank_deltas():
    """The descriptor's factorise (ΔW → factors) round-trips through the registry's compute path."""
    from lib_lora.algos import compute_delta, lora
    from lib_lora.keys import LoraModule

    g = torch.Generator().manual_seed(3)
    for shape in ((64, 48), (32, 16, 3, 3)):
        flat = (torch.randn(shape[0], 3, generator=g, dtype=torch.float64)
                @ torch.randn(3, math.prod(shape[1:]), generator=g, dtype=torch.float64))
        t = lora.ALGORITHM.factorise(flat.reshape(shape), 5)
        assert t["lora_down.weight"].shape[0] == 5 and t["lora_down.weight"].shape[1:] == shape[1:]
        m = LoraModule(key="m", layer="x", qkv=None, algo="lora",
                       tensors={k: v for k, v in t.items() if k != "alpha"}, alpha=float(t["alpha"]), scale=None,
                       dora_scale=None, slot=None, is_te=False, peft_dora=False)
        back = compute_delta(m, torch.zeros(shape)).weight.double()
        assert torch.allclose(back.reshape(shape[0], -1), flat, atol=1e-5 * float(flat.abs().max()))


def _deltas(path):
    """canonical layer (+ q/k/v part) → ΔW at multiplier 1 through the core key mapper and algorithms."""
    from lib_lora.network import load_network

    net = load_network(path)
    out = {}
    for m in net.modules.values():
        up, down = m.tensors["lora_up.weight"].double(), m.tensors["lora_down.weight"].double()
        scale = (m.alpha / down.shape[0]) if m.alpha else 1.0
        out[(m.layer, m.qkv)] = (up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1)) * scale
    return net, out


@pytest.mark.parametrize("model", ["sd15", "sdxl"])
def test_peft_named_lora_is_resized_and_merged_under_kohya_names(tmp_path, model):
    from lib_lora.merge.lora_merge import merge_loras

    src = write_lora(tmp_path / "p.safetensors", model, family="peft", algo="lora", rank=6, seed=4)
    net_in, want = _deltas(src)
    assert any("." in k for k in net_in.modules)                         # really diffusers/PEFT names
    res = resize_lora(src, tmp_path / "r.safetensors", rank=8)          # rank ≥ input: the same deltas
    net_out, got = _deltas(res.out)
    assert set(got) == set(want) and not any("." in k for k in net_out.modules)
    assert all(k.startswith(("lora_unet_", "lora_te")) for k in load_file(res.out))
    for where, d in want.items():
        assert torch.allclose(got[where], d, atol=1e-5 * float(d.abs().max())), where
    m = merge_loras(["<lora:p:0.5>", "<lora:p:0.25>"], tmp_path, tmp_path / "m.safetensors", mode="concat")
    _, merged = _deltas(m.out)
    assert set(merged) == set(want)
    for where, d in want.items():
        assert torch.allclose(merged[where], 0.75 * d, atol=1e-5 * float(d.abs().max())), where
