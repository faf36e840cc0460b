"""A tagger's label list, one entry per output column, in file order: WD14 `selected_tags.csv`
(tag_id,name,category,count), Z3D-E621 `tags-selected.csv` (a `name` column; `category` when present),
DeepDanbooru `tags.txt` (one tag per line; `rating:*` tags are ratings; character tags listed in a
`tags-character.txt` beside it, when there is one)."""

from __future__ import annotations

import csv
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lib_lora.errors import LoraStudioError

RATING, GENERAL, CHARACTER = 9, 0, 4
CATEGORY_NAMES = {RATING: "rating", GENERAL: "general", CHARACTER: "character"}


class TagFileError(LoraStudioError):
    """A selected_tags.csv that cannot be used."""


@dataclass
class TagSet:
    names: list[str]                    # Danbooru form, underscores kept (formatting is postprocess's job)
    categories: np.ndarray              # int, one per row
    rating_idx: np.ndarray = field(init=False)
    general_idx: np.ndarray = field(init=False)
    character_idx: np.ndarray = field(init=False)

    def __post_init__(self):
        cats = np.asarray(self.categories, dtype=np.int64)
        self.categories = cats
        self.rating_idx = np.flatnonzero(cats == RATING)
        self.character_idx = np.flatnonzero(cats == CHARACTER)
        # Other taggers' CSVs add artist(1)/copyright(3)/meta(5): they are thresholded like general tags.
        self.general_idx = np.flatnonzero((cats != RATING) & (cats != CHARACTER))

    def __len__(self) -> int:
        return len(self.names)


CHARACTER_LIST = "tags-character.txt"


def _lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8-sig") as fh:
        return [ln.strip() for ln in fh if ln.strip()]


@contextmanager
def _reading(path: Path):
    """The one wording of a tag file that cannot be read (both loaders): the problem and the fix, one line."""
    try:
        yield
    except FileNotFoundError:
        raise TagFileError(f"{path} is missing; put the model's {path.name} next to its .onnx file.") from None
    except UnicodeDecodeError:
        raise TagFileError(f"{path} is not UTF-8 text; re-download {path.name}.") from None


def _check_not_empty(path: Path, names: list[str]) -> None:
    if not names:
        raise TagFileError(f"{path} has no tags; re-download {path.name}.")


def load_tag_lines(path) -> TagSet:
    """DeepDanbooru: one tag per line, in output order."""
    path = Path(path)
    with _reading(path):
        names = _lines(path)
    char_path = path.with_name(CHARACTER_LIST)
    chars = set()
    if char_path.is_file():
        with _reading(char_path):  # its own message names the file that is actually bad
            chars = set(_lines(char_path))
    _check_not_empty(path, names)
    cats = [RATING if n.startswith("rating:") else CHARACTER if n in chars else GENERAL for n in names]
    return TagSet(names, np.array(cats))


def load_tags(path, require_category: bool = True) -> TagSet:
    """Parse with a real CSV reader: names may be quoted with doubled quotes (`don't_say_"lazy"`).
    `require_category=False` (Z3D-E621): a file without a category column is all general tags.
    A `.txt` list is read as DeepDanbooru's."""
    path = Path(path)
    if path.suffix.lower() == ".txt":
        return load_tag_lines(path)
    with _reading(path):
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            if "name" not in header or ("category" not in header and require_category):
                raise TagFileError(f"{path}: not a tagger label file (header {header or 'missing'}); "
                                   "expected tag_id,name,category,count as in the model's selected_tags.csv.")
            reader.fieldnames = header
            names, cats = [], []
            for line_no, row in enumerate(reader, start=2):
                name = (row.get("name") or "").strip()
                cat = (row.get("category") or "").strip() if "category" in header else str(GENERAL)
                if not name:
                    raise TagFileError(f"{path}:{line_no}: empty tag name; re-download {path.name}.")
                try:
                    cats.append(int(cat))
                except ValueError:
                    raise TagFileError(f"{path}:{line_no}: category '{cat}' is not a number; "
                                       f"re-download {path.name}.") from None
                names.append(name)
    _check_not_empty(path, names)
    return TagSet(names, np.array(cats))
