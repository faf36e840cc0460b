"""keys/arch: layer generator == fixtures, diffusers→compvis, every key family → canonical layers."""

import json
import math

import pytest
import torch

from lib_lora import arch
from lib_lora.blocks import slot_of_layer
from lib_lora.keys import group_modules, split_key
from lib_lora.unet_names import diffusers_to_compvis
from tests.factory import FIXTURES, compvis_to_diffusers, fixture_layers, make_lora_with_targets

MODEL_ARCH = {"sd15": "sd1", "sdxl": "sdxl"}


@pytest.mark.parametrize("model", ["sd15", "sdxl"])
def test_generator_matches_fixture_layers(model):
    fx = set(fixture_layers(model))
    gen = set(arch.canonical_layers(MODEL_ARCH[model]))
    assert fx - gen == set()
    assert gen - fx == set()
    assert len(gen) == {"sd15": 490, "sdxl": 1343}[model]


def test_sd2_generator_shares_sd1_unet_and_has_openclip_te():
    assert arch.unet_layers("sd2") == arch.unet_layers("sd1")
    te = arch.te_layers("sd2", "te")
    assert "cond_stage_model.model.transformer.resblocks.23.attn" in te
    assert "cond_stage_model.model.transformer.resblocks.0.mlp.c_proj" in te


@pytest.mark.parametrize("model", ["sd15", "sdxl"])
def test_diffusers_to_compvis_is_a_shape_preserving_bijection(model):
    with open(f"{FIXTURES}/{model}_unet_diffusers.json") as f:
        diff = json.load(f)["keys"]
    with open(f"{FIXTURES}/{model}_checkpoint_compvis.json") as f:
        comp = {k: v for k, v in json.load(f)["keys"].items() if k.startswith("model.diffusion_model.")}
    mapped = {}
    for key, shape in diff.items():
        stem, _, param = key.rpartition(".")
        target = diffusers_to_compvis(stem, MODEL_ARCH[model])
        assert target is not None, key
        mapped[f"{target}.{param}"] = shape
        assert comp[f"{target}.{param}"] == shape, key
    assert set(mapped) == set(comp)


@pytest.mark.parametrize("model", ["sd15", "sdxl"])
def test_compvis_to_diffusers_inverts_the_real_diffusers_key_list(model):
    from lib_lora.unet_names import compvis_to_diffusers as inverse

    want = compvis_to_diffusers(model)  # from the diffusers fixture, independent of the inverse rules
    for rel in arch.unet_layers(MODEL_ARCH[model]):
        assert inverse(rel, MODEL_ARCH[model]) == want[arch.UNET + rel], rel


@pytest.mark.parametrize("model", ["sd15", "sdxl"])
def test_written_kohya_names_are_spelled_as_sd_scripts_spells_them(model):
    from lib_lora.keys import resolve
    from lib_lora.merge.extract import kohya_names

    a, diff = MODEL_ARCH[model], compvis_to_diffusers(model)
    names = kohya_names(a)
    for rel in arch.unet_layers(a):
        layer = arch.UNET + rel
        key = names[(layer, None)]
        # sd-scripts builds SD1/SD2 networks on the diffusers U-Net and SDXL ones on the original U-Net
        want = diff[layer] if a == "sd1" else rel
        assert key == "lora_unet_" + want.replace(".", "_")
        assert resolve("unet", key[len("lora_unet_"):], a) == (layer, None)  # and they read back
    assert names[("model.diffusion_model.input_blocks.4.1.proj_in", None)] == \
        {"sd1": "lora_unet_down_blocks_1_attentions_0_proj_in", "sdxl": "lora_unet_input_blocks_4_1_proj_in"}[a]


def test_diffusers_to_compvis_known_names():
    f = diffusers_to_compvis
    assert f("up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_k") == \
        "model.diffusion_model.output_blocks.5.1.transformer_blocks.0.attn2.to_k"
    assert f("up_blocks.0.upsamplers.0.conv", "sd1") == "model.diffusion_model.output_blocks.2.1.conv"
    assert f("up_blocks.0.upsamplers.0.conv", "sdxl") == "model.diffusion_model.output_blocks.2.2.conv"
    assert f("up_blocks.1.upsamplers.0.conv", "sd1") == "model.diffusion_model.output_blocks.5.2.conv"
    assert f("unet.down_blocks.2.downsamplers.0.conv") == "model.diffusion_model.input_blocks.9.0.op"
    assert f("down_blocks.1.resnets.0.conv_shortcut") == "model.diffusion_model.input_blocks.4.0.skip_connection"
    assert f("mid_block.resnets.1.time_emb_proj") == "model.diffusion_model.middle_block.2.emb_layers.1"
    assert f("mid_block.attentions.0.proj_in") == "model.diffusion_model.middle_block.1.proj_in"
    assert f("time_embedding.linear_2") == "model.diffusion_model.time_embed.2"
    assert f("add_embedding.linear_1", "sdxl") == "model.diffusion_model.label_emb.0.0"
    assert f("conv_out.weight") == "model.diffusion_model.out.2.weight"
    assert f("down_blocks.0.resnets.1.norm2.bias") == "model.diffusion_model.input_blocks.2.0.out_layers.0.bias"
    assert f("text_model.encoder.layers.0.mlp.fc1") is None


# ---------------------------------------------------------------- round trips through every family

def _check_round_trip(model, family, algo, layers):
    sd, md, targets = make_lora_with_targets(model, family=family, algo=algo, layers=layers)
    assert targets, "factory produced no module"
    modules, skipped = group_modules(sd, md)
    assert skipped == []
    got = {k: (m.layer, m.qkv) for k, m in modules.items()}
    assert got == targets
    want_algo = {"locon": "lora", "dora": "lora"}.get(algo, algo)
    for m in modules.values():
        assert m.algo == want_algo
        assert m.is_te == m.layer.startswith(("cond_stage_model.", "conditioner."))
        assert m.slot == slot_of_layer(m.layer) and (m.slot == 0) == m.is_te
        assert "alpha" not in m.tensors and "dora_scale" not in m.tensors
    return modules


FULL = [("sd15", "kohya", "locon"), ("sdxl", "kohya", "locon"), ("sd15", "peft", "lora"), ("sdxl", "peft", "lora"),
        ("sd15", "diffusers_old", "lora"), ("sdxl", "diffusers_old", "lora"), ("sd15", "lycoris", "norm"),
        ("sdxl", "lycoris", "norm")]


@pytest.mark.parametrize("model,family,algo", FULL)
def test_every_layer_round_trips(model, family, algo):
    """All layers an algorithm can target (attention, ff, proj, resnet convs, samplers, time/label emb, TE)."""
    modules = _check_round_trip(model, family, algo, "all")
    layers = {m.layer for m in modules.values()}
    if algo == "locon":
        assert "model.diffusion_model.input_blocks.0.0" in layers  # conv_in
        assert "model.diffusion_model.out.2" in layers
        assert "model.diffusion_model.time_embed.0" in layers
        assert "model.diffusion_model.output_blocks.2.{}.conv".format(2 if model == "sdxl" else 1) in layers
        assert "model.diffusion_model.input_blocks.3.0.op" in layers


@pytest.mark.parametrize("model", ["sd15", "sdxl"])
@pytest.mark.parametrize("family,algo", [("kohya", "lora"), ("kohya", "dora"), ("kohya", "oft"), ("lycoris", "loha"),
                                         ("lycoris", "lokr"), ("lycoris", "ia3"), ("lycoris", "full"),
                                         ("lycoris", "glora"), ("lycoris", "oft"), ("lycoris", "boft"),
                                         ("lycoris", "dora"), ("peft", "dora")])
def test_algorithms_round_trip(model, family, algo):
    _check_round_trip(model, family, algo, None if algo == "full" else 40)


def test_te2_qkv_slices_and_openclip_names():
    sd, md, targets = make_lora_with_targets("sdxl", family="kohya", layers=lambda l: "resblocks.7." in l)
    modules, skipped = group_modules(sd, md)
    assert not skipped
    base = "conditioner.embedders.1.model.transformer.resblocks.7."
    want = {
        "lora_te2_text_model_encoder_layers_7_self_attn_q_proj": (base + "attn", 0),
        "lora_te2_text_model_encoder_layers_7_self_attn_k_proj": (base + "attn", 1),
        "lora_te2_text_model_encoder_layers_7_self_attn_v_proj": (base + "attn", 2),
        "lora_te2_text_model_encoder_layers_7_self_attn_out_proj": (base + "attn.out_proj", None),
        "lora_te2_text_model_encoder_layers_7_mlp_fc1": (base + "mlp.c_fc", None),
        "lora_te2_text_model_encoder_layers_7_mlp_fc2": (base + "mlp.c_proj", None),
    }
    assert {k: (m.layer, m.qkv) for k, m in modules.items()} == want
    peft = {k.replace("lora_te2_text_model_encoder_layers_7_", "text_encoder_2.text_model.encoder.layers.7.")
            .replace("self_attn_", "self_attn.").replace("mlp_", "mlp.") + ".lora_A.weight": torch.zeros(4, 1280)
            for k in want}
    peft.update({k.replace("lora_A", "lora_B"): torch.zeros(1280, 4) for k in peft})
    pm, skipped = group_modules(peft, {})
    assert not skipped
    assert sorted((m.layer, m.qkv) for m in pm.values()) == sorted(want.values())


def _lora(sd, module, out_f, in_f, rank=4, alpha=None):
    sd[f"{module}.lora_down.weight"] = torch.randn(rank, in_f)
    sd[f"{module}.lora_up.weight"] = torch.randn(out_f, rank)
    if alpha is not None:
        sd[f"{module}.alpha"] = torch.tensor(alpha)


def test_sd2_text_encoder_goes_to_openclip_resblocks():
    sd = {}
    _lora(sd, "lora_te_text_model_encoder_layers_5_self_attn_k_proj", 1024, 1024)
    _lora(sd, "lora_te_text_model_encoder_layers_5_mlp_fc1", 4096, 1024)
    _lora(sd, "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k", 320, 1024)
    assert arch.detect_arch_raw(sd) == "sd2"
    modules, skipped = group_modules(sd, {})
    assert not skipped
    got = {k: (m.layer, m.qkv) for k, m in modules.items()}
    assert got["lora_te_text_model_encoder_layers_5_self_attn_k_proj"] == \
        ("cond_stage_model.model.transformer.resblocks.5.attn", 1)
    assert got["lora_te_text_model_encoder_layers_5_mlp_fc1"] == ("cond_stage_model.model.transformer.resblocks.5.mlp.c_fc", None)
    assert got["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"][0] == \
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k"


def test_compvis_and_bare_paths():
    sd = {}
    _lora(sd, "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q", 320, 320)
    _lora(sd, "cond_stage_model.transformer.encoder.layers.0.self_attn.q_proj", 768, 768)  # old SD1 form
    sd["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight"] = torch.randn(4, 768)
    sd["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight"] = torch.randn(320, 4)
    sd["base_model.model.up_blocks.1.attentions.0.proj_out.lora_A.weight"] = torch.randn(4, 1280, 1, 1)
    sd["base_model.model.up_blocks.1.attentions.0.proj_out.lora_B.weight"] = torch.randn(1280, 4, 1, 1)
    modules, skipped = group_modules(sd, {})
    assert not skipped
    layers = {m.layer for m in modules.values()}
    assert layers == {"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q",
                      "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj",
                      "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k",
                      "model.diffusion_model.output_blocks.3.1.proj_out"}


def test_block_slots_worked_example():
    sd = {}
    _lora(sd, "lora_unet_up_blocks_1_attentions_2_transformer_blocks_0_attn2_to_k", 1280, 768)
    _lora(sd, "lora_unet_time_embedding_linear_2", 1280, 1280)
    modules, _ = group_modules(sd, {})
    m = modules["lora_unet_up_blocks_1_attentions_2_transformer_blocks_0_attn2_to_k"]
    assert m.layer == "model.diffusion_model.output_blocks.5.1.transformer_blocks.0.attn2.to_k" and m.slot == 19
    assert modules["lora_unet_time_embedding_linear_2"].slot is None


def test_alpha_scale_and_dora_fields():
    sd = {}
    _lora(sd, "lora_te_text_model_encoder_layers_0_mlp_fc1", 3072, 768, alpha=8.0)
    _lora(sd, "lora_te_text_model_encoder_layers_0_mlp_fc2", 768, 3072, alpha=0.0)
    _lora(sd, "lora_te_text_model_encoder_layers_1_mlp_fc2", 768, 3072)
    sd["lora_te_text_model_encoder_layers_1_mlp_fc2.scale"] = torch.tensor(0.25, dtype=torch.float16)
    sd["lora_te_text_model_encoder_layers_1_mlp_fc2.dora_scale"] = torch.ones(768, 1)
    sd["lora_unet_down_blocks_0_attentions_0_proj_in.oft_blocks"] = torch.zeros(80, 4, 4)
    sd["lora_unet_down_blocks_0_attentions_0_proj_in.alpha"] = torch.tensor(0.0)
    sd["oft_unet_down_blocks_0_attentions_0_proj_out.oft_blocks"] = torch.zeros(80, 4, 4)
    sd["oft_unet_down_blocks_0_attentions_0_proj_out.alpha"] = torch.tensor(1e-3)
    modules, skipped = group_modules(sd, {"ss_base_model_version": "sd_v1"})
    assert not skipped
    m = modules["lora_te_text_model_encoder_layers_0_mlp_fc1"]
    assert isinstance(m.alpha, float) and m.alpha == 8.0 and m.scale is None and m.dora_scale is None
    assert modules["lora_te_text_model_encoder_layers_0_mlp_fc2"].alpha is None  # 0 ⇒ unset
    m = modules["lora_te_text_model_encoder_layers_1_mlp_fc2"]
    assert m.alpha is None and m.scale == 0.25 and m.dora_scale.shape == (768, 1) and not m.peft_dora
    assert modules["lora_unet_down_blocks_0_attentions_0_proj_in"].alpha == 0.0  # OFT: 0 = no constraint
    oft = modules["oft_unet_down_blocks_0_attentions_0_proj_out"]
    assert oft.algo == "oft" and oft.alpha == pytest.approx(1e-3)
    assert oft.layer == "model.diffusion_model.input_blocks.1.1.proj_out"


def test_peft_alpha_from_adapter_metadata_and_magnitude():
    sd, md, _ = make_lora_with_targets("sd15", family="peft", algo="dora", rank=8, alpha=4)
    cfg = json.loads(md["lora_adapter_metadata"])
    assert cfg["unet.lora_alpha"] == 4
    modules, skipped = group_modules(sd, md)
    assert not skipped
    for m in modules.values():
        assert m.alpha == 4.0 and m.peft_dora
        out = m.tensors["lora_up.weight"].shape[0]
        assert m.dora_scale.shape[0] == out and m.dora_scale.numel() == out  # reshaped to output axis
        assert "lora_magnitude_vector" not in m.tensors
    conv = [m for m in modules.values() if m.tensors["lora_down.weight"].dim() == 4]
    assert conv and all(m.dora_scale.shape[1:] == (1, 1, 1) for m in conv)
    # plain keys, alpha_pattern and rsLoRA
    md2 = {"lora_adapter_metadata": json.dumps({"r": 8, "lora_alpha": 16, "use_rslora": True,
                                                "alpha_pattern": {"attn2.to_k": 2}})}
    modules, _ = group_modules(sd, md2)
    for k, m in modules.items():
        base = 2 if k.endswith("attn2.to_k") else 16
        assert m.alpha == pytest.approx(base * math.sqrt(8))
    # no metadata ⇒ scale 1 (alpha None)
    modules, _ = group_modules(sd, {})
    assert all(m.alpha is None for m in modules.values())


def test_old_diffusers_formats_names():
    sd, md, targets = make_lora_with_targets("sd15", family="diffusers_old")
    keys = set(sd)
    assert any(".processor.to_k_lora.down.weight" in k for k in keys)
    assert any(k.startswith("text_encoder.") and ".self_attn.to_q_lora.up.weight" in k for k in keys)
    assert any(".mlp.fc1.lora_linear_layer.down.weight" in k for k in keys)
    assert any(k.endswith(".proj_in.lora.down.weight") for k in keys)
    assert split_key("unet.mid_block.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.up.weight")[1] == \
        "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0"


def test_unknown_keys_are_reported_not_guessed():
    sd = {}
    _lora(sd, "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", 320, 320)
    _lora(sd, "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn9_to_q", 320, 320)  # no such layer
    sd["lora_unet_down_blocks_0_attentions_0_proj_in.lambda_layer"] = torch.ones(4)  # T-LoRA extra
    _lora(sd, "lora_unet_down_blocks_0_attentions_0_proj_in", 320, 320)
    sd["lora_unet_down_blocks_0_attentions_0_proj_out.weird_thing"] = torch.ones(1)
    sd["model_ema.decay"] = torch.tensor(0.9)
    modules, skipped = group_modules(sd, {"ss_base_model_version": "sd_v1"})
    assert list(modules) == ["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"]
    reasons = dict(skipped)
    assert "no matching SD1 layer" in reasons["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn9_to_q.lora_up.weight"]
    assert "lambda_layer" in reasons["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"]
    assert "unknown algorithm" in reasons["lora_unet_down_blocks_0_attentions_0_proj_out.weird_thing"]
    assert "not a LoRA" in reasons["model_ema.decay"]


def test_every_suffix_an_algorithm_reads_joins_its_module_in_dotted_keys():
    """keys.py has no suffix list of its own: a dotted key with any registered suffix is split into module + suffix."""
    from lib_lora.algos import REGISTRY

    for algo in REGISTRY:
        for suffix in algo.suffixes - {"weight"}:
            parts = split_key(f"unet.down_blocks.0.attentions.0.proj_in.{suffix}")
            assert parts is not None and parts[3] in (suffix, "lora_down.weight", "lora_up.weight"), (algo.name, suffix)


def test_unknown_arch_resolves_with_best_matching_names():
    sd = {}
    _lora(sd, "lora_unet_mid_block_resnets_0_conv1", 1280, 1280)  # no arch clue in names or widths
    assert arch.detect_arch_raw(sd) == "unknown"
    modules, skipped = group_modules(sd, {})
    assert not skipped
    assert modules["lora_unet_mid_block_resnets_0_conv1"].layer == "model.diffusion_model.middle_block.0.in_layers.2"


# ---------------------------------------------------------------- state dicts written by the real LyCORIS library

def _toy_model(spec):
    """A module tree whose named_modules() paths are the given names (what LyCORIS derives keys from)."""
    import torch.nn as nn

    root = nn.Module()
    for path, mod in spec.items():
        cur = root
        for part in path.split(".")[:-1]:
            if not hasattr(cur, part):
                cur.add_module(part, nn.Module())
            cur = getattr(cur, part)
        cur.add_module(path.split(".")[-1], mod)
    return root


_LYCORIS_ALGOS = [("lora", {}), ("loha", {}), ("lokr", {}), ("ia3", {}), ("full", {}), ("diag-oft", {}), ("glora", {}),
                  ("lora", {"dora_wd": True}), ("lokr", {"train_norm": True})]


@pytest.mark.parametrize("naming,algo,kwargs", [("sgm",) + a for a in _LYCORIS_ALGOS] + [
    ("diffusers", "lora", {}), ("diffusers", "loha", {"train_norm": True}), ("lycoris_prefix", "lokr", {})])
def test_real_lycoris_state_dicts(naming, algo, kwargs, monkeypatch):
    monkeypatch.setenv("LYCORIS_KERNEL_BACKEND", "torch")
    import torch.nn as nn
    lycoris = pytest.importorskip("lycoris")  # a test dependency only: skip, not fail, where it is absent
    LycorisNetwork, create_lycoris = lycoris.LycorisNetwork, lycoris.create_lycoris

    if naming == "sgm":  # kohya's SDXL U-Net uses SGM module names
        spec = {"input_blocks.4.1.transformer_blocks.1.attn2.to_k": nn.Linear(2048, 640, bias=False),
                "input_blocks.4.0.in_layers.2": nn.Conv2d(320, 640, 3, padding=1),
                "input_blocks.4.0.in_layers.0": nn.GroupNorm(32, 320),
                "output_blocks.2.2.conv": nn.Conv2d(1280, 1280, 3, padding=1)}
        want = {n: "model.diffusion_model." + n for n in spec}
        prefix, md = "lora_unet", {"ss_base_model_version": "sdxl_base_v1-0"}
    else:  # SD1 as a diffusers UNet2DConditionModel
        spec = {"down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k": nn.Linear(768, 640, bias=False),
                "down_blocks.1.resnets.0.conv1": nn.Conv2d(320, 640, 3, padding=1),
                "down_blocks.1.resnets.0.norm1": nn.GroupNorm(32, 320),
                "up_blocks.0.upsamplers.0.conv": nn.Conv2d(1280, 1280, 3, padding=1)}
        want = {"down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k":
                "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k",
                "down_blocks.1.resnets.0.conv1": "model.diffusion_model.input_blocks.4.0.in_layers.2",
                "down_blocks.1.resnets.0.norm1": "model.diffusion_model.input_blocks.4.0.in_layers.0",
                "up_blocks.0.upsamplers.0.conv": "model.diffusion_model.output_blocks.2.1.conv"}
        prefix = "lycoris" if naming == "lycoris_prefix" else "lora_unet"
        md = {"ss_base_model_version": "sd_v1"}
    # class-level preset: monkeypatch restores it so other tests see LyCORIS defaults
    monkeypatch.setattr(LycorisNetwork, "LORA_PREFIX", prefix)
    monkeypatch.setattr(LycorisNetwork, "TARGET_REPLACE_MODULE", ["Linear", "Conv2d", "GroupNorm"])
    net = create_lycoris(_toy_model(spec), 1.0, linear_dim=4, linear_alpha=2, algo=algo, **kwargs)
    net.apply_to()
    sd = {k: v.detach().clone() for k, v in net.state_dict().items()}
    modules, skipped = group_modules(sd, md)
    assert skipped == []
    expect = {f"{prefix}_{n.replace('.', '_')}": layer for n, layer in want.items()}
    got = {k: m.layer for k, m in modules.items()}
    assert got == {k: v for k, v in expect.items() if k in got}
    assert len(got) >= 3
    name = {"diag-oft": "oft"}.get(algo, algo)
    algos = {m.algo for m in modules.values()}
    assert name in algos and algos <= {name, "norm"}
    if kwargs.get("dora_wd"):
        assert all(m.dora_scale is not None for m in modules.values())


def test_sdxl_file_with_diffusers_style_kohya_names():
    sd = {}
    _lora(sd, "lora_unet_down_blocks_1_attentions_0_transformer_blocks_1_attn2_to_k", 640, 2048)
    _lora(sd, "lora_unet_mid_block_attentions_0_transformer_blocks_9_ff_net_0_proj", 10240, 1280)
    sd["lora_unet_up_blocks_0_upsamplers_0_conv.lora_down.weight"] = torch.randn(4, 1280, 3, 3)
    sd["lora_unet_up_blocks_0_upsamplers_0_conv.lora_up.weight"] = torch.randn(1280, 4, 1, 1)
    _lora(sd, "lora_unet_add_embedding_linear_1", 1280, 2816)
    assert arch.detect_arch_raw(sd) == "sdxl"
    modules, skipped = group_modules(sd, {})
    assert not skipped
    assert {k: m.layer for k, m in modules.items()} == {
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_1_attn2_to_k":
            "model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn2.to_k",
        "lora_unet_mid_block_attentions_0_transformer_blocks_9_ff_net_0_proj":
            "model.diffusion_model.middle_block.1.transformer_blocks.9.ff.net.0.proj",
        "lora_unet_up_blocks_0_upsamplers_0_conv": "model.diffusion_model.output_blocks.2.2.conv",
        "lora_unet_add_embedding_linear_1": "model.diffusion_model.label_emb.0.0"}
    assert modules["lora_unet_up_blocks_0_upsamplers_0_conv"].slot == 16  # OUT02
    assert modules["lora_unet_add_embedding_linear_1"].slot is None


def test_sdxl_text_encoder_prefix_is_the_same_for_keys_blocks_and_host():
    """keys.py used its own TE prefixes ("conditioner." instead of "conditioner.embedders.") and knew nothing of
    A1111's `cond_stage_model.embedders.` alias of the SDXL conditioner, which host.py maps: compvis-named SDXL
    text-encoder keys under that alias were skipped. One spelling now lives in arch.py."""
    from lib_lora.blocks import slot_of_layer
    from lib_lora.host import canonical_name

    sd = {}
    for stem in ("cond_stage_model.embedders.0.transformer.text_model.encoder.layers.0.self_attn.q_proj",
                 "cond_stage_model.embedders.1.model.transformer.resblocks.3.mlp.c_fc"):
        sd[stem + ".lora_down.weight"] = torch.zeros(4, 8)
        sd[stem + ".lora_up.weight"] = torch.zeros(8, 4)
    modules, skipped = group_modules(sd, {}, arch_hint="sdxl")
    assert not skipped
    layers = sorted(m.layer for m in modules.values())
    assert layers == ["conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.q_proj",
                      "conditioner.embedders.1.model.transformer.resblocks.3.mlp.c_fc"]
    for m in modules.values():
        assert m.is_te and m.slot == 0 == slot_of_layer(m.layer)
        assert canonical_name(m.layer) == m.layer
    for name in arch.canonical_layers("sdxl"):
        assert arch.is_te_layer(name) == (slot_of_layer(name) == 0) == name.startswith("conditioner.embedders.")
