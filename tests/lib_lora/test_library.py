"""The core file library (lib_lora/library.py): one walk and one lookup for the WebUI, the tabs and the CLI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lib_lora.errors import LoraFileError
from lib_lora.library import MAX_DEPTH, Library


def _lora(path: Path, alias: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"w": torch.zeros(1)}, str(path), metadata={"ss_output_name": alias} if alias else None)
    return path


@pytest.fixture
def tree(tmp_path):
    """A LoRA folder as users make them: a linked file and folder from elsewhere, a link loop, a hidden
    folder, a dangling link, a folder deeper than the bound, and a non-LoRA file."""
    root, elsewhere = tmp_path / "Lora", tmp_path / "elsewhere"
    _lora(root / "plain.safetensors")
    _lora(root / "sub" / "inner.safetensors", alias="inner_alias")
    _lora(elsewhere / "real.safetensors")
    _lora(elsewhere / "dir" / "in_linked_dir.safetensors")
    os.symlink(elsewhere / "real.safetensors", root / "linked.safetensors")
    os.symlink(elsewhere / "dir", root / "linked_dir")
    os.symlink(root, root / "sub" / "loop")
    os.symlink(tmp_path / "missing.safetensors", root / "dangling.safetensors")
    _lora(root / ".trash" / "hidden.safetensors")
    deep = root
    for i in range(MAX_DEPTH + 2):
        deep = deep / f"d{i}"
    _lora(deep / "too_deep.safetensors")
    (root / "notes.txt").write_text("x")
    return root


LISTED = ["inner", "in_linked_dir", "linked", "plain"]


def test_walk_lists_links_bounds_loops_and_depth(tree):
    lib = Library(lambda: [tree])
    lib.scan()
    assert sorted(f.name for f in lib.files) == sorted(LISTED)
    assert any("loop" in p for p in lib.problems) and any("deep" in p for p in lib.problems)
    assert lib.find("linked").path == tree / "linked.safetensors"        # the link as placed, not its target
    assert lib.find("inner_alias").name == "inner"


def test_lora_tab_lists_what_the_webui_scan_finds_and_loads_it(tree):
    """Before: the tab walked on its own (hidden folders and any depth listed, dangling links not), so the
    two listings disagreed."""
    pytest.importorskip("gradio")
    from lib_lora.ui import app, lora_tab
    from lora_studio_webui.library import Library as WebuiLibrary

    ctx = app.build_context([tree], [], tree.parent / "taggers", presets_file=tree.parent / "p.txt",
                            create_missing=True)
    names = lora_tab.list_loras(ctx)
    webui = WebuiLibrary(lambda: [tree])
    webui.scan()
    assert sorted(Path(n).stem for n in names) == sorted(f.name for f in webui.files) == sorted(LISTED)
    for n in names:                                        # every listed file can be picked
        assert lora_tab.lora_path(ctx, n).is_file()


def test_lookup_says_why_a_name_finds_no_file(tmp_path):
    _lora(tmp_path / "a" / "one.safetensors", alias="shared")
    _lora(tmp_path / "b" / "two.safetensors", alias="shared")
    _lora(tmp_path / "StyleOne.safetensors")
    lib = Library(lambda: [tmp_path])
    with pytest.raises(LoraFileError, match=r"alias 'shared' belongs to 2 files \('one', 'two'\)"):
        lib.lookup("shared")
    with pytest.raises(LoraFileError, match=r"not found in .*did you mean 'StyleOne'\?\); check the name"):
        lib.lookup("StyleOn")
    assert lib.lookup("styleone").name == "StyleOne"


def test_checkpoint_library_uses_the_same_walk(tmp_path):
    from lib_lora.library import CHECKPOINT_EXTENSIONS
    _lora(tmp_path / "sd15.safetensors")
    (tmp_path / "old.ckpt").write_bytes(b"x")
    (tmp_path / "emb.pt").write_bytes(b"x")
    lib = Library(lambda: [tmp_path], CHECKPOINT_EXTENSIONS, "checkpoint")
    assert [f.name for f in lib.all()] == ["old", "sd15"]
    with pytest.raises(LoraFileError, match=r"^checkpoint 'emb' not found"):
        lib.lookup("emb")
