"""Folder tagging on real ONNX sessions: preprocessing mistakes change tags, odd and corrupt images,
existing-caption modes, collisions, atomic writes under interruption, resume, cancel, progress."""

import json
import threading

import pytest
from PIL import Image

from lib_lora.tagger import captions
from lib_lora.tagger.model import Tagger, resolve_model
from lib_lora.tagger.pipeline import FolderJob, iter_images, run_folder, tag_image
from lib_lora.tagger.postprocess import TagOptions
from tests.tagger_models import make_model_dir

QUIET = dict(log=lambda m: None)


@pytest.fixture(scope="module")
def taggers(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {k: Tagger(resolve_model(str(make_model_dir(root / k, k)), root)) for k in ("v3", "v2")}


def make_folder(d):
    d.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48), (255, 0, 0)).save(d / "red.png")
    rgba = Image.new("RGBA", (40, 40), (0, 0, 0, 0))                  # transparent black border
    rgba.paste((0, 0, 255, 255), (10, 10, 30, 30))
    rgba.save(d / "blue_rgba.png")
    Image.new("L", (30, 30), 20).save(d / "gray.png")
    p = Image.new("P", (20, 20), 0)
    p.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    p.paste(1, (0, 10, 20, 20))                                       # top half transparent
    p.save(d / "palette.png", transparency=0)
    Image.new("RGB", (1, 1), (0, 255, 0)).save(d / "tiny.png")
    Image.new("RGB", (4000, 3000), (255, 0, 0)).save(d / "huge.jpg", quality=95)
    Image.new("RGB", (4000, 300), (255, 0, 0)).save(d / "wide.png")
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    Image.new("RGB", (40, 64), (0, 255, 255)).save(d / "sub" / "miku.png") if (d / "sub").mkdir() is None else None
    return d


def caps(d, ext=".txt"):
    return {p.relative_to(d).as_posix(): p.read_text(encoding="utf-8") for p in sorted(d.rglob("*" + ext))}


def test_tags_follow_the_pixels(taggers, tmp_path):
    d = make_folder(tmp_path / "imgs")
    rep = run_folder(taggers["v3"], FolderJob(d, recursive=True, batch_size=3), **QUIET)
    c = {k: v.split(", ") for k, v in caps(d).items()}
    assert rep.inferred == 8 and rep.written == 8 and len(rep.failed) == 1 and "corrupt.jpg" in rep.failed[0][0]
    assert "red theme" in c["red.txt"] and "blue theme" not in c["red.txt"]          # BGR order
    assert "white background" in c["red.txt"] and "white background" in c["huge.txt"]  # white padding
    assert "red theme" in c["huge.txt"] and "white background" in c["wide.txt"] and "red theme" not in c["wide.txt"]
    assert "white background" in c["blue_rgba.txt"] and "blue theme" in c["blue_rgba.txt"]  # alpha on white
    assert "white background" in c["palette.txt"]                                    # palette transparency
    assert "black background" in c["gray.txt"] and "white background" not in c["gray.txt"]
    assert "green theme" in c["tiny.txt"] and "white background" not in c["tiny.txt"]
    assert "hatsune miku" in c["sub/miku.txt"]
    assert "^_^" in c["red.txt"] and 'don\'t say "lazy"' in c["red.txt"] and "(o)_(o)" in c["red.txt"]
    assert rep.frequencies["white background"] == 6 and rep.frequencies["^_^"] == 8
    single = tag_image(taggers["v3"], d / "red.png")
    assert single.tags == c["red.txt"] and single.ratings["sensitive"] > 0.9


def test_v2_fixed_batch_equals_v3_dynamic(taggers, tmp_path):
    d = make_folder(tmp_path / "imgs")
    r3 = run_folder(taggers["v3"], FolderJob(d, recursive=True, batch_size=4, output_dir=tmp_path / "o3"), **QUIET)
    r2 = run_folder(taggers["v2"], FolderJob(d, recursive=True, batch_size=4, output_dir=tmp_path / "o2"), **QUIET)
    assert r2.batch_size == 1 and r3.batch_size == 4
    assert caps(tmp_path / "o3") == caps(tmp_path / "o2") and len(caps(tmp_path / "o2")) == 8
    assert (tmp_path / "o3" / "sub" / "miku.txt").exists() and not (d / "red.txt").exists()


def test_existing_caption_modes(taggers, tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(d / "a.png")
    Image.new("RGB", (8, 8), (255, 0, 0)).save(d / "b.png")
    (d / "a.txt").write_text("hand made, Red_Theme")
    t = taggers["v3"]
    rep = run_folder(t, FolderJob(d), **QUIET)                                       # skip is the default
    assert rep.inferred == 1 and rep.skipped_existing == 1
    assert (d / "a.txt").read_text() == "hand made, Red_Theme"
    assert rep.frequencies["hand made"] == 1 and rep.frequencies["red theme"] == 1
    new = (d / "b.txt").read_text().split(", ")
    run_folder(t, FolderJob(d, existing="append"), **QUIET)
    assert (d / "a.txt").read_text().split(", ") == ["hand made", "Red_Theme"] + [x for x in new if x != "red theme"]
    (d / "a.txt").write_text("hand made, Red_Theme")
    run_folder(t, FolderJob(d, existing="prepend"), **QUIET)
    assert (d / "a.txt").read_text().split(", ") == new + ["hand made"]
    run_folder(t, FolderJob(d, existing="overwrite"), **QUIET)
    assert (d / "a.txt").read_text().split(", ") == new
    rep = run_folder(t, FolderJob(d, existing="append"), **QUIET)                     # idempotent re-run
    assert (d / "a.txt").read_text().split(", ") == new and rep.inferred == 2


def test_caption_extension_collision_sidecar_options(taggers, tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    Image.new("RGB", (8, 8), (0, 0, 255)).save(d / "a.png")
    Image.new("RGB", (8, 8), (255, 0, 0)).save(d / "a.jpg")
    logs = []
    opts = TagOptions(prepend=["mytrigger"], exclude=["long hair"], rating="last")
    rep = run_folder(taggers["v3"], FolderJob(d, caption_ext="caption", json_sidecar=True, tag_options=opts,
                                              trailing_newline=True), log=logs.append)
    assert rep.inferred == 1 and len(rep.collisions) == 1 and "a.png" in rep.collisions[0]
    assert any("belongs to a.jpg" in m for m in logs)
    text = (d / "a.caption").read_text()
    assert text.startswith("mytrigger, red theme") and text.endswith(", sensitive\n") and "long hair" not in text
    side = json.loads((d / "a.json").read_text())
    assert side["rating"] == "sensitive" and side["general"]["red theme"] > 0.9 and set(side["ratings"]) == {
        "general", "sensitive", "questionable", "explicit"}
    with pytest.raises(Exception, match="caption extension"):
        run_folder(taggers["v3"], FolderJob(d, caption_ext=".png"), **QUIET)


def test_exception_mid_run_leaves_no_partial_file_and_rerun_resumes(taggers, tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(12):
        Image.new("RGB", (16, 16), (i * 20, 255 - i * 20, 0)).save(d / f"{i:02d}.png")
    full = tmp_path / "full"
    run_folder(taggers["v3"], FolderJob(d, output_dir=full), **QUIET)
    expected = caps(full)

    calls = []

    def boom(p):
        calls.append(p)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_folder(taggers["v3"], FolderJob(d, batch_size=3), progress=boom, **QUIET)
    got = caps(d)
    assert len(got) == 6 and all(expected[k] == v for k, v in got.items())
    assert not [p for p in d.iterdir() if p.name.endswith(captions.TMP_SUFFIX)]
    rep = run_folder(taggers["v3"], FolderJob(d, batch_size=3), **QUIET)
    assert rep.inferred == 6 and rep.skipped_existing == 6 and caps(d) == expected


def test_failed_write_cleans_its_temporary(tmp_path, monkeypatch):
    target = tmp_path / "x.txt"
    target.write_text("old")

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(captions.os, "replace", fail)
    with pytest.raises(OSError):
        captions.atomic_write_text(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_cancel_and_progress(taggers, tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(10):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(d / f"{i}.png")
    cancel = threading.Event()
    seen = []

    def progress(p):
        seen.append(p)
        if p.done >= 4:
            cancel.set()

    rep = run_folder(taggers["v3"], FolderJob(d, batch_size=2, streams=1), progress=progress, cancel=cancel,
                     **QUIET)
    assert rep.cancelled and rep.inferred == 4 and len(caps(d)) == 4
    assert [p.done for p in seen] == [2, 4] and seen[-1].images_per_s > 0 and seen[-1].written == 4
    seen.clear()
    rep = run_folder(taggers["v3"], FolderJob(d, batch_size=2), progress=seen.append, **QUIET)
    assert not rep.cancelled and rep.inferred == 6 and seen[-1].done == 6
    assert seen[-1].total == 6 and seen[-1].skipped == 4
    for p in d.glob("*.txt"):
        p.unlink()
    cancel.clear()
    rep = run_folder(taggers["v3"], FolderJob(d, batch_size=2, streams=2), progress=progress, cancel=cancel,
                     **QUIET)
    assert rep.cancelled and rep.inferred == 6 and len(caps(d)) == 6    # the batch already running finishes


def test_listing_streams_recursively_and_filters(tmp_path):
    for rel in ("b.png", "a.JPG", "n.txt", "s/c.webp", "s/t/d.bmp", ".hidden/e.png"):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    gen = iter_images(tmp_path, recursive=True)
    assert next(gen).name == "a.JPG"                                                 # lazy, sorted per folder
    assert [p.relative_to(tmp_path).as_posix() for p in iter_images(tmp_path, True)] == [
        "a.JPG", "b.png", "s/c.webp", "s/t/d.bmp"]
    assert [p.name for p in iter_images(tmp_path, False)] == ["a.JPG", "b.png"]


def test_stale_temporaries_removed(tmp_path):
    stale = tmp_path / (".a.txt.abc" + captions.TMP_SUFFIX)
    stale.write_text("half")
    assert captions.remove_stale_temps(tmp_path) == 0                                # too new: may be in use
    assert captions.remove_stale_temps(tmp_path, older_than=-1) == 1 and not stale.exists()


def test_unwritable_caption_is_reported_and_the_run_goes_on(taggers, tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (255, 0, 0)).save(d / f"{i}.png")
    (d / "1.txt").mkdir()                                            # a folder where the caption should go
    rep = run_folder(taggers["v3"], FolderJob(d, existing="overwrite"), **QUIET)
    assert rep.inferred == 2 and len(rep.failed) == 1 and "cannot write" in rep.failed[0][1]
    assert (d / "0.txt").is_file() and (d / "2.txt").is_file()


def test_read_ahead_is_bounded(taggers, tmp_path, monkeypatch):
    """However big the folder, at most (streams + 1) * batch + workers images are decoded ahead."""
    from lib_lora.tagger import pipeline
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(60):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(d / f"{i:03d}.png")
    started, peak, finished = [0], [0], [0]
    real = pipeline.decode

    def counting(*a, **k):
        started[0] += 1
        peak[0] = max(peak[0], started[0] - finished[0])
        return real(*a, **k)

    def progress(p):
        finished[0] = p.done

    monkeypatch.setattr(pipeline, "decode", counting)
    rep = run_folder(taggers["v3"], FolderJob(d, batch_size=2, streams=2, workers=2), progress=progress, **QUIET)
    assert rep.inferred == 60 and started[0] == 60
    assert peak[0] <= (2 + 1) * 2 + 2 + 2 * 2      # read-ahead window + the batches being inferred


def test_append_counts_a_tag_with_a_comma_as_present(tmp_path):
    """kohya sd-scripts splits captions on commas: `sparkle, star` in a file is two tags, and re-runs in
    append mode must not add the model's `sparkle, star` again."""
    m = make_model_dir(tmp_path / "m", "v3")
    (m / "selected_tags.csv").write_text((m / "selected_tags.csv").read_text().replace(",long_hair,", ',"sparkle,_star",'))
    t = Tagger(resolve_model(str(m), tmp_path))
    d = tmp_path / "imgs"
    d.mkdir()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(d / "a.png")
    (d / "a.txt").write_text("hand made")
    run_folder(t, FolderJob(d, existing="append"), **QUIET)
    first = (d / "a.txt").read_text()
    assert first.startswith("hand made, ") and first.count("sparkle") == 1 and "sparkle, star" in first
    for mode in ("append", "prepend"):
        run_folder(t, FolderJob(d, existing=mode), **QUIET)
        text = (d / "a.txt").read_text()
        assert text.count("sparkle") == 1 and text.count("star") == 1, text
    assert [x.strip() for x in first.split(",")].count("star") == 1
