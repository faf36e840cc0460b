"""`python -m lib_lora ui --image-dir DIR`: the folders the Tagger tab may read images from and write captions
into. Through the real app's queue (as a page would call it): a folder outside is refused on the server, a
configured one is tagged. Plus the default (./datasets, in `ui --help`) and a typo giving one line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from PIL import Image

pytest.importorskip("gradio")
pytest.importorskip("websockets.sync.client")

from lib_lora.__main__ import build_parser  # noqa: E402
from lib_lora.cli import ui as cli_ui  # noqa: E402
from lib_lora.options import AppOptions, from_args  # noqa: E402
from lib_lora.ui.context import UiContext  # noqa: E402
from tests import browser as B  # noqa: E402
from tests.faults.test_app_http import fn_index, run_queued  # noqa: E402
from tests.tagger_models import make_model_dir  # noqa: E402

# tagger options in the tab's order (tagger_tab.OPTION_FIELDS)
OPTS = [0.35, 0.85, False, False, True, False, "confidence", True, False, "none", 0, "", "", "", "", "", False]


def _folder_run(app, folder) -> str:
    fn = fn_index(app, "lora_studio_tagger_start")
    data = ["tiny", "", "auto", False, str(folder), False, "overwrite", ".txt", "", 0, False, False, *OPTS]
    msg = run_queued(app, fn, data)
    assert msg.get("success", True), msg
    return msg["output"]["data"][0]


def test_tagger_folders_come_from_image_dir_and_are_enforced_by_the_server(tmp_path):
    data, outside, models = tmp_path / "datasets_here", tmp_path / "home", tmp_path / "TM"
    (data / "set1").mkdir(parents=True)
    outside.mkdir()
    for d in (data / "set1", outside):
        Image.new("RGB", (16, 16), (255, 0, 0)).save(d / "a.png")
    make_model_dir(models / "tiny", "v3")
    (tmp_path / "lora").mkdir()
    app = B.start_app(tmp_path, ["--lora-dir", str(tmp_path / "lora"), "--tagger-models-dir", str(models),
                                 "--image-dir", str(data), "--presets-file", str(tmp_path / "p.txt")])
    try:
        app.wait_ready()
        refused = _folder_run(app, outside)
        assert "Error" in refused and "outside the configured folders" in refused, refused
        assert not (outside / "a.txt").exists()
        refused = _folder_run(app, data / ".." / "home")            # '..' out of the configured folder
        assert "Error" in refused and not (outside / "a.txt").exists()
        done = _folder_run(app, data / "set1")
        assert "Done" in done, done
        assert (data / "set1" / "a.txt").read_text().startswith("red theme")
    finally:
        app.stop()


def test_default_image_folder_is_documented_and_created(tmp_path, monkeypatch):
    helptext = build_parser(["ui", "--help"])._subparsers._group_actions[0].choices["ui"].format_help()
    assert "--image-dir DIR" in helptext and "./datasets" in helptext.replace("\n", " ")
    monkeypatch.chdir(tmp_path)
    ctx = cli_ui.build_context(from_args(AppOptions, build_parser(["ui"]).parse_args(["ui"])))
    assert ctx.image_dirs == [(tmp_path / "datasets").resolve()] and (tmp_path / "datasets").is_dir()
    two = cli_ui.build_context(from_args(AppOptions, build_parser(["ui"]).parse_args(
        ["ui", "--image-dir", str(tmp_path / "datasets"), "--image-dir", str(tmp_path / "models")])))
    assert [p.name for p in two.image_dirs] == ["datasets", "models"]


def test_image_dir_typo_is_one_line_and_creates_nothing(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(B.REPO), GRADIO_ANALYTICS_ENABLED="False")
    r = subprocess.run([sys.executable, "-m", "lib_lora", "ui", "--no-browser", "--image-dir", "typo_folder"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and lines == ["error: --image-dir 'typo_folder' does not exist; check the path or "
                                           "create the folder first"], r.stderr
    assert list(tmp_path.iterdir()) == []


def test_ui_context_has_no_ad_hoc_attributes(tmp_path):
    ctx = UiContext(lora_dirs=[tmp_path], checkpoint_dirs=[], tagger_models_dir=tmp_path)
    assert ctx.image_dirs == [] and ctx.presets_path is None and ctx.presets_problem is None
    with pytest.raises(AttributeError):
        ctx.presets_pth = tmp_path          # a misspelt field is an error, not a silent new attribute
