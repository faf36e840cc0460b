"""LoRA+ as sd-scripts' networks/lora.py (prepare_optimizer_params) and LyCORIS' kohya.py build it: each part's
group splits into its other weights at lr and its up (`lora_up`, B) weights at lr × ratio, the part's own ratio
before the common one; groups in sd-scripts' order (text encoder, then U-Net, per-block groups by block index).
The expectations are written out by hand from that rule, on kohya key names, not through the code under test."""

from __future__ import annotations

import pytest

from lib_lora.errors import LoraStudioError
from lib_lora.train.config import config_from_dict
from lib_lora.train.network import block_index, build_network, sd_scripts_order
from lib_lora.train.optim import build_optimizer
from lib_lora.train.trainer import Trainer, model_layers
from tests.lib_lora.train.helpers import config, make_images, tiny_model

pytest.importorskip("lycoris")

UNET_LR, TE_LR = 1e-3, 5e-4


def cfg(**kw):
    base = {"pretrained_model_name_or_path": "m", "train_data_dir": "d", "output_dir": "o", "network_dim": 4,
            "network_alpha": 4.0}
    base.update(kw)
    return config_from_dict(base)


def groups_by_name(net):
    """[(group name, lr, sorted "key.param" names)] of the optimizer the trainer builds, in its order."""
    names = {id(p): f"{k}.{n}" for k, m in net.loras.items() for n, p in m.named_parameters()}
    opt, _, _ = build_optimizer("AdamW", net.param_groups(UNET_LR, TE_LR), None, UNET_LR)
    return [(g["name"], g["lr"], sorted(names[id(p)] for p in g["params"])) for g in opt.param_groups]


def expected(net, te_ratio, unet_ratio, block_weights=None):
    """By hand: TE keys start lora_te; up weights are `<key>.lora_up.weight`; blocks ascending."""
    keys = list(net.loras)
    te = [k for k in keys if k.startswith("lora_te")]
    unet = [k for k in keys if k.startswith("lora_unet")]

    def split(ks):
        ups = sorted(f"{k}.lora_up.weight" for k in ks)
        downs = sorted(f"{k}.lora_down.weight" for k in ks)
        return downs, ups

    out = []
    downs, ups = split(te)
    out += [("textencoder", TE_LR, downs), ("textencoder plus", TE_LR * te_ratio, ups)]
    if block_weights is None:
        downs, ups = split(unet)
        out += [("unet", UNET_LR, downs), ("unet plus", UNET_LR * unet_ratio, ups)]
    else:
        # sd-scripts' SD1 U-Net is walked down blocks, up blocks, then the mid block (12)
        for b in [b for b in sorted(block_weights) if b != 12] + [12]:
            downs, ups = split([k for k in unet if block_index(net.layer_of[k]) == b])
            if downs:
                lr = UNET_LR * block_weights[b]
                out += [(f"unet_block{b}", lr, downs), (f"unet_block{b} plus", lr * unet_ratio, ups)]
    return out


def _approx(got, want):
    assert [(n, p) for n, _, p in got] == [(n, p) for n, _, p in want]
    assert [lr for _, lr, _ in got] == pytest.approx([lr for _, lr, _ in want])


def test_common_ratio_and_the_parts_own_ratio():
    model = tiny_model()
    net = build_network(cfg(network_args=["loraplus_lr_ratio=16"]), "sd1", model_layers(model), seed=0)
    _approx(groups_by_name(net), expected(net, 16, 16))
    net = build_network(cfg(network_args=["loraplus_lr_ratio=16", "loraplus_text_encoder_lr_ratio=4"]), "sd1",
                        model_layers(model), seed=0)
    _approx(groups_by_name(net), expected(net, 4, 16))
    # the top-level keys (sd-scripts 0.8.x) are the same run
    top = build_network(cfg(loraplus_lr_ratio=16, loraplus_text_encoder_lr_ratio=4), "sd1", model_layers(model),
                        seed=0)
    _approx(groups_by_name(top), expected(top, 4, 16))
    # only the U-Net's ratio: the text encoder stays one group (sd-scripts: its ratio is None)
    net = build_network(cfg(network_args=["loraplus_unet_lr_ratio=8"]), "sd1", model_layers(model), seed=0)
    got = groups_by_name(net)
    assert [n for n, _, _ in got] == ["textencoder", "unet", "unet plus"]
    assert got[0][2] == sorted(f"{k}.{w}" for k in net.loras if k.startswith("lora_te")
                               for w in ("lora_down.weight", "lora_up.weight"))
    assert got[2][1] == pytest.approx(8 * UNET_LR)


def test_per_block_groups_split_in_block_order():
    model = tiny_model()
    args = ["down_lr_weight=0,0,0,0,0,0,1,1,0.5,1,1,1", "mid_lr_weight=0.25", "up_lr_weight=1,1,1,1,1,1,2,2,2,2,2,2",
            "loraplus_unet_lr_ratio=16", "loraplus_lr_ratio=2"]
    net = build_network(cfg(network_args=args), "sd1", model_layers(model), seed=0)
    # sd-scripts: down_lr_weight[i] is block i (IN00 … IN11), mid block 12, up_lr_weight[i] block 13 + i
    weights = {**{i: w for i, w in enumerate([0, 0, 0, 0, 0, 0, 1, 1, 0.5, 1, 1, 1])}, 12: 0.25,
               **{13 + i: w for i, w in enumerate([1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2])}}
    _approx(groups_by_name(net), expected(net, 2, 16, {b: w for b, w in weights.items() if w}))


def test_lycoris_network_args_and_refusals(tmp_path):
    model = tiny_model()
    net = build_network(cfg(network_module="lycoris.kohya", network_args=["algo=lora", "loraplus_lr_ratio=16"]),
                        "sd1", model_layers(model), seed=0)
    _approx(groups_by_name(net), expected(net, 16, 16))
    # LoHa has no lora_up weights: LyCORIS puts everything in the plain groups
    net = build_network(cfg(network_module="lycoris.kohya", network_args=["algo=loha", "loraplus_lr_ratio=16"]),
                        "sd1", model_layers(model), seed=0)
    assert [n for n, _, _ in groups_by_name(net)] == ["textencoder", "unet"]
    bad = [(dict(network_module="lycoris.kohya", loraplus_lr_ratio=16), "from network_args only"),
           (dict(loraplus_lr_ratio=16, network_args=["loraplus_lr_ratio=8"]), "keep one of them"),
           (dict(network_args=["loraplus_lr_ratio=x"]), "is not a number"),
           (dict(network_args=["loraplus_lr_ratio=-1"]), "is negative")]
    for kw, match in bad:
        with pytest.raises(LoraStudioError, match=match) as e:
            build_network(cfg(**kw), "sd1", model_layers(model), seed=0)
        assert "\n" not in str(e.value)
    data = make_images(tmp_path / "data")
    c = config(tmp_path, data, max_train_epochs=1, optimizer_type="Prodigy", learning_rate=1.0,
               network_args=["loraplus_lr_ratio=16"])
    with pytest.raises(LoraStudioError, match="LoRA\\+"):
        Trainer(c, model=tiny_model(), log=lambda *_: None).run()


def test_a_state_saved_with_the_unet_first_resumes_into_the_new_order(tmp_path):
    """Groups used to come U-Net first; such a saved state still gives each parameter its own moments."""
    import torch

    from lib_lora.train import state as S
    from lib_lora.train.optim import Schedule

    net = torch.nn.ModuleDict({"te": torch.nn.Linear(3, 2), "unet": torch.nn.Linear(4, 5)})

    def optimizer(order):
        groups = {"textencoder": {"params": list(net["te"].parameters()), "lr": 1e-3, "name": "textencoder"},
                  "unet": {"params": list(net["unet"].parameters()), "lr": 2e-3, "name": "unet"}}
        return torch.optim.AdamW([groups[n] for n in order])

    old = optimizer(["unet", "textencoder"])
    sched = Schedule(old, "constant", 10, 0)
    sum(p.square().sum() for p in net.parameters()).backward()
    old.step()
    want = {id(p): old.state[p]["exp_avg"].clone() for p in net.parameters()}
    S.save_state(str(tmp_path / "st"), net, old, {"schedule": sched.state_dict()})
    info, tensors = S.load_state(str(tmp_path / "st"))
    new = optimizer(["textencoder", "unet"])
    S.restore(net, new, info, tensors)
    for p in net.parameters():
        assert torch.equal(new.state[p]["exp_avg"], want[id(p)])
    assert info["schedule"]["base"] == [1e-3, 2e-3]                  # the base rates follow their groups


def test_module_order_is_sd_scripts_and_the_groups_follow_it():
    """sd-scripts' creation order of its modules (recorded from its networks/lora.py by
    tests/fixtures/make_sdscripts_lora_order.py) is what `sd_scripts_order` sorts into, from any order; the
    optimizer groups list the parameters in it (down before up within a module, as sd-scripts registers them)."""
    import json
    import random

    from tests.paths import FIXTURES
    with open(f"{FIXTURES}/sdscripts_lora_order.json", encoding="utf-8") as f:
        recorded = json.load(f)
    for arch in ("sd1", "sdxl"):
        for part in ("text_encoder", "unet"):
            names = recorded[arch][part]
            shuffled = random.Random(0).sample(names, len(names))
            assert sorted(shuffled, key=sd_scripts_order) == names, (arch, part)
    model = tiny_model()
    net = build_network(cfg(network_args=["conv_dim=4"]), "sd1", model_layers(model), seed=0)
    names = {id(p): (k, n) for k, m in net.loras.items() for n, p in m.named_parameters()}
    groups = net.param_groups(UNET_LR, TE_LR)
    assert [g["name"] for g in groups] == ["textencoder", "unet"]
    for g, prefix in zip(groups, ("lora_te", "lora_unet")):
        got = [names[id(p)] for p in g["params"]]
        keys = list(dict.fromkeys(k for k, _ in got))
        full = [k for k in recorded["sd1"]["text_encoder" if prefix == "lora_te" else "unet"] if k in set(keys)]
        assert keys == full and len(keys) == len([k for k in net.loras if k.startswith(prefix)])
        assert [n for _, n in got] == ["lora_down.weight", "lora_up.weight"] * len(keys)
