"""Model files on disk (LoRAs, checkpoints): discovery in configured folders, name/alias lookup, close matches,
epoch siblings, hashes. The WebUI, the standalone tabs and the CLI all find files here; each only says which
folders.

Names follow the built-in Lora: a tag names a file by its stem or by its alias (metadata `ss_output_name`);
an alias shared by several files resolves only by stem. The walk follows folder links (users link their
model folders in), each real folder once; a folder loop, an excessive depth or folder count is reported as
one line and not followed, so a link to a drive root cannot hang a scan.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from lib_lora.errors import LoraFileError, LoraStudioError
from lib_lora.fileio import display_path

LORA_EXTENSIONS = (".safetensors", ".pt", ".ckpt")
CHECKPOINT_EXTENSIONS = (".safetensors", ".ckpt")
_EPOCH_RE = re.compile(r"^(?P<base>.+)-(?P<num>\d+)$")

# A folder deeper or larger than this is almost surely a link to somewhere else (a drive root):
# stop there and say so instead of walking it for minutes.
MAX_DEPTH = 32
MAX_DIRS = 20_000


def header_metadata(path) -> tuple[dict, str | None]:
    """(metadata, problem): only the header's __metadata__ (cheap: the tensors are not read). A file whose
    header cannot be read gives {} and a one-line problem that concerns that file only."""
    from lib_lora.fileio import read_metadata

    try:
        return read_metadata(path), None
    except LoraStudioError as exc:
        return {}, str(exc)
    except (OSError, ValueError) as exc:  # never let one file stop the scan of the others
        return {}, f"cannot read '{display_path(path)}': {exc}"


def walk_files(root: Path, problems: list, seen: dict, budget: list):
    """Files under `root`, following folder links, each real folder once (by device and inode): a
    link loop is reported in `problems` and not followed; depth and folder count (`budget`, shared by the
    roots of one scan) are bounded. Hidden folders are skipped."""
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
                try:
                    if e.is_file():  # follows links; a dangling link is no file
                        yield Path(e.path)
                except OSError:
                    pass
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
                    problems.append(f"'{display_path(e.path)}' links back to '{display_path(seen[key])}' "
                                    f"(a folder loop); not followed")
                continue
            if depth + 1 > MAX_DEPTH:
                problems.append(f"'{display_path(e.path)}' is more than {MAX_DEPTH} folders deep; not scanned")
                continue
            if budget[0] <= 0:
                problems.append(f"more than {MAX_DIRS} folders under the configured folders; stopped at "
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
class ModelFile:
    name: str                      # file stem
    path: Path                     # as found under its folder (links are not resolved)
    alias: str                     # ss_output_name, else the stem
    root: Path | None = None       # the configured folder it was found in
    metadata: dict = field(default_factory=dict, repr=False)
    problem: str | None = None     # why the header could not be read (the file is still listed)
    _hash: str | None = field(default=None, repr=False)
    _hash_key: tuple | None = field(default=None, repr=False)

    @property
    def relative(self) -> str:
        """Path below its folder, '/'-separated (how the tabs name files)."""
        return self.path.relative_to(self.root).as_posix() if self.root is not None else self.path.name

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
    """Index of the files with `extensions` in `dirs_fn()` (re-evaluated at every scan, so settings changes
    apply). `kind` names them in messages ("LoRA", "checkpoint"). `headers=False`: a listing only, no header
    is read (no aliases, no metadata)."""

    def __init__(self, dirs_fn, extensions=LORA_EXTENSIONS, kind: str = "LoRA", headers: bool = True):
        self._dirs_fn = dirs_fn
        self.extensions = tuple(e.lower() for e in extensions)
        self.kind = kind
        self.headers = headers
        self._lock = threading.Lock()
        self.files: list[ModelFile] = []          # every file found, in scan order (same stem may repeat)
        self.by_name: dict[str, ModelFile] = {}
        self.by_alias: dict[str, ModelFile] = {}
        self.ambiguous_aliases: dict[str, list[ModelFile]] = {}
        self.problems: list[str] = []             # one line per unreadable file / folder loop, last scan
        self._reported: set[str] = set()
        self.scanned = False

    def dirs(self) -> list[Path]:
        return [Path(d) for d in self._dirs_fn()]

    def scan(self) -> None:
        files: list[ModelFile] = []
        by_name: dict[str, ModelFile] = {}
        by_alias: dict[str, ModelFile] = {}
        ambiguous: dict[str, list[ModelFile]] = {}
        problems: list[str] = []
        seen: dict = {}
        budget = [MAX_DIRS]
        for root in self.dirs():
            if not root.is_dir():
                continue
            for p in walk_files(root, problems, seen, budget):
                if p.suffix.lower() not in self.extensions:
                    continue
                meta, problem = ({}, None)
                if self.headers and p.suffix.lower() == ".safetensors":
                    meta, problem = header_metadata(p)
                if problem:  # still listed: naming it gives this line again instead of "not found"
                    problems.append(problem)
                alias = str(meta.get("ss_output_name", "")).strip() or p.stem
                old = self.by_name.get(p.stem)
                entry = ModelFile(p.stem, p, alias, root, meta, problem=problem)
                if old is not None and old.path == p:     # keep the cached hash
                    entry._hash, entry._hash_key = old._hash, old._hash_key
                files.append(entry)
                by_name.setdefault(p.stem, entry)         # first folder wins, like the built-in's walk order
                if alias in by_alias and by_alias[alias].path != p:
                    ambiguous.setdefault(alias, [by_alias[alias]]).append(entry)
                by_alias.setdefault(alias, entry)
        with self._lock:
            self.files, self.by_name, self.by_alias, self.ambiguous_aliases = files, by_name, by_alias, ambiguous
            self.problems = problems
            self.scanned = True
        for line in problems:  # each problem once per session, not at every rescan
            if line not in self._reported:
                self._reported.add(line)
                print(f"[LoRA Studio] {line}", file=sys.stderr)

    def _find(self, name: str) -> ModelFile | None:
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

    def find(self, name: str) -> ModelFile | None:
        """Stem, then unique alias, then unique case-insensitive stem; one rescan when nothing matches."""
        if not self.scanned:
            self.scan()
        hit = self._find(name)
        if hit is None:
            self.scan()
            hit = self._find(name)
        return hit

    def lookup(self, name: str, fix: str = "check the name") -> ModelFile:
        """`find`, or a LoraFileError saying why not (ambiguous alias, not found with close names) and `fix`."""
        hit = self.find(name)
        if hit is None:
            raise LoraFileError(self.missing_message(name, fix))
        return hit

    def close_matches(self, name: str, n: int = 3) -> list[str]:
        candidates = sorted(set(self.by_name) | set(self.by_alias))
        lowered = {c.lower(): c for c in candidates}
        hits = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.6)
        return [lowered[h] for h in hits]

    def missing_message(self, name: str, fix: str) -> str:
        """Why `name` names no file, one line ending in `fix`."""
        shared = self.ambiguous_aliases.get(name)
        if shared:
            return (f"{self.kind} alias '{name}' belongs to {len(shared)} files "
                    f"({', '.join(repr(f.name) for f in shared)}); use the file name; {fix}")
        close = self.close_matches(name)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        where = ", ".join(f"'{d}'" for d in self.dirs()) or "(no folder configured)"
        return f"{self.kind} '{name}' not found in {where}{hint}; {fix}"

    def epoch_siblings(self, entry: ModelFile) -> list[ModelFile]:
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

    def all(self) -> list[ModelFile]:
        """One file per stem (the one a tag names), by name."""
        if not self.scanned:
            self.scan()
        return sorted(self.by_name.values(), key=lambda f: f.name.lower())
