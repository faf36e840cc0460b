"""The stream writer's head start (`fileio.prefill`): `python -m lib_lora bake` copies the checkpoint's body while it
imports torch, then writes only the patched layers and the header. The file must equal a bake without it (tensors,
dtypes, metadata), load in safetensors itself, and every way the head start cannot be used must fall back to a full
write or leave nothing behind."""

from __future__ import annotations

import json
import os
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lib_lora import fileio
from lib_lora.__main__ import main
from lib_lora.fileio import atomic
from lib_lora.fileio.prefill import Prefill
from lib_lora.merge.bake import bake_checkpoint
from tests.engine_helpers import SD15_LAYERS
from tests.factory import write_lora
from tests.models import build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prefill")
    root = build_model("sd15", include=SD15_LAYERS, seed=5)
    sd = {k: v.detach().clone().half() for k, v in root.state_dict().items()}
    ckpt = tmp / "base.safetensors"
    save_file(sd, str(ckpt), metadata={"note": "base"})
    loras = tmp / "loras"
    loras.mkdir()
    pick = set(SD15_LAYERS)
    write_lora(loras / "style.safetensors", algo="lora", rank=8, layers=lambda l: l in pick, seed=1)
    return {"tmp": tmp, "ckpt": str(ckpt), "loras": str(loras), "sd": sd}


def _header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return n, f.read(n)


def _same_file_content(x, y):
    """Same tensors bit for bit, same dtypes, same metadata (the header's padding aside)."""
    tx, ty = load_file(x), load_file(y)
    assert tx.keys() == ty.keys()
    for k in tx:
        assert tx[k].dtype == ty[k].dtype and torch.equal(tx[k].view(torch.uint8), ty[k].view(torch.uint8)), k
    assert fileio.read_metadata(x) == fileio.read_metadata(y)


PROMPT = "<lora:style:0.8>"


def _reference(env, tmp_path):
    ref = tmp_path / "ref.safetensors"
    bake_checkpoint(env["ckpt"], PROMPT, env["loras"], ref, prefill=False)   # no head start
    return ref


def test_cli_bake_uses_the_head_start_and_writes_the_same_file(env, tmp_path):
    ref = _reference(env, tmp_path)
    out = tmp_path / "cli.safetensors"
    assert main(["bake", "--base", env["ckpt"], "--prompt", PROMPT, "--lora-dir", env["loras"], "--out", str(out),
                 "--quiet"]) == 0
    _same_file_content(out, ref)
    n, raw = _header(out)
    n_ref, raw_ref = _header(ref)
    # the head start's header: the same JSON, padded with spaces to the room kept for it
    assert n > n_ref and raw.rstrip(b" ") == raw_ref.rstrip(b" ") and n % 8 == 0
    with safe_open(str(out), framework="pt") as f:   # safetensors' own parser accepts the padding
        assert f.metadata()["note"] == "base"
        k = next(iter(f.keys()))
        assert torch.equal(f.get_tensor(k), load_file(ref)[k])
    assert os.path.getsize(out) == 8 + n + (os.path.getsize(ref) - 8 - n_ref)
    # what the bake left untouched is the base's bytes, what it patched differs
    base = env["sd"]
    got = load_file(out)
    assert sum(not torch.equal(got[k], base[k]) for k in base) > 0
    assert sum(torch.equal(got[k], base[k]) for k in base) > 0


def test_a_dtype_cast_writes_the_file_in_full(env, tmp_path):
    out = tmp_path / "fp32.safetensors"
    assert main(["bake", "--base", env["ckpt"], "--prompt", PROMPT, "--lora-dir", env["loras"], "--out", str(out),
                 "--dtype", "fp32", "--quiet"]) == 0
    ref = tmp_path / "ref32.safetensors"
    bake_checkpoint(env["ckpt"], PROMPT, env["loras"], ref, dtype="fp32", prefill=False)
    assert _header(out) == _header(ref)
    assert open(out, "rb").read() == open(ref, "rb").read()


@pytest.mark.parametrize("named_temps", [False, True])
def test_an_unused_head_start_leaves_nothing(env, tmp_path, monkeypatch, named_temps):
    if named_temps:
        monkeypatch.setattr(atomic, "USE_O_TMPFILE", False)
    out = tmp_path / "never.safetensors"
    p = Prefill.start(env["ckpt"], out, overwrite=False, reserve=4096)
    assert p is not None
    if named_temps:
        assert p.temp[1] is not None and os.path.exists(p.temp[1])
    p.close()
    p.close()   # twice is harmless
    assert os.listdir(tmp_path) == []


def test_a_failing_bake_leaves_nothing_and_no_temporary(env, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(atomic, "USE_O_TMPFILE", False)   # named temporaries: visible if one were left
    out = tmp_path / "bad.safetensors"
    rc = main(["bake", "--base", env["ckpt"], "--prompt", "<lora:style:0.8:nosuchpreset>", "--lora-dir",
               env["loras"], "--out", str(out), "--quiet"])
    assert rc != 0 and "nosuchpreset" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_a_header_bigger_than_the_room_kept_falls_back(env, tmp_path):
    ref = _reference(env, tmp_path)
    out = tmp_path / "small_room.safetensors"
    p = Prefill.start(env["ckpt"], out, overwrite=False, reserve=0)   # the recipe will not fit
    try:
        bake_checkpoint(env["ckpt"], PROMPT, env["loras"], out, prefill=p)
    finally:
        p.close()
    assert open(out, "rb").read() == open(ref, "rb").read()   # written in full, as without a head start


def test_a_checkpoint_replaced_after_the_copy_started_is_not_mixed_in(env, tmp_path):
    # the head start copied one file; the bake then reads another at the same path: every byte must come from
    # the file the bake read
    base = tmp_path / "moving.safetensors"
    save_file(env["sd"], str(base))
    out = tmp_path / "out.safetensors"
    p = Prefill.start(base, out, overwrite=False, reserve=1 << 16)
    p.wait()
    other = {k: (v.float() * 0.5).half() for k, v in env["sd"].items()}
    save_file(other, str(tmp_path / "new.safetensors"))
    os.replace(tmp_path / "new.safetensors", base)
    try:
        bake_checkpoint(base, PROMPT, env["loras"], out, prefill=p)
    finally:
        p.close()
    ref = tmp_path / "ref_other.safetensors"
    bake_checkpoint(base, PROMPT, env["loras"], ref, prefill=False)
    _same_file_content(out, ref)


def test_stream_writer_over_a_head_start_writes_only_what_differs(tmp_path):
    # the writer alone: a source with several dtypes; the output keeps two tensors from the file and replaces one
    src = tmp_path / "src.safetensors"
    tensors = {"a": torch.arange(1000, dtype=torch.float32), "b": torch.arange(77, dtype=torch.int64),
               "c": torch.ones(3, 5, dtype=torch.float16)}
    save_file(tensors, str(src), metadata={"x": "1"})
    reader = fileio.MappedTensors(src)
    new_c = torch.full((3, 5), 2.0, dtype=torch.float16)

    def spec(k, t):
        return (k, t.dtype, tuple(t.shape), lambda: iter([reader.piece(k)]) if k != "c" else iter([new_c]))
    specs = [spec(k, t) for k, t in tensors.items()]
    out = tmp_path / "out.safetensors"
    p = Prefill.start(src, out, overwrite=False, reserve=256)
    seen = []
    fileio.atomic_save_safetensors_stream(specs, out, {"x": "2"}, prefill=p,
                                          progress=lambda d, t: seen.append((d, t)))
    reader.close()
    got = load_file(out)
    assert torch.equal(got["a"], tensors["a"]) and torch.equal(got["b"], tensors["b"])
    assert torch.equal(got["c"], new_c)
    assert fileio.read_metadata(out) == {"x": "2"}
    assert seen[-1][0] == seen[-1][1] == os.path.getsize(out)
    assert json.loads(_header(out)[1])["a"]["data_offsets"] == json.loads(_header(src)[1])["a"]["data_offsets"]


def test_the_writer_waits_for_a_copy_still_running(tmp_path, monkeypatch):
    # many small copy steps: the writer starts while the head start is still copying (the CLI's usual case)
    from lib_lora.fileio import prefill as pf

    monkeypatch.setattr(pf, "_STEP", 1 << 16)
    src = tmp_path / "big.safetensors"
    tensors = {f"t{i}": torch.full((1 << 20,), float(i), dtype=torch.float32) for i in range(8)}   # 32 MB
    save_file(tensors, str(src))
    reader = fileio.MappedTensors(src)
    specs = [(k, t.dtype, tuple(t.shape), (lambda k=k: iter([reader.piece(k)])) if k != "t7"
              else (lambda: iter([torch.zeros(1 << 20)]))) for k, t in tensors.items()]
    out = tmp_path / "out.safetensors"
    p = Prefill.start(src, out, overwrite=False, reserve=64)
    fileio.atomic_save_safetensors_stream(specs, out, None, prefill=p)
    assert p.copied == p.body
    reader.close()
    got = load_file(out)
    assert all(torch.equal(got[f"t{i}"], tensors[f"t{i}"]) for i in range(7)) and not got["t7"].any()


def test_the_library_bake_starts_its_own_head_start(env, tmp_path):
    ref = _reference(env, tmp_path)
    out = tmp_path / "lib.safetensors"
    bake_checkpoint(env["ckpt"], PROMPT, env["loras"], out)
    _same_file_content(out, ref)
    assert _header(out)[0] > _header(ref)[0]   # the header's room: the head start was used
    assert sorted(os.listdir(tmp_path)) == ["lib.safetensors", "ref.safetensors"]
