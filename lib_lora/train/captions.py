"""Captions as sd-scripts reads them: the caption file beside an image, tag statistics, and the per-fetch
caption steps (prefix/suffix, dropout, keep_tokens, warm-up, shuffle, tag dropout).
"""

from __future__ import annotations

import math
import os
import random
from collections import Counter
from dataclasses import dataclass

from lib_lora.train.config import SubsetSpec


@dataclass
class Caption:
    text: str | None          # None: no caption file
    path: str | None = None
    problem: str | None = None


def read_caption(image_path: str, extension: str) -> Caption:
    """The first line of `<stem><ext>` (or of the face-crop name with the last 4 '_' tokens removed)."""
    base = os.path.splitext(image_path)[0]
    tokens = base.split("_")
    candidates = [base + extension]
    if len(tokens) >= 5:
        candidates.append("_".join(tokens[:-4]) + extension)
    for cap in candidates:
        if not os.path.isfile(cap):
            continue
        try:
            with open(cap, "rb") as f:
                raw = f.read(1 << 20)
        except OSError as exc:
            return Caption(None, cap, f"cannot read caption '{cap}': {exc.strerror or exc}")
        if not raw:
            return Caption("", cap, f"caption file '{cap}' is empty (sd-scripts stops on it); write tags into it "
                                    "or delete it to use the concept name")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return Caption(None, cap, f"caption file '{cap}' is not UTF-8; save it as UTF-8")
        first = text.lstrip("\ufeff").splitlines()[0].strip() if text.strip() else ""
        if not first:
            return Caption("", cap, f"caption file '{cap}' has an empty first line; write tags on it or delete it "
                                    "to use the concept name")
        return Caption(first, cap)
    return Caption(None)


def tag_counts(captions) -> dict[str, int]:
    """sd-scripts' tag statistics: split on ',', strip, lower-case, count."""
    counts: Counter = Counter()
    for c in captions:
        for tag in c.split(","):
            tag = tag.strip()
            if tag:
                counts[tag.lower()] += 1
    return dict(counts)

# ---- captions per sample ---------------------------------------------------------------------------------------

def process_caption(caption: str, sub: SubsetSpec, rng: random.Random, epoch: int, step: int = 0,
                    max_steps: int = 0) -> str:
    """sd-scripts' per-fetch caption steps: prefix/suffix, whole-caption dropout (rate, or every N-th epoch),
    then (when shuffling, tag dropout or token warm-up are on) fixed tags by keep_tokens or
    keep_tokens_separator, token warm-up, shuffle, tag dropout; finally secondary_separator."""
    if sub.caption_prefix:
        caption = sub.caption_prefix + " " + caption
    if sub.caption_suffix:
        caption = caption + " " + sub.caption_suffix
    drop_epoch = sub.caption_dropout_every_n_epochs > 0 and epoch % sub.caption_dropout_every_n_epochs == 0
    if drop_epoch or (sub.caption_dropout_rate > 0 and rng.random() < sub.caption_dropout_rate):
        return ""
    warmup = sub.token_warmup_step
    if warmup and warmup < 1:
        warmup = math.floor(warmup * max_steps)
    if sub.shuffle_caption or warmup > 0 or sub.caption_tag_dropout_rate > 0:
        sep = sub.caption_separator
        fixed_suffix: list[str] = []
        if sub.keep_tokens_separator and sub.keep_tokens_separator in caption:
            head, _, rest = caption.partition(sub.keep_tokens_separator)
            if sub.keep_tokens_separator in rest:
                rest, _, tail = rest.partition(sub.keep_tokens_separator)
                fixed_suffix = [t.strip() for t in tail.split(sep) if t.strip()]
            fixed = [t.strip() for t in head.split(sep) if t.strip()]
            flex = [t.strip() for t in rest.split(sep) if t.strip()]
        else:
            tags = [t.strip() for t in caption.split(sep) if t.strip()]
            fixed, flex = tags[:sub.keep_tokens], tags[sub.keep_tokens:]
        if warmup > 0 and step < warmup:
            keep = math.floor(step * (len(flex) - sub.token_warmup_min) / warmup) + sub.token_warmup_min
            flex = flex[:keep]
        if sub.shuffle_caption:
            rng.shuffle(flex)
        if sub.caption_tag_dropout_rate > 0:
            flex = [t for t in flex if rng.random() >= sub.caption_tag_dropout_rate]
        caption = ", ".join(fixed + flex + fixed_suffix)
    if sub.secondary_separator:
        caption = caption.replace(sub.secondary_separator, sub.caption_separator)
    return caption

