"""The persistent model-hash cache used by merge recipes: hits only while the file is unchanged."""

import json
import os

import torch

from lib_lora import fileio
from lib_lora.fileio import hashing


def _write(path, seed=0, n=64):
    g = torch.Generator().manual_seed(seed)
    fileio.atomic_save_safetensors({"w": torch.randn(n, n, generator=g)}, path, overwrite=True)
    return path


def test_second_call_is_a_cache_hit_with_the_same_hash(tmp_path):
    cache = str(tmp_path / "c" / "hashes.json")
    p = _write(tmp_path / "m.safetensors")
    h1, hit1 = fileio.cached_model_hash(p, cache)
    h2, hit2 = fileio.cached_model_hash(p, cache)
    assert (hit1, hit2) == (False, True)
    assert h1 == h2 == fileio.model_hash(p)
    assert os.path.realpath(p) in json.load(open(cache))


def test_whole_file_hash_is_cached_beside_the_body_hash(tmp_path):
    """The WebUI's checkpoint hash (the whole file) and its LoRA hash (the body after the header) of one file are two
    entries of one record: neither evicts the other, and each is a hit the second time."""
    import hashlib

    cache = str(tmp_path / "hashes.json")
    p = _write(tmp_path / "m.safetensors")
    whole = hashlib.sha256(open(p, "rb").read()).hexdigest()
    assert fileio.cached_model_hash(p, cache, whole_file=True) == (whole, False)
    assert fileio.cached_model_hash(p, cache) == (fileio.model_hash(p), False)
    assert fileio.cached_model_hash(p, cache, whole_file=True) == (whole, True)
    assert fileio.cached_model_hash(p, cache) == (fileio.model_hash(p), True)
    assert whole != fileio.model_hash(p)


def test_size_change_invalidates(tmp_path):
    cache = str(tmp_path / "hashes.json")
    p = _write(tmp_path / "m.safetensors", n=64)
    fileio.cached_model_hash(p, cache)
    st = os.stat(p)
    _write(p, seed=1, n=65)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))   # same mtime, other size
    h, hit = fileio.cached_model_hash(p, cache)
    assert not hit and h == fileio.model_hash(p)


def test_same_size_rewrite_with_mtime_set_back_invalidates(tmp_path):
    # same size, mtime restored: only the ctime (and the inode of the renamed-in file) tell
    cache = str(tmp_path / "hashes.json")
    p = _write(tmp_path / "m.safetensors", seed=0)
    old, _ = fileio.cached_model_hash(p, cache)
    st = os.stat(p)
    with open(p, "r+b") as f:   # in place: same inode, same size
        f.seek(-4, os.SEEK_END)
        f.write(b"\x00\x00\x80\x7f")
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    h, hit = fileio.cached_model_hash(p, cache)
    assert not hit and h != old and h == fileio.model_hash(p)


def test_mtime_change_invalidates(tmp_path):
    cache = str(tmp_path / "hashes.json")
    p = _write(tmp_path / "m.safetensors")
    fileio.cached_model_hash(p, cache)
    st = os.stat(p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert fileio.cached_model_hash(p, cache)[1] is False
    assert fileio.cached_model_hash(p, cache)[1] is True   # re-stored with the new stamp


def test_corrupt_or_unwritable_cache_is_ignored(tmp_path):
    p = _write(tmp_path / "m.safetensors")
    bad = tmp_path / "hashes.json"
    bad.write_text("{not json")
    assert fileio.cached_model_hash(p, str(bad)) == (fileio.model_hash(p), False)
    assert fileio.cached_model_hash(p, str(bad))[1] is True   # replaced by a valid cache
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    try:
        h, hit = fileio.cached_model_hash(p, str(ro / "hashes.json"))
        assert h == fileio.model_hash(p) and not hit
    finally:
        os.chmod(ro, 0o700)


def test_disabled_and_default_location(tmp_path, monkeypatch):
    p = _write(tmp_path / "m.safetensors")
    monkeypatch.setenv(hashing.HASH_CACHE_ENV, "off")
    assert fileio.default_hash_cache_path() is None
    assert fileio.cached_model_hash(p) == (fileio.model_hash(p), False)
    assert fileio.cached_model_hash(p)[1] is False
    monkeypatch.delenv(hashing.HASH_CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert fileio.default_hash_cache_path() == str(tmp_path / "xdg" / "lora-studio" / "model-hashes.json")
    fileio.cached_model_hash(p)
    assert fileio.cached_model_hash(p)[1] is True
