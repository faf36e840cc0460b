"""network + arch detection: LoraNetwork fields, architecture rules, mismatch errors, file cache."""

import os
import time

import pytest
import torch
from safetensors.torch import save_file

from lib_lora import arch, fileio
from lib_lora.errors import ArchitectureMismatch, LoraFileError
from lib_lora.network import NetworkCache, load_network
from tests.factory import make_lora, write_lora


@pytest.mark.parametrize("md,want", [
    ({"ss_base_model_version": "sd_v1"}, "sd1"), ({"ss_base_model_version": "sd_v2_768_v"}, "sd2"),
    ({"ss_base_model_version": "sdxl_base_v1-0"}, "sdxl"), ({"modelspec.architecture": "stable-diffusion-v1/lora"}, "sd1"),
    ({"modelspec.architecture": "stable-diffusion-v2-768-v/lora"}, "sd2"),
    ({"modelspec.architecture": "stable-diffusion-xl-v1-base/lora"}, "sdxl"), ({"ss_v2": "True"}, "sd2"),
    ({"ss_v2": "False"}, None), ({}, None), ({"ss_base_model_version": "flux1"}, None)])
def test_arch_from_metadata(md, want):
    assert arch.arch_from_metadata(md) == want


def test_metadata_wins_over_shapes():
    sd, _ = make_lora("sd15", metadata=False)
    assert arch.detect_arch_raw(sd, {}) == "sd1"
    assert arch.detect_arch_raw(sd, {"ss_base_model_version": "sdxl_base_v1-0"}) == "sdxl"


@pytest.mark.parametrize("model,family,algo,want", [
    ("sd15", "kohya", "lora", "sd1"), ("sdxl", "kohya", "lora", "sdxl"), ("sd15", "peft", "lora", "sd1"),
    ("sdxl", "peft", "lora", "sdxl"), ("sd15", "lycoris", "loha", "sd1"), ("sdxl", "lycoris", "loha", "sdxl"),
    ("sd15", "lycoris", "lokr", "sd1"), ("sdxl", "lycoris", "lokr", "sdxl"), ("sd15", "lycoris", "full", "sd1"),
    ("sdxl", "diffusers_old", "lora", "sdxl")])
def test_context_width_decides_without_metadata_or_te(model, family, algo, want):
    """Only attn2.to_k U-Net modules, no metadata, no text encoder: the in-features (768/2048) decide."""
    sd, md = make_lora(model, family=family, algo=algo, include_te=False, metadata=False,
                       layers=lambda l: l.endswith("attn2.to_k"))
    assert sd and md == {}
    assert arch.detect_arch_raw(sd, md) == want


def test_other_clues():
    sd, _ = make_lora("sd15", include_te=True, metadata=False, layers=lambda l: "encoder.layers.3.self_attn.q_proj" in l)
    assert arch.detect_arch_raw(sd) == "sd1"  # TE width 768 under lora_te_
    sd, _ = make_lora("sdxl", include_te=False, metadata=False, layers=lambda l: "transformer_blocks.4.attn1.to_q" in l)
    assert arch.detect_arch_raw(sd) == "sdxl"  # deep transformer blocks only exist in SDXL
    sd, _ = make_lora("sdxl", metadata=False, layers=lambda l: l.startswith("conditioner.embedders.0") and "q_proj" in l)
    assert arch.detect_arch_raw(sd) == "sdxl"  # lora_te1_ prefix
    sd, _ = make_lora("sd15", include_te=False, metadata=False, layers=lambda l: l.endswith("1.1.proj_in"))
    assert arch.detect_arch_raw(sd) == "sd1"  # 1x1-conv proj_in
    sd, _ = make_lora("sd15", include_te=False, metadata=False, layers=lambda l: l.endswith("middle_block.0.in_layers.2"),
                      algo="locon")
    assert arch.detect_arch_raw(sd) == "unknown"


def test_key_mapper_decides_the_arch():
    from lib_lora.keys import group_modules_with_arch

    sd, md = make_lora("sdxl", family="peft", include_te=False, metadata=False, layers=lambda l: l.endswith("attn2.to_v"))
    assert group_modules_with_arch(sd, md)[2] == "sdxl"
    assert group_modules_with_arch(sd, {"ss_base_model_version": "sd_v1"})[2] == "sd1"
    sd = {"lora_te_text_model_encoder_layers_0_mlp_fc2.lora_down.weight": torch.zeros(4, 4096),
          "lora_te_text_model_encoder_layers_0_mlp_fc2.lora_up.weight": torch.zeros(1024, 4)}
    assert group_modules_with_arch(sd, {}, arch_hint="sd2")[2] == "sd2"
    assert group_modules_with_arch(sd, {})[2] == "unknown"  # SD1, SD2 and SDXL names fit equally well


def test_load_network_keeps_the_arch_the_key_mapper_found(tmp_path):
    """No metadata, no width or name hint; only SDXL has add_embedding (label_emb): the names decide SDXL.
    (load_network used to recompute the arch from layer prefixes, which know nothing of label_emb.)"""
    sd = {}
    for mod, n_in, n_out in (("lora_unet_add_embedding_linear_1", 2816, 1280),
                             ("lora_unet_mid_block_resnets_0_conv1", 1280, 1280)):
        sd[f"{mod}.lora_down.weight"] = torch.randn(4, n_in)
        sd[f"{mod}.lora_up.weight"] = torch.randn(n_out, 4)
    assert arch.detect_arch_raw(sd) == "unknown"
    p = tmp_path / "xl.safetensors"
    save_file(sd, str(p))
    net = load_network(p)
    assert net.arch == "sdxl" and len(net.modules) == 2 and not net.skipped


def test_load_network_fields(tmp_path):
    p = write_lora(tmp_path / "my_style.safetensors", model="sdxl", algo="lora")
    net = load_network(p)
    assert net.name == "my_style" and net.path == p
    assert net.arch == "sdxl" and net.arch_label == "SDXL"
    assert net.alias == "test_sdxl_lora"
    assert net.algos == {"lora": len(net.modules)} and len(net.modules) == 11
    assert net.skipped == []
    assert net.hash == fileio.model_hash(p) and net.short_hash == net.hash[:12]
    assert net.size == os.path.getsize(p)


def test_load_network_hash_from_trainer_metadata(tmp_path):
    p = write_lora(tmp_path / "x.safetensors", metadata={"sshs_model_hash": "f" * 64})
    assert load_network(p).hash == "f" * 64


def test_architecture_mismatch(tmp_path):
    p = write_lora(tmp_path / "foo.safetensors", model="sd15")
    with pytest.raises(ArchitectureMismatch) as exc:
        load_network(p, expected_arch="sdxl")
    assert str(exc.value).startswith("LoRA 'foo' is SD1, the model is SDXL")
    assert load_network(p, expected_arch="sd1").arch == "sd1"


def test_unknown_arch_uses_expected_arch_for_names(tmp_path):
    sd = {"lora_te_text_model_encoder_layers_2_self_attn_q_proj.lora_down.weight": torch.randn(4, 900),
          "lora_te_text_model_encoder_layers_2_self_attn_q_proj.lora_up.weight": torch.randn(900, 4)}
    p = tmp_path / "odd.safetensors"
    save_file(sd, str(p))
    net = load_network(p, expected_arch="sd2")  # width 900 matches nothing: names follow the model
    assert net.arch == "sd2"
    (m,) = net.modules.values()
    assert (m.layer, m.qkv) == ("cond_stage_model.model.transformer.resblocks.2.attn", 0)


def test_file_without_usable_keys(tmp_path):
    p = tmp_path / "flux.safetensors"
    save_file({"transformer.single_blocks.0.linear1.lora_A.weight": torch.zeros(4, 8),
               "transformer.single_blocks.0.linear1.lora_B.weight": torch.zeros(8, 4)}, str(p))
    with pytest.raises(LoraFileError) as exc:
        load_network(p)
    assert "'flux'" in str(exc.value) and "another model family" in str(exc.value)
    net = load_network(p, allow_empty=True)
    assert net.modules == {} and len(net.skipped) == 2


def test_pickle_gating_through_load_network(tmp_path):
    sd, _ = make_lora("sd15")
    p = tmp_path / "old.pt"
    torch.save(sd, p)
    with pytest.raises(LoraFileError, match="pickle"):
        load_network(p)
    assert load_network(p, allow_pickle=True).arch == "sd1"


def test_network_cache(tmp_path):
    cache = NetworkCache(max_items=2)
    a = write_lora(tmp_path / "a.safetensors", seed=1)
    b = write_lora(tmp_path / "b.safetensors", seed=2)
    c = write_lora(tmp_path / "c.safetensors", seed=3)
    na = cache.get(a)
    assert cache.get(a) is na
    with pytest.raises(ArchitectureMismatch):
        cache.get(a, expected_arch="sdxl")
    cache.get(b)
    cache.get(c)  # evicts a (least recently used)
    assert len(cache) == 2
    assert cache.get(a) is not na
    # a changed file is reloaded
    nb = cache.get(b)
    time.sleep(0.01)
    write_lora(b, model="sdxl")
    os.utime(b, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    nb2 = cache.get(b)
    assert nb2 is not nb and nb2.arch == "sdxl"
    with pytest.raises(LoraFileError, match="not found"):
        cache.get(tmp_path / "missing.safetensors")


def test_weak_name_hints_follow_the_model(tmp_path):
    """attn1-only SD1/SD2 U-Net LoRA without metadata: names say "not SDXL" but cannot tell SD1 from SD2."""
    sd, _ = make_lora("sd15", include_te=False, metadata=False,
                      layers=lambda l: l.endswith("attn1.to_q") and "input_blocks.1." in l)
    assert arch.detect_arch_raw_detail(sd) == ("sd1", False)
    p = tmp_path / "w.safetensors"
    save_file(sd, str(p))
    assert load_network(p).arch == "sd1"
    net = load_network(p, expected_arch="sd2")
    assert net.arch == "sd2" and len(net.modules) == 1
    # conclusive evidence still raises
    sd2, _ = make_lora("sd15", include_te=False, metadata=False, layers=lambda l: l.endswith("attn2.to_k"))
    q = tmp_path / "c.safetensors"
    save_file(sd2, str(q))
    with pytest.raises(ArchitectureMismatch):
        load_network(q, expected_arch="sd2")
