"""What the stream writer's producers yield and how it reaches the file: pooled output buffers, file-to-file pieces
(`FilePiece`), the check of each piece against the header already written (`_Pieces`), positioned writes, and the
worker threads that compute pieces ahead of the writer (`_ahead`)."""

from __future__ import annotations

import errno
import os

from lib_lora.errors import LoraFileError, LoraStudioError
from .layout import _itemsize, _numel, _tensor_bytes

_WRITE_CHUNK = 16 << 20  # progress and Ctrl-C granularity of big writes (and of a FilePiece's plain copy)


class _Pieces:
    """Checks each piece a producer yields against the header already written for its tensor (dtype, bytes):
    the stream writer's three paths (in order, over a prefill, forked) share it. `take` returns
    (pooled buffer or None, the piece, its bytes as a memoryview or None for a FilePiece, byte count)."""

    def __init__(self, order):
        self.want = {key: _numel(shape) * _itemsize(dt) for key, dt, shape in order}
        self.dtype = {key: dt for key, dt, _ in order}
        self.got = 0

    def take(self, key, t):
        if t.dtype != self.dtype[key]:
            raise LoraStudioError(f"internal error: '{key}' produced {t.dtype}, expected {self.dtype[key]}")
        buf = None
        if isinstance(t, Pooled):
            buf, t = t, t.tensor
        mv = None if isinstance(t, FilePiece) else _tensor_bytes(t)
        n = t.nbytes if mv is None else len(mv)
        self.got += n
        if self.got > self.want[key]:
            raise LoraStudioError(f"internal error: '{key}' produced more than {self.want[key]} bytes")
        return buf, t, mv, n

    def end(self, key) -> None:
        if self.got != self.want[key]:
            raise LoraStudioError(f"internal error: '{key}' produced {self.got} bytes, expected {self.want[key]}")
        self.got = 0


class Pooled:
    """A piece of the stream writer in a reusable buffer: written like its `tensor`, then given back to its
    `BufferPool` (fresh multi-MB allocations cost a page fault per 4 KiB zero-filled by the kernel)."""

    def __init__(self, tensor, pool, buf):
        self.tensor, self.dtype, self._pool, self._buf = tensor, tensor.dtype, pool, buf

    def release(self) -> None:
        if self._buf is not None:
            self._pool._give(self._buf)
            self._buf = None


class BufferPool:
    """Output buffers of up to `nbytes` each, reused across pieces; `take(numel, dtype)` returns a `Pooled`
    whose `tensor` (uninitialised) the producer fills. Never blocks: when every buffer is in use (or the
    piece is bigger) a fresh tensor is allocated and simply dropped after writing."""

    def __init__(self, nbytes: int):
        import threading

        self.nbytes, self._free, self._lock = nbytes, [], threading.Lock()

    def take(self, numel: int, dtype) -> Pooled:
        import torch

        need = numel * _itemsize(dtype)
        buf = None
        if need <= self.nbytes:
            with self._lock:
                buf = self._free.pop() if self._free else None
            if buf is None:
                buf = torch.empty(self.nbytes, dtype=torch.uint8)
            return Pooled(buf[:need].view(dtype), self, buf)
        return Pooled(torch.empty(numel, dtype=dtype), self, None)

    def _give(self, buf) -> None:
        with self._lock:
            self._free.append(buf)


def _ahead(items, workers: int, per_worker: int = 3):
    """(key, piece) pairs in order with every callable piece replaced by its result; with `workers` > 0 the
    callables run on a thread pool, at most `per_worker`·workers pieces ahead of the consumer."""
    if workers <= 0:
        for key, t in items:
            yield key, (t() if callable(t) else t)
        return
    import collections
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(workers, thread_name_prefix="st-writer")
    pending: collections.deque = collections.deque()
    try:
        for key, t in items:
            pending.append((key, pool.submit(t) if callable(t) else t))
            while len(pending) > per_worker * workers:
                key0, t0 = pending.popleft()
                yield key0, _result(t0)
        while pending:
            key0, t0 = pending.popleft()
            yield key0, _result(t0)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)   # an error or Ctrl-C: nothing keeps running


def _result(t):
    from concurrent.futures import Future
    from concurrent.futures import TimeoutError as Pending   # not the builtin on Python 3.10

    if not isinstance(t, Future):
        return t
    while True:
        try:
            return t.result(timeout=0.2)   # short waits: Ctrl-C still reaches the main thread
        except Pending:
            continue


class FilePiece:
    """A tensor's bytes as they are in an input file, written to the output by the kernel (copy_file_range:
    no page faults, no copy through Python); a piece the stream writer accepts where a tensor is expected."""

    def __init__(self, fd: int, offset: int, nbytes: int, dtype):
        self.fd, self.offset, self.nbytes, self.dtype = fd, offset, nbytes, dtype

    def copy_to(self, out_fd: int, out_offset: int | None = None) -> None:
        """At `out_fd`'s position, or at `out_offset` (the position is then left alone)."""
        off, left = self.offset, self.nbytes
        fast = hasattr(os, "copy_file_range")
        while left:
            n = 0
            if fast:
                try:
                    n = os.copy_file_range(self.fd, out_fd, min(left, 1 << 30), off, out_offset)
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                        raise
                    fast = False   # this kernel/filesystem pair cannot: plain reads and writes
            if not fast:
                data = os.pread(self.fd, min(left, _WRITE_CHUNK), off)
                n = len(data)
                if out_offset is None:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(out_fd, view):]
                else:
                    _pwrite_all(out_fd, data, out_offset)
            if n <= 0:
                raise LoraFileError("an input file got shorter while it was being copied; is another program "
                                    "writing it?")
            off += n
            left -= n
            if out_offset is not None:
                out_offset += n


def _pwrite_all(fd: int, data, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n
