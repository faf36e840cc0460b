"""The standalone app without a browser: context/folders, the security gate, lazy tabs, CLI arguments."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

pytest.importorskip("gradio")

from lib_lora.__main__ import build_parser  # noqa: E402
from lib_lora.errors import LoraStudioError  # noqa: E402
from lib_lora.ui import app  # noqa: E402
from tests.paths import REPO


def test_defaults_are_created_under_the_working_directory(tmp_path, monkeypatch):
    from lib_lora.cli import ui as cli_ui

    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["ui"])
    assert args.port == 7870 and not args.listen and not args.allow_writes and not args.no_browser
    ctx = app.build_context([cli_ui.DEFAULT_LORA_DIR], [], cli_ui.DEFAULT_TAGGER_DIR)
    for sub in ("models/Lora", "models/TaggerModels"):
        assert (tmp_path / sub).is_dir()
    assert ctx.lora_dirs == [(tmp_path / "models/Lora").resolve()]
    assert ctx.presets_path == (tmp_path / "models/Lora/lora_studio_presets.txt").resolve()
    assert ctx.writes_allowed and ctx.presets is not None and "face" in ctx.presets.names()


def test_cli_arguments(tmp_path):
    args = build_parser().parse_args(["ui", "--lora-dir", "a", "--lora-dir", "b", "--listen", "--auth", "u:p",
                                      "--allow-writes", "--port", "9000", "--presets-file", "p.txt", "--no-browser"])
    assert args.lora_dir == ["a", "b"] and args.port == 9000 and args.auth == "u:p"
    assert args.listen and args.allow_writes and args.no_browser and args.presets_file == "p.txt"
    # the Merge tab's checkpoint folders: repeatable, and only under this name
    assert build_parser().parse_args(["ui", "--checkpoint-dir", "c", "--checkpoint-dir", "d"]).checkpoint_dir == \
        ["c", "d"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["ui", "--ckpt-dir", "c"])


def test_listen_gate(tmp_path):
    def ctx(**kw):
        return app.build_context([tmp_path / "l"], [tmp_path / "c"], tmp_path / "t", **kw)

    assert ctx().writes_allowed
    blocked = ctx(listen=True)
    assert not blocked.writes_allowed
    with pytest.raises(LoraStudioError, match="--allow-writes"):
        blocked.check_writes()
    assert ctx(listen=True, allow_writes=True).writes_allowed
    assert "file writes disabled" in app.describe(blocked, listen=True)


def test_a_folder_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(LoraStudioError, match="is a file"):
        app.build_context([tmp_path / "f"], [tmp_path / "c"], tmp_path / "t")


def test_every_tab_builds_and_a_broken_tab_becomes_a_placeholder(tmp_path, capsys):
    ctx = app.build_context([tmp_path / "l"], [tmp_path / "c"], tmp_path / "t")
    tabs = app.TABS + [("Broken", "lib_lora.ui.no_such_tab_module", "broken_tab")]
    demo = app.create_app(ctx, tabs)
    cfg = demo.get_config_file()
    ids = {c.get("props", {}).get("elem_id") for c in cfg["components"]}
    assert {"lora_studio_tab_presets", "lora_studio_tab_loras", "lora_studio_tab_tagger", "broken_tab",
            "lora_studio_presets_table", "lora_studio_inspect_pick"} <= ids
    texts = [c["props"].get("value") for c in cfg["components"] if c.get("type") == "markdown"]
    assert any("Broken tab is unavailable" in (t or "") and "no_such_tab_module" in (t or "") for t in texts)
    assert "Broken tab is unavailable" in capsys.readouterr().err
    # page load refreshes presets (Gradio 3 config: "trigger"; Gradio 4: "targets" = [(block id, event)])
    assert any(d.get("trigger") == "load" or any(isinstance(t, (list, tuple)) and t[1] == "load"
                                                  for t in d.get("targets") or [])
               for d in cfg["dependencies"])


def test_busy_port_gives_a_clear_message(tmp_path):
    ctx = app.build_context([tmp_path / "l"], [tmp_path / "c"], tmp_path / "t")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(LoraStudioError, match=f"port {port}.*--port"):
            app.launch(ctx, port=port, open_browser=False, block=False)


def test_ui_help_runs_without_gradio_import():
    import subprocess
    # `python -m lib_lora --help` lists every verb; it must not pay for importing gradio.
    out = subprocess.run([sys.executable, "-c", "import sys; from lib_lora.__main__ import build_parser; "
                          "build_parser(); print('gradio' in sys.modules)"],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


def test_blocked_paths_cover_the_working_directory_and_model_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path.parent / "gradio_tmp_elsewhere"))
    ctx = app.build_context([tmp_path / "l"], [tmp_path / "c"], tmp_path / "t", presets_file=tmp_path / "p.txt")
    blocked = app.served_nowhere(ctx)
    assert blocked[0] == str(tmp_path.resolve())
    assert {str(tmp_path / "l"), str(tmp_path / "c"), str(tmp_path / "t"), str(tmp_path / "p.txt")} <= set(blocked)
    # started inside Gradio's temp folder: the cwd cannot be blocked (uploads live there), the models still are
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gtmp"))
    blocked = app.served_nowhere(ctx)
    assert str(tmp_path.resolve()) not in blocked and str(tmp_path / "l") in blocked
