"""The LoRAs tab's card section in a real headless Chromium (standalone app): the training tags of a real
file are shown by frequency, and the edited fields land in the WebUI's `.json` sidecar, unknown keys kept."""

from __future__ import annotations

import json
import time

from tests import browser as B

pytestmark = B.pytestmarks()


def test_card_metadata_view_and_editor(tmp_path):
    from safetensors.torch import load_file, save_file
    B.DEADLINE = time.monotonic() + 150
    lora = tmp_path / "lora"
    lora.mkdir()
    path = lora / "blocky.safetensors"
    B.write_block_lora(path)
    save_file(load_file(str(path)), str(path), metadata={
        "ss_tag_frequency": json.dumps({"10_cat": {"cat": 4, "red scarf": 9}, "1_x": {"cat": 6}}),
        "ss_resolution": "(512, 512)", "ss_network_dim": "4", "ss_sd_model_name": "base.safetensors"})
    (lora / "blocky.json").write_text(json.dumps({"sd version": "SD1", "from another tool": 1}))
    (tmp_path / "tag").mkdir()
    app = B.start_app(tmp_path, ["--lora-dir", str(lora), "--tagger-models-dir", str(tmp_path / "tag"),
                                 "--presets-file", str(tmp_path / "presets.txt")])
    drv = None
    try:
        drv = B.start_browser(tmp_path)
        app.wait_ready()
        drv.get(app.url)
        B.open_tab(drv, "LoRAs")
        B.wait_for(lambda: B.css(drv, "#lora_studio_inspect_pick").is_displayed(), what="the LoRAs tab")
        B.choose(drv, "lora_studio_inspect_pick", "blocky.safetensors")
        B.wait_for(lambda: len(B.css_all(drv, "#lora_studio_inspect_training .lora-studio-tag")) == 2,
                   what="the training tags")
        tags = [e.get_attribute("data-tag") for e in B.css_all(drv, "#lora_studio_inspect_training .lora-studio-tag")]
        assert tags == ["cat", "red scarf"]                     # 10 = 4 + 6 across folders, before 9
        assert "(512, 512)" in B.text_of(drv, "lora_studio_inspect_training")
        B.set_textbox(drv, "lora_studio_card_activation", "red scarf")
        B.set_textbox(drv, "lora_studio_card_description", "a test card")
        B.click(drv, "lora_studio_card_save")
        B.wait_text(drv, "lora_studio_card_status", "Saved blocky.json")
        data = json.loads((lora / "blocky.json").read_text(encoding="utf-8"))
        assert data["activation text"] == "red scarf" and data["description"] == "a test card"
        assert data["sd version"] == "SD1" and data["from another tool"] == 1
        assert load_file(str(path)).keys()                       # the weights file is still a valid LoRA
    finally:
        if drv is not None:
            drv.quit()
        app.stop()
        B.DEADLINE = float("inf")
