"""Block taxonomy (blocks.md): the 26-slot vector, the 12/17/20/26 formats, layer → block."""

from __future__ import annotations

import re

# 0 BASE, 1-12 IN00-IN11, 13 M00, 14-25 OUT00-OUT11
BLOCK_NAMES = ["BASE"] + [f"IN{i:02d}" for i in range(12)] + ["M00"] + [f"OUT{i:02d}" for i in range(12)]
SLOT = {name: i for i, name in enumerate(BLOCK_NAMES)}
SLOT["MID"] = SLOT["M00"]


def _slots(names: str) -> tuple[int, ...]:
    return tuple(SLOT[n] for n in names.split())


# Format = ordered block list, decided by the count only (blocks.md §2).
FORMATS: dict[int, tuple[int, ...]] = {
    17: _slots("BASE IN01 IN02 IN04 IN05 IN07 IN08 M00 OUT03 OUT04 OUT05 OUT06 OUT07 OUT08 OUT09 OUT10 OUT11"),
    26: tuple(range(26)),
    12: _slots("BASE IN04 IN05 IN07 IN08 M00 OUT00 OUT01 OUT02 OUT03 OUT04 OUT05"),
    20: _slots("BASE " + " ".join(f"IN{i:02d}" for i in range(9)) + " M00 " + " ".join(f"OUT{i:02d}" for i in range(9))),
}
FORMAT_LABELS = {12: "SDXL LoRA", 17: "SD1/SD2 LoRA", 20: "SDXL full", 26: "SD1/SD2 full"}

_UNET = "model.diffusion_model."
_TE_PREFIXES = ("cond_stage_model.", "conditioner.embedders.")
_BLOCK_RE = re.compile(r"(input_blocks|output_blocks)\.(\d+)\.")


def slot_of_layer(layer: str) -> int | None:
    """Slot of a canonical layer name; None for U-Net layers outside the table (time_embed, label_emb, out)."""
    if layer.startswith(_TE_PREFIXES):
        return 0
    if not layer.startswith(_UNET):
        return None
    rest = layer[len(_UNET):]
    if rest.startswith("middle_block."):
        return SLOT["M00"]
    m = _BLOCK_RE.match(rest)
    if m:
        n = int(m.group(2))
        return (1 if m.group(1) == "input_blocks" else 14) + n
    return None
