"""blocks.py: formats, expansion, the unlisted-blocks warning, checkpoint key → slot (docs/spec/blocks.md)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from lib_lora import blocks as B
from lib_lora.errors import LoraStudioError, SyntaxProblem

from tests.paths import FIXTURES

FIX = Path(FIXTURES)


def test_slot_layout():
    assert len(B.BLOCK_NAMES) == 26
    assert B.SLOT["BASE"] == 0 and B.SLOT["IN00"] == 1 and B.SLOT["IN11"] == 12
    assert B.SLOT["M00"] == B.SLOT["MID"] == 13
    assert B.SLOT["OUT00"] == 14 and B.SLOT["OUT11"] == 25


@pytest.mark.parametrize("count, names", [
    (17, "BASE IN01 IN02 IN04 IN05 IN07 IN08 M00 OUT03 OUT04 OUT05 OUT06 OUT07 OUT08 OUT09 OUT10 OUT11"),
    (12, "BASE IN04 IN05 IN07 IN08 M00 OUT00 OUT01 OUT02 OUT03 OUT04 OUT05"),
    (20, "BASE IN00 IN01 IN02 IN03 IN04 IN05 IN06 IN07 IN08 M00 OUT00 OUT01 OUT02 OUT03 OUT04 OUT05 OUT06 OUT07 OUT08"),
    (26, " ".join(B.BLOCK_NAMES)),
])
def test_format_order(count, names):
    assert B.format_names(count) == names.split()
    assert len(B.FORMATS[count]) == count


def test_expand_17_positions_and_zero_fill():
    vals = [float(i + 1) for i in range(17)]
    vec, listed = B.expand(vals)
    assert vec[B.SLOT["BASE"]] == 1 and vec[B.SLOT["IN01"]] == 2 and vec[B.SLOT["M00"]] == 8
    assert vec[B.SLOT["OUT03"]] == 9 and vec[B.SLOT["OUT11"]] == 17
    for name in "IN00 IN03 IN06 IN09 IN10 IN11 OUT00 OUT01 OUT02".split():  # docs/spec/blocks.md §2.4 row 1
        assert vec[B.SLOT[name]] == 0 and not listed[B.SLOT[name]]
    assert sum(listed) == 17
    assert [vec[s] for s in B.FORMATS[17]] == vals


def test_expand_12_20_26():
    vec, listed = B.expand([1.0] * 12)
    unlisted = {B.BLOCK_NAMES[i] for i in range(26) if not listed[i]}
    # 12 on an SD1 LoRA zeroes IN01, IN02, OUT06..OUT11 (docs/spec/blocks.md §2.4)
    assert {"IN01", "IN02", "OUT06", "OUT07", "OUT08", "OUT09", "OUT10", "OUT11"} <= unlisted
    assert all(v == 0 for i, v in enumerate(vec) if not listed[i])
    vec, listed = B.expand([0.5] * 20)
    assert [B.BLOCK_NAMES[i] for i in range(26) if not listed[i]] == "IN09 IN10 IN11 OUT09 OUT10 OUT11".split()
    vec, listed = B.expand([-2.0] * 26)
    assert vec == [-2.0] * 26 and all(listed)


def test_worked_example_positions():
    # docs/spec/blocks.md §6: OUT05 = slot 19 = 17-format position 10; OUT01 = slot 15, 12-pos 7, 20-pos 12
    assert B.SLOT["OUT05"] == 19 and B.FORMATS[17].index(19) == 10
    assert B.SLOT["OUT01"] == 15 and B.FORMATS[12].index(15) == 7 and B.FORMATS[20].index(15) == 12


@pytest.mark.parametrize("n", [0, 1, 11, 13, 15, 16, 18, 19, 21, 25, 27, 61])
def test_expand_wrong_count(n):
    with pytest.raises(SyntaxProblem) as ei:
        B.expand([1.0] * n, name="foo")
    msg = str(ei.value)
    assert msg.startswith(f"`foo`: {n} block weights given; accepted counts are 12 (SDXL LoRA), 17 (SD1/SD2 LoRA), "
                          "20 (SDXL full), 26 (SD1/SD2 full)")
    assert ("Flux is not supported" in msg) == (n == 61)
    assert isinstance(ei.value, LoraStudioError)


def test_exact_count_message_example():
    assert B.count_message(15, "foo") == ("`foo`: 15 block weights given; accepted counts are 12 (SDXL LoRA), "
                                          "17 (SD1/SD2 LoRA), 20 (SDXL full), 26 (SD1/SD2 full)")


def test_unlisted_warning_sdxl_with_17():
    _, listed = B.expand([1.0] * 17)
    used = [B.SLOT[n] for n in "BASE IN04 IN05 IN07 IN08 M00 OUT00 OUT01 OUT02 OUT03 OUT04 OUT05".split()] + [None]
    msg = B.unlisted_warning("foo", "sdxl", 17, used, listed)
    assert msg == ("LoRA 'foo' (SDXL) has weights in OUT00, OUT01, OUT02, which the 17-value format does not list; "
                   "they were set to 0. Use a 12- or 20-value list for SDXL LoRAs.")


def test_unlisted_warning_none_when_covered_and_user_zero():
    vec, listed = B.expand([0.0] * 17)  # user wrote 0 everywhere: not the format's fault
    used = [B.SLOT[n] for n in "BASE IN01 M00 OUT11".split()]
    assert B.unlisted_warning("foo", "sd1", 17, used, listed) is None
    assert B.unlisted_warning("foo", "sd1", 17, [None, None], listed) is None


def test_unlisted_warning_sd1_locon_and_12():
    _, listed = B.expand([1.0] * 17)
    msg = B.unlisted_warning("lc", "sd1", 17, [B.SLOT["IN00"], B.SLOT["OUT02"], B.SLOT["IN01"]], listed)
    assert "IN00, OUT02" in msg and "17-value" in msg and "26-value" in msg
    _, listed12 = B.expand([1.0] * 12)
    msg = B.unlisted_warning("x", "sd2", 12, [B.SLOT["IN01"], B.SLOT["OUT09"]], listed12)
    assert msg.startswith("LoRA 'x' (SD2) has weights in IN01, OUT09, which the 12-value format")
    assert "Use a 17- or 26-value list for SD1/SD2 LoRAs." in msg
    msg = B.unlisted_warning("u", None, 12, [B.SLOT["IN01"]], listed12)
    assert msg.startswith("LoRA 'u' has weights in IN01") and "26-value" in msg


def _keys(name):
    return json.loads((FIX / name).read_text())["keys"]


def test_checkpoint_key_slot_sd15_counts():
    keys = _keys("sd15_checkpoint_compvis.json")
    assert len(keys) == 1143
    c = Counter(B.checkpoint_key_slot(k, "sd1") for k in keys)
    unet = [k for k in keys if k.startswith("model.diffusion_model.")]
    assert len(unet) == 686
    ins = sum(c[s] for s in range(1, 13))
    # input 248 + time_embed 4 in IN00-IN11; out.* (4) join OUT11
    assert ins == 248 + 4
    assert c[13] == 46
    assert sum(c[s] for s in range(14, 26)) == 384 + 4
    assert B.checkpoint_key_slot("model.diffusion_model.time_embed.2.weight", "sd1") == B.SLOT["IN00"]
    assert B.checkpoint_key_slot("model.diffusion_model.out.2.weight", "sd1") == B.SLOT["OUT11"]
    assert B.checkpoint_key_slot("first_stage_model.decoder.conv_in.weight", "sd1") == 0
    assert B.checkpoint_key_slot("cond_stage_model.transformer.text_model.final_layer_norm.weight", "sd1") == 0
    assert B.checkpoint_key_slot("model_ema.decay", "sd1") == 0
    assert B.checkpoint_key_slot("betas", "sd1") is None
    assert B.checkpoint_key_slot("alphas_cumprod", "sd1") is None


def test_checkpoint_key_slot_sdxl_counts():
    keys = _keys("sdxl_checkpoint_compvis.json")
    assert len(keys) == 2515
    c = Counter(B.checkpoint_key_slot(k, "sdxl") for k in keys)
    assert sum(c[s] for s in range(1, 13)) == 574 + 4 + 4  # input + time_embed + label_emb
    assert c[13] == 226
    assert sum(c[s] for s in range(14, 26)) == 868 + 4
    assert all(c[s] == 0 for s in (10, 11, 12, 23, 24, 25))  # no IN09-11 / OUT09-11 on SDXL
    assert B.checkpoint_key_slot("model.diffusion_model.label_emb.0.0.weight", "sdxl") == B.SLOT["IN00"]
    assert B.checkpoint_key_slot("model.diffusion_model.out.2.bias", "sdxl") == B.SLOT["OUT08"]
    te = [k for k in keys if k.startswith("conditioner.embedders.")]
    assert len(te) == 197 + 390 and all(B.checkpoint_key_slot(k, "sdxl") == 0 for k in te)


def test_slot_of_layer_canonical():
    assert B.slot_of_layer("model.diffusion_model.output_blocks.5.1.transformer_blocks.0.attn2.to_k") == 19
    assert B.slot_of_layer("model.diffusion_model.input_blocks.1.1.proj_in") == 2
    assert B.slot_of_layer("model.diffusion_model.input_blocks.10.0.in_layers.2") == 11
    assert B.slot_of_layer("model.diffusion_model.middle_block.1.proj_out") == 13
    assert B.slot_of_layer("model.diffusion_model.time_embed.0") is None
    assert B.slot_of_layer("model.diffusion_model.out.2") is None
    assert B.slot_of_layer("conditioner.embedders.1.model.transformer.resblocks.3.attn") == 0
