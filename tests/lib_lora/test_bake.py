"""bake (checkpoint) and bake-lora (LoRA) through the real CLI, real safetensors files and the real loader."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from lib_lora.__main__ import main
from lib_lora.algos import compute_delta
from lib_lora.host import Host
from lib_lora.network import load_network
from lib_lora.patcher import ActiveLora, Patcher, effective_multiplier
from tests.engine_helpers import SD15_LAYERS
from tests.factory import write_lora
from tests.models import bits, build_model

# output_blocks.4 layer lies in OUT04, which `face` weights 1; OUT09/OUT11 get 0; IN01 gets 0.
LIST17 = "1,0.5,0,1,1,1,1,0.5,1,1,1,1,1,1,2,1,0"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A small SD1 checkpoint (real names; TE keys in the old form without `text_model.`) + a LoRA folder."""
    tmp = tmp_path_factory.mktemp("bake")
    root = build_model("sd15", include=SD15_LAYERS, seed=5)
    sd = {}
    for k, v in root.state_dict().items():
        sd[k.replace("transformer.text_model.", "transformer.", 1)] = v.detach().clone()
    sd["first_stage_model.decoder.conv_in.weight"] = torch.randn(8, 4, 3, 3)
    sd["alphas_cumprod"] = torch.rand(1000, dtype=torch.float64)
    sd["cond_stage_model.transformer.embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
    ckpt = tmp / "base.safetensors"
    save_file(sd, str(ckpt), metadata={"note": "test base"})
    loras = tmp / "loras"
    (loras / "sub").mkdir(parents=True)
    pick = set(SD15_LAYERS)
    write_lora(loras / "style.safetensors", algo="lora", rank=8, layers=lambda l: l in pick, seed=1)
    write_lora(loras / "sub" / "loco_v2.safetensors", algo="locon", family="lycoris", rank=4,
               layers=lambda l: l in pick, seed=2, metadata={"ss_output_name": "locoalias"})
    write_lora(loras / "xl.safetensors", model="sdxl", algo="lora")
    write_lora(loras / "dora.safetensors", algo="dora", family="lycoris", layers=lambda l: l in pick, seed=3)
    return {"tmp": tmp, "ckpt": str(ckpt), "loras": str(loras), "sd": sd}


def _bake(env, prompt, out, *extra):
    return main(["bake", "--base", env["ckpt"], "--prompt", prompt, "--lora-dir", env["loras"], "--out", str(out),
                 *extra])


def test_bake_equals_patcher_and_keeps_other_keys_bit_exact(env, capsys):
    out = env["tmp"] / "baked.safetensors"
    prompt = f"a cat <lora:style:0.8:{LIST17}> <lyco:locoalias:te=0.5:unet=1.2:lbw=face>"
    assert _bake(env, prompt, out) == 0
    printed = capsys.readouterr().out
    assert "style: te 0.8, unet 0.8" in printed and "loco_v2: te 0.5, unet 1.2" in printed
    baked = load_file(str(out))
    base = env["sd"]
    assert baked.keys() == base.keys()
    # The same prompt through the inference patcher on a module tree with the same weights.
    root = build_model("sd15", include=SD15_LAYERS, seed=5)
    host = Host.from_named_modules(root.named_modules())
    style, loco = load_network(os.path.join(env["loras"], "style.safetensors")), \
        load_network(os.path.join(env["loras"], "sub", "loco_v2.safetensors"))
    from lib_lora.presets import PresetStore
    from lib_lora.syntax import parse_prompt
    from lib_lora.tag_weights import resolve_blocks

    tags = parse_prompt(prompt)
    vec = [resolve_blocks(t, PresetStore(), "sd1").vector for t in tags]
    Patcher(host).apply([ActiveLora(style, 0.8, 0.8, vec[0]), ActiveLora(loco, 0.5, 1.2, vec[1])])
    live = {k.replace("transformer.text_model.", "transformer.", 1): v for k, v in root.state_dict().items()}
    changed = 0
    for k, v in base.items():
        if k in live and not torch.equal(live[k], v):
            changed += 1
            assert torch.equal(bits(baked[k]), bits(live[k])), k   # bake == patcher, bit for bit
        else:
            assert torch.equal(bits(baked[k]) if baked[k].is_floating_point() else baked[k],
                               bits(v) if v.is_floating_point() else v), k  # untouched: bit-exact
    assert changed >= 8
    meta = json.loads(__import__("safetensors").safe_open(str(out), "pt").metadata()["lora_studio_baked"])
    assert [x["name"] for x in meta["loras"]] == ["style", "loco_v2"]


def test_bake_dtype_and_refusals(env, capsys):
    out = env["tmp"] / "half.safetensors"
    assert _bake(env, "<lora:style:1>", out, "--dtype", "fp16") == 0
    baked = load_file(str(out))
    assert baked["model.diffusion_model.out.2.weight"].dtype == torch.float16
    assert baked["alphas_cumprod"].dtype == torch.float16 and baked["cond_stage_model.transformer.embeddings.position_ids"].dtype == torch.int64
    before = out.read_bytes()
    assert _bake(env, "<lora:style:0.5>", out) == 2           # exists, no --overwrite
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == before
    assert _bake(env, "<lora:styel:1>", env["tmp"] / "x.safetensors") == 2
    assert "not found" in (err := capsys.readouterr().err) and "style" in err
    assert _bake(env, "<lora:xl:1>", env["tmp"] / "x.safetensors") == 2
    assert "is SDXL, the model is SD1" in capsys.readouterr().err
    assert _bake(env, "<lora:../style:1>", env["tmp"] / "x.safetensors") == 2
    assert "not a plain name" in capsys.readouterr().err
    assert _bake(env, "<lora:style:1:1,2,3>", env["tmp"] / "x.safetensors") == 2
    assert "block weights given" in capsys.readouterr().err
    assert not (env["tmp"] / "x.safetensors").exists()


def _deltas(net, mults=None):
    """module key → m·ΔW against the fixture-shaped zero-free base (weights irrelevant for LoRA/LoCon)."""
    out = {}
    for k, mod in net.modules.items():
        m = 1.0 if mults is None else mults[k]
        shape = mod.tensors["lora_up.weight"].shape[0], *mod.tensors["lora_down.weight"].shape[1:]
        d = compute_delta(mod, torch.ones(shape))
        out[k] = m * d.weight
    return out


@pytest.mark.parametrize("tag,dyn", [(f"<lora:style:0.7:{LIST17}>", None), ("<lora:style:1:-0.5:ALL>", None),
                                     ("<lora:loco_v2:te=1.5:unet=0.25:lbw=soft>", None),
                                     ("<lora:style:0.8:dyn=3>", 3)])
def test_bake_lora_reproduces_block_weighted_delta(env, tag, dyn):
    out = env["tmp"] / f"bl_{abs(hash(tag))}.safetensors"
    assert main(["bake-lora", "--prompt", tag, "--lora-dir", env["loras"], "--out", str(out)]) == 0
    from lib_lora.merge.bake import find_lora
    from lib_lora.presets import PresetStore
    from lib_lora.syntax import parse_prompt
    from lib_lora.tag_weights import resolve_blocks

    t = parse_prompt(tag)[0]
    src = load_network(find_lora(t.name, env["loras"]))
    active = ActiveLora(src, t.te, t.unet_multiplier, resolve_blocks(t, PresetStore(), "sd1").vector, dyn)
    mults = {k: effective_multiplier(active, m) for k, m in src.modules.items()}
    baked = load_network(out)
    assert set(baked.modules) == {k for k, m in mults.items() if m != 0}   # m = 0 modules dropped
    if LIST17 in tag or "soft" in tag:
        assert 0 < len(baked.modules) < len(src.modules)
    for k, mod in baked.modules.items():
        s = src.modules[k]
        shape = s.tensors["lora_up.weight"].shape[0], *s.tensors["lora_down.weight"].shape[1:]
        want = mults[k] * compute_delta(s, torch.ones(shape), dyn=dyn).weight
        got = compute_delta(mod, torch.ones(shape)).weight
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
        if dyn:
            assert mod.tensors["lora_down.weight"].shape[0] == dyn
    meta = baked.metadata
    assert json.loads(meta["lora_studio_baked"])["from"] == t.name and meta["ss_output_name"] == out.stem


def test_bake_lora_refuses_nonlinear_and_multiple_tags(env, capsys):
    out = env["tmp"] / "no.safetensors"
    assert main(["bake-lora", "--prompt", "<lora:dora:0.5>", "--lora-dir", env["loras"], "--out", str(out)]) == 2
    assert "DoRA/OFT/BOFT" in capsys.readouterr().err
    assert main(["bake-lora", "--prompt", "<lora:dora:0>", "--lora-dir", env["loras"], "--out", str(out)]) == 2
    assert "nothing to write" in capsys.readouterr().err
    assert main(["bake-lora", "--prompt", "<lora:style:1><lora:dora:1>", "--lora-dir", env["loras"],
                 "--out", str(out)]) == 2
    assert "exactly one" in capsys.readouterr().err
    assert not out.exists()
    assert main(["bake-lora", "--prompt", "<lora:dora:1:lbw=ALL>", "--lora-dir", env["loras"], "--out", str(out)]) == 0


def test_bake_sdxl_checkpoint_fused_text_encoder_2(tmp_path):
    pick = ("conditioner.embedders.1.model.transformer.resblocks.0.attn",
            "conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.q_proj",
            "model.diffusion_model.output_blocks.1.1.transformer_blocks.7.attn1.to_out.0")
    root = build_model("sdxl", include=pick, seed=9)
    sd = {k: v.detach().clone().half() for k, v in root.state_dict().items()}
    save_file(sd, str(tmp_path / "xl.safetensors"))
    (tmp_path / "loras").mkdir()
    write_lora(tmp_path / "loras" / "te2.safetensors", model="sdxl", algo="lora", layers=lambda l: l in pick)
    out = tmp_path / "out.safetensors"
    assert main(["bake", "--base", str(tmp_path / "xl.safetensors"), "--prompt", "<lora:te2:0.9:lbw=ALL>",
                 "--lora-dir", str(tmp_path / "loras"), "--out", str(out)]) == 0
    baked = load_file(str(out))
    key = pick[0] + ".in_proj_weight"
    assert baked[key].dtype == torch.float16 and not torch.equal(baked[key], sd[key])
    # Same weights, as a module tree, through the inference patcher: identical bits.
    root16 = build_model("sdxl", include=pick, seed=9, dtype=torch.float16)
    host = Host.from_named_modules(root16.named_modules())
    from lib_lora.blocks import expand
    from lib_lora.presets import PresetStore

    vec = expand([float(v) for v in PresetStore().get("ALL", "sdxl")])[0]
    net = load_network(tmp_path / "loras" / "te2.safetensors")
    Patcher(host).apply([ActiveLora(net, 0.9, 0.9, vec)])
    for k, v in root16.state_dict().items():
        assert torch.equal(bits(baked[k]), bits(v)), k
