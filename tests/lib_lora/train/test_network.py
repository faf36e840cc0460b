"""The trained network: kohya key names, rank/alpha per layer kind, and ΔW as the core engine computes it from
the saved file equal to what the training modules add (LoRA/LoCon, LoHa, LoKr)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lib_lora import fileio
from lib_lora.algos import compute_delta
from lib_lora.errors import LoraStudioError
from lib_lora.network import load_network
from lib_lora.train.config import config_from_dict
from lib_lora.train.network import build_network

pytest.importorskip("lycoris")

U = "model.diffusion_model."
TE = "cond_stage_model.transformer.text_model.encoder.layers.0."


def layers():
    torch.manual_seed(0)
    return [
        (U + "input_blocks.1.1.transformer_blocks.0.attn1.to_q", nn.Linear(32, 32, bias=False), False),
        (U + "input_blocks.1.1.proj_in", nn.Conv2d(32, 32, 1), False),
        (U + "input_blocks.1.0.in_layers.2", nn.Conv2d(32, 32, 3, padding=1), False),
        (U + "input_blocks.1.0.emb_layers.1", nn.Linear(64, 32), False),
        (U + "time_embed.0", nn.Linear(32, 64), False),                       # never a target
        (TE + "self_attn.q_proj", nn.Linear(48, 48), True),
        (TE + "mlp.fc1", nn.Linear(48, 96), True),
    ]


def cfg(module="networks.lora", args=(), **kw):
    base = {"pretrained_model_name_or_path": "m", "train_data_dir": "d", "output_dir": "o",
            "network_module": module, "network_args": list(args), "network_dim": 4, "network_alpha": 2.0}
    base.update(kw)
    return config_from_dict(base)


def test_kohya_names_and_ranks():
    net = build_network(cfg(args=["conv_dim=2", "conv_alpha=1"]), "sd1", layers(), seed=0)
    w = net.weights()
    assert set(k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in w) == {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",  # SD1: sd-scripts' diffusers names
        "lora_unet_down_blocks_0_attentions_0_proj_in", "lora_unet_down_blocks_0_resnets_0_conv1",
        "lora_unet_down_blocks_0_resnets_0_time_emb_proj",
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj", "lora_te_text_model_encoder_layers_0_mlp_fc1"}
    assert w["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"].shape == (2, 32, 3, 3)   # conv_dim
    assert float(w["lora_unet_down_blocks_0_resnets_0_conv1.alpha"]) == 1.0
    assert w["lora_unet_down_blocks_0_resnets_0_time_emb_proj.lora_down.weight"].shape == (4, 64)         # network_dim
    assert float(w["lora_unet_down_blocks_0_attentions_0_proj_in.alpha"]) == 2.0
    # no conv_dim: kohya's networks.lora trains only the transformer and text-encoder layers
    plain = build_network(cfg(), "sd1", layers(), seed=0)
    assert len(plain.loras) == 4
    only_unet = build_network(cfg(network_train_unet_only=True), "sd1", layers(), seed=0)
    assert not any(only_unet.is_te.values())
    with pytest.raises(LoraStudioError, match="block_dims"):
        build_network(cfg(args=["block_dims=4,4"]), "sd1", layers(), seed=0)


@pytest.mark.parametrize("module,args", [("networks.lora", ["conv_dim=2", "conv_alpha=1"]),
                                         ("lycoris.kohya", ["algo=locon"]),
                                         ("lycoris.kohya", ["algo=loha", "conv_dim=2"]),
                                         ("lycoris.kohya", ["algo=lokr", "factor=4"])])
def test_saved_file_gives_the_core_the_trained_delta(tmp_path, module, args):
    ls = layers()
    net = build_network(cfg(module, args), "sd1", ls, seed=0)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.1)
    f = str(tmp_path / "n.safetensors")
    fileio.atomic_save_safetensors(net.weights(), f, {"ss_network_module": module,
                                                       "ss_base_model_version": "sd_v1"})
    loaded = load_network(f)
    assert not loaded.skipped and loaded.arch == "sd1" and len(loaded.modules) == len(net.loras)
    mods = {layer: m for layer, m, _ in ls}
    net.apply_to()
    for mod in loaded.modules.values():
        m = mods[mod.layer]
        x = torch.randn(2, m.weight.shape[1], *((5, 5) if m.weight.dim() == 4 else ()))
        with torch.no_grad():
            trained = m(x)                                  # the layer with the training module hooked in
            d = compute_delta(mod, m.weight.detach(), None if m.bias is None else m.bias.detach())
            w = m.weight + d.weight
            if m.weight.dim() == 4:
                ref = nn.functional.conv2d(x, w, m.bias, padding=m.padding)
            else:
                ref = nn.functional.linear(x, w, m.bias)
        assert torch.allclose(trained, ref, atol=1e-5, rtol=1e-4), mod.key
