"""Presets saved by several writers at once (the WebUI and the standalone app, two tabs): nothing is lost.
Preset names that would break the file (newline) or the lookup (case twins) are refused."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lib_lora.errors import LoraStudioError
from lib_lora.presets import (DEFAULT_BUILTIN, USER_FILE_NAME, PresetStore, default_store, default_user_path,
                              name_problem)

REPO = Path(__file__).resolve().parents[2]
V17 = ",".join(["1"] * 17)


def user_lines(path: Path) -> list[str]:
    return sorted(ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#"))


def test_two_stores_loaded_before_either_saves_keep_both_saves(tmp_path):
    user = tmp_path / "p.txt"
    user.write_text("shared:" + V17 + "\nold:" + V17 + "\n")
    webui, app = PresetStore(DEFAULT_BUILTIN, user), PresetStore(DEFAULT_BUILTIN, user)
    webui.set("from_webui", ["0.5"] * 17)
    webui.save()
    app.set("from_app", ["0.25"] * 17)
    app.delete("old")
    app.save()
    assert user_lines(user) == sorted(["shared:" + V17, "from_webui:" + ",".join(["0.5"] * 17),
                                       "from_app:" + ",".join(["0.25"] * 17)])
    # the first writer sees the second's change after its next read, and its own save does not undo it
    webui.set("shared", ["0"] * 17)
    webui.save()
    assert "from_app" in webui.user_names() and "old" not in webui.user_names()
    assert PresetStore(DEFAULT_BUILTIN, user).get("shared") == ["0"] * 17


WRITER = textwrap.dedent("""
    import sys
    from lib_lora.presets import PresetStore, DEFAULT_BUILTIN
    path, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    for i in range(n):
        s = PresetStore(DEFAULT_BUILTIN, path)     # each save from a store loaded a moment ago
        s.set(f"{tag}{i}", ["1"] * 12)
        s.save()
""")


def test_processes_saving_at_the_same_time_lose_nothing(tmp_path):
    user = tmp_path / "p.txt"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(user), tag, "25"], env=env)
             for tag in ("a", "b", "c")]
    for p in procs:
        assert p.wait(timeout=120) == 0
    names = set(PresetStore(DEFAULT_BUILTIN, user).user_names())
    assert names == {f"{t}{i}" for t in "abc" for i in range(25)}


@pytest.mark.parametrize("name", ["bad\nface:1,1,1,1,1,1,1,1,1,1,1,1", "tab\there", "cr\rname", "nul\0x", "a\u2028b"])
def test_names_are_one_line_of_printable_characters(tmp_path, name):
    assert name_problem(name) is not None
    s = PresetStore(DEFAULT_BUILTIN, tmp_path / "p.txt")
    with pytest.raises(LoraStudioError, match="line break or control character"):
        s.set(name, ["1"] * 17)
    with pytest.raises(LoraStudioError):
        s.update({name: ["1"] * 17})
    assert not (tmp_path / "p.txt").exists()


def test_case_twins_of_existing_presets_are_refused(tmp_path):
    s = PresetStore(DEFAULT_BUILTIN, tmp_path / "p.txt")
    with pytest.raises(LoraStudioError, match="only by case.*'ALL'"):
        s.set("all", ["1"] * 17)
    s.set("Mine", ["1"] * 17)
    with pytest.raises(LoraStudioError, match="only by case"):
        s.set("MINE", ["1"] * 17)
    s.set("ALL", ["0.5"] * 17)          # the same name overrides the shipped one
    s.save()
    names, warnings = s.import_text("mine:" + V17 + "\nnew:" + V17 + "\n", source="x")
    assert names == ["new"] and any("only by case" in w for w in warnings)
    # what the CLI would build finds the same presets under any spelling
    cli = default_store(user_path=tmp_path / "p.txt")
    assert cli.get("all") == ["0.5"] * 17 and cli.get("mine") == ["1"] * 17


def test_default_store_is_what_the_app_and_cli_share(tmp_path):
    lora = tmp_path / "models" / "Lora"
    lora.mkdir(parents=True)
    assert default_user_path(lora) == lora / USER_FILE_NAME
    s = default_store(lora_dir=lora)
    s.set("saved_in_app", ["1"] * 17)
    s.save()
    assert default_store(lora_dir=lora).get("saved_in_app") == ["1"] * 17
    # a WebUI's models/Lora whose WebUI keeps LoRA Studio presets: that file is shared
    webui = tmp_path / "lora_studio" / "presets.txt"
    other = tmp_path / "other" / "models" / "Lora"
    other.mkdir(parents=True)
    assert default_user_path(other) == other / USER_FILE_NAME
    webui.parent.mkdir()
    webui.write_text("from_webui:" + V17 + "\n")
    (lora / USER_FILE_NAME).unlink()
    assert default_user_path(lora) == webui and default_store(lora_dir=lora).get("from_webui")
    assert default_store().user_path is None and default_store().get("ALL")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFO")
def test_fifo_as_user_presets_file_does_not_block(tmp_path):
    fifo = tmp_path / "p.txt"
    os.mkfifo(fifo)
    s = PresetStore(DEFAULT_BUILTIN, fifo)     # would block forever in open() before
    assert "ALL" in s.names() and any("not a regular file" in w for w in s.warnings)
