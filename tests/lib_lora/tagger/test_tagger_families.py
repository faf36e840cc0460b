"""Tagger families with one interface: WD14, Z3D-E621, DeepDanbooru. Tiny real ONNX models built with the
`onnx` helper prove each family's preprocessing (channel order, value range, pad colour) and label file."""

import numpy as np
import pytest
from PIL import Image

from lib_lora.tagger import model as tm
from lib_lora.tagger.pipeline import FolderJob, run_folder, tag_image
from lib_lora.tagger.postprocess import TagOptions
from lib_lora.tagger.tags import CHARACTER, GENERAL, RATING, load_tags
from tests.tagger_models import DD_NAMES, NAMES, make_model_dir

QUIET = dict(log=lambda m: None)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    for k in ("v3", "z3d", "deepdanbooru"):
        make_model_dir(root / k, k)
    return root


def tagger(models, name):
    return tm.Tagger(tm.resolve_model(name, models, allow_download=False, paths=False))


def test_folders_are_recognised_by_their_files(models):
    assert tm.list_local_models(models)[:3] == ["deepdanbooru", "v3", "z3d"]
    fams = {k: tm.resolve_model(k, models, allow_download=False, paths=False).family for k in ("v3", "z3d", "deepdanbooru")}
    assert fams == {"v3": "wd14", "z3d": "z3d-e621", "deepdanbooru": "deepdanbooru"}
    dd = tm.resolve_model(str(models / "deepdanbooru" / "deepdanbooru.onnx"), models)
    assert dd.family == "deepdanbooru" and dd.tags.name == "tags.txt"


def test_label_files_per_family(models):
    dd = load_tags(models / "deepdanbooru" / "tags.txt")
    assert dd.names == DD_NAMES
    assert [dd.names[i] for i in dd.rating_idx] == ["rating:general", "rating:sensitive", "rating:questionable",
                                                    "rating:explicit"]
    assert [dd.names[i] for i in dd.character_idx] == ["hatsune_miku", "kirisame_marisa_(touhou)"]
    z = load_tags(models / "z3d" / "tags-selected.csv", require_category=False)
    assert z.names == NAMES and set(z.categories.tolist()) == {GENERAL}
    assert CHARACTER not in z.categories and RATING not in z.categories
    with pytest.raises(tm.LoraStudioError, match="expected tag_id,name,category,count"):
        load_tags(models / "z3d" / "tags-selected.csv")          # a WD14 file must say its categories


def test_preprocessing_per_family(models):
    """A red, wide image: WD14/Z3D see BGR 0–255 on white, DeepDanbooru RGB 0–1 on black. The stand-ins
    compute the same features from those, so a wrong channel order, range or pad colour changes the tags."""
    img = Image.new("RGB", (32, 16), (255, 0, 0))
    opts = TagOptions(general_threshold=0.5)
    wd, z3d, dd = (tagger(models, k) for k in ("v3", "z3d", "deepdanbooru"))
    assert dd.pixels.bgr is False and dd.pixels.fill == (0, 0, 0) and wd.pixels.bgr and z3d.pixels.scale == 1.0
    r_wd, r_z, r_dd = (tag_image(t, img, opts) for t in (wd, z3d, dd))
    assert "red theme" in r_wd.tags and "white background" in r_wd.tags
    assert "red theme" in r_dd.tags and "black background" in r_dd.tags and "white background" not in r_dd.tags
    assert "red theme" in r_z.tags and "white background" in r_z.tags          # Z3D: WD14's pixel contract
    # Square images (no padding): the three families give the same probabilities.
    sq = Image.new("RGB", (32, 32), (10, 200, 30))
    a = tag_image(wd, sq, TagOptions(general_threshold=0.0)).confidences
    b = tag_image(dd, sq, TagOptions(general_threshold=0.0)).confidences
    assert a.keys() == b.keys() and np.allclose([a[k] for k in a], [b[k] for k in a], atol=1e-4)
    assert set(r_dd.ratings) == {"rating:general", "rating:sensitive", "rating:questionable", "rating:explicit"}
    assert "DeepDanbooru deepdanbooru" in dd.describe()


def test_folder_run_with_deepdanbooru(models, tmp_path):
    for i in range(3):
        Image.new("RGB", (20, 40), (0, 0, 255)).save(tmp_path / f"{i}.png")
    rep = run_folder(tagger(models, "deepdanbooru"), FolderJob(input_dir=tmp_path, existing="overwrite",
                                                               tag_options=TagOptions(general_threshold=0.5)), **QUIET)
    assert rep.written == 3
    assert "blue theme" in (tmp_path / "0.txt").read_text() and "black background" in (tmp_path / "0.txt").read_text()


def test_known_models_list_every_family():
    k = tm.KNOWN_MODELS
    for name in ("wd-v1-4-convnext-tagger-v2", "wd-v1-4-vit-tagger-v2", "wd-v1-4-swinv2-tagger-v2",
                 "wd-vit-tagger-v3", "wd-convnext-tagger-v3", "wd-swinv2-tagger-v3", "wd-eva02-large-tagger-v3"):
        assert k[name].family == "wd14" and k[name].revision == "v2.0" and k[name].repo == "SmilingWolf/" + name
    assert k["z3d-e621-convnext"].family == "z3d-e621" and k["deepdanbooru-v3"].family == "deepdanbooru"


def test_missing_label_file_names_every_family(tmp_path, models):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "deepdanbooru.onnx").write_bytes((models / "deepdanbooru" / "deepdanbooru.onnx").read_bytes())
    with pytest.raises(tm.ModelNotFound, match="no label file.*DeepDanbooru: tags.txt"):
        tm.resolve_model(str(tmp_path / "x"), tmp_path)
