"""Per-block settings of sd-scripts' networks.lora on SD1 and SDXL: LR weights (down/mid/up_lr_weight, the preset
curves, padding, cutting, zero threshold), per-block ranks (block_dims/block_alphas/conv_block_dims/
conv_block_alphas), the block of each layer, one optimizer group per U-Net block, and the saved files."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lib_lora import fileio
from lib_lora.errors import LoraStudioError
from lib_lora.network import load_network
from lib_lora.train import sdscripts
from lib_lora.train.config import config_from_dict, read_toml_file
from lib_lora.train.network import block_index, block_lr_weights, build_network
from lib_lora.train.optim import build_optimizer
from lib_lora.train.trainer import Trainer, model_layers
from tests.lib_lora.train.helpers import config, make_images, tiny_model

pytest.importorskip("lycoris")

U = "model.diffusion_model."

# sd-scripts' block index of U-Net layers, read from networks/lora.py get_block_index (facts written down here).
# SD1: it names layers the diffusers way; idx = 3*i + j for down/up_blocks_i_{resnets,attentions}_j, 3*i + 2 for
# the block's down/upsampler; down → 1 + idx, up → 13 + idx, mid_block → 12. The LDM names below are the same
# layers (input_blocks.n = down_blocks[(n-1)//3] item (n-1)%3, output_blocks.n = up_blocks[n//3] item n%3).
SD1_TABLE = {
    "input_blocks.1.0.in_layers.2": 1,              # down_blocks_0_resnets_0
    "input_blocks.2.1.proj_in": 2,                  # down_blocks_0_attentions_1
    "input_blocks.3.0.op": 3,                       # down_blocks_0_downsamplers_0
    "input_blocks.4.0.skip_connection": 4,          # down_blocks_1_resnets_0
    "input_blocks.8.1.transformer_blocks.0.attn2.to_k": 8,      # down_blocks_2_attentions_1
    "input_blocks.11.0.emb_layers.1": 11,           # down_blocks_3_resnets_1
    "middle_block.0.in_layers.2": 12, "middle_block.1.proj_out": 12, "middle_block.2.out_layers.3": 12,
    "output_blocks.0.0.in_layers.2": 13,            # up_blocks_0_resnets_0
    "output_blocks.2.1.conv": 15,                   # up_blocks_0_upsamplers_0
    "output_blocks.5.2.conv": 18,                   # up_blocks_1_upsamplers_0
    "output_blocks.11.1.transformer_blocks.0.ff.net.2": 24,     # up_blocks_3_attentions_2
}
# SDXL: it names layers the LDM way; time_embed/label_emb → 0, input_blocks_n → 1 + n, middle_block_n → 10 + n,
# output_blocks_n → 13 + n, out → 22 (23 blocks: 1 + 9 + 3 + 9 + 1).
SDXL_TABLE = {
    "time_embed.0": 0, "label_emb.0.0": 0,
    "input_blocks.1.0.in_layers.2": 2, "input_blocks.3.0.op": 4, "input_blocks.4.1.proj_in": 5,
    "input_blocks.8.1.transformer_blocks.9.attn1.to_q": 9,
    "middle_block.0.emb_layers.1": 10, "middle_block.1.proj_in": 11, "middle_block.2.out_layers.3": 12,
    "output_blocks.0.0.skip_connection": 13, "output_blocks.2.2.conv": 15, "output_blocks.8.1.proj_out": 21,
    "out.2": 22,
}


def test_block_index_matches_sd_scripts_table():
    for layer, idx in SD1_TABLE.items():
        assert block_index(U + layer, "sd1") == idx, layer
    for layer, idx in SDXL_TABLE.items():
        assert block_index(U + layer, "sdxl") == idx, layer
    te = "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1"
    assert block_index(te, "sd1") == block_index(te, "sdxl") == -1
    assert block_index("conditioner.embedders.1.model.transformer.resblocks.0.mlp.c_fc", "sdxl") == -1


def test_sd1_curves_padding_threshold():
    w = block_lr_weights({"down_lr_weight": "sine", "up_lr_weight": "cosine+0.5"})
    assert len(w) == 25 and w[12] == 1.0                                    # mid not given: 1
    down, up = w[:12], w[13:]
    assert down[0] == 0.0 and down[11] == pytest.approx(1.0) and down[6] == pytest.approx(math.sin(math.pi * 6 / 22))
    assert up[0] == pytest.approx(1.5) and up[11] == pytest.approx(0.5)
    assert block_lr_weights({"down_lr_weight": "linear"})[3] == pytest.approx(3 / 11)
    assert block_lr_weights({"up_lr_weight": "reverse_linear"})[13] == pytest.approx(1.0)
    assert block_lr_weights({"mid_lr_weight": "2"}) == [1.0] * 12 + [2.0] + [1.0] * 12
    assert block_lr_weights({"mid_lr_weight": "2,5"})[12:14] == [2.0, 1.0]     # SD1 has one mid block: cut
    assert block_lr_weights({"up_lr_weight": "zeros+0.25"})[13:] == [0.25] * 12
    w = block_lr_weights({"down_lr_weight": "0.5,0.05,2", "mid_lr_weight": "0.1", "block_lr_zero_threshold": "0.1"})
    assert w[:12] == [0.5, 0.0, 2.0] + [1.0] * 9 and w[12] == 0.0                # short list padded with 1
    assert block_lr_weights({"down_lr_weight": ",".join(["0.5"] * 14)})[:12] == [0.5] * 12   # long list cut
    assert block_lr_weights({"down_lr_weight": "1,,0.5"})[:3] == [1.0, 0.0, 0.5]    # sd-scripts: empty item is 0
    assert block_lr_weights({}) is None


def test_sdxl_curves_have_9_entries_and_fixed_edges():
    w = block_lr_weights({"down_lr_weight": "linear", "mid_lr_weight": "0.1,0.2", "up_lr_weight": "sine+1"},
                         "sdxl")
    assert len(w) == 23 and w[0] == 1.0 and w[22] == 1.0                    # embedding and out blocks
    assert w[1:10] == pytest.approx([i / 8 for i in range(9)])              # 9 down entries over IN00-IN08
    assert w[10:13] == pytest.approx([0.1, 0.2, 1.0])                       # 3 mid entries, padded with 1
    assert w[13:22] == pytest.approx([math.sin(math.pi * i / 16) + 1 for i in range(9)])
    w = block_lr_weights({"down_lr_weight": ",".join(["2"] * 12), "up_lr_weight": "cosine"}, "sdxl")
    assert w[1:10] == [2.0] * 9 and len(w) == 23                            # 12 SD1-style entries cut to 9
    assert w[21] == 0.0                                                     # cosine ends at 0 → block 21 off


@pytest.mark.parametrize("args,match", [
    ({"up_lr_weight": "wave"}, "not a curve name"),
    ({"down_lr_weight": "0.5"}, "not a curve name"),                        # one number: sd-scripts ignores it
    ({"down_lr_weight": "sine+x"}, "after \\+ must be a number"),
    ({"down_lr_weight": "1,a"}, "comma-separated numbers"),
    ({"mid_lr_weight": "sine"}, "comma-separated numbers"),
    ({"mid_lr_weight": "1", "block_lr_zero_threshold": "x"}, "block_lr_zero_threshold takes one number"),
])
def test_bad_lr_weights_are_one_clear_error(args, match):
    with pytest.raises(LoraStudioError, match=match):
        block_lr_weights(args)


def cfg(**kw):
    base = {"pretrained_model_name_or_path": "m", "train_data_dir": "d", "output_dir": "o", "network_dim": 4,
            "network_alpha": 4.0}
    base.update(kw)
    return config_from_dict(base)


def _optimizer_lrs(net, unet_lr=1e-3, te_lr=5e-4) -> dict:
    """The learning rate of every optimizer group by name, built the way the trainer builds it."""
    opt, _, _ = build_optimizer("AdamW", net.param_groups(unet_lr, te_lr), None, unet_lr)
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    assert n_params == sum(1 for p in net.parameters() if p.requires_grad)
    return {g["name"]: g["lr"] for g in opt.param_groups}


def test_sd1_groups_per_block_and_no_module_for_zero_weight():
    model = tiny_model()
    args = ["down_lr_weight=0,0,0,0,0,0,1,1,0.5,1,1,1", "mid_lr_weight=0.25", "up_lr_weight=linear"]
    net = build_network(cfg(network_args=args), "sd1", model_layers(model), seed=0)
    unet_blocks = {block_index(net.layer_of[k]) for k in net.loras if not net.is_te[k]}
    assert min(unet_blocks) == 7 and 12 in unet_blocks and 16 in unet_blocks    # no IN01-IN06 (weight 0)
    lrs = _optimizer_lrs(net)
    assert lrs["textencoder"] == 5e-4 and "unet" not in lrs
    assert lrs["unet_block8"] == pytest.approx(5e-4) and lrs["unet_block12"] == pytest.approx(2.5e-4)
    assert lrs["unet_block24"] == pytest.approx(1e-3) and lrs["unet_block16"] == pytest.approx(3e-3 / 11)
    assert "unet_block13" not in lrs and 13 not in unet_blocks              # linear starts at 0: no module
    plain = build_network(cfg(), "sd1", model_layers(model), seed=0)
    assert [g["name"] for g in plain.param_groups(1e-3, 5e-4)] == ["textencoder", "unet"]   # sd-scripts' order
    names = [g["name"] for g in net.param_groups(1e-3, 5e-4)]
    blocks = [int(n[len("unet_block"):]) for n in names[1:]]
    # sd-scripts walks its SD1 U-Net down blocks, up blocks, then the mid block: groups come in that order
    assert names[0] == "textencoder" and blocks == sorted(unet_blocks - {12}) + [12]


def test_sdxl_groups_per_block():
    model = tiny_model("sdxl")
    args = ["down_lr_weight=0,0,0,0,1,1,1,0.5,2", "mid_lr_weight=0.25,0.5,0.75", "up_lr_weight=sine",
            "conv_dim=2"]                       # with conv: every block has modules (MID 0/2 are ResNets)
    net = build_network(cfg(network_args=args), "sdxl", model_layers(model), seed=0)
    unet_layers = [net.layer_of[k] for k in net.loras if not net.is_te[k]]
    assert not any(".input_blocks.1." in x or ".input_blocks.2." in x or ".input_blocks.3." in x for x in unet_layers)
    assert not any(".output_blocks.0." in x for x in unet_layers)           # sine starts at 0 (block 13)
    lrs = _optimizer_lrs(net)
    assert "unet" not in lrs and lrs["textencoder"] == 5e-4
    assert lrs["unet_block5"] == pytest.approx(1e-3)                        # IN04
    assert lrs["unet_block8"] == pytest.approx(5e-4) and lrs["unet_block9"] == pytest.approx(2e-3)  # IN07, IN08
    assert [lrs[f"unet_block{i}"] for i in (10, 11, 12)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4])
    for i in range(1, 9):                                                   # OUT01-OUT08
        assert lrs[f"unet_block{13 + i}"] == pytest.approx(1e-3 * math.sin(math.pi * i / 16))
    assert not any(n.startswith("unet_block") and int(n[10:]) < 5 for n in lrs)


SD1_DIMS = [(i % 4) + 1 for i in range(25)]
SD1_ALPHAS = [i + 0.5 for i in range(25)]
SD1_CONV = [(i % 3) for i in range(25)]                 # 0: that block's 3×3 convs get no module


def _ranks(tensors) -> dict:
    return {k[: -len(".lora_down.weight")]: (t.shape[0], float(tensors[k[: -len(".lora_down.weight")] + ".alpha"]))
            for k, t in tensors.items() if k.endswith(".lora_down.weight")}


def _check_ranks(path, arch, dims, alphas, conv_dims, conv_alphas, te_rank):
    tensors, md = fileio.read_tensors(path)
    ranks = _ranks(tensors)
    loaded = load_network(path)
    assert loaded.arch == arch and not loaded.skipped and len(loaded.modules) == len(ranks)
    n_conv = 0
    for mod in loaded.modules.values():
        down = mod.tensors["lora_down.weight"]
        key = mod.key.split(".")[0]
        assert (down.shape[0], mod.alpha) == ranks[key]
        if mod.is_te:
            assert ranks[key] == te_rank, key
            continue
        i = block_index(mod.layer, arch)
        conv3 = down.dim() == 4 and down.shape[2:] != (1, 1)
        n_conv += conv3
        want = (conv_dims[i], conv_alphas[i]) if conv3 else (dims[i], alphas[i])
        assert ranks[key] == want, (key, i)
    return md, ranks, n_conv


def test_sd1_block_dims_give_per_module_ranks_in_the_saved_file(tmp_path):
    data = make_images(tmp_path / "data")
    args = [f"block_dims={','.join(map(str, SD1_DIMS))}", f"block_alphas={','.join(map(str, SD1_ALPHAS))}",
            f"conv_block_dims={','.join(map(str, SD1_CONV))}", "conv_block_alphas=" + ",".join(["0.5"] * 25)]
    c = config(tmp_path, data, max_train_epochs=None, max_train_steps=1, save_every_n_epochs=None,
               network_args=args)
    res = Trainer(c, model=tiny_model(), log=lambda *_: None).run()
    md, ranks, n_conv = _check_ranks(res.files[-1], "sd1", SD1_DIMS, SD1_ALPHAS, SD1_CONV, [0.5] * 25, (4, 4.0))
    assert n_conv and len({r for r, _ in ranks.values()}) == 4
    assert not any(k.startswith("lora_unet_input_blocks_3_0_op") for k in ranks)   # IN03 conv dim 0
    assert json.loads(md["ss_network_args"]) == {a.split("=")[0]: a.split("=", 1)[1] for a in args}
    assert md["ss_network_dim"] == "4" and md["ss_network_alpha"] == "4.0"


def test_sdxl_block_dims_with_lr_weights_and_conv_dim(tmp_path):
    data = make_images(tmp_path / "data")
    dims = [(i % 3) + 2 for i in range(23)]
    alphas = [float(i) for i in range(23)]
    args = [f"block_dims={','.join(map(str, dims))}", f"block_alphas={','.join(map(str, alphas))}",
            "conv_dim=3", "conv_alpha=1.5", "up_lr_weight=1,1,0"]
    c = config(tmp_path, data, max_train_epochs=None, max_train_steps=1, save_every_n_epochs=None,
               bucket_reso_steps=32, network_args=args)
    res = Trainer(c, model=tiny_model("sdxl"), log=lambda *_: None).run()
    live = [0 if i == 15 else d for i, d in enumerate(dims)]               # OUT02 (block 15) has LR weight 0
    md, ranks, n_conv = _check_ranks(res.files[-1], "sdxl", live, alphas, [0 if i == 15 else 3 for i in range(23)],
                                     [1.5] * 23, (4, 4.0))
    assert n_conv and not any("output_blocks_2_" in k for k in ranks) and any("output_blocks_1_" in k for k in ranks)
    assert any(k.startswith("lora_te1_") for k in ranks) and any(k.startswith("lora_te2_") for k in ranks)
    assert json.loads(md["ss_network_args"])["block_dims"] == ",".join(map(str, dims))


def test_block_lists_need_one_entry_per_block():
    model = tiny_model()
    with pytest.raises(LoraStudioError, match="block_dims has 2 values; SD1 takes 25"):
        build_network(cfg(network_args=["block_dims=4,4"]), "sd1", model_layers(model), seed=0)
    with pytest.raises(LoraStudioError, match="conv_block_alphas has 25 values; SDXL takes 23"):
        build_network(cfg(network_args=["block_dims=" + ",".join(["4"] * 23), "conv_block_dims=" + ",".join(
            ["4"] * 23), "conv_block_alphas=" + ",".join(["1"] * 25)]), "sdxl", [], seed=0)
    with pytest.raises(LoraStudioError, match="comma-separated whole numbers"):
        build_network(cfg(network_args=["block_dims=" + ",".join(["4.5"] * 25)]), "sd1", [], seed=0)
    # sd-scripts ignores these without block_dims or an LR weight: refused instead of dropped silently
    with pytest.raises(LoraStudioError, match="conv_block_dims take effect only with block_dims"):
        build_network(cfg(network_args=["conv_block_dims=" + ",".join(["4"] * 25)]), "sd1", [], seed=0)


def test_block_lr_alone_keeps_ranks_and_conv_dim_zero_trains_resnet_linears():
    model = tiny_model()
    net = build_network(cfg(network_args=["mid_lr_weight=0.5"]), "sd1", model_layers(model), seed=0)
    assert {m.lora_dim for m in net.loras.values()} == {4}
    assert not any("in_layers" in net.layer_of[k] for k in net.loras)       # no conv_dim: no 3×3 convs
    # sd-scripts: any conv_dim (even 0) adds the ResNet blocks' linear/1×1 layers; 3×3 convs at rank 0 get none
    net = build_network(cfg(network_args=["conv_dim=0"]), "sd1", model_layers(model), seed=0)
    layers = [net.layer_of[k] for k in net.loras]
    assert any(x.endswith("emb_layers.1") for x in layers) and not any(x.endswith("in_layers.2") for x in layers)


def test_unsupported_args_are_listed_in_one_error():
    with pytest.raises(LoraStudioError) as e:
        build_network(cfg(network_args=["loraplus_ratio=4", "block_dims=" + ",".join(["4"] * 25),
                                        "foo=1"]), "sd1", [], seed=0)
    msg = str(e.value)
    assert "\n" not in msg and "foo, loraplus_ratio are not supported with networks.lora" in msg
    with pytest.raises(LoraStudioError, match="block_dims, up_lr_weight are not supported with lycoris.kohya"):
        build_network(cfg(network_module="lycoris.kohya", network_args=["up_lr_weight=sine", "block_dims=1"]),
                      "sd1", [], seed=0)


def test_training_with_block_weights_writes_only_live_blocks(tmp_path):
    data = make_images(tmp_path / "data")
    c = config(tmp_path, data, max_train_epochs=1, save_every_n_epochs=None, network_train_unet_only=True,
               network_args=["up_lr_weight=zeros", "mid_lr_weight=0.5"])
    res = Trainer(c, model=tiny_model(), log=lambda *_: None).run()
    tensors, md = fileio.read_tensors(res.files[-1])
    assert tensors and not any("up_blocks" in k for k in tensors)        # SD1: sd-scripts' diffusers names
    assert any("mid_block" in k for k in tensors) and any("down_blocks" in k for k in tensors)
    assert json.loads(md["ss_network_args"]) == {"up_lr_weight": "zeros", "mid_lr_weight": "0.5"}


def test_sd_scripts_export_passes_block_args_through(tmp_path):
    data = make_images(tmp_path / "data")
    args = ["block_dims=" + ",".join(["8"] * 23), "block_alphas=" + ",".join(["4"] * 23), "down_lr_weight=sine",
            "mid_lr_weight=0.5,1,1", "up_lr_weight=1,1,0.5", "block_lr_zero_threshold=0.1",
            "conv_block_dims=" + ",".join(["2"] * 23), "conv_block_alphas=" + ",".join(["1"] * 23)]
    c = config(tmp_path, data, network_args=args)
    ex = sdscripts.export(c, tmp_path / "sd", arch="sdxl")
    assert ex.script == "sdxl_train_network.py"
    assert read_toml_file(ex.config_path, "config")["network_args"] == args


def _delta_norms(path):
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


def test_adaptive_optimizer_with_block_weights_is_refused(tmp_path):
    """Prodigy / D-Adaptation raise on groups with different learning rates (sd-scripts stops at its first step);
    flattening them would drop the block weights silently, so the run stops before it starts."""
    data = make_images(tmp_path / "data")
    c = config(tmp_path, data, optimizer_type="Prodigy", learning_rate=1.0, network_args=["mid_lr_weight=0.5"])
    with pytest.raises(LoraStudioError, match="Prodigy takes one learning rate for all parameters"):
        Trainer(c, model=tiny_model(), log=lambda *_: None).run()
