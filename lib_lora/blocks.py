"""Block taxonomy (docs/spec/blocks.md): the 26-slot vector, the 12/17/20/26 formats, layer → block.

Slots: 0 BASE (text encoders), 1-12 IN00-IN11, 13 M00, 14-25 OUT00-OUT11.  A weight list's format is
decided by its length only; `expand` turns it into 26 slots with every unlisted slot at 0 (LBW behaviour).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from .arch import ARCHS, LAYER_ROOTS, UNET, is_te_layer, label
from .errors import SyntaxProblem

# 0 BASE, 1-12 IN00-IN11, 13 M00, 14-25 OUT00-OUT11
BLOCK_NAMES = ["BASE"] + [f"IN{i:02d}" for i in range(12)] + ["M00"] + [f"OUT{i:02d}" for i in range(12)]
SLOT = {name: i for i, name in enumerate(BLOCK_NAMES)}
SLOT["MID"] = SLOT["M00"]


def _slots(names: str) -> tuple[int, ...]:
    return tuple(SLOT[n] for n in names.split())


# Format = ordered block list, decided by the count only (docs/spec/blocks.md §2.2).
FORMATS: dict[int, tuple[int, ...]] = {
    17: _slots("BASE IN01 IN02 IN04 IN05 IN07 IN08 M00 OUT03 OUT04 OUT05 OUT06 OUT07 OUT08 OUT09 OUT10 OUT11"),
    26: tuple(range(26)),
    12: _slots("BASE IN04 IN05 IN07 IN08 M00 OUT00 OUT01 OUT02 OUT03 OUT04 OUT05"),
    20: _slots("BASE " + " ".join(f"IN{i:02d}" for i in range(9)) + " M00 " + " ".join(f"OUT{i:02d}" for i in range(9))),
}
FORMAT_LABELS = {12: "SDXL LoRA", 17: "SD1/SD2 LoRA", 20: "SDXL full", 26: "SD1/SD2 full"}
ACCEPTED_COUNTS = (12, 17, 20, 26)
# Formats made for each LoRA family: (attention-only, full).
ARCH_FORMATS = {"sd1": (17, 26), "sd2": (17, 26), "sdxl": (12, 20)}
FLUX_COUNT = 61

_BLOCK_RE = re.compile(r"(input_blocks|output_blocks)\.(\d+)\.")


def slot_of_layer(layer: str) -> int | None:
    """Slot of a canonical layer name; None for U-Net layers outside the table (time_embed, label_emb, out)."""
    if is_te_layer(layer):
        return 0
    if not layer.startswith(UNET):
        return None
    rest = layer[len(UNET):]
    if rest.startswith("middle_block."):
        return SLOT["M00"]
    m = _BLOCK_RE.match(rest)
    if m:
        n = int(m.group(2))
        return (1 if m.group(1) == "input_blocks" else 14) + n
    return None


def count_message(count: int, name: str | None = None) -> str:
    """The one-line wrong-count message of docs/spec/prompt_syntax.md §5."""
    head = f"`{name}`: " if name else ""
    msg = (f"{head}{count} block weights given; accepted counts are 12 (SDXL LoRA), 17 (SD1/SD2 LoRA), "
           f"20 (SDXL full), 26 (SD1/SD2 full)")
    if count == FLUX_COUNT:
        msg += ". Flux is not supported"
    return msg


def expand(values: Sequence[float], name: str | None = None) -> tuple[list[float], list[bool]]:
    """Expand a 12/17/20/26-value list to (26 slot weights, which slots the format lists).

    Unlisted slots get 0 (LBW compatibility, docs/spec/blocks.md §2.3).  Any other count raises SyntaxProblem;
    `name` (the LoRA) prefixes the message when given.
    """
    order = FORMATS.get(len(values))
    if order is None:
        raise SyntaxProblem(count_message(len(values), name))
    vec = [0.0] * 26
    listed = [False] * 26
    for slot, v in zip(order, values):
        vec[slot] = float(v)
        listed[slot] = True
    return vec, listed


def compress(vec26: Sequence[float], count: int) -> list[float]:
    """Inverse of `expand` for the listed slots: the `count`-value list a 26-slot vector reads as (the merge
    recipe records block weights this way)."""
    if count not in FORMATS:
        raise SyntaxProblem(count_message(count))
    return [float(vec26[s]) for s in FORMATS[count]]


def format_names(count: int) -> list[str]:
    """Block names of a format, in order (e.g. for UI sliders and messages)."""
    return [BLOCK_NAMES[s] for s in FORMATS[count]]


def unlisted_warning(lora_name: str, lora_arch: str | None, count: int, used_slots: Iterable[int | None],
                     listed: Sequence[bool]) -> str | None:
    """docs/spec/blocks.md §2.5: warn when the LoRA has modules in slots the format did not list (so they became 0).

    `used_slots` are the slots of the LoRA's modules (None = outside the table, ignored); `listed` comes
    from `expand`.  Returns None when nothing was silently zeroed.
    """
    hit = sorted({s for s in used_slots if s is not None and 0 <= s < 26 and not listed[s]})
    if not hit:
        return None
    arch = (lora_arch or "").lower()
    who = f"LoRA '{lora_name}'" + (f" ({label(arch)})" if arch in ARCHS else "")
    blocks = ", ".join(BLOCK_NAMES[s] for s in hit)
    msg = (f"{who} has weights in {blocks}, which the {count}-value format does not list; "
           f"they were set to 0.")
    if arch in ARCH_FORMATS:
        small, full = ARCH_FORMATS[arch]
        fam = "SDXL" if arch == "sdxl" else "SD1/SD2"
        used = {s for s in used_slots if s is not None}
        if used <= set(FORMATS[small]):
            msg += f" Use a {small}- or {full}-value list for {fam} LoRAs."
        else:  # the LoRA has conv/ResBlock-only blocks the short format cannot address
            msg += f" Use a {full}-value list for this {fam} LoRA (it has weights outside the {small}-value blocks)."
    else:
        msg += " Use a 26-value list, which lists every block."
    return msg


_CK_UNET = re.compile(r"model\.diffusion_model\.(input_blocks|output_blocks)\.(\d+)\.")


def checkpoint_key_slot(key: str, arch: str | None) -> int | None:
    """Slot of a checkpoint key for block-weighted merges (docs/spec/blocks.md §4); None = not merged (take from A).

    time_embed/label_emb → IN00, `out.` → last OUT block (OUT11 SD1/SD2, OUT08 SDXL), text encoders,
    VAE and any other key containing "model" → BASE; keys without "model" (betas, alphas_cumprod...) → None.
    """
    m = _CK_UNET.match(key)
    if m:
        return (1 if m.group(1) == "input_blocks" else 14) + int(m.group(2))
    if key.startswith(UNET):
        rest = key[len(UNET):]
        if rest.startswith("middle_block."):
            return SLOT["M00"]
        if rest.startswith(("time_embed.", "label_emb.")):
            return SLOT["IN00"]
        if rest.startswith("out."):
            return SLOT["OUT08"] if (arch or "").lower() == "sdxl" else SLOT["OUT11"]
        return 0
    if "model" in key:
        return 0
    return None


# Weight tokens in lists and presets: a finite number, or R / U / X / X+n / X-n (docs/spec/blocks.md §7.3).
_X_RE = re.compile(r"^X(?:\s*([+-])\s*(\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)?$")


def weight_token_problem(token: str) -> str | None:
    """None when `token` is a valid weight token, else a short reason."""
    t = token.strip()
    if not t:
        return "empty value"
    if t in ("R", "U") or _X_RE.match(t):
        return None
    try:
        v = float(t)
    except ValueError:
        return f"'{t}' is not a number nor R, U, X, X+n, X-n"
    if v != v or v in (float("inf"), float("-inf")):
        return f"'{t}' is not a finite number"
    return None


def x_offset(token: str) -> float | None:
    """Offset of an X token (`X` → 0.0, `X-0.3` → -0.3); None when the token is not an X token."""
    t = token.strip()
    m = _X_RE.match(t)
    if not m:
        return None
    if m.group(1) is None:
        return 0.0
    return float(t[1:].replace(" ", ""))


# ---- elemental weights (LBW's `lbwe=`): entries `blocks:elements:ratio` (docs/spec/prompt_syntax.md §7) --------

@dataclass(frozen=True)
class ElementEntry:
    """One elemental entry.  `blocks` None = every module (empty field); `elements` empty = every layer.
    A matching entry's ratio replaces the module's block weight; the last matching entry wins."""
    blocks: frozenset | None
    blocks_not: bool
    elements: tuple
    elements_not: bool
    ratio: float

    def matches(self, layer: str, slot: int | None) -> bool:
        if self.blocks is not None:
            if (slot in self.blocks) == self.blocks_not:
                return False
        if self.elements:
            # matched below the model root: "ff" must not match "model.diffusion_model."
            rest = next((layer[len(r):] for r in LAYER_ROOTS if layer.startswith(r)), layer)
            under = rest.replace(".", "_")  # LBW users write kohya-style names (attn2_to_out)
            hit = any(e in rest or e in under for e in self.elements)
            if hit == self.elements_not:
                return False
        return True


def block_ids_problem(field: str) -> tuple[frozenset | None, bool, str | None]:
    """Block field of an entry → (slots or None for all, NOT given, problem).  Space-separated IDs (`IN05`,
    `M00`/`MID`, `BASE`) and ranges `A-B` over BASE, IN00…IN11, M00, OUT00…OUT11 (either order); a leading
    `NOT` inverts the set."""
    words = field.split()
    neg = bool(words) and words[0].upper() == "NOT"
    if neg:
        words = words[1:]
    if not words:
        return (frozenset() if neg else None), neg, None
    slots: set[int] = set()
    for w in words:
        ends = w.upper().split("-")
        if len(ends) > 2 or any(e not in SLOT for e in ends):
            return None, neg, (f"block '{w}' is not a block ID or range A-B "
                               f"(IDs: BASE, IN00-IN11, M00, OUT00-OUT11)")
        ids = sorted(SLOT[e] for e in ends)
        a, b = ids[0], ids[-1]
        slots.update(range(a, b + 1))
    return frozenset(slots), neg, None


def element_weight(entries: Sequence[ElementEntry], layer: str, slot: int | None) -> float | None:
    """The block weight the entries give a module (the last matching entry's ratio), or None when none
    matches (the module keeps its block weight)."""
    w = None
    for e in entries:
        if e.matches(layer, slot):
            w = e.ratio
    return w


def element_weights(entries: Sequence[ElementEntry] | None, modules: Iterable) -> dict[str, float] | None:
    """canonical layer → replacing block weight, for the modules (objects with `.layer`, `.slot`) that an entry
    matches; computed once per activation.  None when there are no entries."""
    if not entries:
        return None
    out: dict[str, float] = {}
    for m in modules:
        layer = getattr(m, "layer", None)
        if layer is None or layer in out:
            continue
        w = element_weight(entries, layer, getattr(m, "slot", None))
        if w is not None:
            out[layer] = w
    return out
