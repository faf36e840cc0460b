"""The one home of `<lora:...>` / `<lyco:...>` tag text: parsing, writing and editing tags, and the one number
format every weight, multiplier and block value is written in (tags, infotext, X/Y/Z labels, presets).  Grammar:
docs/spec/prompt_syntax.md; letters and presets: docs/spec/blocks.md §7.  A tag's block weights and elemental
entries are turned into numbers by `tag_weights.py`.

Nothing here raises on user input: problems become `tag.errors` (that LoRA is skipped) or `tag.warnings`
(applied anyway).  Messages start with the LoRA name in backticks.

Steps are counted two ways, stated everywhere they appear:
- `start=` / `stop=` / `step=A-B` in a tag are 1-based sampling steps (the first step is step 1);
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from .blocks import FORMATS, count_message, weight_token_problem, x_offset

if TYPE_CHECKING:
    from .tag_weights import ResolvedBlocks

LORA_KINDS = ("lora", "lyco")
_TAG_RE = re.compile(r"<(\w+):([^>]+)>")  # A1111's extra-network regex
_INT_RE = re.compile(r"^[+-]?\d+$")
_STEP_RE = re.compile(r"^(\d+)\s*-\s*(\d+)$")
_NUMERIC_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
# LBW's X/Y/Z markers, as block weights: `XYZ` the tag the block axes vary (the user preset XYZ, else all 1);
# `ZYX` on another tag: 1 - w of that tag's weights, block by block (letters kept), so two LoRAs share the blocks.
VARIED, COMPLEMENT = "XYZ", "ZYX"
KNOWN_KEYS = ("te", "unet", "dyn", "lbw", "w", "lbwe", "start", "stop", "step", "x")
# Inline elemental entries in a tag separate their fields with ";" (the WebUI cuts tag items at every ":");
# preset files use LBW's ":" (docs/spec/prompt_syntax.md §7).
INLINE_FIELD_SEP = ";"
# No real weight, rank or step needs more characters; longer items are refused before int()/float(), which
# keeps Python's int-string digit limit (a ValueError) out of the parser.
MAX_NUMBER_CHARS = 30


@dataclass
class LoraTag:
    name: str = ""
    te: float = 1.0
    unet: float | None = None          # None → same as te
    dyn: int | None = None
    blocks: str | None = None          # preset name or comma list (spaces around values removed)
    x: float = 1.0
    elements: str | None = None        # lbwe=: an elemental preset name or inline entries, as written
    start: int | None = None           # 1-based: U-Net delta on from this step
    stop: int | None = None            # 1-based: U-Net delta off from this step
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    kind: str = "lora"
    text: str = ""                     # the tag as written (parse_prompt only)
    span: tuple[int, int] | None = None
    items: list[str] = field(default_factory=list)      # the raw ':'-separated items (parse_items)
    # which positional item (0 = name) set te / unet / blocks / dyn / x: the edit_* functions change the item
    # the parser read, so tag text is classified by one decision table only
    positions: dict[str, int] = field(default_factory=dict)
    # blocks `ZYX`: (name, blocks as written) of the tag it complements, set by link_complements; None = alone
    complement_of: tuple[str, str | None] | None = None

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def unet_multiplier(self) -> float:
        return self.te if self.unet is None else self.unet

    @property
    def blocks_is_list(self) -> bool:
        return self.blocks is not None and "," in self.blocks


def format_number(v: float) -> str:
    """The one number format: the shortest text float() reads back exactly; integers without '.0'.
    `parse_number(format_number(v)) == v` for every finite float (tested)."""
    v = float(v)
    if v != v or v in (math.inf, -math.inf):
        return str(v)  # refused later by the token check, with a clear message
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


def parse_number(s: str) -> float | None:
    """How tag text reads a number: a finite float, or None (not a number, NaN, ±Inf, or longer than
    MAX_NUMBER_CHARS).  The inverse of format_number."""
    if len(s) > MAX_NUMBER_CHARS:
        return None
    try:
        v = float(s)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _int(s: str) -> int | None:
    return int(s) if len(s) <= MAX_NUMBER_CHARS and _INT_RE.match(s) else None


def _shown(s: str) -> str:
    """An item as quoted in a message: a very long one is cut, with its length."""
    return s if len(s) <= 40 else f"{s[:20]}…({len(s)} characters)"


def _why(s: str) -> str:
    """Why an item is not a number (for messages)."""
    if len(s) > MAX_NUMBER_CHARS:
        return f"is too long for a number (at most {MAX_NUMBER_CHARS} characters)"
    try:
        float(s)
    except ValueError:
        return "is not a number"
    return "is not a finite number"


def _token_problem(t: str) -> str | None:
    """blocks.weight_token_problem, plus the length bound and finite X offsets (`X+1e400`)."""
    if len(t.strip()) > MAX_NUMBER_CHARS:
        return f"'{_shown(t.strip())}' is too long (at most {MAX_NUMBER_CHARS} characters)"
    p = weight_token_problem(t)
    if p is None:
        off = x_offset(t)
        if off is not None and not math.isfinite(off):
            return f"'{t.strip()}' is not a finite number"
    return p


def is_block_list(blocks: str) -> bool:
    """A block list (or one number, however long), not a preset name."""
    return "," in blocks or parse_number(blocks) is not None or bool(_NUMERIC_RE.fullmatch(blocks.strip()))


def _list_problem(label: str, tokens: Sequence[str]) -> str | None:
    for i, t in enumerate(tokens, 1):
        p = _token_problem(t)
        if p:
            return f"`{label}`: block weight {i} {p}"
    if len(tokens) not in FORMATS:
        return count_message(len(tokens), label)
    return None


def _parse_blocks(label: str, value: str, errs: list[str]) -> str | None:
    """A list (contains ',') is validated here; a preset name is checked later by resolve_blocks."""
    if is_block_list(value):  # a lone number is a 1-value list
        tokens = [t.strip() for t in value.split(",")]
        p = _list_problem(label, tokens)
        if p:
            errs.append(p)
        return ",".join(tokens)
    return value


def _parse_dyn(label: str, value: str, warns: list[str]) -> int | None:
    n = _int(value)
    if n is not None and n > 0:
        return n
    warns.append(f"`{label}`: dyn '{_shown(value)}' is not a positive integer"
                 f"{_long_hint(value)}; ignored")
    return None


def _long_hint(value: str) -> str:
    return f" (at most {MAX_NUMBER_CHARS} characters)" if len(value) > MAX_NUMBER_CHARS else ""


def _parse_step(label: str, key: str, value: str, warns: list[str]) -> int | None:
    n = _int(value)
    if n is not None and n >= 1:
        return n
    warns.append(f"`{label}`: {key}={_shown(value)} is not a step number (1 = first step)"
                 f"{_long_hint(value)}; ignored")
    return None


def parse_params(positional: Sequence[str], named: Mapping[str, str], kind: str = "lora") -> LoraTag:
    """Interpret one tag's items (docs/spec/prompt_syntax.md §2.3, §5: decision table, bad input).  Never raises."""
    pos = [str(p).strip() for p in positional]
    nam = {str(k).strip().lower(): str(v).strip() for k, v in named.items()}
    tag = LoraTag(kind=kind)
    tag.name = pos[0] if pos else ""
    label = _shown(tag.name) if tag.name else "?"
    W = tag.warnings
    if not tag.name:
        hint = " (an item with '=' is a key, not a name)" if named and not pos else ""
        tag.errors.append(f"LoRA tag without a name{hint}: write <{kind}:NAME:weight>")
    # errors per field, so that a valid named key can replace a bad positional value
    ferr: dict[str, str] = {}
    blocks_err: list[str] = []
    mode = None  # what position 2 held: "num" or "blocks"
    for i, item in enumerate(pos[1:], 1):
        if not item:
            W.append(f"`{label}`: empty item {i} ignored")
            continue
        num = parse_number(item)
        at = tag.positions
        if i == 1:
            at["te"] = i
            if num is None:
                hint = " (block weights go after the weight: <lora:NAME:1:face>)" if "," in item else ""
                ferr["te"] = f"`{label}`: weight '{_shown(item)}' {_why(item)}{hint}"
            else:
                tag.te = num
        elif i == 2:
            if num is not None:
                tag.unet, mode, at["unet"] = num, "num", i
            else:
                tag.blocks, mode, at["blocks"] = _parse_blocks(label, item, blocks_err), "blocks", i
        elif i == 3 and mode != "blocks":
            if _INT_RE.match(item):
                tag.dyn, at["dyn"] = _parse_dyn(label, item, W), i
            elif num is not None:
                W.append(f"`{label}`: dyn '{_shown(item)}' is not a positive integer; ignored")
            else:
                tag.blocks, at["blocks"] = _parse_blocks(label, item, blocks_err), i
        elif i == 3:
            if num is None:
                # LBW reads an elemental preset name here (its `lbwe=` item 4)
                tag.elements, at["elements"] = item, i
            else:
                tag.x, at["x"] = num, i
        else:
            W.append(f"`{label}`: extra item {i + 1} '{_shown(item)}' ignored")
    # named keys override positional values
    for key in ("te", "unet", "x"):
        if key in nam:
            num = parse_number(nam[key])
            if num is None:
                ferr[key] = f"`{label}`: {key}='{_shown(nam[key])}' {_why(nam[key])}"
            else:
                ferr.pop(key, None)
                setattr(tag, key, num)
    if "dyn" in nam:
        tag.dyn = _parse_dyn(label, nam["dyn"], W)
    lbw_key = "lbw" if "lbw" in nam else "w" if "w" in nam else None
    if "lbw" in nam and "w" in nam:
        W.append(f"`{label}`: both lbw= and w= given; lbw= used")
    if lbw_key:
        if nam[lbw_key]:
            blocks_err = []
            tag.blocks = _parse_blocks(label, nam[lbw_key], blocks_err)
        else:
            W.append(f"`{label}`: {lbw_key}= is empty; ignored")
    if "lbwe" in nam:
        if nam["lbwe"]:
            tag.elements = nam["lbwe"]
        else:
            W.append(f"`{label}`: lbwe= is empty; ignored")
    _parse_schedule(tag, nam, label)
    for key in nam:
        if key not in KNOWN_KEYS:
            W.append(f"`{label}`: unknown key '{_shown(key)}=' ignored")
    if tag.x != 1 and tag.blocks is None:
        W.append(f"`{label}`: x= has no effect without block weights")
    tag.errors.extend(ferr.values())
    tag.errors.extend(blocks_err)
    return tag


def _parse_schedule(tag: LoraTag, nam: Mapping[str, str], label: str) -> None:
    W = tag.warnings
    start = stop = None
    if "step" in nam:
        m = _STEP_RE.match(nam["step"])
        a, b = (_int(m.group(1)), _int(m.group(2))) if m else (None, None)
        if a is not None and b is not None and a >= 1:
            start, stop = a, b
        else:
            W.append(f"`{label}`: step={_shown(nam['step'])} is not A-B with 1-based steps (e.g. step=5-20)"
                     f"{_long_hint(max(m.groups(), key=len)) if m else ''}; ignored")
        if "start" in nam or "stop" in nam:
            W.append(f"`{label}`: step= and start=/stop= both given; start=/stop= used")
    if "start" in nam:
        start = _parse_step(label, "start", nam["start"], W)
    if "stop" in nam:
        stop = _parse_step(label, "stop", nam["stop"], W)
    if start is not None and stop is not None and start >= stop:
        W.append(f"`{label}`: start {start} is not before stop {stop}; both ignored")
        start = stop = None
    tag.start, tag.stop = start, stop


def named_key(item: str) -> str | None:
    """A1111's rule: an item is named iff `split('=', 2)` gives exactly two parts; the key, stripped and
    lower-cased (keys are case-insensitive here), else None (a positional item)."""
    parts = item.split("=", 2)
    return parts[0].strip().lower() if len(parts) == 2 else None


def split_items(args: str) -> tuple[list[str], dict[str, str], list[str]]:
    """A1111's item split: ':' separates items; `split('=', 2)` giving 2 parts → named."""
    positional: list[str] = []
    named: dict[str, str] = {}
    dups: list[str] = []
    for item in args.split(":"):
        key = named_key(item)
        if key is not None:
            if key in named:
                dups.append(key)
            named[key] = item.split("=", 2)[1]
        else:
            positional.append(item)
    return positional, named, dups


def parse_items(items: Sequence[str], kind: str = "lora") -> LoraTag:
    """Parse A1111's raw item list (`ExtraNetworkParams.items`): like parse_params, plus the checks
    only the raw order allows (a first item with '=' is not a name; a key given twice)."""
    items = [str(i) for i in items]
    positional, named, dups = split_items(":".join(items))
    first = items[0] if items else ""
    if named_key(first) is not None:  # A1111 would take the next positional item as the name
        tag = parse_params([""], named, kind=kind)
        tag.errors[:] = [f"LoRA tag whose first item '{first.strip()}' contains '=': the first item must be "
                         f"the LoRA name, e.g. <{kind}:NAME:0.8>"]
        tag.items, tag.positions = items, {}
        return tag
    tag = parse_params(positional, named, kind=kind)
    tag.items = items
    for key in dups:
        tag.warnings.append(f"`{tag.name or '?'}`: {key}= given twice; the last one is used")
    return tag


def parse_prompt(text: str, kinds: Sequence[str] = LORA_KINDS) -> list[LoraTag]:
    """Every `<lora:...>` / `<lyco:...>` tag of a prompt, in order (other extra networks are skipped)."""
    tags: list[LoraTag] = []
    for m in _TAG_RE.finditer(text or ""):
        if m.group(1) not in kinds:
            continue
        tag = parse_items(m.group(2).split(":"), kind=m.group(1))
        tag.text, tag.span = m.group(0), m.span()
        tags.append(tag)
    counts: dict[str, int] = {}
    for tag in tags:
        if tag.name:
            counts[tag.name] = counts.get(tag.name, 0) + 1
            if counts[tag.name] == 2:
                tag.warnings.append(f"`{tag.name}` appears more than once in the prompt; "
                                    f"every occurrence is applied and their effects add")
    return link_complements(tags)


def parse_item_lists(item_lists: Sequence[Sequence[str]]) -> list[LoraTag]:
    """The tags of one prompt from their ':'-separated items (the WebUI's extra-network params), in prompt
    order, with `ZYX` tags linked to the tag they complement."""
    return link_complements([parse_items(items) for items in item_lists])


def varied_index(tags: Sequence[LoraTag]) -> int | None:
    """Which tag the block axes vary and `ZYX` complements: the first tag written `XYZ`, else the first tag
    not written `ZYX`; None when there is none."""
    for want in (lambda t: t.blocks == VARIED, lambda t: t.blocks != COMPLEMENT):
        i = next((i for i, t in enumerate(tags) if want(t)), None)
        if i is not None:
            return i
    return None


def link_complements(tags: list[LoraTag]) -> list[LoraTag]:
    """Point each `ZYX` tag at the tag it complements (varied_index). Returns `tags`."""
    i = varied_index(tags)
    if i is not None:
        for t in tags:
            if t.blocks == COMPLEMENT:
                t.complement_of = (tags[i].name, tags[i].blocks)
    return tags


def rewrite_prompt(text: str, fn: Callable[[LoraTag], str | None]) -> str:
    """Replace each LoRA tag, in order, by fn(tag): new tag text, "" to remove the tag, None to keep it as
    written (infotext paste, X/Y/Z).  Other extra networks (`<hypernet:…>`) are never touched."""
    out, last = [], 0
    for tag in parse_prompt(text):
        a, b = tag.span
        new = fn(tag)
        out.append(text[last:a])
        out.append(tag.text if new is None else new)
        last = b
    out.append(text[last:])
    return "".join(out)


def write_tag(tag: LoraTag, resolved: ResolvedBlocks | None = None) -> str:
    """Canonical named form, defaults omitted: `<lora:name:te=0.8:unet=0.6:lbw=1,0,...>`.

    With `resolved` (and a resolved vector) the block list is written as resolved numbers, so presets,
    R/U and X are frozen for infotext; otherwise `tag.blocks` is written as given.
    """
    items = [tag.name]
    if tag.te != 1:
        items.append(f"te={format_number(tag.te)}")
    if tag.unet is not None and tag.unet != tag.te:
        items.append(f"unet={format_number(tag.unet)}")
    if tag.dyn is not None:
        items.append(f"dyn={tag.dyn}")
    frozen = resolved is not None and resolved.values is not None
    elements = resolved.elements if resolved is not None else None
    if frozen:
        items.append("lbw=" + ",".join(format_number(v) for v in resolved.values))
    elif tag.blocks is not None:
        items.append(f"lbw={tag.blocks}")
    if tag.x != 1 and not frozen:
        items.append(f"x={format_number(tag.x)}")
    if elements is not None and elements.text is not None:
        items.append(f"lbwe={elements.text}")
    elif tag.elements is not None:
        items.append(f"lbwe={tag.elements}")
    if tag.start is not None:
        items.append(f"start={tag.start}")
    if tag.stop is not None:
        items.append(f"stop={tag.stop}")
    return f"<{tag.kind}:{':'.join(items)}>"


def short_tag(name: str, weight: float, blocks: str | None = None, kind: str = "lora") -> str:
    """The short positional form people type and cards insert: `<lora:NAME:W>` or `<lora:NAME:W:BLOCKS>`
    (BLOCKS a preset name or a list; position 2 reads as blocks because it is not a number)."""
    blocks = (blocks or "").strip()
    items = [name, format_number(weight)] + ([blocks] if blocks else [])
    return f"<{kind}:{':'.join(items)}>"




# ---- editing a tag as written (X/Y/Z axes): change the item the parser read, keep every other item -------

def _positional_at(items: Sequence[str]) -> list[int]:
    """Raw item index of each positional item, in order (position 0 = the name)."""
    return [i for i, it in enumerate(items) if named_key(it) is None]


def _written(tag: LoraTag, items: Sequence[str]) -> str:
    return f"<{tag.kind}:{':'.join(items)}>"


def edit_weight(tag: LoraTag, w: float) -> str:
    """The tag with its overall weight set to `w`: te and unet both, wherever the tag gives them
    (position 1, a numeric position 2, `te=`, `unet=`); a tag without a weight gets one at position 1."""
    items = list(tag.items)
    ws = format_number(w)
    pos = _positional_at(items)
    if len(pos) < 2:
        items.insert(pos[0] + 1 if pos else 1, ws)
        pos = _positional_at(items)
    items[pos[1]] = ws
    if "unet" in tag.positions:
        items[pos[tag.positions["unet"]]] = ws
    for i, it in enumerate(items):
        key = named_key(it)
        if key in ("te", "unet"):
            items[i] = f"{key}={ws}"
    return _written(tag, items)


def edit_blocks(tag: LoraTag, value: str) -> str:
    """The tag with block weights `value` (a preset name or a list), written as `lbw=` (read the same by every
    parser).  The block item the parser read is removed; when it was positional, the positional items after it
    go too (a positional x after the blocks would otherwise move into the unet position) and an x the new
    value can use is kept as `x=`.  An x is dropped only when `value` is a list without X."""
    items = list(tag.items)
    pos = _positional_at(items)
    value = value.strip()
    keep_x = not is_block_list(value) or any(x_offset(t) is not None for t in value.split(","))
    drop: set[int] = set()
    at = tag.positions.get("blocks")
    if at is not None:
        drop.update(pos[at:])
    out = []
    for i, it in enumerate(items):
        key = named_key(it)
        if i in drop or key in ("lbw", "w") or (key == "x" and not keep_x):
            continue
        out.append(it)
    if keep_x and "x" in tag.positions and not any(named_key(it) == "x" for it in out):
        out.append(f"x={format_number(tag.x)}")
    return _written(tag, out + [f"lbw={value}"])


def edit_key(tag: LoraTag, key: str, value: str) -> str:
    """The tag with `key=value` replacing every `key=` item (a named key overrides a positional value)."""
    items = [it for it in tag.items if named_key(it) != key.lower()]
    return _written(tag, items + [f"{key}={value}"])


def edit_name(tag: LoraTag, name: str) -> str:
    """The tag naming another LoRA file (X/Y/Z epoch axis); every other item as written."""
    items = list(tag.items)
    pos = _positional_at(items)
    if pos:
        items[pos[0]] = name
    return _written(tag, items)
