"""Per-block learning-rate weights (sd-scripts networks.lora down/mid/up_lr_weight): the curves, padding and
zero threshold, the block of each layer, one optimizer group per U-Net block, no module for a 0-weight block."""

from __future__ import annotations

import json
import math

import pytest

from lib_lora import fileio
from lib_lora.errors import LoraStudioError
from lib_lora.train.config import config_from_dict
from lib_lora.train.network import block_index, block_lr_weights, build_network
from lib_lora.train.trainer import Trainer, model_layers
from tests.lib_lora.train.helpers import config, make_images, tiny_model

pytest.importorskip("lycoris")


def test_curves_padding_threshold():
    down, mid, up = block_lr_weights({"down_lr_weight": "sine", "up_lr_weight": "cosine+0.5"})
    assert mid is None and len(down) == len(up) == 12
    assert down[0] == 0.0 and down[11] == pytest.approx(1.0) and down[6] == pytest.approx(math.sin(math.pi * 6 / 22))
    assert up[0] == pytest.approx(1.5) and up[11] == pytest.approx(0.5)
    assert block_lr_weights({"down_lr_weight": "linear"})[0][3] == pytest.approx(3 / 11)
    assert block_lr_weights({"up_lr_weight": "reverse_linear"})[2][0] == pytest.approx(1.0)
    assert block_lr_weights({"mid_lr_weight": "2"}) == (None, 2.0, None)
    assert block_lr_weights({"up_lr_weight": "zeros+0.25"})[2] == [0.25] * 12
    d, m, _ = block_lr_weights({"down_lr_weight": "0.5,0.05,2", "mid_lr_weight": "0.1",
                                "block_lr_zero_threshold": "0.1"})
    assert d == [0.5, 0.0, 2.0] + [1.0] * 9 and m == 0.0                    # short list padded with 1
    assert block_lr_weights({"down_lr_weight": ",".join(["0.5"] * 14)})[0] == [0.5] * 12   # long list cut
    assert block_lr_weights({}) is None
    with pytest.raises(LoraStudioError, match="neither numbers nor a curve"):
        block_lr_weights({"up_lr_weight": "wave"})


def test_block_index_of_layers():
    u = "model.diffusion_model."
    assert block_index(u + "input_blocks.4.1.proj_in") == 4
    assert block_index(u + "middle_block.1.transformer_blocks.0.attn2.to_k") == 12
    assert block_index(u + "output_blocks.0.0.in_layers.2") == 13
    assert block_index(u + "output_blocks.11.1.proj_out") == 24
    assert block_index("cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1") == -1


def cfg(**kw):
    base = {"pretrained_model_name_or_path": "m", "train_data_dir": "d", "output_dir": "o", "network_dim": 4,
            "network_alpha": 4.0}
    base.update(kw)
    return config_from_dict(base)


def test_groups_per_block_and_no_module_for_zero_weight():
    model = tiny_model()
    args = ["down_lr_weight=0,0,0,0,0,0,1,1,0.5,1,1,1", "mid_lr_weight=0.25", "up_lr_weight=linear"]
    net = build_network(cfg(network_args=args), "sd1", model_layers(model), seed=0)
    unet_blocks = {block_index(net.layer_of[k]) for k in net.loras if not net.is_te[k]}
    assert min(unet_blocks) == 7 and 12 in unet_blocks and 16 in unet_blocks    # no IN01-IN06 (weight 0)
    groups = net.param_groups(1e-3, 5e-4)
    by_name = {g["name"]: g["lr"] for g in groups}
    assert by_name["textencoder"] == 5e-4 and "unet" not in by_name
    assert by_name["unet_block8"] == pytest.approx(5e-4) and by_name["unet_block12"] == pytest.approx(2.5e-4)
    assert by_name["unet_block24"] == pytest.approx(1e-3) and by_name["unet_block16"] == pytest.approx(3e-3 / 11)
    assert [g["name"] for g in groups][-1] == "textencoder"
    n_params = sum(len(g["params"]) for g in groups)
    assert n_params == sum(1 for p in net.parameters() if p.requires_grad)
    plain = build_network(cfg(), "sd1", model_layers(model), seed=0)
    assert [g["name"] for g in plain.param_groups(1e-3, 5e-4)] == ["unet", "textencoder"]


def test_refused_for_sdxl_and_lycoris():
    with pytest.raises(LoraStudioError, match="SD1 only"):
        build_network(cfg(network_args=["mid_lr_weight=0.5"]), "sdxl", [], seed=0)
    with pytest.raises(LoraStudioError, match="not supported with lycoris.kohya"):
        build_network(cfg(network_module="lycoris.kohya", network_args=["up_lr_weight=sine"]), "sd1", [], seed=0)


def test_training_with_block_weights_writes_only_live_blocks(tmp_path):
    data = make_images(tmp_path / "data")
    c = config(tmp_path, data, max_train_epochs=1, save_every_n_epochs=None, network_train_unet_only=True,
               network_args=["up_lr_weight=zeros", "mid_lr_weight=0.5"])
    res = Trainer(c, model=tiny_model(), log=lambda *_: None).run()
    tensors, md = fileio.read_tensors(res.files[-1])
    assert tensors and not any("up_blocks" in k for k in tensors)        # SD1: sd-scripts' diffusers names
    assert any("mid_block" in k for k in tensors) and any("down_blocks" in k for k in tensors)
    assert json.loads(md["ss_network_args"]) == {"up_lr_weight": "zeros", "mid_lr_weight": "0.5"}


def _delta_norms(path):
    import torch

    t, _ = fileio.read_tensors(path)
    out = []
    for k in t:
        if k.endswith(".lora_down.weight"):
            base = k[: -len(".lora_down.weight")]
            down, up, alpha = t[k].float(), t[base + ".lora_up.weight"].float(), float(t[base + ".alpha"])
            if down.dim() == 4 and down.shape[2:] != (1, 1):
                ud = torch.nn.functional.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3)
            else:
                ud = up.flatten(1) @ down.flatten(1)
            out.append(float((ud * alpha / down.shape[0]).norm()))
    return out


def test_scale_weight_norms_caps_every_module(tmp_path):
    data = make_images(tmp_path / "data")
    kw = dict(max_train_epochs=1, save_every_n_epochs=None, learning_rate=1e-2, network_args=["conv_dim=2"])
    free = Trainer(config(tmp_path / "a", data, **kw), model=tiny_model(), log=lambda *_: None).run()
    cap = 0.6 * max(_delta_norms(free.files[-1]))
    res = Trainer(config(tmp_path / "b", data, scale_weight_norms=cap, **kw), model=tiny_model(),
                  log=lambda *_: None).run()
    norms = _delta_norms(res.files[-1])
    assert max(norms) <= cap * (1 + 1e-4) and any(n > cap for n in _delta_norms(free.files[-1]))
    assert res.keys_scaled and max(res.keys_scaled) > 0
    assert fileio.read_metadata(res.files[-1])["ss_scale_weight_norms"] == str(cap)
    with pytest.raises(LoraStudioError, match="scale_weight_norms works on LoRA/LoCon"):
        Trainer(config(tmp_path / "c", data, scale_weight_norms=1.0, network_module="lycoris.kohya",
                       network_args=["algo=loha"]), model=tiny_model(), log=lambda *_: None).run()
