"""Host: one canonical layer map from A1111 module trees, checkpoints and diffusers/transformers models."""

from __future__ import annotations

import pytest
import torch

from lib_lora.host import Host, canonical_name
from lib_lora.patcher import ActiveLora, Patcher
from tests.engine_helpers import make_net
from tests.factory import fixture_layers
from tests.models import build_model, layer_specs


def _expected(model):
    return {n for n in fixture_layers(model) if not n.endswith(("token_embedding", "position_embedding"))}


@pytest.mark.parametrize("model,arch", [("sd15", "sd1"), ("sdxl", "sdxl")])
def test_named_modules_cover_every_fixture_layer(model, arch):
    root = build_model(model, scale=16)
    host = Host.from_named_modules(root.named_modules())
    assert set(host.layers) == _expected(model) and host.arch == arch
    # docs/spec/blocks.md §4 counts: every U-Net weight key of a real checkpoint is one layer here.
    weights = [k for k in __import__("tests.models", fromlist=["x"]).fixture_keys(model)
               if k.startswith("model.diffusion_model.") and k.endswith(".weight")]
    assert len([n for n in host.layers if n.startswith("model.diffusion_model.")]) == len(weights)


def test_a1111_wrapped_names_and_old_text_encoder_names_normalise():
    assert canonical_name("cond_stage_model.wrapped.transformer.encoder.layers.3.self_attn.q_proj") == \
        "cond_stage_model.transformer.text_model.encoder.layers.3.self_attn.q_proj"
    assert canonical_name("conditioner.embedders.1.wrapped.model.transformer.resblocks.3.attn") == \
        "conditioner.embedders.1.model.transformer.resblocks.3.attn"
    assert canonical_name("first_stage_model.decoder.conv_in") is None
    plain = build_model("sd15", scale=16, seed=3)
    wrapped = build_model("sd15", scale=16, seed=3, a1111=True, drop_text_model=True)
    h1 = Host.from_named_modules(plain.named_modules())
    h2 = Host.from_named_modules(wrapped.named_modules())
    assert set(h1.layers) == set(h2.layers)
    name = "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1"
    live = wrapped.get_submodule("cond_stage_model.wrapped.transformer.encoder.layers.0.mlp.fc1").weight
    assert h2[name].weight is live and torch.equal(h1[name].weight, live)


def test_state_dict_host_edits_the_dict_in_place_and_maps_fused_attention():
    root = build_model("sdxl", scale=16, include=("conditioner.embedders.1.model.transformer.resblocks.0.",
                                                  "model.diffusion_model.input_blocks.4.1.transformer_blocks.0."))
    sd = {k: v.clone() for k, v in root.state_dict().items()}
    host = Host.from_state_dict(sd)
    fused = host["conditioner.embedders.1.model.transformer.resblocks.0.attn"]
    assert fused.fused and fused.weight is sd["conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"]
    assert fused.qkv_rows(2).data_ptr() == fused.weight[2 * fused.qkv_width():].data_ptr()
    assert host.arch == "sdxl"
    # SD1 checkpoints without `text_model.` still give canonical names that write into the original keys.
    sd1 = {"cond_stage_model.transformer.encoder.layers.0.self_attn.q_proj.weight": torch.zeros(4, 4),
           "cond_stage_model.transformer.encoder.layers.0.self_attn.q_proj.bias": torch.zeros(4),
           "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(320, 768),
           "first_stage_model.decoder.conv_in.weight": torch.zeros(2, 2, 3, 3), "alphas_cumprod": torch.zeros(3)}
    h = Host.from_state_dict(sd1)
    assert set(h.layers) == {"cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj",
                             "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k"}
    h["cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj"].weight.fill_(1)
    assert sd1["cond_stage_model.transformer.encoder.layers.0.self_attn.q_proj.weight"].sum() == 16
    assert h.arch == "sd1"


@pytest.mark.parametrize("keys,arch", [
    (["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"], "sd1"),
    (["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"], "sd2"),
    (["model.diffusion_model.label_emb.0.0.weight"], "sdxl"),
    (["model.diffusion_model.input_blocks.0.0.weight"], "unknown")])
def test_arch_detection_from_layers(keys, arch):
    shapes = {"attn2.to_k": (320, 768), "in_proj_weight": (3072, 1024)}
    sd = {k: torch.zeros(next((s for t, s in shapes.items() if t in k), (4, 4))) for k in keys}
    assert Host.from_state_dict(sd).arch == arch


def _tiny_unet(cross):
    diffusers = pytest.importorskip("diffusers")  # optional: only these tests need it
    return diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64, 96, 96),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=cross,
        attention_head_dim=8, norm_num_groups=8)


def _clip(hidden, layers, cls="CLIPTextModel"):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.CLIPTextConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                                      num_attention_heads=max(1, hidden // 64), vocab_size=100,
                                      max_position_embeddings=77, projection_dim=hidden,
                                      bos_token_id=0, eos_token_id=2, pad_token_id=1)
    return getattr(transformers, cls)(cfg)


def test_diffusers_sd15_unet_and_clip_map_to_the_checkpoint_names():
    unet, te = _tiny_unet(768), _clip(64, 2)
    host = Host.from_diffusers(unet, [te])
    assert host.arch == "sd1"
    unet_names = {n for n in host.layers if n.startswith("model.")}
    assert unet_names == {n for n in _expected("sd15") if n.startswith("model.")}
    te_names = {n for n in host.layers if n.startswith("cond_stage_model.")}
    want = {n for n in _expected("sd15") if n.startswith("cond_stage_model.")
            and (".layers.0." in n or ".layers.1." in n or n.endswith("final_layer_norm"))}
    assert te_names == want
    ref = host["model.diffusion_model.output_blocks.5.2.conv"]
    assert ref.weight is unet.up_blocks[1].upsamplers[0].conv.weight


def test_diffusers_sdxl_split_qkv_text_encoder_matches_fused_checkpoint(tmp_path):
    pick = ("conditioner.embedders.1.model.transformer.resblocks.0.attn",
            "conditioner.embedders.1.model.transformer.resblocks.0.mlp.c_fc")
    net = make_net(tmp_path, "te2", model="sdxl", algo="lora", layers=lambda l: l in pick)
    te1, te2 = _clip(64, 1), _clip(1280, 1, "CLIPTextModelWithProjection")
    host = Host.from_diffusers(None, [te1, te2], arch="sdxl")
    split = host["conditioner.embedders.1.model.transformer.resblocks.0.attn"]
    attn = te2.text_model.encoder.layers[0].self_attn
    assert split.weight is None and split.qkv_rows(1) is attn.k_proj.weight and split.qkv_bias(2) is attn.v_proj.bias
    assert host["conditioner.embedders.1.model.transformer.resblocks.0.mlp.c_fc"].weight is \
        te2.text_model.encoder.layers[0].mlp.fc1.weight
    # The same weights as an OpenCLIP fused module tree.
    root = build_model("sdxl", include=pick)
    mha = root.get_submodule(pick[0])
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
        mha.in_proj_bias.copy_(torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]))
        root.get_submodule(pick[1]).weight.copy_(te2.text_model.encoder.layers[0].mlp.fc1.weight)
    fused = Host.from_named_modules(root.named_modules())
    q0 = attn.q_proj.weight.detach().clone()
    Patcher(host).apply([ActiveLora(net, te=0.8)])
    Patcher(fused).apply([ActiveLora(net, te=0.8)])
    assert not torch.equal(attn.q_proj.weight, q0)
    got = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
    assert torch.equal(got, mha.in_proj_weight)
    assert torch.equal(te2.text_model.encoder.layers[0].mlp.fc1.weight, root.get_submodule(pick[1]).weight)


def test_layer_specs_scale_keeps_kernels():
    spec = layer_specs("sd15", scale=16, include=("model.diffusion_model.input_blocks.1.0.in_layers.2",))
    assert spec["model.diffusion_model.input_blocks.1.0.in_layers.2"]["shape"] == [20, 20, 3, 3]


def test_from_a1111_reads_the_whole_sd_model_tree():
    sd_model = build_model("sd15", scale=16, seed=4, a1111=True)
    sd_model.add_module("first_stage_model", torch.nn.Module())
    sd_model.first_stage_model.add_module("conv_in", torch.nn.Conv2d(3, 4, 3))
    host = Host.from_a1111(sd_model)
    assert set(host.layers) == _expected("sd15") and host.arch == "sd1"


def test_diffusers_sdxl_unet_maps_to_every_checkpoint_layer():
    diffusers = pytest.importorskip("diffusers")
    unet = diffusers.UNet2DConditionModel(  # SDXL topology at toy width: 1/2/10 transformer layers per level
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64, 96),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2, 10),
        cross_attention_dim=2048, attention_head_dim=(1, 2, 3), use_linear_projection=True, norm_num_groups=8,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=16 + 6 * 8)
    host = Host.from_diffusers(unet, [])
    assert host.arch == "sdxl"
    assert set(host.layers) == {n for n in _expected("sdxl") if n.startswith("model.")}
    assert host["model.diffusion_model.output_blocks.2.2.conv"].weight is unet.up_blocks[0].upsamplers[0].conv.weight
    assert host["model.diffusion_model.label_emb.0.2"].weight is unet.add_embedding.linear_2.weight
