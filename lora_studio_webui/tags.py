"""Text-level handling of `<lora:…>` / `<lyco:…>` tags: split like A1111 does, find and rewrite items.

Used where the prompt *text* must change (X/Y/Z axes, infotext paste): A1111 caches conditioning by tag text,
so changing a LoRA's weight any other way reuses stale text-encoder output (a1111_integration.md §9).
"""

from __future__ import annotations

import re
from typing import Callable

TAG_RE = re.compile(r"<(lora|lyco):([^>]+)>")
BLOCK_KEYS = ("lbw", "w")


def is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except (TypeError, ValueError):
        return False


def is_int(s: str) -> bool:
    try:
        int(s)
        return True
    except (TypeError, ValueError):
        return False


def named_key(item: str) -> str | None:
    """A1111 rule: an item is named iff `split('=', 2)` gives exactly two parts."""
    parts = item.split("=", 2)
    return parts[0].strip() if len(parts) == 2 else None


def _positional_indices(items: list[str]) -> list[int]:
    return [i for i, it in enumerate(items) if named_key(it) is None]


def block_item_index(items: list[str]) -> int | None:
    """Index (in `items`) of the item that carries block weights, following the decision table."""
    for i, it in enumerate(items):
        if named_key(it) in BLOCK_KEYS:
            return i
    pos = _positional_indices(items)
    if len(pos) > 2 and not is_number(items[pos[2]].strip()):
        return pos[2]
    if len(pos) > 3 and is_number(items[pos[2]].strip()) and not is_number(items[pos[3]].strip()):
        return pos[3]
    return None


def set_blocks(items: list[str], value: str) -> list[str]:
    """Put a preset name or a weight list into the tag, as `lbw=` (unambiguous for every parser)."""
    items = list(items)
    i = block_item_index(items)
    if i is not None:
        items.pop(i)
    items = [it for it in items if named_key(it) != "x"] if "X" not in value.upper() else items
    return items + [f"lbw={value}"]


def set_weight(items: list[str], w: float) -> list[str]:
    """Overall multiplier: te and unet both (positional 1, numeric positional 2, named te=/unet=)."""
    items = list(items)
    ws = format_number(w)
    pos = _positional_indices(items)
    if len(pos) < 2:
        items.insert(pos[0] + 1 if pos else 1, ws)
        pos = _positional_indices(items)
    items[pos[1]] = ws
    if len(pos) > 2 and is_number(items[pos[2]].strip()):
        items[pos[2]] = ws
    for i, it in enumerate(items):
        if named_key(it) in ("te", "unet"):
            items[i] = f"{named_key(it)}={ws}"
    return items


def set_named(items: list[str], key: str, value: str) -> list[str]:
    items = [it for it in items if named_key(it) != key]
    return items + [f"{key}={value}"]


def tag_name(items: list[str]) -> str:
    pos = _positional_indices(items)
    return items[pos[0]].strip() if pos else ""


def set_name(items: list[str], name: str) -> list[str]:
    items = list(items)
    pos = _positional_indices(items)
    if pos:
        items[pos[0]] = name
    return items


def format_number(x: float) -> str:
    return f"{float(x):.6g}"


def rewrite(prompt: str, fn: Callable[[list[str]], list[str] | None], select: Callable[[int, list[str]], bool] | None = None) -> tuple[str, int]:
    """Apply `fn` to the items of every selected tag; `fn` returning None removes the tag.
    `select(index, items)` chooses tags (index counts all LoRA tags in the text). Returns (text, count changed)."""
    counter = {"i": -1, "n": 0}

    def sub(m: re.Match) -> str:
        counter["i"] += 1
        items = m.group(2).split(":")
        if select is not None and not select(counter["i"], items):
            return m.group(0)
        counter["n"] += 1
        new = fn(items)
        return "" if new is None else f"<{m.group(1)}:{':'.join(new)}>"

    return TAG_RE.sub(sub, prompt or ""), counter["n"]


def find_all(prompt: str) -> list[list[str]]:
    return [m.group(2).split(":") for m in TAG_RE.finditer(prompt or "")]
