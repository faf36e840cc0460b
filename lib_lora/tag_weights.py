"""A parsed tag's block weights and elemental entries turned into numbers: `resolve_blocks(tag, presets, arch,
seed) -> ResolvedBlocks` (a list or a preset, R/U drawn from a seed, X from `x=`, LBW's XYZ/ZYX markers, reported),
`resolve_elements` and the elemental entry grammar `parse_element_entries` (tags and preset files).  The tag text
itself is `syntax.py`'s; letters and presets: docs/spec/blocks.md §7.

Nothing here raises on user input: problems become `errors` (that LoRA is skipped) or `warnings` (applied
anyway), each starting with the LoRA name in backticks.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Sequence

from .blocks import ARCH_FORMATS, ElementEntry, block_ids_problem, expand, x_offset
from .syntax import (COMPLEMENT, INLINE_FIELD_SEP, VARIED, LoraTag, _list_problem, _shown, _why, format_number,
                     is_block_list, parse_number)

ELEMENTS_DROPPED = " (the LoRA is applied without elemental weights)"


@dataclass
class ResolvedBlocks:
    vector: list[float] | None = None  # 26 slots; None = no block weights (all 1)
    count: int | None = None           # format used (12/17/20/26)
    values: list[float] | None = None  # the list as given, letters replaced by their values
    source: str | None = None          # "preset NAME" or "list"
    randomised: bool = False           # R or U was drawn
    listed: list[bool] | None = None   # slots the format lists (for blocks.unlisted_warning)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    elements: "ResolvedElements | None" = None  # lbwe=, resolved alongside (None: the tag has none)


@dataclass
class ResolvedElements:
    """The tag's elemental entries.  `entries` None after a problem (one warning; the LoRA is applied without
    elemental weights).  `text`: the entries in the inline tag form (infotext, a pasted prompt)."""
    entries: list[ElementEntry] | None = None
    text: str | None = None
    source: str | None = None          # "preset NAME" or "inline"
    problem: str | None = None


def complement_tokens(tokens: Sequence[str]) -> list[str]:
    """LBW's ZYX: each number w becomes 1 - w (shortest exact text, float noise rounded away); letters kept."""
    out = []
    for t in tokens:
        v = parse_number(t)
        out.append(t if v is None else format_number(round(1.0 - v, 9)))
    return out


def resolve_blocks(tag: LoraTag, presets, arch: str | None = None, seed: int = 0) -> ResolvedBlocks:
    """Turn `tag.blocks` into a 26-slot vector.  R/U come from random.Random(seed) (reproducible);
    X is `tag.x`.  `presets` is a PresetStore (or None).  `arch` picks SDXL `_XL` preset variants.
    The tag's elemental entries (`lbwe=`) are resolved too (`res.elements`; a problem is one warning)."""
    res = _resolve_vector(tag, presets, arch, seed)
    if tag.elements is not None:
        res.elements = resolve_elements(tag, presets)
        if res.elements.problem:
            res.warnings.append(res.elements.problem + ELEMENTS_DROPPED)
    return res


def _resolve_vector(tag: LoraTag, presets, arch: str | None, seed: int) -> ResolvedBlocks:
    res = ResolvedBlocks()
    label = _shown(tag.name) if tag.name else "?"
    if tag.blocks is None:
        return res
    marker = _marker_tokens(tag, presets, arch, res, label)
    if marker is not None:
        if not marker:          # XYZ without a preset of that name: all 1
            return res
        tokens = marker
        if res.errors:
            return res
    elif is_block_list(tag.blocks):
        tokens = [t.strip() for t in tag.blocks.split(",")]
        res.source = "list"
    else:
        hit = presets.lookup(tag.blocks, arch) if presets is not None else None
        if hit is None:
            close = presets.close_matches(tag.blocks) if presets is not None else []
            near = f" (close: {', '.join(close)})" if close else ""
            if tag.blocks == COMPLEMENT:
                near += f" ({COMPLEMENT} complements another LoRA tag's block weights: the prompt has no other)"
            # same rule as a wrong weight count: the LoRA is skipped (all 1 would silently apply what the
            # user meant to restrict)
            res.errors.append(f"`{label}`: unknown preset '{_shown(tag.blocks)}'{near}; use a preset name from the "
                              f"Presets tab or a list of 12/17/20/26 weights")
            return res
        if hit.note:
            res.warnings.append(f"`{label}`: {hit.note}")
        tokens, res.source = hit.tokens, f"preset {hit.name}"
    problem = _list_problem(label, tokens)
    if problem:
        res.errors.append(problem)
        return res
    rng = random.Random(seed)
    values: list[float] = []
    for t in tokens:
        if t == "R":
            values.append(round(rng.random(), 3))
            res.randomised = True
        elif t == "U":
            values.append(round(rng.uniform(-0.5, 1.5), 3))
            res.randomised = True
        else:
            off = x_offset(t)
            # X+n: round away float noise (0.1+0.2) so infotext stays readable
            if off is None:
                values.append(float(t))
            else:
                values.append(tag.x if off == 0 else round(tag.x + off, 9))
    res.values, res.count = values, len(values)
    res.vector, res.listed = expand(values, label)
    return res


def _marker_tokens(tag: LoraTag, presets, arch: str | None, res: ResolvedBlocks, label: str) -> list[str] | None:
    """Tokens for the X/Y/Z markers: None = not a marker (ordinary resolution); [] = all 1 (XYZ with no preset
    of that name). A problem goes to res.errors (the LoRA is skipped, as for an unknown preset)."""
    def user_preset():
        return presets.lookup(tag.blocks, arch) if presets is not None else None

    if tag.blocks == VARIED:
        if user_preset() is not None:
            return None
        res.source = f"{VARIED} (all 1)"
        return []
    if tag.blocks != COMPLEMENT or tag.complement_of is None:
        return None
    name, blocks = tag.complement_of
    other = _shown(name) if name else "?"
    res.source = f"{COMPLEMENT} of {other}"
    if blocks is None or blocks == COMPLEMENT or (blocks == VARIED and (presets is None
                                                                         or presets.lookup(VARIED, arch) is None)):
        small = ARCH_FORMATS.get((arch or "").lower(), (17,))[0]
        return ["0"] * small       # the other LoRA at all 1: this one at 0 everywhere
    if is_block_list(blocks):
        tokens = [t.strip() for t in blocks.split(",")]
    else:
        hit = presets.lookup(blocks, arch) if presets is not None else None
        if hit is None:
            res.errors.append(f"`{label}`: {COMPLEMENT} complements `{other}`, whose preset '{_shown(blocks)}' is "
                              f"unknown; fix that preset name")
            return ["0"]
        tokens = hit.tokens
    return complement_tokens(tokens)


def parse_element_entries(text: str, sep: str = ":") -> tuple[list[ElementEntry], str, str | None]:
    """LBW's elemental entries `blocks:elements:ratio` (fields cut at `sep`), separated by ',' or line breaks
    → (entries, the entries in the inline tag form, problem or None).  Blocks: space-separated IDs and A-B
    ranges; elements: space-separated substrings of the layer name; either may start with NOT or be empty
    (every module).  Never raises."""
    entries: list[ElementEntry] = []
    written: list[str] = []
    parts = [p.strip() for p in text.replace("\n", ",").split(",")]
    parts = [p for p in parts if p]
    if not parts:
        return [], "", "no entries (expected blocks:elements:ratio, e.g. IN05-OUT05:attn:0.5)"
    for i, part in enumerate(parts, 1):
        fields = [f.strip() for f in part.split(sep)]
        where = f"entry {i} '{_shown(part)}'"
        if len(fields) != 3:
            return [], "", (f"{where} has {len(fields)} field(s); expected blocks{sep}elements{sep}ratio "
                            f"(e.g. IN05-OUT05{sep}attn{sep}0.5)")
        blocks, neg, problem = block_ids_problem(fields[0])
        if problem:
            return [], "", f"{where}: {problem}"
        words = fields[1].split()
        eneg = bool(words) and words[0] == "NOT"
        ratio = parse_number(fields[2])
        if ratio is None:
            return [], "", f"{where}: ratio '{_shown(fields[2])}' {_why(fields[2])}"
        entries.append(ElementEntry(blocks, neg, tuple(words[1:] if eneg else words), eneg, ratio))
        written.append(INLINE_FIELD_SEP.join((" ".join(fields[0].split()), " ".join(words), format_number(ratio))))
    return entries, ",".join(written), None


def resolve_elements(tag: LoraTag, presets) -> ResolvedElements:
    """`tag.elements` → entries: inline (contains ';') or a name in the elemental presets (`presets.elemental`)."""
    label = _shown(tag.name) if tag.name else "?"
    value = (tag.elements or "").strip()
    res = ResolvedElements()
    if INLINE_FIELD_SEP in value:
        text, sep, res.source = value, INLINE_FIELD_SEP, "inline"
    else:
        store = getattr(presets, "elemental", None)
        hit = store.lookup(value) if store is not None else None
        if hit is None:
            close = store.close_matches(value) if store is not None else []
            near = f" (close: {', '.join(close)})" if close else ""
            res.problem = (f"`{label}`: unknown elemental preset '{_shown(value)}'{near}; use a name from the "
                           f"elemental presets or inline entries blocks;elements;ratio")
            return res
        text, sep, res.source = ",".join(hit.tokens), ":", f"preset {hit.name}"
    entries, written, problem = parse_element_entries(text, sep)
    if problem:
        res.problem = f"`{label}`: lbwe={_shown(value)}: {problem}"
        return res
    res.entries, res.text = entries, written
    return res
