"""The per-LoRA user-metadata sidecar (the WebUI's `<stem>.json`) and the training view of ss_* metadata."""

from __future__ import annotations

import json

import pytest

from lib_lora import sidecar
from lib_lora.errors import LoraStudioError

META = {
    "ss_tag_frequency": json.dumps({"5_cat": {"cat": 3, "sitting": 1}, "2_more": {"cat": 1, " owl ": 2, "bad": "x"}}),
    "ss_dataset_dirs": json.dumps({"5_cat": {"n_repeats": 5, "img_count": 4}, "2_more": {"n_repeats": 2, "img_count": 3}}),
    "ss_resolution": "(512, 512)", "ss_learning_rate": "0.0001", "ss_unet_lr": "None", "ss_text_encoder_lr": "5e-05",
    "ss_num_epochs": "10", "ss_steps": "400", "ss_sd_model_name": "v1-5-pruned.ckpt", "ss_base_model_version": "sd_v1",
    "ss_network_module": "networks.lora", "ss_network_dim": "16", "ss_network_alpha": "8",
    "ss_network_args": json.dumps({"conv_dim": "4"}),
}


def test_training_view_merges_tags_across_datasets():
    v = sidecar.training_view(META)
    assert v["tags"] == [("cat", 4), ("owl", 2), ("sitting", 1)]   # summed, stripped, bad counts skipped
    facts = dict(v["facts"])
    assert facts["base model"] == "v1-5-pruned.ckpt" and facts["base model version"] == "sd_v1"
    assert facts["resolution"] == "(512, 512)" and facts["epochs"] == "10" and facts["steps"] == "400"
    assert facts["network dim"] == "16" and facts["network alpha"] == "8" and facts["network module"] == "networks.lora"
    assert facts["text encoder learning rate"] == "5e-05" and "U-Net learning rate" not in facts   # "None" left out
    assert v["network_args"] == {"conv_dim": "4"}
    assert v["datasets"] == [{"dir": "5_cat", "repeats": 5, "images": 4}, {"dir": "2_more", "repeats": 2, "images": 3}]
    assert v["problems"] == []


def test_training_view_from_ss_datasets_and_bad_json():
    datasets = [{"resolution": [768, 640], "tag_frequency": {"a": {"x": 2}}, "subsets": [
        {"image_dir": "imgs", "num_repeats": 3, "img_count": 7}]}, {"tag_frequency": {"b": {"x": 1, "y": 5}}}]
    v = sidecar.training_view({"ss_datasets": json.dumps(datasets)})
    assert v["tags"] == [("y", 5), ("x", 3)]
    assert v["datasets"] == [{"dir": "imgs", "repeats": 3, "images": 7}]
    assert v["resolution"] == "(768, 640)"
    bad = sidecar.training_view({"ss_tag_frequency": "{not json", "ss_network_args": "[1"})
    assert bad["tags"] == [] and len(bad["problems"]) == 2 and any("ss_tag_frequency" in p for p in bad["problems"])
    assert sidecar.training_view({}) == {"facts": [], "resolution": None, "network_args": {}, "datasets": [],
                                         "tags": [], "problems": []}


def test_update_sidecar_keeps_unknown_keys_and_never_touches_weights(tmp_path):
    lora = tmp_path / "style.safetensors"
    lora.write_bytes(b"weights")
    side = tmp_path / "style.json"
    side.write_text(json.dumps({"description": "old", "sd version": "SD1", "someone else's": [1, 2]}))
    out = sidecar.update_sidecar(lora, {sidecar.ACTIVATION: "cat ears", sidecar.WEIGHT: "0.7",
                                        sidecar.PRESET: "face", sidecar.DESCRIPTION: "new"})
    data = json.loads(side.read_text(encoding="utf-8"))
    assert data == out == {"description": "new", "sd version": "SD1", "someone else's": [1, 2],
                           "activation text": "cat ears", "preferred weight": 0.7, "lora studio preset": "face"}
    assert lora.read_bytes() == b"weights"
    assert sidecar.read_sidecar(lora)["preferred weight"] == 0.7
    assert sidecar.read_sidecar(tmp_path / "none.safetensors") == {}


@pytest.mark.parametrize("text, what", [("{broken", "not valid JSON"), ("[1, 2]", "not an object")])
def test_broken_sidecar_is_refused_not_replaced(tmp_path, text, what):
    lora = tmp_path / "x.safetensors"
    (tmp_path / "x.json").write_text(text)
    with pytest.raises(LoraStudioError, match=what):
        sidecar.update_sidecar(lora, {sidecar.NOTES: "n"})
    assert (tmp_path / "x.json").read_text() == text


def test_bad_fields_are_one_line_errors(tmp_path):
    lora = tmp_path / "x.safetensors"
    with pytest.raises(LoraStudioError, match="not a number"):
        sidecar.update_sidecar(lora, {sidecar.WEIGHT: "heavy"})
    with pytest.raises(LoraStudioError, match="not a LoRA metadata field"):
        sidecar.update_sidecar(lora, {"activation": "typo"})
    assert not (tmp_path / "x.json").exists()
    assert sidecar.clean_fields({sidecar.WEIGHT: ""}) == {sidecar.WEIGHT: 0.0}
