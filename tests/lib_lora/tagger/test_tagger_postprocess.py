"""Post-processing: thresholds (>), MCut, ordering, emoticons, escaping, ratings, exclude, added tags."""

import numpy as np
import pytest

from lib_lora.errors import LoraStudioError
from lib_lora.tagger.captions import combine
from lib_lora.tagger.postprocess import (EMOTICONS, Postprocessor, TagOptions, dedupe, format_tag, mcut_threshold,
                                         normalize)
from lib_lora.tagger.tags import TagSet, load_tags
from tests.tagger_models import NAMES, ROWS, write_csv


@pytest.fixture(scope="module")
def tagset(tmp_path_factory):
    return load_tags(write_csv(tmp_path_factory.mktemp("csv") / "selected_tags.csv"))


def probs(**named):
    p = np.zeros(len(NAMES), dtype=np.float32)
    for k, v in named.items():
        p[NAMES.index({"dont": 'don\'t_say_"lazy"', "smile": "^_^", "oo": "(o)_(o)",
                       "marisa": "kirisame_marisa_(touhou)"}.get(k, k))] = v
    return p


def test_csv_reader_quotes_and_categories(tagset, tmp_path):
    assert tagset.names == NAMES and 'don\'t_say_"lazy"' in tagset.names
    assert [tagset.names[i] for i in tagset.rating_idx] == ["general", "sensitive", "questionable", "explicit"]
    assert [tagset.names[i] for i in tagset.character_idx] == ["hatsune_miku", "kirisame_marisa_(touhou)"]
    assert len(tagset.general_idx) == len(ROWS) - 6
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(LoraStudioError, match="expected tag_id,name,category,count"):
        load_tags(tmp_path / "bad.csv")
    with pytest.raises(LoraStudioError, match="missing.csv next to its .onnx file"):
        load_tags(tmp_path / "missing.csv")


def test_thresholds_are_strict_and_per_category(tagset):
    p = probs(long_hair=0.35, red_theme=0.36, hatsune_miku=0.85, marisa=0.86, general=0.9)
    r = Postprocessor(tagset, TagOptions())(p)
    assert r.tags == ["kirisame marisa (touhou)", "red theme"]     # 0.35 and 0.85 are not > threshold
    r = Postprocessor(tagset, TagOptions(character_threshold=1.5))(p)
    assert r.characters == [] and r.tags == ["red theme"]
    assert r.ratings["general"] == pytest.approx(0.9) and r.rating == "general"


def test_sorting_and_characters_first(tagset):
    p = probs(long_hair=0.5, red_theme=0.7, blue_theme=0.6, hatsune_miku=0.95)
    assert Postprocessor(tagset, TagOptions())(p).tags == ["hatsune miku", "red theme", "blue theme", "long hair"]
    assert Postprocessor(tagset, TagOptions(sort="alphabetical"))(p).tags == [
        "blue theme", "hatsune miku", "long hair", "red theme"]
    assert Postprocessor(tagset, TagOptions(sort="model"))(p).tags == [
        "blue theme", "red theme", "long hair", "hatsune miku"]
    p2 = probs(red_theme=0.99, hatsune_miku=0.9)
    assert Postprocessor(tagset, TagOptions(characters_first=True))(p2).tags == ["hatsune miku", "red theme"]
    assert Postprocessor(tagset, TagOptions(max_tags=1))(p).tags == ["hatsune miku"]


def test_emoticons_keep_underscores_and_escaping(tagset):
    assert len(EMOTICONS) == 19
    p = probs(smile=0.9, oo=0.8, dont=0.7, marisa=0.99)
    r = Postprocessor(tagset, TagOptions())(p)
    assert r.tags == ["kirisame marisa (touhou)", "^_^", "(o)_(o)", 'don\'t say "lazy"']
    r = Postprocessor(tagset, TagOptions(escape_brackets=True))(p)
    assert r.tags[0] == r"kirisame marisa \(touhou\)" and r.tags[2] == r"\(o\)_\(o\)"
    assert Postprocessor(tagset, TagOptions(replace_underscores=False))(p).tags[0] == "kirisame_marisa_(touhou)"
    assert format_tag("a\\b", escape_brackets=True) == "a\\\\b" and format_tag("[x]", escape_brackets=True) == "[x]"


def test_mcut():
    assert mcut_threshold([0.9, 0.85, 0.2, 0.1]) == pytest.approx(0.525)
    assert mcut_threshold([0.5]) == 0.0


def test_mcut_per_category(tagset):
    p = probs(red_theme=0.3, blue_theme=0.28, long_hair=0.05, hatsune_miku=0.2, marisa=0.1)
    r = Postprocessor(tagset, TagOptions(general_mcut=True, character_mcut=True))(p)
    assert set(r.tags) == {"red theme", "blue theme", "hatsune miku"}
    # the character floor is 0.15: a cut below it is raised
    p = probs(hatsune_miku=0.14, marisa=0.01)
    assert Postprocessor(tagset, TagOptions(character_mcut=True))(p).characters == []


def test_ratings_optional_first_last(tagset):
    p = probs(red_theme=0.9, sensitive=0.7, general=0.2)
    assert Postprocessor(tagset, TagOptions())(p).tags == ["red theme"]
    assert Postprocessor(tagset, TagOptions(rating="first"))(p).tags == ["sensitive", "red theme"]
    assert Postprocessor(tagset, TagOptions(rating="last"))(p).tags == ["red theme", "sensitive"]


def test_exclude_matches_any_form_and_added_tags_dedupe(tagset):
    p = probs(long_hair=0.9, red_theme=0.8, blue_theme=0.7, marisa=0.99)
    o = TagOptions(exclude=["Long Hair", "red_theme"], prepend=["mytrigger", "Blue_Theme"], append=["extra"])
    assert Postprocessor(tagset, o)(p).tags == ["mytrigger", "Blue_Theme", "kirisame marisa (touhou)", "extra"]
    o = TagOptions(exclude=["kirisame marisa \\(touhou\\)"], exclude_patterns=[".* theme"])
    assert Postprocessor(tagset, o)(p).tags == ["long hair"]
    o = TagOptions(replace={"long_hair": "very long hair"}, weights=True)
    assert "(very long hair:0.90)" in Postprocessor(tagset, o)(p).tags
    with pytest.raises(LoraStudioError, match="regular expression"):
        TagOptions(exclude_patterns=["("]).validate()
    with pytest.raises(LoraStudioError, match="general threshold"):
        TagOptions(general_threshold=float("nan")).validate()


def test_wrong_width_is_a_clear_error(tagset):
    with pytest.raises(LoraStudioError, match="different models"):
        Postprocessor(tagset, TagOptions())(np.zeros(5))


def test_normalize_dedupe_combine():
    assert normalize(" Long_Hair ") == normalize("long hair") == normalize("(long hair:1.2)")
    assert normalize(r"\(o\)_\(o\)") == "(o)_(o)" and normalize("^_^") != normalize("^ ^")
    assert dedupe(["a b", "A_B", "c", "", " c "]) == ["a b", "c"]
    assert combine(["mine", "long hair"], ["long_hair", "new"], "append") == ["mine", "long hair", "new"]
    assert combine(["mine", "long hair"], ["long_hair", "new"], "prepend") == ["long_hair", "new", "mine"]
    assert combine(["mine"], ["new"], "overwrite") == ["new"]


def test_other_categories_count_as_general():
    ts = TagSet(["r", "artist_x", "g"], np.array([9, 1, 0]))
    assert ts.general_idx.tolist() == [1, 2]
