"""The stream writer's speed paths keep the bytes: adjacent file pieces copied as one range, reused output
buffers, and the writeback started while writing (whose errors still fail the write)."""

import errno
import os

import pytest
import torch

from lib_lora import fileio
from lib_lora.errors import LoraFileError, LoraStudioError
from lib_lora.fileio import writer


def _tensors():
    g = torch.Generator().manual_seed(0)
    ts = {f"k{i:02d}": torch.randn(40 + i, 17, generator=g).half() for i in range(20)}
    ts["f32"] = torch.randn(300, generator=g)
    ts["ids"] = torch.arange(9)
    return ts


def _specs(ts, src, pool):
    def produce(k, t):
        if k in ("k05", "k11", "f32"):   # computed, in pooled buffers, between runs of copied tensors
            flat = t.reshape(-1)

            def piece(i):
                out = pool.take(min(64, flat.numel() - i), t.dtype)
                out.tensor.copy_(flat[i:i + 64])
                return out
            return lambda: (lambda i=i: piece(i) for i in range(0, flat.numel(), 64))
        return lambda: iter([src.piece(k)])
    return [(k, t.dtype, tuple(t.shape), produce(k, t)) for k, t in ts.items()]


@pytest.mark.parametrize("workers", [0, 2])
def test_coalesced_copies_pooled_pieces_and_early_writeback_are_byte_identical(tmp_path, monkeypatch, workers):
    ts = _tensors()
    fileio.atomic_save_safetensors(ts, tmp_path / "x.safetensors", {"k": "v"})
    monkeypatch.setattr(writer, "_FLUSH_STEP", 4096)   # a background fdatasync every 4 KiB; runs capped too
    calls = []
    real = os.copy_file_range

    def counting(*a, **k):
        calls.append(a[2])
        return real(*a, **k)
    monkeypatch.setattr(os, "copy_file_range", counting)
    pool = fileio.BufferPool(64 * 4)
    with fileio.MappedTensors(tmp_path / "x.safetensors") as src:
        fileio.atomic_save_safetensors_stream(_specs(ts, src, pool), tmp_path / "y.safetensors", {"k": "v"},
                                              workers=workers)
    assert (tmp_path / "x.safetensors").read_bytes() == (tmp_path / "y.safetensors").read_bytes()
    assert 0 < len(calls) < len(ts) - 3    # adjacent unchanged tensors went in fewer, bigger copies
    assert len(pool._free) >= 1            # buffers came back for reuse


def test_an_error_of_the_background_writeback_fails_the_write(tmp_path, monkeypatch):
    ts = _tensors()
    fileio.atomic_save_safetensors(ts, tmp_path / "x.safetensors")
    monkeypatch.setattr(writer, "_FLUSH_STEP", 4096)

    def eio(fd):
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(os, "fdatasync", eio)
    with fileio.MappedTensors(tmp_path / "x.safetensors") as src:
        with pytest.raises(LoraFileError, match="Input/output error; nothing was written"):
            fileio.atomic_save_safetensors_stream(_specs(ts, src, fileio.BufferPool(256)),
                                                  tmp_path / "y.safetensors")
    assert not (tmp_path / "y.safetensors").exists()


def _no_children_left():
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forked writers are POSIX only")
@pytest.mark.parametrize("processes", [2, 3])
def test_forked_writers_write_the_same_bytes_with_the_final_header_and_report_progress(tmp_path, monkeypatch,
                                                                                        processes):
    ts = _tensors()
    fileio.atomic_save_safetensors(ts, tmp_path / "x.safetensors", {"k": "v"})
    monkeypatch.setattr(writer, "_FLUSH_STEP", 4096)   # the parent's background writeback runs too
    seen = []
    pool = fileio.BufferPool(64 * 4)
    with fileio.MappedTensors(tmp_path / "x.safetensors") as src:
        fileio.atomic_save_safetensors_stream(_specs(ts, src, pool), tmp_path / "y.safetensors", {"k": "0"},
                                              final_metadata=lambda: {"k": "v"}, processes=processes,
                                              progress=lambda d, t: seen.append((d, t)))
    assert (tmp_path / "x.safetensors").read_bytes() == (tmp_path / "y.safetensors").read_bytes()
    total = (tmp_path / "y.safetensors").stat().st_size
    assert seen[-1] == (total, total) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert _no_children_left()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forked writers are POSIX only")
@pytest.mark.parametrize("where", ["first", "last"])
def test_a_forked_writers_error_is_one_line_and_leaves_no_file_and_no_process(tmp_path, where):
    ts = _tensors()
    fileio.atomic_save_safetensors(ts, tmp_path / "x.safetensors")
    bad = "k00" if where == "first" else "ids"

    def boom():
        raise LoraStudioError(f"'{bad}' could not be computed: try again")
    with fileio.MappedTensors(tmp_path / "x.safetensors") as src:
        specs = [(k, dt, shape, (lambda: iter([boom])) if k == bad else fn)
                 for k, dt, shape, fn in _specs(ts, src, fileio.BufferPool(256))]
        with pytest.raises(LoraStudioError, match=f"^'{bad}' could not be computed: try again$"):
            fileio.atomic_save_safetensors_stream(specs, tmp_path / "y.safetensors", processes=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.safetensors"]   # no output, no temporary
    assert _no_children_left()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forked writers are POSIX only")
def test_one_forked_writers_error_stops_the_others_at_once(tmp_path):
    """The first child fails on its first tensor while the second has a minute of work: the error comes back in
    seconds (the second is killed, not waited for) and nothing is left."""
    import time

    ts = _tensors()
    fileio.atomic_save_safetensors(ts, tmp_path / "x.safetensors")

    def boom():
        raise LoraStudioError("'k00' could not be computed")

    def slow(piece):
        def run():
            time.sleep(60)
            return piece
        return run
    with fileio.MappedTensors(tmp_path / "x.safetensors") as src:
        specs = []
        for k, dt, shape, fn in _specs(ts, src, fileio.BufferPool(256)):
            if k == "k00":
                fn = (lambda: iter([boom]))
            elif k == "k19":
                fn = (lambda k=k: iter([slow(src.piece(k))]))
            specs.append((k, dt, shape, fn))
        t0 = time.monotonic()
        with pytest.raises(LoraStudioError, match="^'k00' could not be computed$"):
            fileio.atomic_save_safetensors_stream(specs, tmp_path / "y.safetensors", processes=2)
    assert time.monotonic() - t0 < 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.safetensors"] and _no_children_left()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forked writers are POSIX only")
def test_a_full_disk_in_a_forked_writer_is_the_disk_full_line(tmp_path):
    ts = _tensors()
    fileio.atomic_save_safetensors(ts, tmp_path / "x.safetensors")

    def full():
        raise OSError(errno.ENOSPC, "No space left on device")
    with fileio.MappedTensors(tmp_path / "x.safetensors") as src:
        specs = [(k, dt, shape, (lambda: iter([full])) if k == "k15" else fn)
                 for k, dt, shape, fn in _specs(ts, src, fileio.BufferPool(256))]
        with pytest.raises(LoraFileError) as e:
            fileio.atomic_save_safetensors_stream(specs, tmp_path / "y.safetensors", processes=2)
    assert "\n" not in str(e.value) and "space" in str(e.value).lower()
    assert not (tmp_path / "y.safetensors").exists()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forked writers are POSIX only")
def test_ctrl_c_while_forked_writers_run_kills_them_and_leaves_no_file(tmp_path):
    ts = _tensors()
    fileio.atomic_save_safetensors(ts, tmp_path / "x.safetensors")
    import time

    def slow():   # children that would write for a minute
        time.sleep(60)
        return ts["ids"]

    def interrupt(done, total):
        raise KeyboardInterrupt
    t = time.monotonic()
    with fileio.MappedTensors(tmp_path / "x.safetensors") as src:
        specs = [(k, dt, shape, (lambda: iter([slow])) if k in ("k00", "ids") else fn)
                 for k, dt, shape, fn in _specs(ts, src, fileio.BufferPool(256))]
        with pytest.raises(KeyboardInterrupt):
            fileio.atomic_save_safetensors_stream(specs, tmp_path / "y.safetensors", processes=2,
                                                  progress=interrupt)
    assert time.monotonic() - t < 30
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.safetensors"]
    assert _no_children_left()
