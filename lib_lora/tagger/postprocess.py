"""Model probabilities → tags: thresholds (strictly greater), optional MCut, ordering, tag formatting,
exclusions, added tags, de-duplication. Ratings are reported, written only on request."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from lib_lora.errors import LoraStudioError
from lib_lora.tagger.tags import TagSet

# Danbooru emoticon tags whose underscore is part of the face, not a word separator.
EMOTICONS = frozenset({
    "0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9", ">_o",
    "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||",
})
SORTS = ("confidence", "alphabetical", "model")
RATING_MODES = ("none", "first", "last")
_ESCAPE = re.compile(r"([\\()])")
_UNESCAPE = re.compile(r"\\(.)")
_WEIGHTED = re.compile(r"^\((.*):[-+]?\d*\.?\d+\)$")


@dataclass
class TagOptions:
    general_threshold: float = 0.35       # a tag is kept when its probability is > threshold
    character_threshold: float = 0.85     # > 1 disables characters
    general_mcut: bool = False
    character_mcut: bool = False
    include_characters: bool = True
    characters_first: bool = False
    sort: str = "confidence"              # confidence | alphabetical | model (CSV order)
    replace_underscores: bool = True
    escape_brackets: bool = False         # A1111 prompt escaping: \( \) \\ (on for prompts, off for captions)
    rating: str = "none"                  # none | first | last: write the most probable rating tag
    max_tags: int = 0                     # 0 = no limit (model tags only)
    exclude: list[str] = field(default_factory=list)
    exclude_patterns: list[str] = field(default_factory=list)   # regexes, full match on the spaced lowercase form
    replace: dict[str, str] = field(default_factory=dict)       # tag → replacement (matched like exclude)
    prepend: list[str] = field(default_factory=list)            # e.g. a trigger word
    append: list[str] = field(default_factory=list)
    weights: bool = False                 # write "(tag:0.87)"

    def validate(self) -> "TagOptions":
        for name in ("general_threshold", "character_threshold"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0:
                raise LoraStudioError(f"{name.replace('_', ' ')} {v!r} must be a number ≥ 0 (values > 1 disable it).")
        if not isinstance(self.max_tags, int) or self.max_tags < 0:
            raise LoraStudioError(f"max tags {self.max_tags!r} must be 0 (no limit) or more.")
        general_off = self.general_threshold > 1 and not self.general_mcut
        characters_off = not self.include_characters or (self.character_threshold > 1 and not self.character_mcut)
        if general_off and characters_off and not (self.prepend or self.append) and self.rating == "none":
            # Every caption would be empty (and "overwrite" would empty existing ones).
            raise LoraStudioError("these options leave every caption empty (general and character tags off, "
                                  "nothing prepended, appended or rated); lower the general threshold below 1.")
        if self.sort not in SORTS:
            raise LoraStudioError(f"sort '{self.sort}' is unknown; use one of {', '.join(SORTS)}.")
        if self.rating not in RATING_MODES:
            raise LoraStudioError(f"rating '{self.rating}' is unknown; use one of {', '.join(RATING_MODES)}.")
        from lib_lora.tagger.captions import check_one_line
        for name in ("prepend", "append", "exclude"):
            for t in getattr(self, name):
                check_one_line(t, f"{name} text")
        for k, v in self.replace.items():
            check_one_line(f"{k}={v}", "a replace rule")
        for pat in self.exclude_patterns:
            try:
                re.compile(pat)
            except re.error as exc:
                raise LoraStudioError(f"exclude pattern '{pat}' is not a valid regular expression: {exc}.") from None
        return self


@dataclass
class TagResult:
    ratings: dict[str, float]              # display name → probability, CSV order
    general: list[tuple[str, float]]       # kept general tags (display names), in output order
    characters: list[tuple[str, float]]
    tags: list[str]                        # the caption, in order (added tags included)
    confidences: dict[str, float]          # every kept model tag → probability

    @property
    def rating(self) -> str | None:
        return max(self.ratings, key=self.ratings.get) if self.ratings else None

    def caption(self, separator: str = ", ") -> str:
        return separator.join(self.tags)


def parse_replace(pairs) -> dict[str, str]:
    """`OLD=NEW` rules (the CLI's repeated --replace, the tab's lines) → {old: new}; NEW may be empty."""
    out = {}
    for pair in pairs:
        pair = str(pair).strip()
        if not pair:
            continue
        if "=" not in pair:
            raise LoraStudioError(f"replace rule '{pair[:60]}' must look like OLD=NEW.")
        old, new = pair.split("=", 1)
        if not old.strip():
            raise LoraStudioError(f"replace rule '{pair[:60]}' has no tag before '='; write OLD=NEW.")
        out[old] = new
    return out


def mcut_threshold(probs) -> float:
    """Maximum Cut: the midpoint of the largest gap between consecutive sorted probabilities."""
    p = np.sort(np.asarray(probs, dtype=np.float64))[::-1]
    if p.size < 2:
        return 0.0
    gaps = p[:-1] - p[1:]
    i = int(np.argmax(gaps))
    return float((p[i] + p[i + 1]) / 2)


def normalize(tag: str) -> str:
    """Comparison key: unescaped, weight removed, underscores = spaces, case and spacing ignored."""
    t = tag.strip()
    m = _WEIGHTED.match(t)
    if m:
        t = m.group(1)
    t = _UNESCAPE.sub(r"\1", t)
    if t not in EMOTICONS:
        t = t.replace("_", " ")
    return " ".join(t.lower().split())


def format_tag(name: str, replace_underscores: bool = True, escape_brackets: bool = False) -> str:
    if replace_underscores and name not in EMOTICONS:
        name = name.replace("_", " ")
    if escape_brackets:
        name = _ESCAPE.sub(r"\\\1", name)
    return name


def dedupe(tags) -> list[str]:
    """Order-preserving, comparing normalised forms; empty tags dropped."""
    seen, out = set(), []
    for t in tags:
        key = normalize(t)
        if key and key not in seen:
            seen.add(key)
            out.append(t.strip())
    return out


def _select(probs: np.ndarray, idx: np.ndarray, threshold: float, mcut: bool, floor: float) -> np.ndarray:
    if idx.size == 0:
        return idx
    p = probs[idx]
    if mcut:
        threshold = max(floor, mcut_threshold(p))
    return idx[p > threshold]


class Postprocessor:
    """Options compiled once per run (exclusion sets, regexes), applied per image."""

    def __init__(self, tagset: TagSet, opts: TagOptions):
        self.tagset, self.opts = tagset, opts.validate()
        self._exclude = {normalize(t) for t in opts.exclude if normalize(t)}
        self._patterns = [re.compile(p, re.IGNORECASE) for p in opts.exclude_patterns]
        self._replace = {normalize(k): v.strip() for k, v in opts.replace.items() if normalize(k)}

    def _excluded(self, key: str) -> bool:
        return key in self._exclude or any(p.fullmatch(key) for p in self._patterns)

    def _fmt(self, name: str, prob: float) -> str:
        o = self.opts
        key = normalize(name)
        text = self._replace.get(key)
        if text == "":                      # OLD= : replaced by nothing (dropped, also with weights)
            return ""
        if text is None:
            text = format_tag(name, o.replace_underscores, o.escape_brackets)
        if not o.weights:
            return text
        # A replacement holding commas is several tags to a trainer: weight each, never "(a, b:0.9)".
        return ", ".join(f"({t.strip()}:{prob:.2f})" for t in text.split(",") if t.strip())

    def __call__(self, probs) -> TagResult:
        o, ts = self.opts, self.tagset
        probs = np.asarray(probs, dtype=np.float32).reshape(-1)
        if probs.size != len(ts):
            raise LoraStudioError(f"the model gave {probs.size} scores for {len(ts)} tags; "
                                  "model.onnx and selected_tags.csv are from different models.")
        ratings = {format_tag(ts.names[i], o.replace_underscores): float(probs[i]) for i in ts.rating_idx}
        gen = _select(probs, ts.general_idx, o.general_threshold, o.general_mcut, 0.0)
        chars = (_select(probs, ts.character_idx, o.character_threshold, o.character_mcut, 0.15)
                 if o.include_characters else ts.character_idx[:0])
        gen, chars = self._order(probs, gen), self._order(probs, chars)
        picked = [i for i in (list(chars) + list(gen) if o.characters_first else
                              self._order(probs, np.concatenate([gen, chars])))
                  if not self._excluded(normalize(ts.names[i]))]
        if o.max_tags > 0:
            picked = picked[:o.max_tags]
        keep = set(picked)
        model_tags = [self._fmt(ts.names[i], float(probs[i])) for i in picked]
        if o.rating != "none" and ratings:
            best = max(ratings, key=ratings.get)
            model_tags = [best] + model_tags if o.rating == "first" else model_tags + [best]
        tags = dedupe(list(o.prepend) + model_tags + list(o.append))
        disp = lambda i: format_tag(ts.names[i], o.replace_underscores)  # noqa: E731
        return TagResult(
            ratings=ratings,
            general=[(disp(i), float(probs[i])) for i in gen if i in keep],
            characters=[(disp(i), float(probs[i])) for i in chars if i in keep],
            tags=tags,
            confidences={disp(i): float(probs[i]) for i in picked},
        )

    def _order(self, probs: np.ndarray, idx: np.ndarray) -> np.ndarray:
        if self.opts.sort == "model" or idx.size == 0:
            return np.sort(idx)
        if self.opts.sort == "alphabetical":
            return np.array(sorted(idx, key=lambda i: normalize(self.tagset.names[i])), dtype=idx.dtype)
        # Stable on ties: equal probabilities keep CSV order, so results never depend on batch layout.
        return idx[np.argsort(-probs[idx], kind="stable")]
