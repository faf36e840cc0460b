"""'Save as preset' under the per-block sliders: the weights the sliders show become a user preset; no name,
no tag, an existing name without Replace, a bad count and writes switched off are each one line, nothing saved."""

from __future__ import annotations

import json

from lib_lora.presets import PresetStore
from lora_studio_webui.block_sliders import save_preset


def req(values):
    return json.dumps({"name": "mychar", "values": values})


def test_save_sliders_as_a_preset(tmp_path):
    store = PresetStore(user_path=tmp_path / "user.txt")
    w = ["1", "1", "0.5"] + ["1"] * 14
    assert save_preset(store, "mine", req(w), False) == \
        "✓ saved preset 'mine' (17 values); use it in a tag as <lora:NAME:1:mine>"
    assert store.get("mine") == w and "mine:" in (tmp_path / "user.txt").read_text()
    assert "exists; tick Replace" in save_preset(store, "mine", req(w), False)
    assert "exists; tick Replace" in save_preset(store, "face", req(w), False)        # a shipped name too
    assert save_preset(store, "mine", req(["0"] + w[1:]), True).startswith("✓") and store.get("mine")[0] == "0"
    assert save_preset(store, "", req(w), False) == "⚠ type a name for the preset."
    assert save_preset(store, "x", "", False).startswith("⚠ put the cursor in a <lora:…> tag")
    assert save_preset(store, "bad", req(["1", "2", "3"]), False).startswith("⚠ ")   # not a block format
    assert save_preset(store, "y", req(w), False, writes_allowed=False).startswith("⚠ Writing files is disabled")
    assert store.get("y") is None and store.get("bad") is None
