"""Paths as users give them: printable display text and containment inside configured folders."""

from __future__ import annotations

import os
import pathlib
from typing import Iterable

from lib_lora.errors import LoraStudioError


def file_stamp(st) -> tuple:
    """What tells one version of a file from another, from an `os.stat` result (of a path or an open descriptor):
    device, inode (a file replaced within the clock's tick keeps its size and mtime), size, mtime and ctime in ns.
    The hash cache, the live merge's inputs, the standalone app's loaded model and bake's head start all ask it."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _name(path) -> str:
    return os.fspath(path)


def display_path(path) -> str:
    """A path as printable text: a file name that is not UTF-8 shows U+FFFD instead of breaking a print."""
    return os.fsencode(os.fspath(path)).decode("utf-8", "replace")


def _lexical(path) -> str:
    return os.path.normcase(os.path.normpath(os.path.abspath(os.fspath(path))))


def _within(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # other drive (Windows)
        return False


def resolve_inside(path: str | os.PathLike, roots: Iterable[str | os.PathLike], what: str) -> pathlib.Path:
    """The absolute path of `path` if it lies inside one of `roots`, else LoraStudioError (one line).

    Containment is tested on the lexically normalised absolute path, so a symlink the user placed inside a
    configured folder is accepted even when it points elsewhere (that is the user's choice, and the WebUI
    loads it too). Because `a/..` lexically differs from what the OS does when `a` is a link, any `..`
    component is refused outright. A path whose real location is inside a root's real location is accepted
    as well (the configured folder itself may be a link). A relative path is taken relative to each root in
    turn: the first root where it exists, else the first root. Existence is not required (writes).
    """
    try:
        raw = os.fspath(path)
    except TypeError:
        raise LoraStudioError(f"{what}: expected a file path, got {type(path).__name__}") from None
    if isinstance(raw, bytes):
        raw = os.fsdecode(raw)
    root_list = [os.fspath(r) for r in roots if r is not None and os.fspath(r) != ""]
    where = ", ".join(f"'{r}'" for r in root_list) or "(none configured)"
    shown = "".join(c if c.isprintable() else "?" for c in raw[:300])
    if not raw.strip() or "\0" in raw:
        raise LoraStudioError(f"{what}: '{shown}' is not a valid path; pick a file inside {where}")
    parts = pathlib.PurePath(raw).parts
    if ".." in parts or (os.sep != "/" and ".." in raw.replace(os.sep, "/").split("/")):
        raise LoraStudioError(f"{what} '{shown}' contains '..'; give a path inside {where} without '..'")
    if not root_list:
        raise LoraStudioError(f"{what} '{shown}' refused: no folder is configured for it")
    if os.path.isabs(raw):
        candidates = [raw]
    else:
        candidates = [os.path.join(r, raw) for r in root_list]
        existing = [c for c in candidates if os.path.lexists(c)]
        candidates = existing[:1] or candidates[:1]
    cand = candidates[0]
    lex = _lexical(cand)
    for r in root_list:
        if _within(lex, _lexical(r)):
            return pathlib.Path(os.path.normpath(os.path.abspath(cand)))
    real = os.path.normcase(os.path.realpath(cand))
    for r in root_list:
        if _within(real, os.path.normcase(os.path.realpath(r))):
            return pathlib.Path(os.path.normpath(os.path.abspath(cand)))
    raise LoraStudioError(f"{what} '{shown}' is outside the configured folders ({where}); "
                          f"move it into one of them or configure its folder")
