"""The per-block sliders' norms preview (block_sliders.preview_html): the LoRA's real per-block ΔW norms drawn by
the one chart code (lora_tab.render_bars) with the sliders' values overlaid; bad requests are one line."""

from __future__ import annotations

import json
import re

import pytest

pytest.importorskip("gradio")

from tests.browser import write_block_lora  # noqa: E402


class _Lib:
    def __init__(self, files):
        self.files = files

    def find(self, name):
        path = self.files.get(name)
        return None if path is None else type("E", (), {"path": path})()


def _norm(svg, block):
    m = re.search(rf'class="bar" data-block="{block}" data-norm="([^"]+)"', svg)
    return float(m.group(1)) if m else None


def test_preview_draws_the_loras_norms_with_the_slider_values(tmp_path):
    from lora_studio_webui import block_sliders
    path = tmp_path / "blocky.safetensors"
    expected = write_block_lora(path)
    lib = _Lib({"blocky": path})
    values = ["1"] * 17
    values[8] = "0.25"          # OUT03 in the 17-value format
    values[16] = "R"
    svg = block_sliders.preview_html(json.dumps({"name": "blocky", "values": values}), lib)
    for block, norm in expected.items():
        assert _norm(svg, block) == pytest.approx(norm, rel=1e-4)
    assert 'data-block="OUT03" data-weight="0.25"' in svg and 'data-block="OUT11" data-weight="?"' in svg
    kept = float(re.search(r'class="kept" data-block="OUT03" data-kept="([^"]+)"', svg).group(1))
    assert kept == pytest.approx(expected["OUT03"] * 0.25, rel=1e-4)
    assert _norm(svg, "IN02") is None                       # no module there: a grey stub
    # cached per file version: a rewritten file is inspected again
    first = block_sliders.block_norms_of(path)
    assert block_sliders.block_norms_of(path) is first


def test_preview_bad_requests(tmp_path):
    from lora_studio_webui import block_sliders
    lib = _Lib({"broken": tmp_path / "broken.safetensors"})
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    assert block_sliders.preview_html("", lib) == ""
    assert block_sliders.preview_html("{", lib) == ""
    assert "is not in the LoRA folders" in block_sliders.preview_html('{"name": "nosuch", "values": []}', lib)
    out = block_sliders.preview_html('{"name": "broken", "values": []}', lib)
    assert out.startswith('<p class="lora-studio-problem">⚠') and "Traceback" not in out
