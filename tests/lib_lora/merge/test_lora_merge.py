"""merge-loras: concatenation equals the sum of the scaled deltas (float64 reference); SVD merge is the best
rank-r approximation of that sum; block weights apply per input LoRA."""
import pytest
import torch
from safetensors.torch import load_file, safe_open

from lib_lora.blocks import expand
from lib_lora.errors import LoraStudioError
from lib_lora.merge.lora_merge import merge_loras
from lib_lora.network import load_network
from tests.factory import write_lora

# 17-value LoRA format: BASE, IN01, IN02, IN04, IN05, IN07, IN08, M00, OUT03 … OUT11
LBW = "0,1,1,1,1,1,1,1,1,1,1,0.5,0.5,0.5,0.5,0.5,0.5"


def _layers(layer):
    return (("input_blocks.1." in layer and ("attn1.to_q" in layer or "in_layers.2" in layer or "proj_in" in layer))
            or "output_blocks.9.1.transformer_blocks.0.attn1.to_k" in layer or "encoder.layers.0.self_attn.q_proj" in layer
            or "time_embed.0" in layer)


@pytest.fixture
def loras(tmp_path):
    d = tmp_path / "loras"
    d.mkdir()
    write_lora(d / "a.safetensors", algo="locon", rank=8, alpha=4.0, layers=_layers, seed=1)
    write_lora(d / "b.safetensors", algo="locon", rank=4, alpha=1.0, layers=_layers, seed=2)
    write_lora(d / "h.safetensors", algo="loha", rank=2, layers=_layers, include_te=False, seed=3)
    return d


def _expected(d, tags):
    """layer → Σ m_i·(alpha_i/d_i)·up_i·down_i in float64, m_i from the tag's weight and block vector."""
    out = {}
    for name, w, lbw in tags:
        net = load_network(d / f"{name}.safetensors")
        vec = expand([float(x) for x in lbw.split(",")])[0] if lbw else None
        raw = load_file(str(d / f"{name}.safetensors"))
        for mk, mod in net.modules.items():
            b = 1.0 if vec is None or mod.slot is None else vec[0 if mod.is_te else mod.slot]
            m = w * b
            if name == "h":
                from lib_lora.merge.resize import dense_delta
                delta = dense_delta(mod)[0]
            else:
                up, down = raw[f"{mk}.lora_up.weight"].double(), raw[f"{mk}.lora_down.weight"].double()
                r = down.shape[0]
                delta = float(raw[f"{mk}.alpha"]) / r * (up.reshape(up.shape[0], -1) @ down.reshape(r, -1))
            if m:
                out[mk] = out.get(mk, 0) + m * delta
    return out


def _product(sd, mk):
    up, down = sd[f"{mk}.lora_up.weight"].double(), sd[f"{mk}.lora_down.weight"].double()
    r = down.shape[0]
    return float(sd[f"{mk}.alpha"]) / r * (up.reshape(up.shape[0], -1) @ down.reshape(r, -1))


def test_concat_equals_sum_of_scaled_deltas(loras, tmp_path):
    res = merge_loras(["<lora:a:0.5>", f"<lora:b:0.7:lbw={LBW}>", "<lora:a:-0.25>"], loras, tmp_path / "m.safetensors",
                      mode="concat")
    got = load_file(res.out)
    want = _expected(loras, [("a", 0.5, None), ("b", 0.7, LBW), ("a", -0.25, None)])
    assert set(want) == {k.split(".")[0] for k in got}
    for mk, w in want.items():
        assert torch.allclose(_product(got, mk), w, rtol=0, atol=1e-6 * float(w.abs().max()))
        # ranks concatenated, alpha = rank (scale 1)
        r = got[f"{mk}.lora_down.weight"].shape[0]
        assert float(got[f"{mk}.alpha"]) == r
    te = next(k for k in want if k.startswith("lora_te"))
    assert got[f"{te}.lora_down.weight"].shape[0] == 16  # b's BASE weight 0 dropped it: a twice (8 + 8)
    conv = next(k for k in want if "resnets" in k)
    assert got[f"{conv}.lora_down.weight"].shape[0] == 20 and got[f"{conv}.lora_down.weight"].dim() == 4
    md = safe_open(res.out, "pt").metadata()
    assert md["ss_network_dim"] == "Dynamic" and "lora_studio_merged" in md


def test_svd_merge_is_the_best_rank_r_approximation(loras, tmp_path):
    tags = [("a", 0.8, None), ("b", 1.0, None), ("h", 0.6, None)]
    res = merge_loras([f"<lora:{n}:{w}>" for n, w, _ in tags], loras, tmp_path / "s.safetensors", mode="svd",
                      rank=3, conv_rank=5)
    got = load_file(res.out)
    for mk, w in _expected(loras, tags).items():
        f = torch.linalg.svd(w, full_matrices=False)
        r = got[f"{mk}.lora_down.weight"].shape[0]
        assert r == (5 if "resnets_0_conv1" in mk else 3)
        best = (f.U[:, :r] * f.S[:r]) @ f.Vh[:r]
        assert torch.allclose(_product(got, mk), best, atol=1e-5 * float(f.S[0]))
        assert res.fro_retained[mk] == pytest.approx(float(best.norm() / w.norm()), rel=1e-6)


def test_svd_merge_with_enough_rank_is_exact(loras, tmp_path):
    res = merge_loras(["<lora:a:1>", "<lora:b:-0.5>"], loras, tmp_path / "s.safetensors", mode="svd", rank=12)
    got = load_file(res.out)
    for mk, w in _expected(loras, [("a", 1.0, None), ("b", -0.5, None)]).items():
        assert torch.allclose(_product(got, mk), w, atol=1e-6 * float(w.abs().max()))


def test_refusals_are_one_line(loras, tmp_path):
    with pytest.raises(LoraStudioError, match="cannot be concatenated; use --mode svd"):
        merge_loras(["<lora:a:1>", "<lora:h:1>"], loras, tmp_path / "x.safetensors", mode="concat")
    with pytest.raises(LoraStudioError, match="needs --rank"):
        merge_loras(["<lora:a:1>"], loras, tmp_path / "x.safetensors", mode="svd")
    with pytest.raises(LoraStudioError, match="nosuch"):
        merge_loras(["<lora:nosuch:1>"], loras, tmp_path / "x.safetensors")
    write_lora(loras / "xl.safetensors", model="sdxl", algo="lora", rank=2)
    with pytest.raises(LoraStudioError, match="SDXL"):
        merge_loras(["<lora:a:1>", "<lora:xl:1>"], loras, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()
