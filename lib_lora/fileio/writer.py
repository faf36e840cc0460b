"""Writing safetensors: the file layout (byte-identical to safetensors' own files), whole-dict and streamed writers
(one producer per tensor, worker threads, reusable output buffers, kernel copies of unchanged pieces coalesced
into runs, disk writeback started while writing), and the trainer's precomputed hashes.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import struct

from lib_lora.errors import LoraFileError, LoraStudioError
from .atomic import atomic_write, check_target
from .paths import _name

_WRITE_CHUNK = 16 << 20  # progress and Ctrl-C granularity of big writes

_ST_DTYPES = [("BOOL", "bool"), ("U8", "uint8"), ("I8", "int8"), ("F8_E5M2", "float8_e5m2"),
              ("F8_E4M3", "float8_e4m3fn"), ("I16", "int16"), ("F16", "float16"), ("BF16", "bfloat16"),
              ("I32", "int32"), ("F32", "float32"), ("F64", "float64"), ("I64", "int64")]


def _st_rank() -> dict:
    import torch

    return {getattr(torch, tname): (i, sname) for i, (sname, tname) in enumerate(_ST_DTYPES)
            if hasattr(torch, tname)}


def _st_layout(tensors: dict, metadata: dict | None) -> tuple[bytes, list]:
    """(header bytes incl. length prefix, [(key, tensor)] in file order), laid out as safetensors.torch.save
    does (byte-identical files), so the body hash matches a file written by safetensors itself."""
    import torch

    items = []
    for k, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise LoraStudioError(f"cannot save '{k}': not a tensor")
        items.append((str(k), t))
    head, order = _st_header([(k, t.dtype, tuple(t.shape)) for k, t in items], metadata)
    by_key = dict(items)
    return head, [(k, by_key[k]) for k, _, _ in order]


def _st_header(specs: list, metadata: dict | None) -> tuple[bytes, list]:
    """`specs` = [(key, torch dtype, shape)] → (header bytes incl. length prefix, specs in file order)."""
    rank = _st_rank()
    for k, dt, _ in specs:
        if dt not in rank:
            raise LoraStudioError(f"cannot save '{k}': dtype {dt} has no safetensors equivalent")
    order = sorted(specs, key=lambda s: (-rank[s[1]][0], s[0]))
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    off = 0
    for k, dt, shape in order:
        n = _numel(shape) * _itemsize(dt)
        header[k] = {"dtype": rank[dt][1], "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, order


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


@functools.lru_cache(maxsize=None)   # called per tensor and per piece (thousands per checkpoint)
def _itemsize(dtype) -> int:
    import torch

    return torch.empty((), dtype=dtype).element_size()


def _write_chunks(f, mv, done: int, total: int, progress) -> int:
    """Write `mv` in _WRITE_CHUNK pieces (progress and Ctrl-C between them); returns the new byte count."""
    for i in range(0, len(mv), _WRITE_CHUNK):
        f.write(mv[i:i + _WRITE_CHUNK])
        done += min(_WRITE_CHUNK, len(mv) - i)
        if progress is not None:
            progress(done, total)
    return done


def _tensor_bytes(t):
    import torch

    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous().reshape(-1)
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.view(torch.uint8).numpy()).cast("B")



def kohya_hashes(tensors: dict, metadata: dict) -> dict:
    """sshs_model_hash (sha256 of the data section) and sshs_legacy_hash (8 hex of sha256 over 64 KiB at
    1 MiB of the file these tensors make with only the ss_* metadata), as sd-scripts precomputes them."""
    metadata = {k: v for k, v in metadata.items() if k.startswith("ss_")}   # as sd-scripts hashes
    head, items = _st_layout(tensors, metadata)
    body = hashlib.sha256()
    window = bytearray()
    pos = len(head)
    if pos > 0x100000:
        window += head[0x100000:0x110000]
    for _, t in items:
        mv = _tensor_bytes(t)
        body.update(mv)
        lo, hi = max(0x100000, pos), min(0x110000, pos + len(mv))
        if lo < hi:
            window += bytes(mv[lo - pos:hi - pos])
        pos += len(mv)
    return {"sshs_model_hash": body.hexdigest(), "sshs_legacy_hash": hashlib.sha256(bytes(window)).hexdigest()[:8]}

def atomic_save_safetensors(tensors: dict, path, metadata: dict | None = None, overwrite: bool = False,
                            progress=None) -> str:
    """Stream `tensors` as a .safetensors file through `atomic_write` (no second copy in memory).

    `progress(done_bytes, total_bytes)` is called as the data are written."""
    path = _name(path)
    check_target(path, overwrite, ".safetensors")
    head, items = _st_layout(tensors, metadata)
    total = len(head) + sum(t.numel() * t.element_size() for _, t in items)

    def write(f):
        f.write(head)
        done = len(head)
        for _, t in items:
            done = _write_chunks(f, _tensor_bytes(t), done, total, progress)
        if progress is not None:
            progress(total, total)

    return atomic_write(path, write, overwrite)


def atomic_save_safetensors_stream(specs, path, metadata: dict | None = None, overwrite: bool = False,
                                   progress=None, final_metadata=None, workers: int = 0, prefill=None,
                                   processes: int = 0) -> str:
    """Write a .safetensors file whose tensors are produced one at a time (never all in memory).

    `specs` = [(key, torch dtype, shape, produce)]: the header is written first from the dtypes and shapes,
    then, in file order, `produce()` yields CPU tensors of that dtype whose elements, concatenated, are the
    tensor (one tensor or row chunks). A piece may also be a zero-argument function returning such a
    tensor: with `workers` > 0 those run on that many threads, ahead of the writer (at most a few pieces
    per worker wait in memory), so computing and writing overlap (torch and the OS write both release the
    GIL). The layout equals `atomic_save_safetensors`'s for the same tensors.
    `final_metadata()`, when given, is called after the data and its result replaces `metadata` in the header
    (it must render to the same header length: e.g. hashes computed meanwhile, written first as
    placeholders of the same length). `progress(done_bytes, total_bytes)` as in `atomic_save_safetensors`.
    `prefill`: a `fileio.prefill.Prefill` of the source whose body this output mostly repeats; used when the layout
    matches (then only pieces that are not those very source bytes are written), dropped otherwise.
    `processes` > 1 (POSIX only, for a process that owns its runtime: the CLI): the tensors are split into that many
    runs of about equal bytes, each produced and written at its offsets by a forked child (`fileio.forked`);
    Python threads do not scale small torch operations (each hands the GIL over), processes do.
    Through `atomic_write`: a failure, Ctrl-C or kill leaves no file at `path`."""
    path = _name(path)
    check_target(path, overwrite, ".safetensors")
    produce = {str(k): fn for k, _, _, fn in specs}
    head, order = _st_header([(str(k), dt, tuple(shape)) for k, dt, shape, _ in specs], metadata)
    total = len(head) + sum(_numel(shape) * _itemsize(dt) for _, dt, shape in order)

    def pieces():   # (key, piece) in file order, (key, None) after each tensor's last piece
        for key, _, _ in order:
            for t in produce[key]():
                yield key, t
            yield key, None

    if prefill is not None:
        try:
            rank, offs, layout = _st_rank(), 0, []
            for key, dt, shape in order:
                n = _numel(shape) * _itemsize(dt)
                layout.append((key, rank[dt][1], shape, [offs, offs + n]))
                offs += n
            if prefill.usable(layout, len(head) - 8):
                return _write_prefilled(path, prefill, layout, order, pieces(), metadata, final_metadata, overwrite,
                                        progress, workers)
        finally:
            prefill.close()   # unused: its copy stops and its temporary goes; used: a no-op

    if processes > 1 and hasattr(os, "fork"):   # else (no fork): the threads below
        from .forked import write_forked

        return atomic_write(path, lambda f: write_forked(f, head, order, produce, total, progress, final_metadata,
                                                         processes), overwrite)

    run = None   # FilePiece bytes not copied yet (a run of adjacent unchanged tensors)

    def copy_run(f, done: int) -> int:
        nonlocal run
        if run is None:
            return done
        f.flush()
        run.copy_to(f.fileno())
        done += run.nbytes
        run = None
        if progress is not None:
            progress(done, total)
        if flusher is not None:
            flusher.written(done)
        return done

    def write(f):
        nonlocal flusher, run
        f.write(head)
        done = len(head)
        if total >= _FLUSH_STEP:
            flusher = _Flusher(f)
        check = _Pieces(order)
        for key, t in _ahead(pieces(), workers):
            if t is None:
                check.end(key)
                continue
            buf, t, mv, n = check.take(key, t)
            if mv is None:
                # unchanged tensors that follow each other in the input are copied as one range: one
                # copy_file_range per tensor (about a thousand) was 2-3x slower than a few big ones
                if run is not None and run.fd == t.fd and run.offset + run.nbytes == t.offset \
                        and run.nbytes < _FLUSH_STEP:
                    run = FilePiece(run.fd, run.offset, run.nbytes + t.nbytes, run.dtype)
                else:
                    done = copy_run(f, done)
                    run = t
                continue
            done = copy_run(f, done)
            done = _write_chunks(f, mv, done, total, progress)
            del mv, t
            if buf is not None:
                buf.release()
            if flusher is not None:
                flusher.written(done)
        done = copy_run(f, done)
        if flusher is not None:
            flusher.finish()   # the writeback started meanwhile; atomic_write's fsync waits for the rest
        if final_metadata is not None:
            f.flush()
            _pwrite_all(f.fileno(), _final_header(order, final_metadata, len(head)), 0)
        if progress is not None:
            progress(total, total)

    def write_then_stop(f):
        try:
            write(f)
        finally:   # before atomic_write closes the descriptor the flusher syncs (an error, Ctrl-C)
            if flusher is not None:
                flusher.stop()

    flusher = None
    return atomic_write(path, write_then_stop, overwrite)


def _final_header(order, final_metadata, size: int) -> bytes:
    """The header with the metadata known only at the end (the recipe's hashes), of the `size` already written."""
    head, _ = _st_header([(k, dt, shape) for k, dt, shape in order], final_metadata())
    if len(head) != size:
        raise LoraStudioError("internal error: the final header does not fit the space written for it")
    return head


def _write_prefilled(path, prefill, layout, order, pieces, metadata, final_metadata, overwrite, progress,
                     workers) -> str:
    """The stream writer's path over a `Prefill` whose body matches `layout`: pieces other than the source's own
    bytes in place are written at their offsets, then the header, padded with spaces to the space kept for it."""
    body = layout[-1][3][1] if layout else 0
    start = prefill.start_at
    total = start + body
    where = {key: offs[0] for key, _, _, offs in layout}
    check = _Pieces(order)

    def write(f):
        prefill.wait()   # nothing is written over the copy while it still runs
        fd = f.fileno()
        flusher = _Flusher(f) if body >= _FLUSH_STEP else None
        done, written = start + prefill.copied, 0
        try:
            for key, t in _ahead(pieces, workers):
                if t is None:
                    check.end(key)
                    continue
                at = where[key] + check.got
                buf, t, mv, n = check.take(key, t)
                if mv is None:
                    if not prefill.is_source_bytes(t.fd, t.offset, at):   # not the bytes already in place
                        t.copy_to(fd, start + at)
                        written += n
                else:
                    _pwrite_all(fd, mv, start + at)
                    written += n
                    del mv, t
                    if buf is not None:
                        buf.release()
                if flusher is not None:
                    flusher.written(written)
                if progress is not None:
                    progress(min(done + written, total), total)
            if flusher is not None:
                flusher.finish()
        finally:
            if flusher is not None:
                flusher.stop()
        meta = final_metadata() if final_metadata is not None else metadata
        head, _ = _st_header([(k, dt, shape) for k, dt, shape in order], meta)
        raw = head[8:]
        if len(raw) > prefill.reserve:
            raise LoraStudioError("internal error: the final header does not fit the space kept for it")
        _pwrite_all(fd, struct.pack("<Q", prefill.reserve) + raw + b" " * (prefill.reserve - len(raw)), 0)
        os.ftruncate(fd, total)
        if progress is not None:
            progress(total, total)

    return atomic_write(path, write, overwrite, temp=prefill.detach())


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


_FLUSH_STEP = 256 << 20   # start the writeback of every this many bytes written


class _Flusher:
    """Starts the disk writeback of a big output while it is still being written (fdatasync on a thread, every
    _FLUSH_STEP bytes), so the final fsync waits only for the tail instead of the whole file. An error of a
    background fdatasync is raised by `finish()` (the kernel reports a writeback error to one fsync only)."""

    def __init__(self, f):
        import threading

        self.fd, self.error, self.mark = f.fileno(), None, _FLUSH_STEP
        self.f = f
        self.wake, self.done, self.pending = threading.Event(), False, False
        self.thread = threading.Thread(target=self._run, daemon=True, name="st-flusher")
        self.thread.start()

    def written(self, done: int) -> None:
        if done >= self.mark:
            self.mark = done + _FLUSH_STEP
            self.f.flush()
            self.pending = True
            self.wake.set()

    def _run(self):
        while True:
            self.wake.wait()
            self.wake.clear()
            if self.pending:   # a requested flush runs even when stopping (its error must be seen)
                self.pending = False
                try:
                    getattr(os, "fdatasync", os.fsync)(self.fd)
                except OSError as exc:
                    self.error = exc
                    return
            if self.done:
                return

    def stop(self) -> None:
        self.done = True
        self.wake.set()
        self.thread.join()

    def finish(self) -> None:
        self.stop()
        if self.error is not None:
            raise self.error


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
