"""CLIP's byte-level BPE tokenizer in plain Python, reading the vocabulary shipped in lib_lora/data/.

Matches transformers' CLIPTokenizer in the same environment, as the WebUI and sd-scripts tokenize: with ftfy
importable (AUTOMATIC1111's environment has it through open-clip-torch, sd-scripts pins it, our `ui`/`train`
extras install it) the text goes through `ftfy.fix_text`, whitespace is collapsed and it is lower-cased; without
ftfy it is cleaned like transformers' BasicTokenizer fallback (control characters dropped, CJK characters split,
NFC, lower case, whitespace collapsed). Then CLIP's split pattern (contractions, runs of letters, single digits,
runs of other symbols) and BPE merges. The two cleanings differ on non-ASCII text (CJK, full-width forms,
ligatures, curly quotes, HTML entities), never on plain ASCII captions."""

from __future__ import annotations

import functools
import json
import os
import unicodedata

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")


@functools.lru_cache(maxsize=1)
def _byte_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte → printable character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _is_letter(ch: str) -> bool:
    return unicodedata.category(ch).startswith("L")


def _is_number(ch: str) -> bool:
    return unicodedata.category(ch).startswith("N")


def _is_cjk(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2B73F
            or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF
            or 0x2F800 <= cp <= 0x2FA1F)


def _is_control(ch: str) -> bool:
    if ch in "\t\n\r":
        return False
    return unicodedata.category(ch) in ("Cc", "Cf")


def _is_ws(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


@functools.lru_cache(maxsize=1)
def _fix_text():
    """ftfy.fix_text when ftfy is installed (transformers' CLIPTokenizer uses it then), else None."""
    try:
        import ftfy
    except ImportError:
        return None
    return ftfy.fix_text


def clean(text: str, fix_text="auto") -> str:
    """The text as transformers' CLIPTokenizer cleans it before splitting: `fix_text(text)` with whitespace
    collapsed, lower case ("auto": ftfy's when installed); with `fix_text` None its BasicTokenizer fallback
    (strip_accents=False, do_split_on_punc=False), joined with spaces."""
    fix = _fix_text() if fix_text == "auto" else fix_text
    if fix is not None:
        return " ".join(fix(text).split()).lower()
    out = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD or _is_control(ch):
            continue
        if _is_ws(ch):
            out.append(" ")
        elif _is_cjk(cp):
            out.append(f" {ch} ")
        else:
            out.append(ch)
    text = unicodedata.normalize("NFC", "".join(out))
    return " ".join(tok.lower() for tok in text.split())


def _pieces(text: str) -> list[str]:
    """CLIP's pattern: special tokens | contractions | letter runs | one digit | runs of other non-space chars."""
    out = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        low = text[i:i + 15].lower()
        if low == BOS or low == EOS:
            out.append(text[i:i + 15])
            i += 15
            continue
        if ch == "'":
            for c in _CONTRACTIONS:
                if text[i:i + len(c)].lower() == c:
                    break
            else:
                c = None
            if c:
                out.append(text[i:i + len(c)])
                i += len(c)
                continue
        if _is_letter(ch):
            j = i + 1
            while j < n and _is_letter(text[j]):
                j += 1
        elif _is_number(ch):
            j = i + 1
        else:
            j = i + 1
            while j < n and not (text[j].isspace() or _is_letter(text[j]) or _is_number(text[j])):
                j += 1
        out.append(text[i:j])
        i = j
    return out


class CLIPTokenizer:
    """`fix_text`: "auto" (ftfy's when installed), a function, or None (the BasicTokenizer cleaning): see `clean`."""

    def __init__(self, vocab_path: str | None = None, merges_path: str | None = None, fix_text="auto"):
        self.fix_text = fix_text
        with open(vocab_path or os.path.join(DATA, "clip_vocab.json"), encoding="utf-8") as f:
            self.encoder: dict[str, int] = json.load(f)
        with open(merges_path or os.path.join(DATA, "clip_merges.txt"), encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1:] if line.strip() and not line.startswith("#version")]
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.bos_id = self.encoder[BOS]
        self.eos_id = self.encoder[EOS]
        self.cache: dict[str, list[str]] = {BOS: [BOS], EOS: [EOS]}

    def bpe(self, token: str) -> list[str]:
        if token in self.cache:
            return self.cache[token]
        word = list(token[:-1]) + [token[-1] + "</w>"]
        while len(word) > 1:
            pairs = {(word[k], word[k + 1]) for k in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged = []
            k = 0
            while k < len(word):
                if k < len(word) - 1 and word[k] == best[0] and word[k + 1] == best[1]:
                    merged.append(best[0] + best[1])
                    k += 2
                else:
                    merged.append(word[k])
                    k += 1
            word = merged
        if len(self.cache) < 100_000:
            self.cache[token] = word
        return word

    def encode(self, text: str) -> list[int]:
        """Token ids without BOS/EOS."""
        bu = _byte_unicode()
        ids = []
        for piece in _pieces(clean(text, self.fix_text)):
            if piece in (BOS, EOS):
                ids.append(self.encoder[piece])
                continue
            mapped = "".join(bu[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder.get(t, self.eos_id) for t in self.bpe(mapped))
        return ids

    def __call__(self, text: str, max_length: int = 77, pad_id: int | None = None) -> list[int]:
        """BOS + ids + EOS, truncated (EOS kept last) and padded to max_length (pad = EOS unless given)."""
        ids = [self.bos_id] + self.encode(text)[: max_length - 2] + [self.eos_id]
        pad = self.eos_id if pad_id is None else pad_id
        return ids + [pad] * (max_length - len(ids))


@functools.lru_cache(maxsize=1)
def default_tokenizer() -> CLIPTokenizer:
    return CLIPTokenizer()
