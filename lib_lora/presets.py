"""Block-weight presets: LBW line format, shipped + user files, arch-aware lookup (docs/spec/blocks.md §7).

File format (same files LBW and supermerger read): one `NAME:w1,w2,...` per line, split at the first `:`;
lines whose first non-blank character is `#` are comments; blank lines are ignored; 12/17/20/26 values,
each a number or R, U, X, X+n, X-n.  Bad lines are skipped with a warning naming file, line and reason
(LBW drops them silently).  A later duplicate replaces the earlier one, with a warning.

Two files: the shipped `lib_lora/data/presets.txt` (read only, never rewritten) and an optional user file
(`set`/`delete`/`import_text` change it in memory, `save` writes it atomically).  User presets override
shipped ones of the same name.  Names are one line of printable characters and are case-insensitive: a
user preset may not differ from another preset only by case (`all` beside the shipped `ALL`).

Several writers (the WebUI, the standalone app, two browser tabs) share one user file: `save`/`update`
take a lock, re-read the file and apply only this store's changes (added/changed/deleted names since it
was loaded), so one writer never drops what another saved meanwhile.

`default_store()` / `default_user_path()` are the one place the default user file is chosen; the app and
the CLI verbs both use them, so presets saved in the app are seen by the CLI.

SDXL variants: a preset `NAME_XL` with 12 or 20 values is the SDXL variant of `NAME`.  `get(NAME,
arch="sdxl")` returns `NAME_XL` when it exists, so `ALL` on an SDXL model is the 12-value `ALL_XL`, never
the 17-value `ALL` (which would zero OUT00-OUT02).  Exception: when the user file redefines `NAME` but not
`NAME_XL`, the user's `NAME` wins over the shipped variant.  This convention keeps the file readable by LBW
(every line is an ordinary preset there).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from .blocks import ACCEPTED_COUNTS, FORMATS, weight_token_problem
from .errors import LoraStudioError
from .fileio import atomic_write_text, locked, read_small_text
from .syntax import format_number  # the one number format
from .tag_weights import parse_element_entries  # the elemental entry grammar

DEFAULT_BUILTIN = Path(__file__).resolve().parent / "data" / "presets.txt"
DEFAULT_ELEMENTAL = Path(__file__).resolve().parent / "data" / "elempresets.txt"
USER_FILE_NAME = "lora_studio_presets.txt"
MAX_FILE_BYTES = 4 << 20
MAX_NAME_CHARS = 100
XL_SUFFIX = "_XL"
SDXL_COUNTS = (12, 20)
_BAD_NAME_CHARS = ",=<>:#"

USER_HEADER = ("# LoRA Studio user presets (LBW format NAME:w1,...,wN; counts 12/17/20/26).\n"
               "# Written by LoRA Studio; these override shipped presets of the same name.\n"
               "# NAME_XL (12 or 20 values) is used for NAME when the model is SDXL.\n")


class PresetError(LoraStudioError):
    """A preset that cannot be stored: bad name, bad values, or a shipped preset that cannot be deleted."""


@dataclass
class Preset:
    name: str
    tokens: list[str]
    origin: str        # "builtin" or "user"
    where: str = ""    # "file:line" for messages


@dataclass
class PresetHit:
    """Result of a lookup: `name` is the entry used (may differ from the query by case or `_XL`)."""
    name: str
    tokens: list[str]
    origin: str
    note: str | None = None   # e.g. case-insensitive match
    variant: bool = False     # the SDXL `_XL` variant was chosen


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def name_problem(name: str, bad_chars: str = _BAD_NAME_CHARS) -> str | None:
    """None when `name` can be a preset name, else the reason."""
    if not name:
        return "empty name"
    if not name.isprintable():   # a newline would inject a line into the file
        return "name contains a line break or control character (names are one line)"
    if len(name) > MAX_NAME_CHARS:
        return f"name is longer than {MAX_NAME_CHARS} characters"
    if name != name.strip():
        return "name has surrounding spaces"
    if _is_number(name):
        return f"name '{name}' is a number (it would be read as a weight)"
    bad = [c for c in bad_chars if c in name]
    if bad:
        return f"name '{name}' contains '{bad[0]}' (not allowed: {' '.join(bad_chars)})"
    return None


def tokens_problem(tokens: Sequence[str], counts: Sequence[int] = ACCEPTED_COUNTS) -> str | None:
    """None when the value list is valid for a preset (one of `counts` values), else the reason."""
    for i, t in enumerate(tokens, 1):
        p = weight_token_problem(t)
        if p:
            return f"value {i}: {p}"
    if len(tokens) not in counts:
        extra = "; Flux (61) is not supported" if len(tokens) == 61 else ""
        return (f"{len(tokens)} values; accepted counts are "
                f"{', '.join(str(c) for c in counts)}{extra}")
    return None


# Checkpoint-merge presets: 26 (SD1/SD2, BASE first), 25 (the same without BASE: the block-merge sliders'
# order IN00…OUT11, BASE set separately) and 20 (SDXL). LoRA-style 12/17 lists do not cover every block.
MERGE_COUNTS = (19, 20, 25, 26)
SDXL_MERGE_COUNTS = (19, 20)


def merge_tokens_problem(tokens: Sequence[str]) -> str | None:
    return tokens_problem(tokens, MERGE_COUNTS)


def parse_merge_preset_text(text: str, origin: str, where: str,
                            skipped: list[int] | None = None) -> tuple[list[Preset], list[str]]:
    """`parse_preset_text` for merge presets (20/25/26 values)."""
    return parse_preset_text(text, origin, where, skipped, merge_tokens_problem)


def normalise_values(values: str | Iterable[object]) -> list[str]:
    """'1, 0.5,R' or [1, 0.5, 'R'] → ['1', '0.5', 'R'] (numbers written in their shortest exact form)."""
    items = values.split(",") if isinstance(values, str) else list(values)
    out = []
    for v in items:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out.append(format_number(float(v)))
        else:
            out.append(str(v).strip())
    return out


def parse_preset_text(text: str, origin: str, where: str,
                      skipped: list[int] | None = None, problem_of=None) -> tuple[list[Preset], list[str]]:
    """Parse LBW preset text.  Returns (presets in file order incl. duplicates, warnings); the numbers of
    skipped lines are appended to `skipped` (for messages that must not quote foreign content)."""
    presets: list[Preset] = []
    warnings: list[str] = []
    seen: dict[str, int] = {}
    if text.startswith("\ufeff"):
        text = text[1:]
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        at = f"{where}:{no}"

        def skip(reason: str, no=no, at=at) -> None:
            warnings.append(f"preset file {at}: {reason}; line skipped")
            if skipped is not None:
                skipped.append(no)

        if "#" in line:  # LBW would ignore the whole line; say so instead of guessing
            skip("'#' inside a line (comments must be on their own line; LBW ignores such lines)")
            continue
        if ":" not in line:
            skip("no ':' between name and values (expected NAME:w1,w2,...)")
            continue
        name, _, rest = line.partition(":")
        name = name.strip()
        problem = name_problem(name)
        if problem:
            skip(problem)
            continue
        tokens = [t.strip() for t in rest.split(",")]
        problem = (problem_of or tokens_problem)(tokens)
        if problem:
            skip(f"preset '{name}': {problem}")
            continue
        if name in seen:
            warnings.append(f"preset file {at}: preset '{name}' defined again (first at line {seen[name]}); "
                            f"the later one is used")
        seen[name] = no
        presets.append(Preset(name, tokens, origin, at))
    return presets, warnings


def parse_element_text(text: str, origin: str, where: str,
                       skipped: list[int] | None = None) -> tuple[list[Preset], list[str]]:
    """Parse LBW's elemental preset text: presets separated by a blank line, each `NAME:entry` with more
    entries after ',' or on the following lines; an entry is `blocks:elements:ratio`.  Lines starting with
    '#' are comments.  A preset with a bad entry is skipped with a warning (file, line, reason)."""
    presets: list[Preset] = []
    warnings: list[str] = []
    seen: dict[str, int] = {}
    if text.startswith("\ufeff"):
        text = text[1:]
    group: list[tuple[int, str]] = []

    def flush() -> None:
        if not group:
            return
        no, first = group[0]
        at = f"{where}:{no}"
        lines = [first] + [line for _, line in group[1:]]
        group.clear()

        def skip(reason: str) -> None:
            warnings.append(f"elemental preset file {at}: {reason}; preset skipped")
            if skipped is not None:
                skipped.append(no)

        if ":" not in first:
            skip("no ':' after the name (expected NAME:blocks:elements:ratio)")
            return
        name, _, rest = first.partition(":")
        name = name.strip()
        problem = name_problem(name, ELEMENT_BAD_NAME_CHARS)
        if problem:
            skip(problem)
            return
        tokens = normalise_entries([rest] + lines[1:])
        problem = entries_problem(tokens)
        if problem:
            skip(f"preset '{name}': {problem}")
            return
        if name in seen:
            warnings.append(f"elemental preset file {at}: preset '{name}' defined again (first at line "
                            f"{seen[name]}); the later one is used")
        seen[name] = no
        presets.append(Preset(name, tokens, origin, at))

    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("#"):
            continue
        if not line:
            flush()
        else:
            group.append((no, line))
    flush()
    return presets, warnings


ELEMENT_BAD_NAME_CHARS = _BAD_NAME_CHARS + ";"  # ';' marks inline entries in a tag


def normalise_entries(values: str | Iterable[object]) -> list[str]:
    """Elemental entries given as text (',' or line breaks between entries) or a list → one entry each."""
    items = [values] if isinstance(values, str) else [str(v) for v in values]
    return [e.strip() for v in items for e in v.replace("\n", ",").split(",") if e.strip()]


def entries_problem(tokens: Sequence[str]) -> str | None:
    return parse_element_entries(",".join(tokens), ":")[2]


def _read(path: Path | None, origin: str, parse=parse_preset_text) -> tuple[dict[str, Preset], list[str]]:
    if path is None or not os.path.lexists(path):
        return {}, []
    try:   # refuses a FIFO/device at once (a plain read would block forever)
        text = read_small_text(path, "preset file", MAX_FILE_BYTES)
    except LoraStudioError as e:
        return {}, [f"{e}; its presets are not available"]
    items, warnings = parse(text, origin, str(path))
    out: dict[str, Preset] = {}
    for p in items:
        out.pop(p.name, None)  # a redefinition moves to its new position
        out[p.name] = p
    return out, warnings


class PresetStore:
    """Shipped + user presets.  `warnings` holds every problem met while reading or importing.
    `elemental`: the elemental presets (`lbwe=`) kept beside them (ElementPresetStore)."""

    _parse = staticmethod(parse_preset_text)
    _normalise = staticmethod(normalise_values)
    _problem = staticmethod(tokens_problem)
    _bad_name_chars = _BAD_NAME_CHARS
    header = USER_HEADER
    export_header = "# LoRA Studio presets (LBW format NAME:w1,...,wN)\n"   # export_text's first line
    kind = "preset"
    sdxl_counts = SDXL_COUNTS

    def __init__(self, builtin_path: str | os.PathLike | None = DEFAULT_BUILTIN,
                 user_path: str | os.PathLike | None = None):
        self.builtin_path = Path(builtin_path) if builtin_path else None
        self.user_path = Path(user_path) if user_path else None
        if not isinstance(self, (ElementPresetStore, MergePresetStore)):
            self.elemental = ElementPresetStore(DEFAULT_ELEMENTAL, elemental_user_path(self.user_path))
        self.warnings: list[str] = []
        self._builtin: dict[str, Preset] = {}
        self._user: dict[str, Preset] = {}
        self._base: dict[str, list[str]] = {}   # the user file as last read: edits are a diff against it
        self.reload()

    # ---- reading -------------------------------------------------------------------------------
    def reload(self) -> None:
        """Re-read both files (drops unsaved edits), so file edits take effect without a restart."""
        self._builtin, w1 = _read(self.builtin_path, "builtin", self._parse)
        self._user, w2 = _read(self.user_path, "user", self._parse)
        self._base = {n: list(p.tokens) for n, p in self._user.items()}
        self.warnings = w1 + w2

    def _merged(self) -> dict[str, Preset]:
        merged = dict(self._builtin)
        merged.update(self._user)
        return merged

    def names(self) -> list[str]:
        """All preset names: shipped order first, then user-only names."""
        return list(self._merged())

    def user_names(self) -> list[str]:
        return list(self._user)

    def origin(self, name: str) -> str | None:
        """'user', 'builtin' or None, for the exact name."""
        return "user" if name in self._user else "builtin" if name in self._builtin else None

    def _find(self, name: str) -> tuple[Preset | None, str | None]:
        merged = self._merged()
        if name in merged:
            return merged[name], None
        low = name.lower()
        cands = [n for n in merged if n.lower() == low]
        if len(cands) == 1:
            return merged[cands[0]], f"preset '{name}' matched '{cands[0]}' (case differs)"
        return None, None

    def lookup(self, name: str, arch: str | None = None) -> PresetHit | None:
        """Exact name, else a unique case-insensitive match (with a note); SDXL prefers `NAME_XL`."""
        name = name.strip()
        entry, note = self._find(name)
        if entry is None:
            return None
        if (arch or "").lower() == "sdxl" and len(entry.tokens) not in self.sdxl_counts:
            var, _ = self._find(entry.name + XL_SUFFIX)
            if (var is not None and len(var.tokens) in self.sdxl_counts
                    and not (entry.origin == "user" and var.origin == "builtin")):
                return PresetHit(var.name, list(var.tokens), var.origin, note, True)
        return PresetHit(entry.name, list(entry.tokens), entry.origin, note, False)

    def get(self, name: str, arch: str | None = None) -> list[str] | None:
        """Tokens of a preset (see `lookup`), or None when unknown."""
        hit = self.lookup(name, arch)
        return hit.tokens if hit else None

    def close_matches(self, name: str, n: int = 3, cutoff: float = 0.6) -> list[str]:
        """Up to `n` preset names similar to `name` (case-insensitive difflib ratio ≥ cutoff)."""
        names = self.names()
        by_low: dict[str, list[str]] = {}
        for x in names:
            by_low.setdefault(x.lower(), []).append(x)
        out: list[str] = []
        for low in difflib.get_close_matches(name.strip().lower(), list(by_low), n=n, cutoff=cutoff):
            out.extend(by_low[low])
        return out[:n]

    # ---- editing -------------------------------------------------------------------------------
    def case_clash(self, name: str) -> str | None:
        """Another preset whose name differs from `name` only by case (names are case-insensitive)."""
        low = name.lower()
        for other in self._merged():
            if other != name and other.lower() == low:
                return other
        return None

    def _checked(self, name, values) -> tuple[str, list[str]]:
        name = str(name).strip()
        problem = name_problem(name, self._bad_name_chars)
        if problem:
            raise PresetError(f"Preset not saved: {problem}. Use letters, digits, '_', '-', '.' or spaces.")
        clash = self.case_clash(name)
        if clash:
            raise PresetError(f"Preset '{name}' differs from the existing '{clash}' only by case, and preset "
                              f"names are case-insensitive; edit '{clash}' instead or choose another name.")
        tokens = self._normalise(values)
        problem = self._problem(tokens)
        if problem:
            raise PresetError(f"Preset '{name}' not saved: {problem}.")
        return name, tokens

    def set(self, name: str, values: str | Iterable[object]) -> None:
        """Create or replace a user preset (in memory; `save()` writes it)."""
        name, tokens = self._checked(name, values)
        self._user.pop(name, None)
        self._user[name] = Preset(name, tokens, "user", "edited")

    def delete(self, name: str) -> None:
        """Delete a user preset (a shipped preset it shadowed becomes visible again)."""
        name = name.strip()
        if name in self._user:
            del self._user[name]
            return
        if name in self._builtin:
            raise PresetError(f"Preset '{name}' is shipped with LoRA Studio and cannot be deleted; "
                              f"save a user preset of the same name to override it.")
        raise PresetError(f"No preset named '{name}'.")

    def save(self) -> Path:
        """Write this store's unsaved edits (a diff against the file as last read) into the user file; see
        `update`. The shipped file is never written."""
        changed = {n: p.tokens for n, p in self._user.items() if self._base.get(n) != p.tokens}
        deleted = [n for n in self._base if n not in self._user]
        return self.update(changed, deleted)

    def update(self, changed: dict[str, Iterable[object]] | None = None,
               deleted: Iterable[str] = ()) -> Path:
        """Set `changed` presets and delete `deleted` user presets in the user file, merged into what the
        file holds NOW: under a lock, the file is re-read, the changes applied, and the result written
        atomically (temp file + rename). Presets someone else saved meanwhile are kept. Reloads after."""
        if self.user_path is None:
            raise PresetError("No user preset file configured; presets can only be saved to a user file.")
        checked = [self._checked(n, v) for n, v in (changed or {}).items()]
        deleted = [str(n).strip() for n in deleted]
        for n in deleted:
            if n in self._builtin and n not in self._user and n not in self._base:
                raise PresetError(f"Preset '{n}' is shipped with LoRA Studio and cannot be deleted; "
                                  f"save a user preset of the same name to override it.")
        with locked(self.user_path):
            current, _ = _read(self.user_path, "user", self._parse)
            for n in deleted:
                current.pop(n, None)   # already gone: another writer deleted it too
            for n, tokens in checked:
                current.pop(n, None)
                current[n] = Preset(n, tokens, "user", "edited")
            atomic_write_text(self.user_path, self.header + self._lines(current.values()), make_dirs=True)
        self.reload()
        return self.user_path

    # ---- import / export -----------------------------------------------------------------------
    @staticmethod
    def _lines(presets: Iterable[Preset]) -> str:
        return "".join(f"{p.name}:{','.join(p.tokens)}\n" for p in presets)

    def export_text(self, user_only: bool = False, names: Iterable[str] | None = None) -> str:
        """Presets as LBW-format text (all merged presets, or only user ones, or the given names)."""
        merged = self._user if user_only else self._merged()
        chosen = list(merged.values()) if names is None else [merged[n] for n in names if n in merged]
        return self.export_header + self._lines(chosen)

    def import_text(self, text: str, source: str = "import",
                    skipped: list[int] | None = None) -> tuple[list[str], list[str]]:
        """Add presets from LBW-format text as user presets (in memory).  Returns (names, warnings);
        numbers of skipped lines go to `skipped`."""
        items, warnings = self._parse(text, "user", source, skipped)
        names: list[str] = []
        for p in items:
            clash = self.case_clash(p.name)
            if clash and clash not in names:
                warnings.append(f"{p.where}: preset '{p.name}' differs from '{clash}' only by case; line skipped")
                if skipped is not None:
                    skipped.append(int(p.where.rsplit(":", 1)[1]))
                continue
            if p.name in self._user and p.name not in names:
                warnings.append(f"{p.where}: user preset '{p.name}' replaced by the imported one")
            self._user.pop(p.name, None)
            self._user[p.name] = p
            if p.name not in names:
                names.append(p.name)
        self.warnings.extend(warnings)
        return names, warnings


class ElementPresetStore(PresetStore):
    """Elemental presets (`lbwe=NAME`): LBW's elempresets format, shipped `lib_lora/data/elempresets.txt` +
    a user file beside the block presets; the same lookup, locking and atomic saves as PresetStore."""

    _parse = staticmethod(parse_element_text)
    _normalise = staticmethod(normalise_entries)
    _problem = staticmethod(entries_problem)
    _bad_name_chars = ELEMENT_BAD_NAME_CHARS
    # no ':' in the header: LBW reads any blank-line group holding a ':' as a preset
    header = ("# LoRA Studio user elemental presets in LBW's format, NAME then entries blocks, elements, ratio\n"
              "# joined by colons; a blank line ends a preset. These override shipped presets of the same name.\n\n")
    kind = "elemental preset"
    export_header = "# LoRA Studio elemental presets\n\n"

    def lookup(self, name: str, arch: str | None = None) -> PresetHit | None:
        return super().lookup(name, None)  # no SDXL `_XL` variants: entries name blocks, not a format

    @staticmethod
    def _lines(presets: Iterable[Preset]) -> str:
        return "".join(f"{p.name}:{','.join(p.tokens)}\n\n" for p in presets)


class MergePresetStore(PresetStore):
    """Checkpoint-merge block weights (`merge --block-weights NAME`): the shipped, editable
    `lib_lora/data/merge_presets.txt` + a user file (`lora_studio_merge_presets.txt`), same line format,
    lookup, `NAME_XL` variants (20 values) for SDXL, locking and atomic saves as PresetStore; 20/25/26 values."""

    _parse = staticmethod(parse_merge_preset_text)
    _problem = staticmethod(merge_tokens_problem)
    header = ("# LoRA Studio user merge presets (NAME:w1,...,wN): 26 values BASE,IN00..IN11,M00,OUT00..OUT11,\n"
              "# 25 without BASE, or 20 for SDXL; NAME_XL (20 values) is used for NAME when the models are SDXL.\n")
    kind = "merge preset"
    sdxl_counts = SDXL_MERGE_COUNTS


DEFAULT_MERGE_BUILTIN = Path(__file__).resolve().parent / "data" / "merge_presets.txt"
MERGE_USER_FILE_NAME = "lora_studio_merge_presets.txt"


def default_merge_store(user_path: str | os.PathLike | None = None,
                        lora_dir: str | os.PathLike | None = None) -> MergePresetStore:
    """The merge presets every front end uses: shipped + the user file (`user_path`, else
    `lora_studio_merge_presets.txt` beside the LoRA presets user file of `lora_dir`, else shipped only)."""
    if user_path is None and lora_dir is not None:
        user_path = default_user_path(lora_dir).with_name(MERGE_USER_FILE_NAME)
    return MergePresetStore(DEFAULT_MERGE_BUILTIN, user_path)


def elemental_user_path(user_path: Path | None) -> Path | None:
    """The elemental user file beside a block-preset user file: `presets` in its name becomes `elempresets`
    (LBW's file name), e.g. `lora_studio_presets.txt` → `lora_studio_elempresets.txt`."""
    if user_path is None:
        return None
    name = user_path.name
    new = name.replace("presets", "elempresets", 1) if "presets" in name else f"{user_path.stem}_elemental.txt"
    return user_path.with_name(new)


def default_user_path(lora_dir: str | os.PathLike) -> Path:
    """The user presets file used when none is given: `lora_studio_presets.txt` in the (first) LoRA
    folder. When that file does not exist but `lora_dir` is a WebUI's `models/Lora` whose WebUI keeps
    LoRA Studio presets (`<webui>/lora_studio/presets.txt`), that file is used, so the app and CLI pointed
    at a WebUI's LoRA folder see the presets saved in the WebUI."""
    folder = Path(os.path.abspath(os.fspath(lora_dir)))
    own = folder / USER_FILE_NAME
    webui = folder.parent.parent / "lora_studio" / "presets.txt"
    if not own.exists() and folder.parent.name == "models" and webui.is_file():
        return webui
    return own


def default_store(user_path: str | os.PathLike | None = None,
                  lora_dir: str | os.PathLike | None = None) -> PresetStore:
    """The PresetStore every front end builds: shipped presets + the user file (`user_path`, else
    `default_user_path(lora_dir)`, else shipped only)."""
    if user_path is None and lora_dir is not None:
        user_path = default_user_path(lora_dir)
    return PresetStore(DEFAULT_BUILTIN, user_path)
