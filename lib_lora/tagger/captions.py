"""Caption files: where they go, how existing ones are treated, and atomic writes (temporary file in
the same folder, then rename), so a stopped run never leaves a partial caption and a re-run resumes."""

from __future__ import annotations

import json
import os
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


def check_mode(mode: str) -> str:
    if mode not in EXISTING_MODES:
        raise LoraStudioError(f"existing-caption mode '{mode}' is unknown; use one of {', '.join(EXISTING_MODES)}.")
    return mode


def check_ext(ext: str) -> str:
    ext = ext if ext.startswith(".") else "." + ext
    if not ext[1:] or any(c in ext for c in "/\\") or ext.lower() in (".png", ".jpg", ".jpeg", ".webp", ".bmp"):
        raise LoraStudioError(f"caption extension '{ext}' cannot be used; give e.g. .txt or .caption.")
    return ext


def caption_path(image: Path, input_root: Path, output_dir: Path | None = None, ext: str = ".txt") -> Path:
    """`<stem><ext>` beside the image, or in `output_dir` mirroring the sub-folders under `input_root`."""
    if output_dir is None:
        return image.with_name(image.stem + ext)
    rel = image.relative_to(input_root)
    return Path(output_dir) / rel.parent / (image.stem + ext)


def split_caption(text: str) -> list[str]:
    """Comma- or line-separated tags; blanks dropped."""
    return [t.strip() for line in text.splitlines() for t in line.split(",") if t.strip()]


def read_caption(path: Path) -> list[str]:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return split_caption(fh.read())


def combine(existing: list[str], new: list[str], mode: str) -> list[str]:
    """append: existing first, then new tags not already present; prepend: the reverse; overwrite: new."""
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


def write_caption(path: Path, tags: list[str], mode: str, separator: str = ", ",
                  trailing_newline: bool = False) -> list[str]:
    """Write (or merge into) one caption file; returns the tags now in the file."""
    check_mode(mode)
    existing = read_caption(path) if mode in ("append", "prepend") and path.exists() else []
    final = combine(existing, tags, mode)
    atomic_write_text(path, separator.join(final) + ("\n" if trailing_newline else ""))
    return final


def write_sidecar(path: Path, result: TagResult, model: str, caption: list[str]) -> None:
    """Optional JSON beside the caption: every kept confidence and all rating probabilities."""
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
