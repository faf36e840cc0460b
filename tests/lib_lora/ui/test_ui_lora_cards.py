"""The LoRAs tab's training record and card editor: what the file's ss_* metadata says, and the WebUI's
sidecar written beside the file (other keys kept), refused when writes are off, one line for bad values."""

from __future__ import annotations

import json

from lib_lora import sidecar
from lib_lora.ui import lora_tab
from tests.factory import write_lora
from tests.lib_lora.test_sidecar import KOHYA
from tests.lib_lora.ui.test_ui_presets_tab import make_ctx


def test_training_record_and_card_round_trip(tmp_path):
    ctx = make_ctx(tmp_path)
    (tmp_path / "lora").mkdir(exist_ok=True)
    path = write_lora(tmp_path / "lora" / "mychar.safetensors")
    from safetensors.torch import load_file, save_file
    save_file(load_file(path), path, metadata=KOHYA)
    chart, summary, meta = lora_tab.show_lora(ctx, "mychar.safetensors")
    text = lora_tab.training_markdown({"metadata": json.loads(meta)})
    assert "**Network**: networks.lora, dim 32, alpha 16.0, conv_dim=8" in text
    assert "**Training tags** (captions holding each): red hair (5), mychar (4), smile (1)" in text
    values, status = lora_tab.card_fields(ctx, "mychar.safetensors")
    assert status == "" and values == [None, None, 0.0, None, None, None, "Unknown"]
    (tmp_path / "lora" / "mychar.json").write_text(json.dumps({"sd version": "SD1", "x": 1}), encoding="utf-8")
    msg = lora_tab.save_card(ctx, "mychar.safetensors", "desc", "mychar", 0.7, "face", "", "n", "SD1")
    assert msg == "✓ saved mychar.json", msg
    assert json.loads((tmp_path / "lora" / "mychar.json").read_text(encoding="utf-8")) == {
        "sd version": "SD1", "x": 1, "description": "desc", "activation text": "mychar", "preferred weight": 0.7,
        "preferred preset": "face", "negative text": "", "notes": "n"}
    assert lora_tab.card_fields(ctx, "mychar.safetensors")[0] == ["desc", "mychar", 0.7, "face", "", "n", "SD1"]
    note = lora_tab.save_card(ctx, "mychar.safetensors", "", "", 0, "nosuchpreset", "", "", "SD1")
    assert "no preset named 'nosuchpreset' exists yet" in note
    assert lora_tab.save_card(ctx, "mychar.safetensors", "", "", "x", "", "", "", "SD1").startswith(
        "⚠ preferred weight 'x' is not a number")
    assert lora_tab.save_card(ctx, "../mychar.safetensors", "", "", 0, "", "", "", "SD1").startswith("⚠ ")
    ctx.writes_allowed = False
    assert lora_tab.save_card(ctx, "mychar.safetensors", "d", "", 0, "", "", "", "SD1").startswith(
        "⚠ Writing files is disabled")
    assert sidecar.read_sidecar(path)["description"] == ""
