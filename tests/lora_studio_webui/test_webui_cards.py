"""The Lora card's metadata view and editor in the (fake) WebUI: the sidecar the WebUI reads, our fields."""

from __future__ import annotations

import json
import types

import pytest

pytest.importorskip("gradio")


def _page(webui, path, **um):
    item = {"name": path.stem, "filename": str(path), "user_metadata": dict(um), "description": um.get("description", ""),
            "metadata": {"ss_tag_frequency": json.dumps({"1_a": {"blue hair": 2, "smile": 5}}),
                         "ss_network_dim": "8", "ss_resolution": "(512, 512)"}}
    updated = []
    lister = types.SimpleNamespace(update_file_entry=updated.append)
    page = types.SimpleNamespace(items={path.stem: item}, name="lora studio", extra_networks_tabname="lora_studio",
                                 lister=lister)
    return page, item, updated


def test_card_editor_writes_the_webui_sidecar(webui):
    from lora_studio_webui import cards
    path = webui.lora_dir / "foo.safetensors"
    weights = path.read_bytes()
    (webui.lora_dir / "foo.json").write_text(json.dumps({"sd version": "SD1", "other tool": {"x": 1}}))
    page, item, updated = _page(webui, path, **{"sd version": "SD1", "other tool": {"x": 1}})
    status = cards.save_card(page, "foo", "my style", "blue hair", 0.75, "face", "lowres", "note")
    assert status == "Saved."
    data = json.loads((webui.lora_dir / "foo.json").read_text(encoding="utf-8"))
    # the WebUI's own names (its Lora editor and its card's prompt read these) + ours; unknown keys kept
    assert data == {"sd version": "SD1", "other tool": {"x": 1}, "description": "my style", "activation text": "blue hair",
                    "preferred weight": 0.75, "lora studio preset": "face", "negative text": "lowres", "notes": "note"}
    assert item["user_metadata"] == data and item["description"] == "my style"
    assert updated == [str(webui.lora_dir / "foo.json")]        # the WebUI's file cache learns of the file
    assert path.read_bytes() == weights
    assert cards.card_fields(item) == ("blue hair", 0.75, "face", "lowres")
    assert cards.save_card(page, "foo", "", "", "x", "", "", "").startswith("⚠ preferred weight 'x' is not a number")
    assert cards.save_card(page, "foo", "", "", 1, "nosuch", "", "").startswith("⚠ preset 'nosuch'")
    assert json.loads((webui.lora_dir / "foo.json").read_text(encoding="utf-8")) == data   # refused: unchanged
    assert cards.save_card(page, "gone", "", "", 1, "", "", "").startswith("⚠")


def test_card_editor_ui_shows_training_tags(webui):
    import gradio as gr
    from lora_studio_webui import cards
    path = webui.lora_dir / "foo.safetensors"
    page, item, _ = _page(webui, path, **{"activation text": "smile", "preferred weight": 0.5})
    with gr.Blocks():
        editor = cards.make_editor(None, "txt2img", page)
        editor.create_ui()
    values = editor.put_values_into_components("foo")
    assert values[5:9] == ["smile", 0.5, "", ""]
    training = values[9]
    assert 'data-tabname="txt2img"' in training
    assert '<button type="button" class="lora-studio-tag" data-tag="smile">' in training
    assert training.index('data-tag="smile"') < training.index('data-tag="blue hair"')   # by frequency
    assert "network dim" in training and "(512, 512)" in training
    with pytest.raises(gr.Error, match="not a number"):
        editor.save_lora_user_metadata("foo", "", "", "", "heavy", "", "")


def test_card_editor_honours_the_listen_gate(webui):
    from modules import shared
    from lora_studio_webui import cards
    path = webui.lora_dir / "foo.safetensors"
    page, _, _ = _page(webui, path)
    shared.cmd_opts.disable_extension_access = True
    try:
        status = cards.save_card(page, "foo", "d", "", 1, "", "", "")
    finally:
        shared.cmd_opts.disable_extension_access = False
    assert status.startswith("⚠") and "--enable-insecure-extension-access" in status
    assert not (webui.lora_dir / "foo.json").exists()
