"""Caption browser core: a folder's images with their caption files, one-caption edits, tag search and
frequency, and bulk tag changes (replace / remove / move to front / exclude by regex) planned first,
previewed, applied atomically and undone byte for byte. No UI here: the Captions section and tests drive it.

Tags are compared as the tagger compares them (`postprocess.normalize`: case, `_`/space, escapes and
weights ignored); the text written is the user's. A caption file that is read-only, not UTF-8 or spans
several lines is listed as "left untouched" and never rewritten by a bulk change.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from lib_lora import fileio
from lib_lora.errors import LoraStudioError
from lib_lora.tagger import captions
from lib_lora.tagger.pipeline import IMAGE_EXTS, iter_images
from lib_lora.tagger.postprocess import dedupe, normalize

ACTIONS = ("replace", "remove", "move to front", "exclude regex")
SEPARATOR = ", "
BOM = b"\xef\xbb\xbf"
SAMPLE = 5


@dataclass
class Entry:
    image: Path
    caption: Path
    raw: bytes | None            # the caption file's bytes; None: no caption file yet
    tags: list[str]
    problem: str = ""            # why bulk changes leave it alone ("read-only", "not UTF-8", "several lines")

    @property
    def text(self) -> str:
        return SEPARATOR.join(self.tags)


@dataclass
class Folder:
    root: Path
    caption_ext: str
    entries: list[Entry]

    def rel(self, e: Entry) -> str:
        return e.image.relative_to(self.root).as_posix()

    def find(self, rel: str) -> Entry:
        for e in self.entries:
            if self.rel(e) == rel:
                return e
        raise LoraStudioError(f"'{rel}' is not an image of {self.root}; open the folder again.")

    @property
    def untouched(self) -> list[Entry]:
        return [e for e in self.entries if e.problem]

    def untouched_line(self) -> str:
        """One line for the captions bulk changes leave alone (empty when there are none)."""
        bad = self.untouched
        if not bad:
            return ""
        kinds = Counter(e.problem for e in bad)
        names = ", ".join(e.caption.name for e in bad[:5]) + (" …" if len(bad) > 5 else "")
        what = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        return (f"{len(bad)} caption file{'s' if len(bad) != 1 else ''} left untouched ({what}): {names}; "
                "make them writable single-line UTF-8 text to include them.")


def _decode(raw: bytes) -> tuple[list[str], str]:
    """Bytes of a caption file → (tags, problem)."""
    body = raw[len(BOM):] if raw.startswith(BOM) else raw
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return [], "not UTF-8"
    lines = [ln for ln in text.splitlines() if ln.strip()]
    tags = captions.split_caption(text)
    return tags, ("several lines" if len(lines) > 1 else "")


def read_entry(image: Path, caption: Path) -> Entry:
    try:
        raw = caption.read_bytes()
    except FileNotFoundError:
        return Entry(image, caption, None, [])
    except OSError as exc:
        return Entry(image, caption, None, [], f"unreadable ({exc.strerror or type(exc).__name__})")
    tags, problem = _decode(raw)
    if not problem and captions.is_read_only(caption):
        problem = "read-only"
    return Entry(image, caption, raw, tags, problem)


def open_folder(root, recursive: bool = False, caption_ext: str = ".txt", extensions=IMAGE_EXTS) -> Folder:
    """Every image under `root` (sorted, as the tagger lists them) with `<stem><ext>` beside it."""
    root = Path(root)
    ext = captions.check_ext(caption_ext)
    if not root.is_dir():
        raise LoraStudioError(f"image folder '{root}' does not exist; give a folder of images.")
    entries = [read_entry(img, captions.caption_path(img, root, None, ext))
               for img in iter_images(root, recursive, extensions)]
    return Folder(root, ext, entries)


# ---- search and frequency ----------------------------------------------------------------------------


def frequencies(folder: Folder) -> Counter:
    """Files holding each tag, keyed by the tag's most common spelling."""
    per_key: dict[str, Counter] = {}
    for e in folder.entries:
        for t in dedupe(e.tags):
            per_key.setdefault(normalize(t), Counter())[t] += 1
    return Counter({spellings.most_common(1)[0][0]: sum(spellings.values()) for spellings in per_key.values()})


def search(folder: Folder, query: str) -> list[Entry]:
    """Entries with a tag containing `query` (normalised); `"exact tag"` in quotes matches whole tags only;
    an empty query matches all."""
    q = str(query or "").strip()
    if not q:
        return list(folder.entries)
    exact = len(q) >= 2 and q[0] == q[-1] == '"'
    key = normalize(q[1:-1] if exact else q)
    if exact:
        return [e for e in folder.entries if any(normalize(t) == key for t in e.tags)]
    return [e for e in folder.entries if any(key in normalize(t) for t in e.tags)]


# ---- bulk changes ----------------------------------------------------------------------------------


def tag_operation(action: str, tag: str, replacement: str = "") -> Callable[[list[str]], list[str]]:
    """The change to one caption's tags. replace: every tag equal to `tag` becomes `replacement` (empty:
    removed; several comma-separated tags allowed); remove; move to front; exclude regex: drop every tag
    whose normalised form fully matches `tag` (case-insensitive, as the tagger's --exclude-regex)."""
    if action not in ACTIONS:
        raise LoraStudioError(f"caption action '{action}' is unknown; use one of {', '.join(ACTIONS)}.")
    tag = str(tag or "")
    captions.check_one_line(tag, "the tag")
    captions.check_one_line(replacement or "", "the replacement")
    if action == "exclude regex":
        try:
            pattern = re.compile(tag.strip(), re.IGNORECASE)
        except re.error as exc:
            raise LoraStudioError(f"exclude pattern '{tag.strip()}' is not a valid regular expression: "
                                  f"{exc}.") from None
        if not tag.strip():
            raise LoraStudioError("Type a regular expression for the tags to exclude (e.g. .*background).")
        return lambda tags: [t for t in tags if not pattern.fullmatch(normalize(t))]
    key = normalize(tag)
    if not key:
        raise LoraStudioError("Type the tag to change (e.g. long hair).")
    if "," in tag:
        raise LoraStudioError(f"'{tag.strip()}' holds a comma: give one tag (captions split tags on commas).")
    if action == "remove":
        return lambda tags: [t for t in tags if normalize(t) != key]
    if action == "move to front":
        return lambda tags: ([t for t in tags if normalize(t) == key][:1]
                             + [t for t in tags if normalize(t) != key])
    new = [t.strip() for t in str(replacement or "").split(",") if t.strip()]

    def replace(tags):
        out = []
        for t in tags:
            out.extend(new if normalize(t) == key else [t])
        return dedupe(out)
    return replace


def encode(tags: list[str], like: bytes | None) -> bytes:
    """Tags → file bytes, keeping the original's BOM and trailing newline."""
    like = like or b""
    body = SEPARATOR.join(tags).encode("utf-8")
    return (BOM if like.startswith(BOM) else b"") + body + (b"\n" if like.endswith((b"\n", b"\r")) else b"")


@dataclass
class FileChange:
    caption: Path
    before: bytes | None         # None: the file did not exist
    after: bytes
    before_tags: list[str]
    after_tags: list[str]


@dataclass
class Plan:
    """What a bulk change would do; applying writes exactly `changes` (the preview shows the same list)."""
    description: str
    changes: list[FileChange]
    untouched: list[Entry] = field(default_factory=list)

    @property
    def digest(self) -> str:
        h = hashlib.sha256(self.description.encode())
        for c in self.changes:
            for part in (str(c.caption).encode(), c.before or b"\0none", c.after):
                h.update(len(part).to_bytes(8, "little"))
                h.update(part)
        return h.hexdigest()

    def preview_lines(self, sample: int = SAMPLE) -> list[str]:
        n = len(self.changes)
        head = f"{self.description}: {n} caption file{'s' if n != 1 else ''} would change"
        if self.untouched:
            head += f" ({len(self.untouched)} left untouched)"
        lines = [head + "."]
        for c in self.changes[:sample]:
            lines.append(f"{c.caption.name}: {SEPARATOR.join(c.before_tags) or '(empty)'} → "
                         f"{SEPARATOR.join(c.after_tags) or '(empty)'}")
        if n > sample:
            lines.append(f"… and {n - sample} more.")
        return lines


def describe(action: str, tag: str, replacement: str = "") -> str:
    tag = str(tag or "").strip()
    if action == "replace":
        return f"replace '{tag}' with '{str(replacement or '').strip()}'" if str(replacement or "").strip() \
            else f"replace '{tag}' with nothing (remove it)"
    return f"{action} '{tag}'"


def plan_change(folder: Folder, action: str, tag: str, replacement: str = "") -> Plan:
    op = tag_operation(action, tag, replacement)
    changes = []
    for e in folder.entries:
        if e.problem or e.raw is None:      # no caption file: nothing to change
            continue
        after_tags = op(list(e.tags))
        after = encode(after_tags, e.raw)
        if after_tags != e.tags and after != e.raw:
            changes.append(FileChange(e.caption, e.raw, after, list(e.tags), after_tags))
    return Plan(describe(action, tag, replacement), changes, folder.untouched)


@dataclass
class Journal:
    """What an applied change wrote: enough to put every file back byte for byte."""
    description: str
    writes: list[FileChange]
    skipped: list[str] = field(default_factory=list)     # "<name>: why"

    def summary(self) -> str:
        n = len(self.writes)
        text = f"{self.description}: {n} caption file{'s' if n != 1 else ''} changed"
        if self.skipped:
            text += f"; {len(self.skipped)} kept as they are ({'; '.join(self.skipped[:3])}" \
                    + (" …" if len(self.skipped) > 3 else "") + ")"
        return text + "."


def _current(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _write_bytes(path: Path, data: bytes) -> None:
    fileio.atomic_write(path, lambda f: f.write(data), overwrite=True)


def _put(change_path: Path, expected: bytes | None, data: bytes | None, journal_skip: list[str]) -> bool:
    """Write `data` (None: delete) if the file still holds `expected`; otherwise leave it and say why."""
    now = _current(change_path)
    if now != expected:
        journal_skip.append(f"{change_path.name}: changed since")
        return False
    if now is not None and captions.is_read_only(change_path):
        journal_skip.append(f"{change_path.name}: read-only")
        return False
    try:
        if data is None:
            os.unlink(change_path)
        else:
            _write_bytes(change_path, data)
    except OSError as exc:    # fileio turns write errors into LoraFileError (an OSError subclass too)
        journal_skip.append(f"{change_path.name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        return False
    return True


def apply(plan: Plan) -> Journal:
    """Write the planned files, each atomically and only if it still holds what the plan saw."""
    journal = Journal(plan.description, [])
    for c in plan.changes:
        if _put(c.caption, c.before, c.after, journal.skipped):
            journal.writes.append(c)
    return journal


def undo(journal: Journal) -> Journal:
    """Put back the bytes the journal's files held before, for each file still holding what was written."""
    back = Journal(f"undo of {journal.description}", [])
    for c in reversed(journal.writes):
        if _put(c.caption, c.after, c.before, back.skipped):
            back.writes.append(FileChange(c.caption, c.after, c.before or b"", c.after_tags, c.before_tags))
    return back


def edit(folder: Folder, rel: str, text: str, expected: bytes | None = ...) -> Journal:
    """Set one image's caption to `text` (one line; the file is created when missing). `expected`: the
    bytes the editor showed; a file changed since is not overwritten."""
    e = folder.find(rel)
    captions.check_one_line(text, f"the caption of {rel}")
    if e.problem == "read-only" or captions.is_read_only(e.caption):
        raise LoraStudioError(f"{e.caption.name} is read-only: kept unchanged; make it writable to edit it.")
    if e.problem == "not UTF-8":
        raise LoraStudioError(f"{e.caption.name} is not UTF-8 text: kept unchanged; convert it to UTF-8 to "
                              "edit it here.")
    if e.problem == "several lines":
        raise LoraStudioError(f"{e.caption.name} spans several lines: kept unchanged; edit it in a text editor "
                              "(captions here are one line of tags).")
    if e.problem:
        raise LoraStudioError(f"{e.caption.name} is {e.problem}: kept unchanged.")
    tags = [t.strip() for t in str(text).split(",") if t.strip()]
    after = encode(tags, e.raw)
    journal = Journal(f"edit of {e.caption.name}", [])
    if after == e.raw:
        return journal
    before = e.raw if expected is ... else expected
    if not _put(e.caption, before, after, journal.skipped):
        raise LoraStudioError(f"{e.caption.name} was not saved ({journal.skipped[0].split(': ', 1)[1]}); "
                              "open the folder again to see its current caption.")
    journal.writes.append(FileChange(e.caption, before, after, list(e.tags), tags))
    return journal
