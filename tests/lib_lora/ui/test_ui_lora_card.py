"""The LoRAs tab's card section: training metadata of a real file and the shared user-metadata sidecar."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("gradio")

from lib_lora.ui import app, lora_tab  # noqa: E402


def _lora(path, **meta):
    import torch
    from safetensors.torch import save_file
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 320),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(320, 4)},
              str(path), metadata=meta)


@pytest.fixture
def ctx(tmp_path):
    return app.build_context([tmp_path / "lora"], [tmp_path / "ckpt"], tmp_path / "tagger",
                             presets_file=tmp_path / "user_presets.txt")


def test_card_shows_training_metadata_and_saves_the_sidecar(ctx, tmp_path):
    f = tmp_path / "lora" / "cat.safetensors"
    _lora(f, ss_tag_frequency=json.dumps({"5_cat": {"cat": 3}, "1_x": {"cat": 2, "<b>": 1}}),
          ss_resolution="(512, 512)", ss_sd_model_name="base.ckpt", ss_num_epochs="4")
    (tmp_path / "lora" / "cat.json").write_text(json.dumps({"activation text": "cat ears", "preferred weight": 0.6,
                                                            "keep": True}))
    before = f.read_bytes()
    training, desc, act, weight, preset, notes, status = lora_tab.show_card(ctx, "cat.safetensors")
    assert 'data-tag="cat">cat <span class="lora-studio-tag-count">5</span>' in training
    assert "&lt;b&gt;" in training and "<b>" not in training.replace("<b>Training", "").replace("<b>Dataset", "")
    assert "base.ckpt" in training and "(512, 512)" in training
    assert (act, weight, status) == ("cat ears", 0.6, "")
    assert lora_tab.save_sidecar(ctx, "cat.safetensors", "d", "cat ears, tail", 0.9, "face", "n").startswith("Saved")
    data = json.loads((tmp_path / "lora" / "cat.json").read_text(encoding="utf-8"))
    assert data == {"activation text": "cat ears, tail", "preferred weight": 0.9, "keep": True, "description": "d",
                    "lora studio preset": "face", "notes": "n"}
    assert f.read_bytes() == before
    assert lora_tab.save_sidecar(ctx, "cat.safetensors", "d", "", 1, "nosuchpreset", "").startswith("⚠ preset")
    assert lora_tab.save_sidecar(ctx, "../cat.safetensors", "d", "", 1, "", "").startswith("⚠")


def test_broken_sidecar_is_shown_and_kept(ctx, tmp_path):
    _lora(tmp_path / "lora" / "b.safetensors")
    (tmp_path / "lora" / "b.json").write_text("{oops")
    out = lora_tab.show_card(ctx, "b.safetensors")
    assert out[-1].startswith("⚠") and "not valid JSON" in out[-1] and "No training metadata" in out[0]
    assert lora_tab.save_sidecar(ctx, "b.safetensors", "x", "", 0, "", "").startswith("⚠")
    assert (tmp_path / "lora" / "b.json").read_text() == "{oops"


def test_card_save_honours_the_listen_gate(tmp_path):
    ctx = app.build_context([tmp_path / "lora"], [tmp_path / "ckpt"], tmp_path / "tagger",
                            presets_file=tmp_path / "user_presets.txt")
    ctx.writes_allowed = False
    _lora(tmp_path / "lora" / "g.safetensors")
    assert lora_tab.save_sidecar(ctx, "g.safetensors", "x", "", 0, "", "") == f"⚠ {ctx.writes_blocked_reason}"
    assert not (tmp_path / "lora" / "g.json").exists()
