"""Checkpoint merge core on small SD1.5- and SDXL-named checkpoints (every key of the real manifests, widths
scaled down): exact against float64 reference formulas, block weights on the right keys, the shape/buffer/
missing-key rules, the recipe, refusals from headers alone, and the streaming file helpers it stands on."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lib_lora import blocks, fileio
from lib_lora.errors import LoraStudioError
from lib_lora.merge import checkpoint as mc
from lib_lora.merge.checkpoint import RECIPE_KEY, merge_checkpoints
from tests.checkpoints import write_checkpoint
from tests.models import bits

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SLOT_W = [round(0.04 * i - 0.1, 2) for i in range(26)]   # a distinct m per slot (some < 0, some > 1)


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("merge15")
    a = write_checkpoint(tmp / "a.safetensors", "sd15", seed=1, metadata={"note": "A"})
    b = write_checkpoint(tmp / "b.safetensors", "sd15", seed=2)
    b["cond_stage_model.transformer.text_model.embeddings.position_ids"] += 5   # B's buffer differs
    save_file(b, str(tmp / "b.safetensors"))
    c = write_checkpoint(tmp / "c.safetensors", "sd15", seed=3)
    return {"tmp": tmp, "a_sd": a, "b_sd": b, "c_sd": c, **{k: str(tmp / f"{k}.safetensors") for k in "abc"}}


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mergexl")
    sds = {k: write_checkpoint(tmp / f"{k}.safetensors", "sdxl", scale=32, seed=s) for k, s in zip("abc", (4, 5, 6))}
    return {"tmp": tmp, **{k + "_sd": v for k, v in sds.items()}, **{k: str(tmp / f"{k}.safetensors") for k in "abc"}}


def _f64(t):
    return t.double().numpy()


def _ref_weighted(a, b, m):
    return np.asarray(a * (1 - m) + b * m)


def _ref_add_diff(a, b, c, m):
    return np.asarray(a + (b - c) * m)


def _file_sha256(path) -> str:
    """The whole file's sha256, as the WebUI hashes a checkpoint (independent of lib_lora's hashing)."""
    import hashlib
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _same(x, y):
    return x.dtype == y.dtype and x.shape == y.shape and torch.equal(bits(x), bits(y))


# Hand-written expectations of the block table for keys of every kind (not derived from the code under test).
SD15_SLOTS = {
    "model.diffusion_model.time_embed.0.weight": "IN00",
    "model.diffusion_model.input_blocks.0.0.weight": "IN00",
    "model.diffusion_model.input_blocks.4.1.proj_in.weight": "IN04",
    "model.diffusion_model.input_blocks.11.0.out_layers.3.weight": "IN11",
    "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight": "M00",
    "model.diffusion_model.output_blocks.0.0.in_layers.2.weight": "OUT00",
    "model.diffusion_model.output_blocks.5.1.transformer_blocks.0.attn2.to_k.weight": "OUT05",
    "model.diffusion_model.output_blocks.11.1.proj_out.weight": "OUT11",
    "model.diffusion_model.out.2.weight": "OUT11",
    "cond_stage_model.transformer.text_model.encoder.layers.3.self_attn.q_proj.weight": "BASE",
    "first_stage_model.decoder.conv_in.weight": "BASE",
}
SDXL_SLOTS = {
    "model.diffusion_model.label_emb.0.0.weight": "IN00",
    "model.diffusion_model.input_blocks.8.1.transformer_blocks.9.attn1.to_q.weight": "IN08",
    "model.diffusion_model.middle_block.1.transformer_blocks.5.ff.net.2.weight": "M00",
    "model.diffusion_model.output_blocks.8.0.skip_connection.weight": "OUT08",
    "model.diffusion_model.out.2.weight": "OUT08",
    "conditioner.embedders.1.model.transformer.resblocks.3.attn.in_proj_weight": "BASE",
    "conditioner.embedders.0.transformer.text_model.encoder.layers.0.mlp.fc1.weight": "BASE",
    "first_stage_model.encoder.down.0.block.0.conv1.weight": "BASE",
}


@pytest.mark.parametrize("dtype", [None, "fp32"])
def test_sd15_weighted_per_block_is_exact_and_lands_on_the_right_keys(sd15, tmp_path, dtype):
    out = tmp_path / "m.safetensors"
    res = merge_checkpoints(sd15["a"], sd15["b"], out, mode="weighted", alpha=0.5, block_weights=SLOT_W,
                            base_alpha=0.7, dtype=dtype)
    got = load_file(str(out))
    a, b = sd15["a_sd"], sd15["b_sd"]
    assert list(got) and set(got) == set(a)
    want_m = dict(zip(blocks.BLOCK_NAMES, SLOT_W), BASE=0.7)
    for key, block in SD15_SLOTS.items():
        m = want_m[block]
        ref = torch.from_numpy(_ref_weighted(_f64(a[key]), _f64(b[key]), m)).to(torch.float32 if dtype else a[key].dtype)
        assert _same(got[key], ref), (key, block)
    merged = 0
    for key, t in got.items():
        slot = blocks.checkpoint_key_slot(key, "sd1")
        if key.endswith("position_ids") or slot is None:
            assert _same(t, a[key]), key            # integer buffer and schedule: A's, never averaged or cast
            continue
        ref = torch.from_numpy(_ref_weighted(_f64(a[key]), _f64(b[key]), res.weights[slot]))
        assert _same(t, ref.to(torch.float32 if dtype else a[key].dtype)), key
        merged += 1
    assert merged == res.merged > 1000 and res.copied == len(a) - merged
    assert not torch.equal(b["cond_stage_model.transformer.text_model.embeddings.position_ids"],
                           got["cond_stage_model.transformer.text_model.embeddings.position_ids"])


def test_sdxl_add_difference_20_values_bf16_is_exact(sdxl, tmp_path):
    w20 = [round(0.05 * i, 2) for i in range(20)]
    out = tmp_path / "xl.safetensors"
    res = merge_checkpoints(sdxl["a"], sdxl["b"], out, mode="add-diff", c=sdxl["c"], alpha=1.0,
                            block_weights=",".join(map(str, w20)), dtype="bf16")
    assert res.arch == "sdxl"
    got = load_file(str(out))
    a, b, c = sdxl["a_sd"], sdxl["b_sd"], sdxl["c_sd"]
    want_m = dict(zip(blocks.format_names(20), w20))
    for key, block in SDXL_SLOTS.items():
        ref = torch.from_numpy(_ref_add_diff(_f64(a[key]), _f64(b[key]), _f64(c[key]), want_m[block]))
        assert _same(got[key], ref.to(torch.bfloat16)), (key, block)
    for key, t in got.items():
        slot = blocks.checkpoint_key_slot(key, "sdxl")
        if key.endswith("position_ids"):
            assert _same(t, a[key])
            continue
        ref = torch.from_numpy(_ref_add_diff(_f64(a[key]), _f64(b[key]), _f64(c[key]), res.weights[slot]))
        assert _same(t, ref.to(torch.bfloat16)), key


def test_alpha_without_block_weights_and_the_25_value_form(sd15, tmp_path):
    merge_checkpoints(sd15["a"], sd15["b"], tmp_path / "flat.safetensors", alpha=0.25)
    key = "model.diffusion_model.input_blocks.4.1.proj_in.weight"
    flat = load_file(str(tmp_path / "flat.safetensors"))
    assert _same(flat[key], torch.from_numpy(_ref_weighted(_f64(sd15["a_sd"][key]), _f64(sd15["b_sd"][key]), 0.25)).half())
    res = merge_checkpoints(sd15["a"], sd15["b"], tmp_path / "25.safetensors", alpha=0.3, block_weights=SLOT_W[1:])
    assert res.weights == [0.3] + SLOT_W[1:]


def test_recipe_names_inputs_with_their_hashes_mode_and_weights(sd15, tmp_path):
    out = tmp_path / "r.safetensors"
    merge_checkpoints(sd15["a"], sd15["b"], out, mode="add-diff", c=sd15["c"], alpha=0.6, base_alpha=0.1)
    recipe = json.loads(fileio.read_metadata(out)[RECIPE_KEY])
    assert recipe["mode"] == "add-diff" and recipe["alpha"] == 0.6 and recipe["base_alpha"] == 0.1
    assert recipe["block_weights"]["BASE"] == 0.1 and recipe["block_weights"]["OUT11"] == 0.6
    assert len(recipe["block_weights"]) == 26 and recipe["arch"] == "sd1"
    for role, p in (("A", "a"), ("B", "b"), ("C", "c")):
        assert recipe["inputs"][role] == {"file": f"{p}.safetensors", "sha256": _file_sha256(sd15[p])}
    # the header was patched in place: the file is still a valid safetensors file with every tensor
    assert set(load_file(str(out))) == set(sd15["a_sd"])


def test_inpainting_conv_in_merges_leading_channels_and_a_must_be_the_inpainting_model(tmp_path):
    key = "model.diffusion_model.input_blocks.0.0.weight"
    a = write_checkpoint(tmp_path / "inpaint.safetensors", seed=1, dtype=torch.float32)
    a[key] = torch.randn(a[key].shape[0], 9, 3, 3)
    save_file(a, str(tmp_path / "inpaint.safetensors"))
    b = write_checkpoint(tmp_path / "plain.safetensors", seed=2, dtype=torch.float32)
    res = merge_checkpoints(tmp_path / "inpaint.safetensors", tmp_path / "plain.safetensors",
                            tmp_path / "o.safetensors", alpha=0.4)
    got = load_file(str(tmp_path / "o.safetensors"))[key]
    assert res.partial == [key] and got.shape == a[key].shape
    assert _same(got[:, :4], torch.from_numpy(_ref_weighted(_f64(a[key][:, :4]), _f64(b[key]), 0.4)).float())
    assert _same(got[:, 4:], a[key][:, 4:])
    with pytest.raises(LoraStudioError) as exc:
        merge_checkpoints(tmp_path / "plain.safetensors", tmp_path / "inpaint.safetensors",
                          tmp_path / "o2.safetensors", alpha=0.4)
    assert "\n" not in str(exc.value) and "inpainting model must be A" in str(exc.value)
    assert not (tmp_path / "o2.safetensors").exists()


def test_keys_only_in_one_model(sd15, tmp_path):
    a = dict(sd15["a_sd"])
    gone = "model.diffusion_model.output_blocks.3.0.in_layers.2.weight"
    b = {k: v for k, v in sd15["b_sd"].items() if k != gone}
    b["model_ema.decay"] = torch.tensor(0.99)                      # only in B: left out
    save_file(b, str(tmp_path / "b.safetensors"))
    res = merge_checkpoints(sd15["a"], tmp_path / "b.safetensors", tmp_path / "o.safetensors", alpha=0.5)
    got = load_file(str(tmp_path / "o.safetensors"))
    assert set(got) == set(a) and _same(got[gone], a[gone])       # only in A: A's tensor
    assert res.missing_in_others == 1 and res.left_out == 1


def test_discard_leaves_out_the_matching_keys_of_a_and_records_it(sd15, tmp_path):
    """A full-EMA checkpoint as A: without --discard its model_ema.* copy is written unmerged; with
    discard='model_ema' it is left out, every other key is what the plain merge writes, and the recipe says so."""
    a = dict(sd15["a_sd"])
    ema = {"model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(1000, dtype=torch.int32)}
    for k in list(a)[:3]:
        if k.startswith("model.diffusion_model."):
            ema["model_ema." + k[len("model."):].replace(".", "")] = a[k].clone()
    save_file({**a, **ema}, str(tmp_path / "a.safetensors"))
    kept = merge_checkpoints(tmp_path / "a.safetensors", sd15["b"], tmp_path / "kept.safetensors", alpha=0.3)
    res = merge_checkpoints(tmp_path / "a.safetensors", sd15["b"], tmp_path / "o.safetensors", alpha=0.3,
                            discard="model_ema")
    got, full = load_file(str(tmp_path / "o.safetensors")), load_file(str(tmp_path / "kept.safetensors"))
    assert set(full) == set(a) | set(ema) and kept.discarded == 0
    assert set(got) == set(a) and res.discarded == len(ema)
    assert all(_same(got[k], full[k]) for k in got)
    recipe = json.loads(fileio.read_metadata(tmp_path / "o.safetensors")[RECIPE_KEY])
    assert recipe["discard"] == "model_ema" and recipe["discarded"] == len(ema)
    assert "discard" not in json.loads(fileio.read_metadata(tmp_path / "kept.safetensors")[RECIPE_KEY])


def test_shape_mismatch_and_different_architectures_refused_from_headers_alone(sd15, sdxl, tmp_path, monkeypatch):
    reads = []
    real_get = fileio.MappedTensors.get
    monkeypatch.setattr(fileio.MappedTensors, "get", lambda self, k: reads.append(k) or real_get(self, k))
    with pytest.raises(LoraStudioError) as exc:
        merge_checkpoints(sd15["a"], sdxl["b"], tmp_path / "o.safetensors", alpha=0.5)
    assert str(exc.value) == (f"model A '{sd15['a']}' is SD1 but model B '{sdxl['b']}' is SDXL; "
                              f"merge models of one architecture")
    b = dict(sd15["b_sd"])
    b["model.diffusion_model.middle_block.0.in_layers.2.weight"] = torch.zeros(3, 3)
    save_file(b, str(tmp_path / "bad.safetensors"))
    with pytest.raises(LoraStudioError) as exc:
        merge_checkpoints(sd15["a"], tmp_path / "bad.safetensors", tmp_path / "o.safetensors", alpha=0.5)
    assert "middle_block.0.in_layers.2.weight" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(LoraStudioError, match="takes 26 .BASE first. or 25"):
        merge_checkpoints(sd15["a"], sd15["b"], tmp_path / "o.safetensors", alpha=0.5, block_weights=[1] * 20)
    assert reads == [] and not (tmp_path / "o.safetensors").exists()


def test_unreadable_inputs_are_one_line(sd15, tmp_path):
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(open(sd15["b"], "rb").read()[:100000])
    text = tmp_path / "notes.safetensors"
    text.write_text("hello")
    pickle = tmp_path / "old.ckpt"
    torch.save(dict(sd15["b_sd"]), str(pickle))
    for bad, what in ((trunc, "truncated"), (text, "not a safetensors"), (tmp_path / "nope.safetensors", "not found"),
                      (pickle, "pickle loading is disabled")):
        with pytest.raises(LoraStudioError) as exc:
            merge_checkpoints(sd15["a"], bad, tmp_path / "o.safetensors", alpha=0.5)
        assert what in str(exc.value) and "\n" not in str(exc.value), str(exc.value)
    # with the opt-in the pickle merges like its safetensors twin
    merge_checkpoints(sd15["a"], pickle, tmp_path / "p.safetensors", alpha=0.5, allow_pickle=True)
    merge_checkpoints(sd15["a"], sd15["b"], tmp_path / "s.safetensors", alpha=0.5)
    p, s = load_file(str(tmp_path / "p.safetensors")), load_file(str(tmp_path / "s.safetensors"))
    assert all(_same(p[k], s[k]) for k in s)


def test_existing_output_is_refused_before_inputs_are_opened(sd15, tmp_path):
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"mine")
    with pytest.raises(LoraStudioError, match="exists"):
        merge_checkpoints(tmp_path / "missing.safetensors", sd15["b"], out, alpha=0.5)
    assert out.read_bytes() == b"mine"


def test_stream_writer_is_byte_identical_and_mapped_reader_round_trips(tmp_path):
    ts = {"w": torch.randn(5, 3).half(), "i": torch.arange(7), "b": torch.randn(4).bfloat16(),
          "e": torch.zeros(0, 2), "s": torch.tensor(1.5)}
    fileio.atomic_save_safetensors(ts, tmp_path / "x.safetensors", {"k": "v"})
    specs = [(k, t.dtype, tuple(t.shape), (lambda t=t: (r for r in (t.reshape(-1)[i:i + 2]
                                                                     for i in range(0, max(t.numel(), 1), 2)))))
             for k, t in ts.items()]
    fileio.atomic_save_safetensors_stream(specs, tmp_path / "y.safetensors", {"k": "?"},
                                          final_metadata=lambda: {"k": "v"})
    assert (tmp_path / "x.safetensors").read_bytes() == (tmp_path / "y.safetensors").read_bytes()
    with fileio.MappedTensors(tmp_path / "y.safetensors") as m:
        assert sorted(m.keys()) == sorted(ts) and m.metadata == {"k": "v"}
        for k, t in ts.items():
            v = m.get(k)
            assert _same(v, t)
            v.add_(1) if v.numel() and v.is_floating_point() else None   # copy-on-write: the file keeps its bytes
        del v
    assert (tmp_path / "x.safetensors").read_bytes() == (tmp_path / "y.safetensors").read_bytes()
    bad = [("w", torch.float16, (5, 3), lambda: iter([torch.zeros(4, 3).half()]))]
    with pytest.raises(LoraStudioError, match="internal error"):
        fileio.atomic_save_safetensors_stream(bad, tmp_path / "z.safetensors")
    assert not (tmp_path / "z.safetensors").exists()


def test_numbers_presets_and_bad_weights(tmp_path):
    from lib_lora.presets import PresetStore

    user = tmp_path / "p.txt"
    user.write_text("FLAT26:" + ",".join(["0.5"] * 26) + "\nXL20:" + ",".join(["1"] * 20) + "\nRND:" +
                    ",".join(["R"] * 26) + "\n", encoding="utf-8")
    store = PresetStore(None, user)
    assert mc.resolve_weights("sd1", 0.1, "FLAT26", presets=store) == [0.5] * 26
    assert mc.resolve_weights("sdxl", 0.1, "xl20", presets=store, base_alpha=0)[0] == 0
    assert mc.resolve_weights("sd1", 0.1, "1 " * 26) == [1.0] * 26
    for bw, what in (("XL20", "takes 26"), ("RND", "letters"), ("nothere", "neither a list")):
        with pytest.raises(LoraStudioError, match=what):
            mc.resolve_weights("sd1", 0.1, bw, presets=store)
    with pytest.raises(LoraStudioError, match="finite"):
        mc.resolve_weights("sd1", 0.1, [float("nan")] * 26)


def _ref_train_diff(a, b, c, m):
    """supermerger's trainDifference as published (sign·|scale|·|B − C|, scaled by 1.8·m), in float64."""
    d0, d1 = np.abs(b - c), np.abs(b - a)
    s = d0 + d1
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.where(s != 0, d1 / s, 0.0)
    new = np.sign(b - c) * np.abs(scale) * np.abs(b - c)
    return np.asarray(a + new * (m * 1.8))


@pytest.mark.parametrize("dtype", [None, "fp32"])
def test_train_difference_matches_supermergers_formula_per_block(sd15, tmp_path, dtype):
    same = "model.diffusion_model.output_blocks.4.1.proj_in.weight"
    c = dict(sd15["c_sd"])
    c[same] = sd15["b_sd"][same].clone()          # B == C: the key stays A exactly
    c_path = tmp_path / "c.safetensors"
    save_file(c, str(c_path))
    out = tmp_path / "td.safetensors"
    res = merge_checkpoints(sd15["a"], sd15["b"], out, mode="train-diff", c=c_path, alpha=0.5,
                            block_weights=SLOT_W, dtype=dtype)
    got = load_file(str(out))
    a, b = sd15["a_sd"], sd15["b_sd"]
    assert _same(got[same], a[same].float() if dtype else a[same])
    checked = 0
    for key, t in got.items():
        slot = blocks.checkpoint_key_slot(key, "sd1")
        if key.endswith("position_ids") or slot is None:
            assert _same(t, a[key]), key
            continue
        ref = torch.from_numpy(_ref_train_diff(_f64(a[key]), _f64(b[key]), _f64(c[key]), res.weights[slot]))
        assert _same(t, ref.to(torch.float32 if dtype else a[key].dtype)), key
        checked += 1
    assert checked == res.merged > 1000
    assert json.loads(fileio.read_metadata(out)[RECIPE_KEY])["mode"] == "train-diff"
    with pytest.raises(LoraStudioError, match="needs a third model"):
        merge_checkpoints(sd15["a"], sd15["b"], tmp_path / "x.safetensors", mode="train-diff", alpha=0.5)


def test_every_mode_is_described():
    assert set(mc.MODE_HELP) == set(mc.MODES) and all(mc.MODE_HELP[m] for m in mc.MODES)


def _to_diffusers_vae(ldm: dict) -> dict:
    """ldm VAE names → diffusers names (written out by hand from the two layouts), attention as Linear."""
    import re

    out = {}
    for k, t in ldm.items():
        d = k.replace("nin_shortcut", "conv_shortcut").replace("norm_out", "conv_norm_out")
        d = re.sub(r"encoder\.down\.(\d)\.block\.(\d)\.", r"encoder.down_blocks.\1.resnets.\2.", d)
        d = re.sub(r"encoder\.down\.(\d)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0.", d)
        d = re.sub(r"decoder\.up\.(\d)\.block\.(\d)\.", lambda m: f"decoder.up_blocks.{3 - int(m[1])}.resnets.{m[2]}.", d)
        d = re.sub(r"decoder\.up\.(\d)\.upsample\.", lambda m: f"decoder.up_blocks.{3 - int(m[1])}.upsamplers.0.", d)
        d = re.sub(r"mid\.block_(\d)\.", lambda m: f"mid_block.resnets.{int(m[1]) - 1}.", d)
        for old, new in (("norm.", "group_norm."), ("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."),
                         ("proj_out.", "to_out.0.")):
            d = d.replace(f"mid.attn_1.{old}", f"mid_block.attentions.0.{new}")
        if "attentions" in d and t.dim() == 4:
            t = t.reshape(t.shape[0], t.shape[1])
        out[d] = t
    return out


@pytest.mark.parametrize("naming", ["ldm", "ldm_prefixed", "diffusers"])
def test_bake_a_vae_file_in_either_naming(sd15, tmp_path, naming):
    a = sd15["a_sd"]
    gen = torch.Generator().manual_seed(9)
    vae = {k[len("first_stage_model."):]: torch.randn(t.shape, generator=gen, dtype=torch.float32)
           for k, t in a.items() if k.startswith("first_stage_model.")}
    vae["loss.logvar"] = torch.zeros(())                          # training leftover: ignored
    stored = {"ldm": vae, "ldm_prefixed": {"first_stage_model." + k: t for k, t in vae.items()},
              "diffusers": _to_diffusers_vae(vae)}[naming]
    if naming == "diffusers":
        assert not any(".up." in k or "mid.attn_1" in k for k in stored)
    path = tmp_path / "vae.safetensors"
    save_file(stored, str(path))
    out = tmp_path / "m.safetensors"
    res = merge_checkpoints(sd15["a"], sd15["b"], out, alpha=0.3, vae=path)
    got = load_file(str(out))
    assert res.vae_baked == 248
    for k, t in vae.items():
        if k.startswith("loss."):
            continue
        assert _same(got["first_stage_model." + k], t.half()), k
    key = "model.diffusion_model.input_blocks.4.1.proj_in.weight"
    assert _same(got[key], torch.from_numpy(_ref_weighted(_f64(a[key]), _f64(sd15["b_sd"][key]), 0.3)).half())
    recipe = json.loads(fileio.read_metadata(out)[RECIPE_KEY])
    assert recipe["vae"] == {"file": "vae.safetensors", "sha256": _file_sha256(path)}
    base = merge_checkpoints(sd15["a"], sd15["b"], tmp_path / "base.safetensors", alpha=0.3, vae="base")
    assert base.vae_baked == 0 and json.loads(fileio.read_metadata(tmp_path / "base.safetensors")[RECIPE_KEY])["vae"] == "base"


def test_mismatched_or_foreign_vae_refused_in_one_line_before_reading(sd15, sdxl, tmp_path, monkeypatch):
    a = sd15["a_sd"]
    vae = {k[len("first_stage_model."):]: t for k, t in a.items() if k.startswith("first_stage_model.")}
    vae["decoder.conv_in.weight"] = torch.zeros(3, 3)
    save_file(vae, str(tmp_path / "bad.safetensors"))
    reads = []
    real_get = fileio.MappedTensors.get
    monkeypatch.setattr(fileio.MappedTensors, "get", lambda self, k: reads.append(k) or real_get(self, k))
    with pytest.raises(LoraStudioError) as exc:
        merge_checkpoints(sd15["a"], sd15["b"], tmp_path / "o.safetensors", alpha=0.5, vae=tmp_path / "bad.safetensors")
    msg = str(exc.value)
    assert "\n" not in msg and "decoder.conv_in.weight" in msg and "[3, 3]" in msg
    with pytest.raises(LoraStudioError, match="no place for"):     # a whole checkpoint is not a VAE
        merge_checkpoints(sd15["a"], sd15["b"], tmp_path / "o.safetensors", alpha=0.5, vae=sdxl["a"])
    with pytest.raises(LoraStudioError, match="not found"):
        merge_checkpoints(sd15["a"], sd15["b"], tmp_path / "o.safetensors", alpha=0.5, vae=tmp_path / "none.safetensors")
    assert reads == [] and not (tmp_path / "o.safetensors").exists()


@pytest.mark.parametrize("kernel_copy", [True, False], ids=["copy_file_range", "pread_fallback"])
def test_stream_writer_workers_and_file_pieces_are_byte_identical(tmp_path, monkeypatch, kernel_copy):
    import errno

    ts = {"w": torch.randn(50, 30).half(), "i": torch.arange(7), "f": torch.randn(1000), "e": torch.zeros(0, 2)}
    fileio.atomic_save_safetensors(ts, tmp_path / "x.safetensors", {"k": "v"})
    if not kernel_copy:
        def refuse(*a, **k):
            raise OSError(errno.EXDEV, "cross-device")
        monkeypatch.setattr(os, "copy_file_range", refuse, raising=False)
    src = fileio.MappedTensors(tmp_path / "x.safetensors")

    def produce(k, t):
        if k == "w":      # computed on the worker threads, in pieces
            flat = t.reshape(-1)
            return lambda: (lambda i=i: flat[i:i + 333].clone() for i in range(0, flat.numel(), 333))
        if k == "f":      # copied file to file
            return lambda: iter([src.piece(k)])
        return lambda: iter([t])

    specs = [(k, t.dtype, tuple(t.shape), produce(k, t)) for k, t in ts.items()]
    fileio.atomic_save_safetensors_stream(specs, tmp_path / "y.safetensors", {"k": "v"}, workers=2)
    src.close()
    assert (tmp_path / "x.safetensors").read_bytes() == (tmp_path / "y.safetensors").read_bytes()


def test_recipe_hashes_from_the_hash_cache_equal_fresh_ones_and_a_changed_input_is_rehashed(sd15, tmp_path):
    import shutil

    cache = str(tmp_path / "hashes.json")
    a = shutil.copy(sd15["a"], tmp_path / "a.safetensors")
    b = shutil.copy(sd15["b"], tmp_path / "b.safetensors")
    cold = merge_checkpoints(a, b, tmp_path / "cold.safetensors", alpha=0.3, hash_cache=cache)
    warm = merge_checkpoints(a, b, tmp_path / "warm.safetensors", alpha=0.3, hash_cache=cache)
    assert cold.hashes_cached == [] and sorted(warm.hashes_cached) == ["A", "B"]
    # same recipe, same bytes: the cache changes nothing in the file
    assert (tmp_path / "cold.safetensors").read_bytes() == (tmp_path / "warm.safetensors").read_bytes()
    # B replaced by other content of the same size: its hash is computed again, A's still comes from the cache
    shutil.copy(sd15["c"], b)
    res = merge_checkpoints(a, b, tmp_path / "new.safetensors", alpha=0.3, hash_cache=cache)
    recipe = json.loads(fileio.read_metadata(tmp_path / "new.safetensors")[RECIPE_KEY])
    assert res.hashes_cached == ["A"]
    assert recipe["inputs"]["B"]["sha256"] == _file_sha256(sd15["c"]) != _file_sha256(sd15["b"])


@pytest.mark.parametrize("mode", mc.MODES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_chunked_kernel_equals_the_whole_tensor_float64_formula_bit_for_bit(mode, dtype):
    # several scratch chunks and a ragged tail; pieces of B equal to C exercise train-diff's shortcut
    n = 3 * mc._Scratch.SIZE + 1234
    g = torch.Generator().manual_seed(7)
    a, b, c = (torch.randn(n, generator=g).to(dtype) for _ in range(3))
    c[: mc._Scratch.SIZE] = b[: mc._Scratch.SIZE]
    out = torch.empty(n, dtype=dtype)
    mc._Scratch().combine_into(mode, a, b, c, 0.37, out)
    assert _same(out, mc._combine(mode, a, b, c, 0.37).to(dtype))


@pytest.mark.parametrize("mode", mc.MODES)
@pytest.mark.parametrize("dtypes", [(torch.float16, torch.float16, torch.float16, torch.float16),
                                    (torch.float32, torch.float16, torch.bfloat16, torch.float16),
                                    (torch.bfloat16, torch.float32, torch.float16, torch.bfloat16),
                                    (torch.float64, torch.float16, torch.float32, torch.float32)])
def test_chunked_kernel_is_bit_identical_to_the_formula_for_mixed_dtypes_special_values_and_any_m(mode, dtypes):
    # inputs of different dtypes (A float32 or float64 against half-precision B/C), infinities, NaN, signed
    # zeros, half-precision subnormals and extremes, m outside [0, 1], a ragged tail: the kernel must write
    # exactly the whole-tensor float64 formula cast once (what merges wrote before the kernel was restructured)
    da, db, dc, dout = dtypes
    size = mc._Scratch.SIZE
    n = 2 * size + 321
    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 6e-8, -6e-8, 65504.0, -65504.0,
                            1e-5, 3.1e-5, 1e30])
    g = torch.Generator().manual_seed(11)
    ts = []
    for dt, shift in ((da, 0), (db, 5), (dc, 9)):
        t = torch.randn(n, generator=g) * 0.05
        t[shift:shift + len(special)] = special
        t[-len(special):] = special.flip(0)
        ts.append(t.to(dt))
    a, b, c = ts
    c[size: 2 * size] = b[size: 2 * size].to(dc)   # train-diff's B == C shortcut where B is exact in C's type
    zeros = a[size: 2 * size] == 0   # there the shortcut keeps A's signed zeros, the formula gives +0 for -0
    a[size: 2 * size][zeros] = 0.25
    for m in (0.37, 0.4, 1 / 3, 0.0, 1.0, -0.5, 1.7):
        out = torch.empty(n, dtype=dout)
        mc._Scratch().combine_into(mode, a, b, c, m, out)
        assert _same(out, mc._combine(mode, a, b, c, m).to(dout)), m


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forked writers are POSIX only")
@pytest.mark.parametrize("mode,dtype", [("weighted", None), ("add-diff", "fp32"), ("train-diff", "bf16")])
def test_forked_writer_processes_write_the_threads_bytes_in_every_mode(sd15, tmp_path, mode, dtype):
    kw = dict(mode=mode, alpha=0.7, block_weights=SLOT_W, dtype=dtype, vae="base", hash_cache=None,
              c=sd15["c"] if mode in mc.NEEDS_C else None)
    merge_checkpoints(sd15["a"], sd15["b"], tmp_path / "threads.safetensors", **kw)
    res = merge_checkpoints(sd15["a"], sd15["b"], tmp_path / "forked.safetensors", processes=2, **kw)
    assert (tmp_path / "threads.safetensors").read_bytes() == (tmp_path / "forked.safetensors").read_bytes()
    assert json.loads(fileio.read_metadata(tmp_path / "forked.safetensors")[RECIPE_KEY]) == res.recipe
