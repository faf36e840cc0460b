"""LoRA Studio's cards page in a fake AUTOMATIC1111 (built-in Lora disabled): a card click writes the preferred
weight and preset into the tag, the editor shows the training record and tags, saves the WebUI's sidecar
(other keys kept) and a tag click toggles it in the activation text."""

from __future__ import annotations

import json

import pytest

from tests.fake_webui.harness import write_lora
from tests.lib_lora.test_sidecar import KOHYA


def page_and_item(webui, name):
    from lora_studio_webui import cards
    page = cards.make_page()
    page.refresh()                                           # the WebUI lists the page before showing a card
    return page, page.create_item_into_items(name)


def test_card_prompt_carries_preferred_weight_and_preset(webui):
    path = write_lora(webui, "mychar")
    _, item = page_and_item(webui, "mychar")
    assert item["prompt"] == '"<lora:mychar:" + opts.extra_networks_default_multiplier + ">"'
    path.with_suffix(".json").write_text(json.dumps({"preferred weight": 0.7, "preferred preset": "face",
                                                     "activation text": "mychar"}), encoding="utf-8")
    _, item = page_and_item(webui, "mychar")
    assert item["prompt"] == '"<lora:mychar:" + 0.7 + ":face>" + " mychar"'
    path.with_suffix(".json").write_text(json.dumps({"preferred preset": "a>b"}), encoding="utf-8")
    _, item = page_and_item(webui, "mychar")                 # a hand-edited bad preset never breaks the tag
    assert item["prompt"].endswith('+ ">"')


def test_editor_shows_the_training_record_and_saves_the_sidecar(webui):
    import gradio as gr
    from lora_studio_webui import cards

    path = write_lora(webui, "mychar", **KOHYA)
    path.with_suffix(".json").write_text(json.dumps({"description": "d", "custom": 1}), encoding="utf-8")
    page, item = page_and_item(webui, "mychar")
    with gr.Blocks():
        editor = page.create_user_metadata_editor(None, "txt2img")
        editor.create_ui()
    table = dict(editor.get_metadata_table("mychar"))
    assert table["Network:"] == "networks.lora, dim 32, alpha 16.0, conv_dim=8" and table["Epoch:"] == "4 of 10"
    shown = editor.put_values_into_components("mychar")
    assert shown[1] == "d" and shown[5] == "Unknown"
    assert shown[6]["value"] == [("red hair", "5"), ("mychar", "4"), ("smile", "1")] and shown[6]["visible"]
    editor.save_card("mychar", "new", "SD1", "mychar, red hair", 0.8, "face", "", "notes")
    on_disk = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    assert on_disk == {"description": "new", "custom": 1, "sd version": "SD1", "activation text": "mychar, red hair",
                       "preferred weight": 0.8, "preferred preset": "face", "negative text": "", "notes": "notes"}
    assert page.items["mychar"]["user_metadata"] == on_disk
    with pytest.raises(gr.Error, match="not saved: preferred preset 'a:b' cannot hold"):
        editor.save_card("mychar", "x", "SD1", "", 1, "a:b", "", "")          # refused: the file stays as it was
    assert json.loads(path.with_suffix(".json").read_text(encoding="utf-8")) == on_disk
    assert cards.add_tag("mychar", ["red hair", "5"]) == "mychar, red hair"
    assert cards.add_tag("mychar, red hair", ["red hair", "5"]) == "mychar"
    assert cards.add_tag("", ["smile", "1"]) == "smile"


def test_block_norms_route_gives_the_charts_norms_without_paths(webui):
    from lib_lora.lora_info import inspect_file
    from lora_studio_webui import api

    path = write_lora(webui, "mychar")
    got = api.block_norms("mychar")
    assert got["name"] == "mychar" and got["arch"] == "sd1"
    assert got["norms"] == inspect_file(str(path), with_hash=False)["block_norms"]
    assert str(path.parent) not in repr(got)
    assert api.block_norms("nosuch") == {"name": "nosuch", "error": "no LoRA named 'nosuch'"}


def test_save_sliders_as_a_preset(tmp_path):
    from lib_lora.presets import PresetStore
    from lora_studio_webui.block_sliders import save_preset

    store = PresetStore(user_path=tmp_path / "user.txt")
    w = "1,1,0.5,1,1,1,1,1,1,1,1,1,1,1,1,1,1"
    assert save_preset(store, "mine", w, False) == \
        "✓ saved preset 'mine' (17 values); write it in a tag as <lora:NAME:1:mine>"
    assert store.get("mine") == w.split(",") and "mine:" in (tmp_path / "user.txt").read_text()
    assert "exists; tick Replace" in save_preset(store, "mine", w, False)
    assert "exists; tick Replace" in save_preset(store, "face", w, False)          # a shipped name too
    assert save_preset(store, "mine", "0," + w[2:], True).startswith("✓")
    assert save_preset(store, "", w, False) == "⚠ type a name for the preset."
    assert save_preset(store, "x", "", False).startswith("⚠ put the cursor in a <lora:…> tag")
    assert save_preset(store, "bad", "1,2,3", False).startswith("⚠ ")            # not a block format
    assert save_preset(store, "y", w, False, writes_allowed=False).startswith("⚠ Writing files is disabled")
    assert store.get("y") is None and store.get("bad") is None
