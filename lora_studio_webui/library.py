"""LoRA files on disk: discovery in the configured folders, name/alias lookup, hashes, epoch siblings.

Names follow the built-in Lora (docs/spec/prompt_syntax.md §1): a tag names a file by its stem or by its alias
(metadata `ss_output_name`); an alias shared by several files resolves only by stem.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from lib_lora.fileio import display_path

EXTENSIONS = (".safetensors", ".pt", ".ckpt")
_EPOCH_RE = re.compile(r"^(?P<base>.+)-(?P<num>\d+)$")


# A LoRA folder deeper or larger than this is almost surely a link to somewhere else (a drive root):
# stop there and say so instead of walking it for minutes.
MAX_DEPTH = 32
MAX_DIRS = 20_000


def read_metadata(path: Path) -> tuple[dict, str | None]:
    """(metadata, problem): only the header's __metadata__ (cheap: the tensors are not read). A file whose
    header cannot be read gives {} and a one-line problem that concerns that file only."""
    from lib_lora.errors import LoraStudioError
    from lib_lora.fileio import read_metadata as read

    try:
        return read(path), None
    except LoraStudioError as exc:
        return {}, str(exc)
    except (OSError, ValueError) as exc:  # never let one file stop the scan of the others
        return {}, f"cannot read '{path}': {exc}"


def walk_files(root: Path, problems: list, seen: dict, budget: list):
    """Files under `root`, following folder links, each real folder once (by device and inode): a
    symlink loop is reported in `problems` and not followed; depth and folder count are bounded."""
    try:
        st = os.stat(root)
    except OSError:
        return
    key = (st.st_dev, st.st_ino)
    if key in seen:
        return
    seen[key] = root
    stack = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        subdirs = []
        for e in entries:
            try:
                is_dir = e.is_dir()  # follows links
            except OSError:
                continue
            if not is_dir:
                yield Path(e.path)
                continue
            if e.name.startswith("."):
                continue
            try:
                st = os.stat(e.path)
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen:
                if _is_ancestor(seen[key], folder):
                    problems.append(f"'{display_path(e.path)}' links back to '{display_path(seen[key])}' (a folder loop); "
                                    f"not followed")
                continue
            if depth + 1 > MAX_DEPTH:
                problems.append(f"'{display_path(e.path)}' is more than {MAX_DEPTH} folders deep; not scanned")
                continue
            if budget[0] <= 0:
                problems.append(f"more than {MAX_DIRS} folders under the LoRA folders; stopped at "
                                f"'{display_path(e.path)}' (a link to a large folder?)")
                return
            budget[0] -= 1
            seen[key] = Path(e.path)
            subdirs.append((Path(e.path), depth + 1))
        stack.extend(reversed(subdirs))  # depth first, in name order, like os.walk


def _is_ancestor(target: Path, folder: Path) -> bool:
    """The folder holding a link lies inside the link's target: following it would never end."""
    t, f = os.path.realpath(target), os.path.realpath(folder)
    return f == t or f.startswith(t.rstrip(os.sep) + os.sep)


@dataclass
class LoraFile:
    name: str                      # file stem
    path: Path
    alias: str
    metadata: dict = field(default_factory=dict, repr=False)
    problem: str | None = None     # why the header could not be read (the file is still listed)
    _hash: str | None = field(default=None, repr=False)
    _hash_key: tuple | None = field(default=None, repr=False)

    @property
    def family(self) -> str:
        """`foo-000004` and `foo` share the family `foo` (kohya's per-epoch file names)."""
        m = _EPOCH_RE.match(self.name)
        return m.group("base") if m else self.name

    @property
    def epoch(self) -> int | None:
        m = _EPOCH_RE.match(self.name)
        return int(m.group("num")) if m else None

    def shorthash(self) -> str:
        """First 12 hex digits of the sha256 of the safetensors body (A1111's Lora hash), cached per mtime/size."""
        try:
            st = self.path.stat()
        except OSError:
            return ""
        key = (st.st_mtime_ns, st.st_size)
        if self._hash is not None and self._hash_key == key:
            return self._hash
        h = self.metadata.get("sshs_model_hash", "")
        if not h and self.path.suffix == ".safetensors":
            try:
                from lib_lora.fileio import model_hash
                h = model_hash(self.path)
            except Exception:
                h = ""
        self._hash, self._hash_key = (h or "")[:12], key
        return self._hash


class Library:
    """Index of LoRA files in `dirs_fn()` (re-evaluated at every scan, so settings changes apply)."""

    def __init__(self, dirs_fn):
        self._dirs_fn = dirs_fn
        self._lock = threading.Lock()
        self.by_name: dict[str, LoraFile] = {}
        self.by_alias: dict[str, LoraFile] = {}
        self.ambiguous_aliases: set[str] = set()
        self.problems: list[str] = []             # one line per unreadable file / folder loop, last scan
        self._reported: set[str] = set()
        self.scanned = False

    def dirs(self) -> list[Path]:
        return [Path(d) for d in self._dirs_fn()]

    def scan(self) -> None:
        by_name: dict[str, LoraFile] = {}
        by_alias: dict[str, LoraFile] = {}
        ambiguous: set[str] = set()
        problems: list[str] = []
        seen: dict = {}
        budget = [MAX_DIRS]
        for root in self.dirs():
            if not root.is_dir():
                continue
            for p in walk_files(root, problems, seen, budget):
                if p.suffix.lower() not in EXTENSIONS:
                    continue
                meta, problem = read_metadata(p) if p.suffix.lower() == ".safetensors" else ({}, None)
                if problem:  # still listed: naming it gives this line again instead of "not found"
                    problems.append(problem)
                alias = str(meta.get("ss_output_name", "")).strip() or p.stem
                old = self.by_name.get(p.stem)
                entry = LoraFile(p.stem, p, alias, meta, problem=problem)
                if old is not None and old.path == p:     # keep the cached hash
                    entry._hash, entry._hash_key = old._hash, old._hash_key
                by_name.setdefault(p.stem, entry)         # first folder wins, like the built-in's walk order
                if alias in by_alias and by_alias[alias].path != p:
                    ambiguous.add(alias)
                by_alias.setdefault(alias, entry)
        with self._lock:
            self.by_name, self.by_alias, self.ambiguous_aliases = by_name, by_alias, ambiguous
            self.problems = problems
            self.scanned = True
        for line in problems:  # each problem once per session, not at every rescan
            if line not in self._reported:
                self._reported.add(line)
                print(f"[LoRA Studio] {line}", file=sys.stderr)

    def _find(self, name: str) -> LoraFile | None:
        if name in self.by_name:
            return self.by_name[name]
        if name in self.by_alias and name not in self.ambiguous_aliases:
            return self.by_alias[name]
        low = name.lower()
        hits = {id(f): f for f in self.by_name.values() if f.name.lower() == low}
        if len(hits) == 1:
            return next(iter(hits.values()))
        # `sub/dir/name` as some UIs insert it
        if "/" in name or "\\" in name:
            return self.by_name.get(Path(name.replace("\\", "/")).stem)
        return None

    def find(self, name: str) -> LoraFile | None:
        """Stem, then unique alias, then unique case-insensitive stem; one rescan when nothing matches."""
        if not self.scanned:
            self.scan()
        hit = self._find(name)
        if hit is None:
            self.scan()
            hit = self._find(name)
        return hit

    def close_matches(self, name: str, n: int = 3) -> list[str]:
        candidates = sorted(set(self.by_name) | set(self.by_alias))
        lowered = {c.lower(): c for c in candidates}
        hits = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.6)
        return [lowered[h] for h in hits]

    def not_found_message(self, name: str) -> str:
        close = self.close_matches(name)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        where = ", ".join(str(d) for d in self.dirs())
        return f"LoRA '{name}' not found in {where}; it was skipped.{hint}"

    def epoch_siblings(self, entry: LoraFile) -> list[LoraFile]:
        """All files of the same family in the same folder, by epoch number, the final file (no number) last."""
        fam = entry.family
        out = [f for f in self.by_name.values() if f.family == fam and f.path.parent == entry.path.parent]
        return sorted(out, key=lambda f: (f.epoch is None, f.epoch or 0))

    def families_with_epochs(self) -> list[str]:
        if not self.scanned:
            self.scan()
        count: dict[str, int] = {}
        for f in self.by_name.values():
            count[f.family] = count.get(f.family, 0) + 1
        return sorted(k for k, v in count.items() if v > 1)

    def all(self) -> list[LoraFile]:
        if not self.scanned:
            self.scan()
        return sorted(self.by_name.values(), key=lambda f: f.name.lower())
