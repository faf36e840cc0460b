"""The same app under Gradio 4 (Forge ships 4.40): set a preset row, save it, copy a tag, in Chromium.

Needs an interpreter with gradio 4 (no torch needed): LORA_STUDIO_GRADIO4_PYTHON=/path/to/python, e.g.
    python3 -m venv /tmp/g4 && /tmp/g4/bin/pip install gradio==4.40.0 "numpy<2" "huggingface_hub<0.26" \\
        pydantic==2.8.2 fastapi==0.112.2
Skipped without it (the project venv pins gradio 3.41.2).
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests import browser as B

PY4 = os.environ.get("LORA_STUDIO_GRADIO4_PYTHON")
pytestmark = [pytest.mark.browser]
if B.chromium_missing():
    pytestmark.append(pytest.mark.skip(reason=f"browser tests need Chromium: {B.chromium_missing()}"))
elif not PY4:
    pytestmark.append(pytest.mark.skip(reason="set LORA_STUDIO_GRADIO4_PYTHON to a python with gradio 4 installed"))


def test_presets_tab_under_gradio_4(tmp_path):
    version = subprocess.run([PY4, "-c", "import gradio; print(gradio.__version__)"], capture_output=True,
                             text=True, timeout=120).stdout.strip()
    assert version.startswith("4."), f"{PY4} has gradio {version!r}, not 4.x"
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "x.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")   # listed; not inspected here
    B.DEADLINE = time.monotonic() + 90
    app = B.start_app(tmp_path, ["--lora-dir", str(lora), "--presets-file", str(tmp_path / "p.txt")], python=PY4)
    drv = B.start_browser(tmp_path)
    try:
        app.wait_ready(60)
        drv.get(app.url)
        B.wait_for(lambda: B.css_all(drv, "#lora_studio_presets_table td"), 20, "the presets table")
        B.set_textbox(drv, "lora_studio_presets_row_name", "g4")
        B.set_textbox(drv, "lora_studio_presets_row_values", ",".join(["0.5"] * 17))
        B.click(drv, "lora_studio_presets_set")
        B.wait_text(drv, "lora_studio_presets_status", "Row 'g4' set")
        B.click(drv, "lora_studio_presets_save")
        B.wait_text(drv, "lora_studio_presets_status", "Saved")
        lines = [ln for ln in (tmp_path / "p.txt").read_text().splitlines() if not ln.startswith("#")]
        assert lines == ["g4:" + ",".join(["0.5"] * 17)]
        B.choose(drv, "lora_studio_presets_lora", "x.safetensors")
        B.choose(drv, "lora_studio_presets_preset", "g4")
        B.click(drv, "lora_studio_presets_copy")
        B.wait_for(lambda: B.textbox_value(drv, "lora_studio_presets_tag") == "<lora:x:1:g4>", what="the tag")
        assert drv.execute_script("return window.loraStudioLastCopied;") == "<lora:x:1:g4>"
        B.screenshot(drv, "app_gradio4_presets.png")
    finally:
        B.DEADLINE = float("inf")
        drv.quit()
        app.stop()
