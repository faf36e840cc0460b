"""Hostile or unlucky input to the caption writer (core + CLI): extensions that something would run,
multi-line text, read-only captions, permissions, images that decode to gigabytes."""

import os
import stat
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image

from lib_lora.errors import LoraStudioError
from lib_lora.tagger import captions
from lib_lora.tagger.model import Tagger, resolve_model
from lib_lora.tagger.pipeline import FolderJob, run_folder, summary_lines
from lib_lora.tagger.postprocess import TagOptions
from tests.tagger_models import make_model_dir

ROOT = Path(__file__).resolve().parents[2]
QUIET = dict(log=lambda m: None)


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return Tagger(resolve_model(str(make_model_dir(root / "v3", "v3")), root))


def one_image(d, name="a.png"):
    d.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (255, 0, 0)).save(d / name)
    return d


@pytest.mark.parametrize("ext", [".desktop", "desktop", ".bashrc", ".sh", "py", ".PY", ".exe", ".bat", ".cmd",
                                 ".js", ".ps1", ".so", ".json", ".png", "", ".", "..", "../x", "a/b", ".t xt",
                                 ".abcdefghijk", ".txt\n", "ü"])
def test_refused_caption_extensions(ext):
    with pytest.raises(LoraStudioError) as e:
        captions.check_ext(ext)
    assert "\n" not in str(e.value) and "extension" in str(e.value)


@pytest.mark.parametrize("ext,want", [(".txt", ".txt"), ("txt", ".txt"), (".TXT", ".txt"), (".caption", ".caption"),
                                      ("tags", ".tags"), (".cap2", ".cap2")])
def test_allowed_caption_extensions(ext, want):
    assert captions.check_ext(ext) == want


def test_desktop_extension_writes_nothing(tagger, tmp_path):
    d = one_image(tmp_path / "imgs")
    with pytest.raises(LoraStudioError, match="caption extension"):
        run_folder(tagger, FolderJob(d, caption_ext=".desktop", output_dir=tmp_path / "autostart"), **QUIET)
    assert not (tmp_path / "autostart").exists() and sorted(p.name for p in d.iterdir()) == ["a.png"]


@pytest.mark.parametrize("field", ["prepend", "append", "exclude"])
@pytest.mark.parametrize("brk", ["\n", "\r", "\u2028", "\x0b"])
def test_added_text_is_one_line(tagger, tmp_path, field, brk):
    d = one_image(tmp_path / "imgs")
    opts = TagOptions(**{field: [f"trigger{brk}[Desktop Entry]{brk}Exec=sh -c evil"]})
    with pytest.raises(LoraStudioError, match="line break") as e:
        run_folder(tagger, FolderJob(d, tag_options=opts), **QUIET)
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in d.iterdir()) == ["a.png"]


def test_a_label_with_a_line_break_fails_that_image_only(tmp_path):
    m = make_model_dir(tmp_path / "m", "v3")
    csv = (m / "selected_tags.csv").read_text().replace("red_theme", '"red_theme\nExec=evil"')
    (m / "selected_tags.csv").write_text(csv)
    t = Tagger(resolve_model(str(m), tmp_path))
    d = one_image(tmp_path / "imgs")
    Image.new("RGB", (8, 8), (0, 0, 255)).save(d / "b.png")
    rep = run_folder(t, FolderJob(d), **QUIET)
    assert rep.inferred == 1 and len(rep.failed) == 1 and "line break" in rep.failed[0][1]
    assert not (d / "a.txt").exists() and "\n" not in (d / "b.txt").read_text()


@pytest.mark.parametrize("mode", ["overwrite", "append", "prepend"])
def test_read_only_caption_is_kept_and_counted(tagger, tmp_path, mode):
    d = one_image(tmp_path / "imgs")
    Image.new("RGB", (8, 8), (0, 0, 255)).save(d / "b.png")
    (d / "a.txt").write_text("hand written")
    os.chmod(d / "a.txt", 0o444)
    rep = run_folder(tagger, FolderJob(d, existing=mode), **QUIET)
    assert (d / "a.txt").read_text() == "hand written" and stat.S_IMODE(os.stat(d / "a.txt").st_mode) == 0o444
    assert rep.read_only == [str(d / "a.txt")] and rep.inferred == 1 and (d / "b.txt").exists()
    assert "1 read-only captions kept" in summary_lines(rep)[0]


def test_permissions_follow_the_umask_and_the_existing_file(tagger, tmp_path):
    d = one_image(tmp_path / "imgs")
    Image.new("RGB", (8, 8), (0, 0, 255)).save(d / "b.png")
    (d / "b.txt").write_text("old")
    os.chmod(d / "b.txt", 0o640)
    old = os.umask(0o022)
    try:
        run_folder(tagger, FolderJob(d, existing="overwrite"), **QUIET)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(d / "a.txt").st_mode) == 0o644           # new: 0666 & ~umask, not 0600
    assert stat.S_IMODE(os.stat(d / "b.txt").st_mode) == 0o640           # replaced: keeps its mode
    assert (d / "b.txt").read_text() != "old"


def png_header_only(path, w, h, bit_depth=16):
    """A few hundred bytes declaring w x h greyscale pixels (the data is a short zlib stream of zeros)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, 0, 0, 0, 0)
    body = zlib.compress(b"\0" * 4096)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def test_pixel_bombs_are_one_line_each_and_the_run_goes_on(tagger, tmp_path):
    d = one_image(tmp_path / "imgs", "ok.png")
    png_header_only(d / "bomb16.png", 13000, 13000)          # over the tagging limit
    png_header_only(d / "huge.png", 20000, 20000)            # over PIL's DecompressionBombError limit too
    logs = []
    rep = run_folder(tagger, FolderJob(d), log=logs.append)
    assert rep.inferred == 1 and (d / "ok.txt").exists()
    reasons = dict(rep.failed)
    assert "13000x13000 pixels" in reasons[str(d / "bomb16.png")] and "downscale" in reasons[str(d / "bomb16.png")]
    assert "downscale" in reasons[str(d / "huge.png")]
    assert all("\n" not in r and "Traceback" not in r for r in reasons.values())


def cli(args):
    e = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "lib_lora", "tag", *map(str, args)], cwd=ROOT, env=e,
                          capture_output=True, text=True, timeout=120)


def test_cli_applies_the_same_rules(tmp_path):
    m = make_model_dir(tmp_path / "m", "v3")
    d = one_image(tmp_path / "imgs")
    for extra in (["--caption-ext", ".desktop"], ["--prepend", "a\n[Desktop Entry]"], ["--append", "x\ry"]):
        r = cli([d, "--model-dir", m, *extra])
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), r.stderr
    assert sorted(p.name for p in d.iterdir()) == ["a.png"]


def test_single_image_over_the_pixel_limit_is_one_line(tagger):
    from lib_lora.tagger.pipeline import tag_image
    from lib_lora.tagger.preprocess import ImageReadError
    big = Image.new("L", (10000, 9000))                      # 90 MP: decoded by someone else (an upload)
    with pytest.raises(ImageReadError, match=r"the image: 10000x9000 pixels \(90 MP\) is over the 89 MP limit"):
        tag_image(tagger, big)
    assert tag_image(tagger, Image.new("RGB", (3000, 2000), (255, 0, 0))).tags[0] == "red theme"
