"""Effective Block Analyzer core: block lists, LBW's score, the grid."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lib_lora import analyzer
from lib_lora.errors import LoraStudioError


def test_block_lists_per_family():
    assert len(analyzer.block_names("sd1")) == 17 and analyzer.block_names("sd1")[:3] == ["BASE", "IN01", "IN02"]
    assert len(analyzer.block_names("sd1", full=True)) == 26
    assert analyzer.block_names("sdxl") == ["BASE", "IN04", "IN05", "IN07", "IN08", "M00", "OUT00", "OUT01", "OUT02",
                                            "OUT03", "OUT04", "OUT05"]
    assert len(analyzer.block_names("sdxl", full=True)) == 20


def test_score_is_the_share_of_channel_values_over_the_threshold():
    src = np.zeros((4, 5, 3), np.uint8)
    mod = src.copy()
    mod[0, :, 0] = 21          # 5 of 60 values over 20
    mod[1, :, 1] = 20          # equal to the threshold: not counted (LBW's binary threshold is '>')
    d = analyzer.difference(src, mod)
    assert analyzer.score(d, 20) == pytest.approx(5 * 100 / 60)
    assert analyzer.score(analyzer.difference(mod, src), 20) == pytest.approx(5 * 100 / 60)   # absolute
    assert analyzer.score(d, 0) == pytest.approx(10 * 100 / 60)


def test_analyze_ranks_and_grid_layout():
    src = Image.new("RGB", (8, 6), (100, 100, 100))
    a = Image.new("RGB", (8, 6), (100, 100, 100))
    b = Image.new("RGB", (8, 6), (200, 100, 100))
    res = analyzer.analyze(src, [a, b], ["IN01", "OUT03"], low=0.5)
    assert [(s.block, round(s.score, 3)) for s in res.scores] == [("IN01", 0), ("OUT03", 33.333)]
    assert res.ranked()[0].block == "OUT03"
    g = analyzer.grid(res)
    assert g.size == (140 + 3 * 8, analyzer.CELL_LABEL_HEIGHT + 2 * 6)
    top = analyzer.CELL_LABEL_HEIGHT
    assert g.getpixel((140 + 1, top + 6 + 1)) == (100, 0, 0)          # row OUT03: diff on black
    assert g.getpixel((140 + 8 + 1, top + 6 + 1)) == (200, 100, 100)  # modified
    assert g.getpixel((140 + 16 + 1, top + 1)) == (100, 100, 100)     # source
    assert analyzer.label(res.scores[1]) == "OUT03\nDiff : 33.333%"
    white = analyzer.analyze(src, [b], ["OUT03"], white=True)
    assert tuple(white.scores[0].diff[0, 0]) == (155, 255, 255)
    swapped = analyzer.grid(res, swap=True)
    assert swapped.size == (140 + 2 * 8, analyzer.CELL_LABEL_HEIGHT + 3 * 6)


def test_bad_inputs_are_one_line_errors():
    src = Image.new("RGB", (8, 6))
    with pytest.raises(LoraStudioError, match="different sizes"):
        analyzer.analyze(src, [Image.new("RGB", (8, 7))], ["IN01"])
    with pytest.raises(LoraStudioError, match="1 images for 2 blocks"):
        analyzer.analyze(src, [src], ["IN01", "IN02"])
