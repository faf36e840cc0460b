"""extract: exact for a low-rank difference, the optimal rank-r error otherwise, one line for mismatches."""
import math
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from lib_lora.errors import LoraStudioError
from lib_lora.merge.extract import extract_lora
from lib_lora.network import load_network
from tests.factory import fixture_layers
from tests.paths import REPO

PICK = ("input_blocks.1.1.transformer_blocks.0.attn1.to_q", "input_blocks.1.1.proj_in", "input_blocks.1.0.in_layers.2",
        "output_blocks.9.1.transformer_blocks.0.attn2.to_k", "encoder.layers.0.self_attn.q_proj",
        "middle_block.1.transformer_blocks.0.attn2.to_v")


def _pair(tmp_path, diff_rank):
    g = torch.Generator().manual_seed(0)
    base, tuned, diffs = {}, {}, {}
    for layer, shape in fixture_layers("sd15").items():
        if not layer.endswith(PICK):
            continue
        key = layer.replace("text_model.", "") + ".weight"  # old SD1 checkpoints lack text_model.
        w = torch.randn(*shape, generator=g) * 0.1
        out, flat = shape[0], math.prod(shape[1:])
        r = diff_rank(layer)
        d = (torch.randn(out, r, generator=g) @ torch.randn(r, flat, generator=g) * 0.05).reshape(shape)
        base[key], tuned[key], diffs[layer] = w, w + d, (w + d) - w
    save_file(base, str(tmp_path / "a.safetensors"))
    save_file(tuned, str(tmp_path / "b.safetensors"))
    return diffs


def test_exact_when_the_difference_has_low_rank(tmp_path):
    diffs = _pair(tmp_path, lambda layer: 3)
    res = extract_lora(tmp_path / "a.safetensors", tmp_path / "b.safetensors", tmp_path / "l.safetensors", rank=4,
                       conv_rank=4)
    net = load_network(res.out)
    from lib_lora.algos import compute_delta
    got = {m.layer: compute_delta(m, torch.zeros(diffs[m.layer].shape)).weight for m in net.modules.values()}
    assert set(got) == set(diffs)
    for layer, d in diffs.items():
        assert torch.allclose(got[layer], d, atol=1e-4 * float(d.abs().max())), layer
    assert all(e < 1e-3 for e in res.blocks.values())


def test_error_is_the_optimal_rank_r_error(tmp_path):
    diffs = _pair(tmp_path, lambda layer: 12)
    res = extract_lora(tmp_path / "a.safetensors", tmp_path / "b.safetensors", tmp_path / "l.safetensors", rank=4,
                       conv_rank=6)
    net = load_network(res.out)
    for m in net.modules.values():
        d = diffs[m.layer].double().reshape(diffs[m.layer].shape[0], -1)
        S = torch.linalg.svdvals(d)
        r = 6 if "in_layers" in m.layer else 4
        optimal = math.sqrt(float((S[r:] ** 2).sum() / (S ** 2).sum()))
        assert res.modules[m.key][0] == r
        assert res.modules[m.key][1] == pytest.approx(optimal, rel=1e-3)
    assert "IN01" in res.blocks and "BASE" in res.blocks


def test_mismatch_is_one_line_before_work(tmp_path):
    _pair(tmp_path, lambda layer: 2)
    sdxl = {"conditioner.embedders.1.model.transformer.resblocks.0.attn.out_proj.weight": torch.zeros(4, 4)}
    save_file(sdxl, str(tmp_path / "x.safetensors"))
    with pytest.raises(LoraStudioError, match="same architecture"):
        extract_lora(tmp_path / "a.safetensors", tmp_path / "x.safetensors", tmp_path / "o.safetensors", rank=2)
    r = subprocess.run([sys.executable, "-m", "lib_lora", "extract", "--base", str(tmp_path / "a.safetensors"),
                        "--tuned", str(tmp_path / "x.safetensors"), "--rank", "2", "--out",
                        str(tmp_path / "o.safetensors")], cwd=str(REPO), capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "same architecture" in r.stderr
    assert not (tmp_path / "o.safetensors").exists()


def test_sdxl_named_checkpoints_both_text_encoders_and_convs(tmp_path):
    """Every key of a real SDXL checkpoint (widths /32): low-rank differences on U-Net attention, a ResNet conv,
    CLIP-L and OpenCLIP's fused in_proj come back exactly, as an SDXL LoRA that loads with kohya names."""
    from tests.checkpoints import checkpoint_state

    base = checkpoint_state("sdxl", scale=32, seed=1, dtype=torch.float32)
    tuned = {k: v.clone() for k, v in base.items()}
    g = torch.Generator().manual_seed(2)
    changed = ["model.diffusion_model.output_blocks.1.1.transformer_blocks.1.attn2.to_k.weight",
               "model.diffusion_model.input_blocks.4.0.in_layers.2.weight",
               "conditioner.embedders.0.transformer.text_model.encoder.layers.3.self_attn.v_proj.weight",
               "conditioner.embedders.1.model.transformer.resblocks.5.attn.in_proj_weight",
               "conditioner.embedders.1.model.transformer.resblocks.5.mlp.c_fc.weight"]
    for key in changed:
        w = tuned[key]
        d = torch.randn(w.shape[0], 2, generator=g) @ torch.randn(2, w[0].numel(), generator=g) * 0.05
        tuned[key] = w + d.reshape(w.shape)
    save_file(base, str(tmp_path / "a.safetensors"))
    save_file(tuned, str(tmp_path / "b.safetensors"))
    res = extract_lora(tmp_path / "a.safetensors", tmp_path / "b.safetensors", tmp_path / "xl.safetensors", rank=4,
                       conv_rank=4, min_diff=0)
    assert res.arch == "sdxl"
    keys = load_file(res.out)
    assert any(k.startswith("lora_te1_") for k in keys) and any(k.startswith("lora_te2_") for k in keys)
    net = load_network(res.out)
    assert net.arch == "sdxl" and not net.skipped
    want = []
    for key in changed:
        d = (tuned[key] - base[key]).reshape(base[key].shape[0], -1)
        want += list(d.chunk(3)) if key.endswith("in_proj_weight") else [d]   # OpenCLIP q/k/v: three modules
    got = []
    for mk, (r, err) in res.modules.items():
        up, down = keys[f"{mk}.lora_up.weight"], keys[f"{mk}.lora_down.weight"]
        d = up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1)
        assert float(keys[f"{mk}.alpha"]) == r
        if float(d.abs().max()) > 1e-6:
            got.append(d)
    assert len(got) == len(want) == 7
    for d in want:
        assert any(x.shape == d.shape and torch.allclose(x, d, atol=1e-5) for x in got)
