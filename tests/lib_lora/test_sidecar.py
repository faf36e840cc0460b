"""The WebUI's per-LoRA sidecar (user metadata) and the training record from ss_* metadata: keys as the
WebUI's card editor writes them, other keys kept, atomic writes, one-line errors; the record as a user reads it."""

from __future__ import annotations

import json

import pytest

from lib_lora import sidecar
from lib_lora.errors import LoraStudioError

KOHYA = {
    "ss_output_name": "mychar", "ss_sd_model_name": "base.safetensors", "ss_base_model_version": "sd_v1",
    "ss_network_module": "networks.lora", "ss_network_dim": "32", "ss_network_alpha": "16.0",
    "ss_network_args": json.dumps({"conv_dim": "8"}), "ss_learning_rate": "0.0001", "ss_unet_lr": "0.0001",
    "ss_text_encoder_lr": "5e-05", "ss_epoch": "4", "ss_num_epochs": "10", "ss_steps": "400",
    "ss_num_train_images": "40", "ss_optimizer": "torch.optim.adamw.AdamW",
    "ss_dataset_dirs": json.dumps({"10_mychar": {"n_repeats": 10, "img_count": 4}}),
    "ss_bucket_info": json.dumps({"buckets": {"0": {"resolution": [512, 768], "count": 30},
                                              "1": {"resolution": [512, 512], "count": 10}}}),
    "ss_tag_frequency": json.dumps({"10_mychar": {"mychar": 4, " red hair": 3, "smile": 1},
                                    "1_reg": {"red hair": 2, "": 5}}),
    "ss_clip_skip": "None",
}


def test_training_record_rows_and_tags():
    rows = dict(sidecar.training_record(KOHYA))
    assert rows["Network"] == "networks.lora, dim 32, alpha 16.0, conv_dim=8"
    assert rows["Base model"] == "base.safetensors (sd_v1)"
    assert rows["Learning rates"] == "base 0.0001, U-Net 0.0001, text encoder 5e-05"
    assert rows["Epoch"] == "4 of 10" and rows["Steps"] == "400"
    assert rows["Datasets"] == "10_mychar (4 images × 10)"
    assert rows["Resolutions"] == "512x768, 512x512"
    assert "Clip skip" not in rows                          # "None" is no value
    assert sidecar.tag_frequency(KOHYA) == [("red hair", 5), ("mychar", 4), ("smile", 1)]
    assert sidecar.training_record({}) == [] and sidecar.tag_frequency({"ss_tag_frequency": "{bad"}) == []


def test_sidecar_merge_keeps_other_keys_and_is_what_the_webui_reads(tmp_path):
    lora = tmp_path / "my.lora.safetensors"
    lora.write_bytes(b"weights")
    side = tmp_path / "my.lora.json"
    side.write_text(json.dumps({"description": "old", "sd version": "SD1", "custom": [1, 2]}), encoding="utf-8")
    data = sidecar.write_sidecar(lora, {"activation text": "mychar, red hair", "preferred weight": "0.8",
                                        "preferred preset": " face ", "notes": "ünïcode"})
    on_disk = json.loads(side.read_text(encoding="utf-8"))
    assert on_disk == data == {"description": "old", "sd version": "SD1", "custom": [1, 2],
                               "activation text": "mychar, red hair", "preferred weight": 0.8,
                               "preferred preset": "face", "notes": "ünïcode"}
    assert lora.read_bytes() == b"weights"
    assert sidecar.card_prompt("my.lora", on_disk) == "<lora:my.lora:0.8:face> mychar, red hair"
    assert sidecar.card_prompt("x", {}) == "<lora:x:1>"


@pytest.mark.parametrize("updates, message", [
    ({"preferred weight": "abc"}, "preferred weight 'abc' is not a number"),
    ({"preferred weight": "inf"}, "finite"),
    ({"preferred preset": "a:b"}, "cannot hold ':'"),
    ({"activation text": "two\nlines"}, "must be one line"),
    ({"sd version": "SD9"}, "is not one of SD1, SD2, SDXL, Unknown"),
    ({"weights": 1}, "'weights' is not a card field"),
])
def test_bad_values_are_one_line_and_nothing_is_written(tmp_path, updates, message):
    lora = tmp_path / "a.safetensors"
    lora.write_bytes(b"x")
    with pytest.raises(LoraStudioError, match=message):
        sidecar.write_sidecar(lora, updates)
    assert not (tmp_path / "a.json").exists()


def test_a_damaged_sidecar_is_named(tmp_path):
    lora = tmp_path / "a.safetensors"
    (tmp_path / "a.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(LoraStudioError, match=r"a\.json' is not valid JSON .*; fix or delete it"):
        sidecar.write_sidecar(lora, {"notes": "x"})
    assert (tmp_path / "a.json").read_text(encoding="utf-8") == "{not json"
    (tmp_path / "a.json").write_text("[1]", encoding="utf-8")
    with pytest.raises(LoraStudioError, match="does not hold a JSON object"):
        sidecar.read_sidecar(lora)
