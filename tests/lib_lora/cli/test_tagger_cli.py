"""`python -m lib_lora tag` run as a user would: real processes, argument lists, a hard kill mid-write."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lib_lora.tagger import captions
from tests.tagger_models import make_model_dir
from tests.paths import REPO

ROOT = REPO


def run(args, env=None, **kw):
    e = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "lib_lora", "tag", *map(str, args)], cwd=ROOT, env=e,
                          capture_output=True, text=True, timeout=120, **kw)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("m") / "tiny-tagger", "v3")


def images(d, n=6):
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (24, 16), (255, 0, 0) if i % 2 else (0, 0, 255)).save(d / f"{i:02d}.png")
    return d


def test_cli_tags_a_folder_with_progress_and_summary(model, tmp_path):
    d = images(tmp_path / "imgs")
    (d / "sub").mkdir()
    Image.new("RGB", (8, 8), (0, 255, 255)).save(d / "sub" / "m.jpg")
    (d / "bad.png").write_bytes(b"nope")
    r = run([d, "--model-dir", model, "--recursive", "--batch-size", "4", "--prepend", "trig",
             "--general-threshold", "0.5", "--frequency", "3", "--frequency-file", tmp_path / "freq.txt"])
    assert r.returncode == 1, r.stderr                                          # an image failed: non-zero
    assert r.stderr.splitlines()[-1] == "error: 1 of 8 images could not be tagged (listed above)."
    assert (d / "01.txt").read_text().startswith("trig, red theme, white background")
    assert "long hair" not in (d / "01.txt").read_text()                      # p = 0.45, threshold 0.5
    assert (d / "sub" / "m.txt").read_text().startswith("trig, hatsune miku")
    assert "8/8" in r.stderr and "img/s" in r.stderr and "running on CPU" in r.stderr
    assert "bad.png" in r.stderr and "1 unreadable" in r.stderr
    assert r.stdout.splitlines() == ["(o)_(o): 7", "^_^: 7", 'don\'t say "lazy": 7']     # ties alphabetical
    freq = (tmp_path / "freq.txt").read_text().splitlines()
    assert "trig: 7" in freq and "white background: 6" in freq and "hatsune miku: 1" in freq
    r = run([d, "--model-dir", model, "--recursive", "--quiet"])               # re-run: all kept
    assert r.returncode == 1 and "0 images tagged" in r.stderr and "7 kept existing" in r.stderr
    (d / "bad.png").unlink()
    assert run([d, "--model-dir", model, "--recursive", "--quiet"]).returncode == 0


def test_cli_errors_are_one_line(model, tmp_path):
    d = images(tmp_path / "imgs", 1)
    r = run([d, "--model-dir", "wd-vit-tagger-v3", "--models-root", tmp_path / "TM"],
            env={"HF_HOME": str(tmp_path / "hf")})
    assert r.returncode == 2
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("error: Tagger model wd-vit-tagger-v3 is not on this computer")
    assert f"into {tmp_path / 'TM' / 'wd-vit-tagger-v3'}" in line and "model.onnx and selected_tags.csv" in line
    r = run([d, "--model-dir", model, "--provider", "cuda"])
    assert r.returncode == 2 and "CUDAExecutionProvider was requested" in r.stderr
    r = run([tmp_path / "nope", "--model-dir", model])
    assert r.returncode == 2 and "does not exist" in r.stderr
    r = run([d, "--model-dir", model, "--existing", "merge"])
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_hf_cache_is_used_offline(model, tmp_path):
    """A model already in the HF cache (at the pinned revision) loads with the network disabled."""
    hub = tmp_path / "hf" / "hub" / "models--SmilingWolf--wd-vit-tagger-v3"
    snap = hub / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (hub / "refs").mkdir()
    (hub / "refs" / "v2.0").write_text("a" * 40)
    for f in ("model.onnx", "selected_tags.csv"):
        (snap / f).write_bytes((model / f).read_bytes())
    d = images(tmp_path / "imgs", 2)
    r = run([d, "--model-dir", "wd-vit-tagger-v3", "--models-root", tmp_path / "TM", "--quiet"],
            env={"HF_HOME": str(tmp_path / "hf")})
    assert r.returncode == 0, r.stderr
    assert "(HF cache)" in r.stderr and (d / "00.txt").exists()


KILLER = r"""
import os, signal, sys
from lib_lora import fileio
real, n = os.replace, [0]
def replace(src, dst):
    n[0] += 1
    if n[0] == 4:                    # the 4th caption is fully written to its temporary, then: power cut
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst)
fileio.atomic.os = type(sys)("os_shim")     # captions are written by fileio.atomic_write_text
fileio.atomic.os.__dict__.update(os.__dict__)
fileio.atomic.os.replace = replace
from lib_lora.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def test_hard_kill_mid_write_leaves_no_partial_caption_and_rerun_resumes(model, tmp_path):
    d = images(tmp_path / "imgs", 8)
    ref = images(tmp_path / "ref", 8)
    assert run([ref, "--model-dir", model, "--quiet"]).returncode == 0
    p = subprocess.run([sys.executable, "-c", KILLER, "tag", str(d), "--model-dir", str(model), "--batch-size", "2",
                        "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == -9
    done = sorted(x.name for x in d.glob("*.txt"))
    assert done == ["00.txt", "01.txt", "02.txt"]                                   # the 4th never appeared
    assert all((d / n).read_text() == (ref / n).read_text() for n in done)          # and none is partial
    leftovers = [x for x in d.iterdir() if x.name.endswith(captions.TMP_SUFFIX)]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".03.txt.")         # hidden, trainers ignore it
    r = run([d, "--model-dir", model, "--quiet"])
    assert r.returncode == 0 and "5 images tagged" in r.stderr and "3 kept existing" in r.stderr
    assert {x.name: x.read_text() for x in d.glob("*.txt")} == {x.name: x.read_text() for x in ref.glob("*.txt")}


def test_file_argument_empty_folder_and_truncated_images(model, tmp_path):
    d = images(tmp_path / "imgs", 2)
    r = run([d / "01.png", "--model-dir", model, "--quiet"])                      # one image: tagged
    assert r.returncode == 0, r.stderr
    assert (d / "01.txt").exists() and not (d / "00.txt").exists() and "1 images tagged" in r.stderr
    (tmp_path / "notes.md").write_text("x")
    r = run([tmp_path / "notes.md", "--model-dir", model])
    assert r.returncode == 2 and "is a file, not an image" in r.stderr and r.stderr.count("\n") == 1
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(empty / "sub" / "x.png")
    # checked before the model is looked up: a missing model would be the error otherwise
    r = run([empty, "--model-dir", tmp_path / "no-model"])
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "holds no images" in r.stderr and "recursive" in r.stderr
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(d / "cut.png")
    data = (d / "cut.png").read_bytes()
    (d / "cut.png").write_bytes(data[: len(data) * 2 // 3])
    r = run([d, "--model-dir", model, "--quiet"])
    assert r.returncode == 0 and (d / "cut.txt").exists()
    assert "cut.png is truncated" in r.stderr and "1 truncated (tagged, check them)" in r.stderr


WATCH = r"""
import sys
from lib_lora.__main__ import main
rc = main(sys.argv[1:])
print("TORCH-LOADED" if "torch" in sys.modules else "NO-TORCH", file=sys.stderr)
sys.exit(rc)
"""


def test_tag_never_imports_torch(model, tmp_path):
    d = images(tmp_path / "imgs", 2)
    p = subprocess.run([sys.executable, "-c", WATCH, "tag", str(d), "--model-dir", str(model), "--quiet"], cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and (d / "00.txt").exists(), p.stderr
    assert p.stderr.strip().endswith("NO-TORCH"), p.stderr


def test_frequency_file_is_checked_before_any_work(model, tmp_path):
    """A typo in the folder of --frequency-file is refused up front (one line), no folder is made and no
    caption written; an existing file is replaced (it is a report, rewritten on every run)."""
    d = images(tmp_path / "imgs", 2)
    r = run([d, "--model-dir", model, "--quiet", "--frequency-file", tmp_path / "typo" / "x.txt"])
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "typo" in r.stderr and "does not exist" in r.stderr
    assert not (tmp_path / "typo").exists() and not list(d.glob("*.txt"))
    r = run([d, "--model-dir", model, "--quiet", "--frequency-file", d])          # a folder
    assert r.returncode == 2 and "is a folder" in r.stderr and not list(d.glob("*.txt"))
    (tmp_path / "freq.txt").write_text("old\n")
    r = run([d, "--model-dir", model, "--quiet", "--frequency-file", tmp_path / "freq.txt"])
    assert r.returncode == 0, r.stderr
    assert "old" not in (tmp_path / "freq.txt").read_text() and ": 2" in (tmp_path / "freq.txt").read_text()


def test_negative_threads_are_refused(model, tmp_path):
    d = images(tmp_path / "imgs", 1)
    r = run([d, "--model-dir", model, "--quiet", "--threads", "-1"])
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "--threads" in r.stderr and not (d / "00.txt").exists()


def test_caption_ext_help_says_what_is_accepted():
    """The help names the rule lib_lora.tagger.captions.check_ext applies, not only two examples."""
    r = run(["--help"])
    text = " ".join(r.stdout.split())
    i = text.rindex("--caption-ext")                     # its own entry, not the usage line
    part = text[i:i + 300]
    assert "letters and digits" in part and "10" in part, part
    assert captions.check_ext("md") == ".md"               # what the help promises is accepted...
    with pytest.raises(Exception):
        captions.check_ext(".sh")                          # ...and what it says is refused
