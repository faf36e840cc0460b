"""Caption files: where they go, how existing ones are treated, and atomic writes (temporary file in
the same folder, then rename), so a stopped run never leaves a partial caption and a re-run resumes."""

from __future__ import annotations

import json
import os
import re
import stat
import time
from collections import Counter
from pathlib import Path

from lib_lora import fileio
from lib_lora.errors import LoraStudioError
from lib_lora.fileio import TMP_SUFFIX  # noqa: F401  (re-exported: tests and stale-temp cleanup use it)
from lib_lora.tagger.postprocess import TagResult, dedupe

EXISTING_MODES = ("skip", "overwrite", "append", "prepend")
CAPTION_EXTS = (".txt", ".caption")
STALE_TMP_SECONDS = 600
_PLAIN_EXT = re.compile(r"[a-z0-9]{1,10}")
# A caption file sits next to images and may be written into any folder the user picks: never give it a
# name that a shell, desktop, browser, loader or this tool would run or read as something other than text.
REFUSED_EXTS = frozenset("""
    sh bash zsh fish csh ksh command py pyw pyc pyo pyz exe com bat cmd ps1 psm1 psd1 vbs vbe js jse mjs cjs
    wsf wsh hta msi msp scr cpl pif lnk url reg inf ini desktop service timer plist app so dll dylib ko
    jar class pl pm rb php phtml cgi lua html htm xhtml svg xml mhtml shtml jsp asp aspx bashrc profile
    zshrc config conf cfg toml yaml yml json onnx csv safetensors ckpt pt pth bin pkl pickle gguf
    png jpg jpeg webp bmp gif tif tiff avif
""".split())
# Line breaks as str.splitlines sees them: one of these in prepend/append text would start a new line.
_LINE_BREAKS = re.compile("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


class ReadOnlyCaption(LoraStudioError):
    """An existing caption file that is read-only: kept as is, counted in the summary."""


def check_mode(mode: str) -> str:
    if mode not in EXISTING_MODES:
        raise LoraStudioError(f"existing-caption mode '{mode}' is unknown; use one of {', '.join(EXISTING_MODES)}.")
    return mode


def check_ext(ext: str) -> str:
    """`.txt`, `.caption`, or a plain lowercase extension (letters/digits, at most 10) that nothing runs."""
    raw = str(ext or "")
    body = raw[1:] if raw.startswith(".") else raw
    if body.lower() in ("txt", "caption"):
        return "." + body.lower()
    shown = raw.replace("\n", " ")[:40]
    if not _PLAIN_EXT.fullmatch(body):
        raise LoraStudioError(f"caption extension '{shown}' cannot be used: give .txt, .caption or a short plain "
                              "extension (lowercase letters and digits, at most 10).")
    if body in REFUSED_EXTS:
        raise LoraStudioError(f"caption extension '.{body}' cannot be used: files with it are run or read as "
                              "something other than a caption; give .txt or .caption.")
    return "." + body


def check_one_line(text: str, what: str) -> str:
    """Caption text added by the user (trigger words, extra tags) must stay on the caption's one line."""
    if _LINE_BREAKS.search(str(text)):
        raise LoraStudioError(f"{what} contains a line break; captions are one line: give the tags on one line, "
                              "separated by commas.")
    return text


def caption_path(image: Path, input_root: Path, output_dir: Path | None = None, ext: str = ".txt") -> Path:
    """`<stem><ext>` beside the image, or in `output_dir` mirroring the sub-folders under `input_root`."""
    if output_dir is None:
        return image.with_name(image.stem + ext)
    rel = image.relative_to(input_root)
    return Path(output_dir) / rel.parent / (image.stem + ext)


def split_caption(text: str) -> list[str]:
    """Comma- or line-separated tags; blanks dropped."""
    return [t.strip() for line in text.splitlines() for t in line.split(",") if t.strip()]


def split_tags(tags) -> list[str]:
    """Tags as the trainer sees them: kohya sd-scripts splits a caption on commas and strips each piece,
    so a tag holding a comma (`sparkle, star`) is two tags in the file and must be compared as two."""
    return [p.strip() for t in tags for p in str(t).split(",") if p.strip()]


def read_caption(path: Path) -> list[str]:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return split_caption(fh.read())


def combine(existing: list[str], new: list[str], mode: str) -> list[str]:
    """append: existing first, then new tags not already present; prepend: the reverse; overwrite: new.
    Compared piece by piece as the trainer splits them, so re-runs never add a tag twice."""
    existing, new = split_tags(existing), split_tags(new)
    if mode == "append":
        return dedupe(existing + new)
    if mode == "prepend":
        return dedupe(new + existing)
    return dedupe(new)


def atomic_write_text(path: Path, text: str) -> None:
    """Caption writes: atomic, creating mirrored output folders as needed."""
    fileio.atomic_write_text(path, text, make_dirs=True)


def remove_stale_temps(folder: Path, older_than: float = STALE_TMP_SECONDS) -> int:
    """Delete our temporary files left by a killed run (only old ones: a concurrent run may own new ones)."""
    removed, now = 0, time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for e in entries:
        if e.name.startswith(".") and e.name.endswith(TMP_SUFFIX):
            try:
                if now - e.stat().st_mtime > older_than:
                    os.unlink(e.path)
                    removed += 1
            except OSError:
                pass
    return removed


def is_read_only(path: Path) -> bool:
    """No write permission bit, or not writable by us. The bits are tested too because an administrator
    (root) may write anyway: a file the user marked read-only is kept whoever runs the tagger."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and (not st.st_mode & 0o222 or not os.access(path, os.W_OK))


def write_caption(path: Path, tags: list[str], mode: str, separator: str = ", ",
                  trailing_newline: bool = False) -> list[str]:
    """Write (or merge into) one caption file; returns the tags now in the file. A read-only existing file
    raises ReadOnlyCaption and is left untouched."""
    check_mode(mode)
    path = Path(path)
    if is_read_only(path):
        raise ReadOnlyCaption(f"{path} is read-only: kept unchanged.")
    existing = read_caption(path) if mode in ("append", "prepend") and path.exists() else []
    final = combine(existing, tags, mode)
    text = separator.join(final)
    check_one_line(text, f"the caption for {path.name}")
    atomic_write_text(path, text + ("\n" if trailing_newline else ""))
    return final


def write_sidecar(path: Path, result: TagResult, model: str, caption: list[str]) -> None:
    """Optional JSON beside the caption: every kept confidence and all rating probabilities."""
    if is_read_only(path):
        raise ReadOnlyCaption(f"{path} is read-only: kept unchanged.")
    data = {
        "model": model,
        "rating": result.rating,
        "ratings": {k: round(v, 6) for k, v in result.ratings.items()},
        "characters": {k: round(v, 6) for k, v in result.characters},
        "general": {k: round(v, 6) for k, v in result.general},
        "caption": caption,
    }
    atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=1) + "\n")


def frequency_lines(counts: Counter, limit: int = 0) -> list[str]:
    """`tag: count`, most frequent first, ties alphabetical."""
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    if limit > 0:
        items = items[:limit]
    return [f"{tag}: {n}" for tag, n in items]
