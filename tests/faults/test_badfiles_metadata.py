"""One LoRA file with a malformed header (metadata a list, header a list) only ever affects itself: the
bake of another LoRA, the WebUI library scan and the name lookup of the others keep working; the bad file
gets one line naming it. Also: a folder-link loop in the LoRA folder is reported once and the scan ends."""

from __future__ import annotations

import json
import os
import struct

import pytest
import torch
from safetensors.torch import save_file

from lib_lora import fileio
from lib_lora.errors import LoraFileError
from tests.engine_helpers import SD15_LAYERS
from tests.factory import write_lora
from tests.models import build_model


def rewrite_header(src, dst, fn):
    """Copy a safetensors file with its JSON header replaced by fn(header) (the body is kept)."""
    raw = open(src, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = fn(json.loads(raw[8:8 + n]))
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    with open(dst, "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb + raw[8 + n:])
    return str(dst)


@pytest.fixture
def folder(tmp_path):
    loras = tmp_path / "loras"
    loras.mkdir()
    pick = set(SD15_LAYERS)
    good = write_lora(loras / "good.safetensors", layers=lambda l: l in pick, seed=1,
                      metadata={"ss_output_name": "goodalias"})
    rewrite_header(good, loras / "metalist.safetensors", lambda h: {**h, "__metadata__": ["a", "b"]})
    rewrite_header(good, loras / "metaint.safetensors", lambda h: {**h, "__metadata__": {"a": 1}})
    rewrite_header(good, loras / "headlist.safetensors", lambda h: [h])
    return tmp_path


@pytest.mark.parametrize("bad", ["metalist", "metaint", "headlist"])
def test_malformed_header_is_one_line_for_that_file(folder, bad):
    path = folder / "loras" / f"{bad}.safetensors"
    for read in (fileio.read_metadata, fileio.read_tensors, fileio.model_hash):
        with pytest.raises(LoraFileError) as e:
            read(str(path))
        msg = str(e.value)
        assert f"{bad}.safetensors" in msg and "\n" not in msg


def test_bake_of_another_lora_ignores_the_bad_file(folder, capsys):
    from lib_lora.__main__ import main
    root = build_model("sd15", include=SD15_LAYERS, seed=5)
    base = folder / "base.safetensors"
    save_file({k: v.detach().clone() for k, v in root.state_dict().items()}, str(base))
    out = folder / "out.safetensors"
    rc = main(["bake", "--base", str(base), "--prompt", "x <lora:goodalias:1>", "--lora-dir",
               str(folder / "loras"), "--out", str(out)])
    assert rc == 0 and out.exists()


def test_library_scan_skips_and_reports_the_bad_file(folder, capsys):
    from lora_studio_webui.library import Library
    lib = Library(lambda: [folder / "loras"])
    lib.scan()
    assert lib.find("goodalias").name == "good"
    assert lib.find("metalist").problem and "metalist.safetensors" in lib.find("metalist").problem
    assert len([p for p in lib.problems if "metalist" in p]) == 1
    err = capsys.readouterr().err
    assert err.count("metalist.safetensors") == 1
    lib.scan()                                                  # a rescan does not print it again
    assert "metalist" not in capsys.readouterr().err


def test_library_scan_ends_on_a_folder_link_loop(tmp_path, monkeypatch):
    from lora_studio_webui.library import Library
    root = tmp_path / "Lora"
    (root / "sub").mkdir(parents=True)
    save_file({"w": torch.zeros(1)}, str(root / "sub" / "deep.safetensors"))
    os.symlink(root, root / "sub" / "back")                     # sub/back → Lora: a loop
    os.symlink(root / "sub", root / "sub" / "again")            # a second loop on the same folder
    os.symlink(root / "sub", root / "alias_of_sub")             # not a loop: same folder reached twice
    real_scandir, calls = os.scandir, [0]

    def counting_scandir(path="."):                             # the real scandir, counted
        calls[0] += 1
        if calls[0] > 200:
            raise RuntimeError("the scan does not end")
        return real_scandir(path)
    monkeypatch.setattr(os, "scandir", counting_scandir)
    lib = Library(lambda: [root, root / "sub"])                 # overlapping folders, as A1111 allows
    lib.scan()
    assert calls[0] <= 5
    assert [f.name for f in lib.all()] == ["deep"]
    loops = [p for p in lib.problems if "loop" in p]
    assert len(loops) == 2 and all("\n" not in p for p in loops)


def test_library_scan_bounds_depth(tmp_path):
    from lib_lora import library
    root = tmp_path / "Lora"
    d = root
    for i in range(library.MAX_DEPTH + 3):
        d = d / f"d{i}"
    d.mkdir(parents=True)
    save_file({"w": torch.zeros(1)}, str(d / "too_deep.safetensors"))
    save_file({"w": torch.zeros(1)}, str(root / "d0" / "shallow.safetensors"))
    lib = library.Library(lambda: [root])
    lib.scan()
    assert [f.name for f in lib.all()] == ["shallow"]
    assert len(lib.problems) == 1 and "deep" in lib.problems[0]
