"""fileio: safetensors reading with one-line errors, pickle gating, atomic writes, hashes."""

import hashlib
import os
import struct

import pytest
import torch
from safetensors.torch import save_file

from lib_lora import fileio
from lib_lora.errors import LoraFileError
from tests.paths import REPO


def _write(path, tensors=None, metadata=None):
    tensors = tensors if tensors is not None else {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3),
                                                   "b": torch.ones(4, dtype=torch.float16)}
    save_file(tensors, str(path), metadata=metadata)
    return path


def _one_line_error(path, match):
    with pytest.raises(LoraFileError) as exc:
        fileio.read_tensors(path)
    msg = str(exc.value)
    assert "\n" not in msg
    assert os.fspath(path) in msg
    assert match in msg
    return msg


def test_read_round_trip_with_metadata(tmp_path):
    p = _write(tmp_path / "x.safetensors", metadata={"ss_network_dim": "4", "modelspec.title": "t"})
    tensors, meta = fileio.read_tensors(p)
    assert torch.equal(tensors["a"], torch.arange(6, dtype=torch.float32).reshape(2, 3))
    assert tensors["b"].dtype == torch.float16
    assert meta == {"ss_network_dim": "4", "modelspec.title": "t"}
    assert fileio.read_metadata(p) == meta


def test_empty_file(tmp_path):
    p = tmp_path / "empty.safetensors"
    p.write_bytes(b"")
    _one_line_error(p, "empty")


def test_truncated_body(tmp_path):
    p = _write(tmp_path / "t.safetensors")
    data = p.read_bytes()
    p.write_bytes(data[:-5])
    _one_line_error(p, "truncated")


def test_truncated_header(tmp_path):
    p = _write(tmp_path / "t.safetensors")
    p.write_bytes(p.read_bytes()[:20])
    _one_line_error(p, "truncated")


def test_not_a_safetensors_file(tmp_path):
    p = tmp_path / "html.safetensors"
    p.write_bytes(b"<!DOCTYPE html><html>Rate limited</html>")  # a typical failed download
    _one_line_error(p, "not a safetensors file")
    q = tmp_path / "tiny.safetensors"
    q.write_bytes(b"abc")
    _one_line_error(q, "not a safetensors file")


def test_bad_json_header(tmp_path):
    p = tmp_path / "bad.safetensors"
    body = b"{not json!!"
    p.write_bytes(struct.pack("<Q", len(body)) + body)
    _one_line_error(p, "not a safetensors file")


def test_missing_file(tmp_path):
    with pytest.raises(LoraFileError, match="not found"):
        fileio.read_tensors(tmp_path / "nope.safetensors")


def test_pickle_disabled_by_default(tmp_path):
    p = tmp_path / "old.pt"
    torch.save({"x.lora_down.weight": torch.ones(2, 3)}, p)
    msg = _one_line_error(p, "pickle")
    assert "--allow-pickle" in msg and ".safetensors" in msg


def test_pickle_allowed_and_state_dict_unwrapped(tmp_path):
    p = tmp_path / "old.ckpt"
    torch.save({"state_dict": {"w": torch.full((2,), 3.0), "step": torch.tensor(5)}, "epoch": 3}, p)
    tensors, meta = fileio.read_tensors(p, allow_pickle=True)
    assert set(tensors) == {"w", "step"} and meta == {}
    assert torch.equal(tensors["w"], torch.full((2,), 3.0))


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickle_with_code_is_refused_even_when_allowed(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"x": _Evil()}, p)
    with pytest.raises(LoraFileError) as exc:
        fileio.read_tensors(p, allow_pickle=True)
    assert "\n" not in str(exc.value) and "evil.pt" in str(exc.value)


def test_atomic_save_and_refuse_overwrite(tmp_path):
    p = tmp_path / "out.safetensors"
    fileio.atomic_save_safetensors({"a": torch.ones(3)}, p, metadata={"k": 1})
    tensors, meta = fileio.read_tensors(p)
    assert torch.equal(tensors["a"], torch.ones(3)) and meta == {"k": "1"}
    before = p.read_bytes()
    with pytest.raises(LoraFileError, match="--overwrite"):
        fileio.atomic_save_safetensors({"a": torch.zeros(3)}, p)
    assert p.read_bytes() == before
    fileio.atomic_save_safetensors({"a": torch.zeros(3)}, p, overwrite=True)
    assert torch.equal(fileio.read_tensors(p)[0]["a"], torch.zeros(3))
    assert sorted(os.listdir(tmp_path)) == ["out.safetensors"]


def test_atomic_save_shared_storage_views(tmp_path):
    base = torch.arange(12, dtype=torch.float32)
    p = tmp_path / "views.safetensors"
    fileio.atomic_save_safetensors({"x": base[:6].view(2, 3), "y": base[6:], "t": base.view(3, 4).T}, p)
    t, _ = fileio.read_tensors(p)
    assert torch.equal(t["y"], base[6:]) and torch.equal(t["t"], base.view(3, 4).T)


def test_streamed_file_is_byte_identical_to_safetensors_own(tmp_path):
    """The streaming writer lays files out exactly as safetensors does (same body hash as its files)."""
    import safetensors.torch as st

    ts = {"b": torch.randn(3, 4), "a": torch.randn(5).half(), "z": torch.arange(7), "s": torch.tensor(3.0),
          "c": torch.ones(2, dtype=torch.bfloat16), "m": torch.tensor([True, False]), "e": torch.empty(0, 4),
          "u": torch.arange(5, dtype=torch.uint8), "d": torch.randn(2, dtype=torch.float64),
          "t": torch.randn(3, 4).T, "\u00fc": torch.ones(1), "f8": torch.randn(4).to(torch.float8_e4m3fn)}
    p = tmp_path / "x.safetensors"
    for meta in (None, {"k": 'v\n"\u00e9'}):
        fileio.atomic_save_safetensors(ts, p, meta, overwrite=True)
        assert p.read_bytes() == st.save({k: v.contiguous() for k, v in ts.items()}, metadata=meta)
    seen = []
    fileio.atomic_save_safetensors({"w": torch.ones(5 << 20)}, p, overwrite=True, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1][0] == seen[-1][1] == p.stat().st_size and len(seen) >= 2
    assert sorted(os.listdir(tmp_path)) == ["x.safetensors"]


@pytest.mark.parametrize("name,overwrite,match", [
    ("", True, "is a folder"), ("out.ckpt", False, "does not end in .safetensors"),
    ("missing/out.safetensors", False, "does not exist"), ("old.safetensors", False, "--overwrite")])
def test_target_checks_before_any_work(tmp_path, name, overwrite, match):
    (tmp_path / "old.safetensors").write_bytes(b"old")
    with pytest.raises(LoraFileError, match=match) as exc:
        fileio.check_target(tmp_path / name, overwrite, ".safetensors")
    assert "\n" not in str(exc.value)
    assert (tmp_path / "old.safetensors").read_bytes() == b"old"


def test_atomic_write_text(tmp_path):
    p = tmp_path / "a.txt"
    fileio.atomic_write_text(p, "one, two\n")
    assert p.read_text() == "one, two\n"
    with pytest.raises(LoraFileError, match="--overwrite"):
        fileio.atomic_write_text(p, "x", overwrite=False)
    fileio.atomic_write_text(p, "three")
    assert p.read_text() == "three"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_save_into_missing_folder(tmp_path):
    with pytest.raises(LoraFileError, match="does not exist"):
        fileio.atomic_save_safetensors({"a": torch.ones(1)}, tmp_path / "no" / "x.safetensors")


def test_model_hash_is_sha256_of_body(tmp_path):
    p = _write(tmp_path / "h.safetensors", {"w": torch.randn(300, 300)}, metadata={"ss_a": "b"})
    data = p.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    assert fileio.model_hash(p) == hashlib.sha256(data[8 + n:]).hexdigest()
    # metadata does not change the body hash
    q = _write(tmp_path / "h2.safetensors", {"w": fileio.read_tensors(p)[0]["w"]}, metadata={"ss_a": "other"})
    assert fileio.model_hash(q) == fileio.model_hash(p)
    assert fileio.legacy_hash(p) == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]


def test_model_hash_trusts_trainer_metadata_only_when_asked(tmp_path):
    p = _write(tmp_path / "h.safetensors", metadata={"sshs_model_hash": "ABC123"})
    assert fileio.model_hash(p, trust_metadata=True) == "abc123"
    assert fileio.model_hash(p) != "abc123"


def test_file_sha256_hashes_the_whole_file_or_its_tail(tmp_path):
    data = os.urandom((9 << 20) + 123)        # more than two of the reader's chunks, not a multiple of one
    p = tmp_path / "blob.bin"
    p.write_bytes(data)
    assert fileio.file_sha256(p) == hashlib.sha256(data).hexdigest()
    assert fileio.file_sha256(p, 1000) == hashlib.sha256(data[1000:]).hexdigest()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX fork")
def test_a_lock_released_by_the_parent_is_free_while_a_forked_child_still_runs(tmp_path):
    """flock() is shared with forked children (the merge CLI forks while its hash thread may hold the hash cache's
    lock): they drop it at once, so the parent's release frees it for everyone."""
    import subprocess
    import sys
    import time

    from lib_lora.fileio import locked

    target = tmp_path / "cache.json"
    with locked(target):
        pid = os.fork()
        if pid == 0:   # the child outlives the parent's lock
            time.sleep(3)
            os._exit(0)
    try:
        code = ("import sys; from lib_lora.fileio import locked\n"
                "with locked(sys.argv[1], timeout=0.5):\n    print('got it')\n")
        r = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, timeout=60,
                           cwd=str(REPO))
        assert r.stdout.strip() == "got it", r.stderr
    finally:
        os.waitpid(pid, 0)
