"""`selected_tags.csv`: the label list of a WD14 model, one row per output column, in file order."""

from __future__ import annotations

import csv
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


def load_tags(path) -> TagSet:
    """Parse with a real CSV reader: names may be quoted with doubled quotes (`don't_say_"lazy"`)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            if "name" not in header or "category" not in header:
                raise TagFileError(f"{path}: not a tagger label file (header {header or 'missing'}); "
                                   "expected tag_id,name,category,count as in the model's selected_tags.csv.")
            reader.fieldnames = header
            names, cats = [], []
            for line_no, row in enumerate(reader, start=2):
                name, cat = (row.get("name") or "").strip(), (row.get("category") or "").strip()
                if not name:
                    raise TagFileError(f"{path}:{line_no}: empty tag name; re-download selected_tags.csv.")
                try:
                    cats.append(int(cat))
                except ValueError:
                    raise TagFileError(f"{path}:{line_no}: category '{cat}' is not a number; "
                                       "re-download selected_tags.csv.") from None
                names.append(name)
    except FileNotFoundError:
        raise TagFileError(f"{path} is missing; put the model's selected_tags.csv next to model.onnx.") from None
    except UnicodeDecodeError:
        raise TagFileError(f"{path} is not UTF-8 text; re-download selected_tags.csv.") from None
    if not names:
        raise TagFileError(f"{path} has no tag rows; re-download selected_tags.csv.")
    return TagSet(names, np.array(cats))
