"""The Presets tab's "LoRA blocks and tag" panel: a LoRA's weight norm per block with a preset's weights
overlaid, and the `<lora:NAME:W:PRESET>` tag to copy."""

from __future__ import annotations

import re
from pathlib import Path

from lib_lora.blocks import FORMATS, expand
from lib_lora.errors import LoraStudioError
from lib_lora.syntax import short_tag
from lib_lora.ui import lora_tab

_NUMBER_RE = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$")


def make_tag(lora_name: str, weight, preset: str) -> str:
    """`<lora:NAME:W:PRESET>`; NAME is the file name without folder and extension (as the WebUI uses)."""
    if not lora_name:
        raise LoraStudioError("Pick a LoRA file first.")
    stem = Path(lora_name).stem
    return short_tag(stem, round(float(weight), 4), preset)  # rounded: the slider's float noise (0.30000000000000004)


def tag_callback(lora_name, weight, preset):
    try:
        return make_tag(lora_name, weight, preset), ""
    except LoraStudioError as exc:
        return "", f"⚠ {exc}"


def preset_weights(ctx, preset: str, arch: str | None):
    """26 slot weights of a preset as the LoRA's arch resolves it (R/U/X letters → None), or None."""
    store = ctx.presets
    if store is None or not preset:
        return None
    return token_weights(store.get(preset, arch if arch in ("sd1", "sd2", "sdxl") else None))


def token_weights(vals):
    """26 slot weights of a 12/17/20/26-token block list (letters → None, unlisted slots 0), or None."""
    if not vals or len(vals) not in FORMATS:
        return None
    nums = [float(x) if _NUMBER_RE.match(x) else 0.0 for x in vals]
    vec, _listed = expand(nums)
    letters = {slot for slot, x in zip(FORMATS[len(vals)], vals) if not _NUMBER_RE.match(x)}
    return [None if i in letters else vec[i] for i in range(26)]


def lora_chart(ctx, lora_name: str, preset: str):
    """(bar chart html, summary) for the picked LoRA with the chosen preset's weights overlaid."""
    if not lora_name:
        return "", ""
    try:
        report = lora_tab.inspect_lora(ctx, lora_name)
    except LoraStudioError as exc:
        return "", f"⚠ {exc}"
    weights = preset_weights(ctx, preset, report.get("arch"))
    title = f"{Path(lora_name).stem}: weight norm per block" + (f", preset {preset}" if preset else "")
    return (lora_tab.render_bars(lora_tab.block_norms(report), weights, title, arch=report.get("arch")),
            lora_tab.summary_markdown(lora_name, report))
