"""Module names and shapes equal real checkpoints'; tiny models share the names and run forward."""

import json
import math
import os

import pytest
import torch

from lib_lora.errors import LoraStudioError
from lib_lora.sd import build_model, tokenize
from lib_lora.sd.unet import timestep_embedding
from tests.paths import FIXTURES


def _manifest(name):
    with open(os.path.join(FIXTURES, name), encoding="utf-8") as f:
        return {k: list(v) for k, v in json.load(f)["keys"].items()}


def _shapes(model):
    return {k: list(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("arch,manifest", [("sd1", "sd15_checkpoint_compvis.json"),
                                           ("sdxl", "sdxl_checkpoint_compvis.json")])
def test_full_model_keys_and_shapes_equal_checkpoint(arch, manifest):
    model = build_model(arch, "full", device="meta")
    want = _manifest(manifest)
    got = _shapes(model)
    assert sorted(set(want) - set(got)) == [] and sorted(set(got) - set(want)) == []
    assert {k: v for k, v in got.items() if want[k] != v} == {}


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_tiny_model_has_the_full_names(arch):
    full = build_model(arch, "full", device="meta").state_dict()
    tiny = build_model(arch, "tiny", device="meta").state_dict()
    assert list(tiny) == list(full)


@pytest.fixture(scope="module")
def tiny_sd1():
    return build_model("sd1", "tiny", seed=0)


@pytest.fixture(scope="module")
def tiny_sdxl():
    return build_model("sdxl", "tiny", seed=0)


def test_tiny_sd1_forward(tiny_sd1):
    m = tiny_sd1
    assert m.arch == "sd1" and m.scale_factor == 0.18215 and len(m.text_encoders) == 1
    with torch.no_grad():
        ctx, pooled = m.encode_text(["a cat", "a dog on a sofa"])
        assert pooled is None and ctx.shape == (2, 77, m.context_dim)
        out = m.unet(torch.randn(2, 4, 8, 16), torch.tensor([1, 999]), ctx)
        assert out.shape == (2, 4, 8, 16) and torch.isfinite(out).all()
        mean, logvar = m.vae.encode(torch.rand(1, 3, 64, 32) * 2 - 1)
        assert mean.shape == logvar.shape == (1, 4, 8, 4)
        assert m.vae.decode(mean).shape == (1, 3, 64, 32)
        img = torch.rand(1, 3, 64, 32) * 2 - 1
        lat = m.encode_latents(img, sample=False)
        assert torch.allclose(lat, m.vae.encode(img)[0] * 0.18215)
        a = m.encode_latents(img, generator=torch.Generator().manual_seed(1))
        b = m.encode_latents(img, generator=torch.Generator().manual_seed(1))
        assert torch.equal(a, b) and not torch.equal(a, lat)
        assert m.decode_latents(lat).shape == (1, 3, 64, 32)


def test_tiny_sdxl_forward(tiny_sdxl):
    m = tiny_sdxl
    assert m.arch == "sdxl" and m.scale_factor == 0.13025 and len(m.text_encoders) == 2
    with torch.no_grad():
        ctx, pooled = m.encode_text(["a cat", "a dog"])
        assert ctx.shape == (2, 77, m.context_dim) and pooled.shape == (2, 64)
        y = m.sdxl_vector(pooled, (1024, 768), (0, 0), (1024, 768))
        assert y.shape == (2, m.unet.cfg["adm_in"])
        out = m.unet(torch.randn(2, 4, 8, 8), torch.tensor([5, 500]), ctx, y)
        assert out.shape == (2, 4, 8, 8) and torch.isfinite(out).all()
        with pytest.raises(ValueError):
            m.unet(torch.randn(2, 4, 8, 8), torch.tensor([5, 500]), ctx)


def test_full_sdxl_vector_is_2816_wide():
    m = build_model("sdxl", "full", device="meta", parts=("unet",))
    assert m.unet.label_emb[0][0].in_features == 2816
    pooled = torch.zeros(1, 1280)
    y = m.sdxl_vector(pooled, (1024, 1024), (0, 0), (1024, 1024))
    assert y.shape == (1, 2816)


def test_sdxl_vector_values(tiny_sdxl):
    pooled = torch.randn(1, 64)
    y = tiny_sdxl.sdxl_vector(pooled, (832, 1216), (16, 32), (1024, 1024))
    assert torch.equal(y[:, :64], pooled)
    nums = [832, 1216, 16, 32, 1024, 1024]
    for i, v in enumerate(nums):
        emb = y[0, 64 + 256 * i: 64 + 256 * (i + 1)].double()
        k = torch.arange(128, dtype=torch.float64)
        arg = v * torch.exp(-math.log(10000.0) * k / 128)
        assert torch.allclose(emb, torch.cat([arg.cos(), arg.sin()]), atol=1e-3)
    assert torch.allclose(timestep_embedding(torch.tensor([0.0]), 4), torch.tensor([[1.0, 1.0, 0.0, 0.0]]))


def test_long_prompts_in_75_token_chunks(tiny_sd1, tiny_sdxl):
    long = ", ".join(f"tag{i}" for i in range(60))
    ids = tokenize([long, "short"], 150)
    assert ids.shape == (2, 2, 77)
    assert (ids[:, :, 0] == 49406).all() and (ids[:, :, -1] == 49407).all()
    with torch.no_grad():
        for m in (tiny_sd1, tiny_sdxl):
            ctx, _ = m.encode_text([long, "short"], max_length=150)
            assert ctx.shape == (2, 152, m.context_dim)
            # the first chunk's states do not depend on what the second chunk holds
            ctx2, _ = m.encode_text([long.split(", tag40")[0] + ", other words entirely", "short"], max_length=150)
            assert torch.allclose(ctx[0, :30], ctx2[0, :30])
    with pytest.raises(LoraStudioError, match="75, 150 or 225"):
        tokenize(["x"], 100)


def test_clip_skip_changes_sd1_context(tiny_sd1):
    with torch.no_grad():
        a, _ = tiny_sd1.encode_text(["a cat"], clip_skip=1)
        b, _ = tiny_sd1.encode_text(["a cat"], clip_skip=2)
        ids = tiny_sd1.tokenize(["a cat"])
        c, _ = tiny_sd1.encode_text(ids, clip_skip=2)
    assert not torch.allclose(a, b) and torch.equal(b, c)


def test_build_is_deterministic_per_seed():
    a = build_model("sd1", "tiny", seed=3).state_dict()
    b = build_model("sd1", "tiny", seed=3).state_dict()
    c = build_model("sd1", "tiny", seed=4).state_dict()
    key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    assert torch.equal(a[key], b[key]) and not torch.equal(a[key], c[key])
    assert build_model("sd1", "tiny", dtype=torch.float16).unet.out[2].weight.dtype == torch.float16


def test_bad_arch_and_size_are_one_line_errors():
    with pytest.raises(LoraStudioError, match="sd1 or sdxl"):
        build_model("sd3", "tiny")
    with pytest.raises(LoraStudioError, match="full or tiny"):
        build_model("sd1", "huge")
