"""Effective Block Analyzer (LBW's): how much each block of a LoRA changes the image.

Each block is rendered at a low value with every other block at 1, and compared with the all-1 image (the
source). The score is LBW's: the percentage of pixel channel values whose absolute difference exceeds a
threshold (default 20 of 255). The grid has one row per block, difference | modified | source, the row
labelled with the block and its score (`swap`: one column per block instead).

Host-agnostic: images in, images out (PIL or HxWxC uint8 arrays); rendering is the caller's (the WebUI
script in lora_studio_webui/xyz_blocks.py, or a benchmark).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from lib_lora.blocks import ARCH_FORMATS, format_names
from lib_lora.errors import LoraStudioError

DEFAULT_THRESHOLD = 20
CELL_LABEL_HEIGHT = 36


def block_names(arch: str | None, full: bool = False) -> list[str]:
    """The blocks an analysis visits: the LoRA format of the family (17 SD1/SD2, 12 SDXL), or the full one
    (26 / 20)."""
    formats = ARCH_FORMATS.get((arch or "sd1").lower(), ARCH_FORMATS["sd1"])
    return format_names(formats[1] if full else formats[0])


def _array(img) -> np.ndarray:
    a = np.asarray(img.convert("RGB") if hasattr(img, "convert") else img)
    if a.dtype != np.uint8 or a.ndim != 3:
        raise LoraStudioError(f"An image to compare is {a.dtype} with shape {a.shape}; expected 8-bit RGB.")
    return a


def difference(source, modified) -> np.ndarray:
    """|modified - source| per channel (uint8); both images must have one size."""
    a, b = _array(source), _array(modified)
    if a.shape != b.shape:
        raise LoraStudioError(f"Images of different sizes ({a.shape[1]}x{a.shape[0]} and {b.shape[1]}x{b.shape[0]}) "
                              "cannot be compared; render every block at one size.")
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).astype(np.uint8)


def score(diff: np.ndarray, threshold: int = DEFAULT_THRESHOLD) -> float:
    """Percentage of channel values of a difference image above `threshold` (LBW's "Diff : N%")."""
    return float(np.count_nonzero(diff > int(threshold)) * 100.0 / diff.size)


@dataclass
class BlockScore:
    block: str
    score: float
    diff: np.ndarray
    modified: np.ndarray


@dataclass
class Analysis:
    source: np.ndarray
    scores: list[BlockScore] = field(default_factory=list)
    low: float | None = None

    def ranked(self) -> list[BlockScore]:
        """Blocks from the most effective to the least."""
        return sorted(self.scores, key=lambda s: -s.score)


def analyze(source, modified: Sequence, blocks: Sequence[str], threshold: int = DEFAULT_THRESHOLD,
            white: bool = False, low: float | None = None) -> Analysis:
    """Scores and difference images of one image per block against the source. `white`: the difference
    shown on white (inverted) instead of black."""
    if len(modified) != len(blocks):
        raise LoraStudioError(f"{len(modified)} images for {len(blocks)} blocks; render one image per block.")
    src = _array(source)
    out = Analysis(src, low=low)
    for name, img in zip(blocks, modified):
        d = difference(src, img)
        s = score(d, threshold)
        out.scores.append(BlockScore(name, s, 255 - d if white else d, _array(img)))
    return out


def label(block: BlockScore) -> str:
    return f"{block.block}\nDiff : {round(block.score, 3)}%"


def grid(analysis: Analysis, swap: bool = False):
    """The PIL grid: per block difference | modified | source with the score in the row label
    (`swap`: blocks as columns)."""
    from PIL import Image, ImageDraw

    h, w = analysis.source.shape[:2]
    cells = [[s.diff, s.modified, analysis.source] for s in analysis.scores]
    heads = ["diff", "modified" if analysis.low is None else f"at {analysis.low:g}", "source"]
    labels = [label(s) for s in analysis.scores]
    if swap:
        cells = [list(col) for col in zip(*cells)] if cells else []
        heads, labels = labels, heads
    rows, cols = len(cells), len(heads)
    margin, top = 140, CELL_LABEL_HEIGHT
    img = Image.new("RGB", (margin + cols * w, top + rows * h), "white")
    draw = ImageDraw.Draw(img)
    for c, text in enumerate(heads):
        draw.multiline_text((margin + c * w + 4, 2), text, fill="black")
    for r, row in enumerate(cells):
        draw.multiline_text((4, top + r * h + 4), labels[r], fill="black")
        for c, cell in enumerate(row):
            img.paste(Image.fromarray(cell), (margin + c * w, top + r * h))
    return img
