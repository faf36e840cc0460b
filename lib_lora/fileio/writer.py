"""Writing safetensors (the layout: `layout.py`): whole-dict and streamed writers (one producer per tensor, its
pieces computed on worker threads (`pieces.py`) or in forked processes (`forked.py`), kernel copies of unchanged
pieces coalesced into runs, disk writeback started while writing), and the trainer's precomputed hashes.
"""

from __future__ import annotations

import hashlib
import os
import struct

from lib_lora.errors import LoraStudioError
from .atomic import atomic_write, check_target
from .layout import _itemsize, _numel, _st_header, _st_layout, _st_rank, _tensor_bytes
from .paths import _name
from .pieces import _WRITE_CHUNK, FilePiece, _ahead, _Pieces, _pwrite_all


def _write_chunks(f, mv, done: int, total: int, progress) -> int:
    """Write `mv` in _WRITE_CHUNK pieces (progress and Ctrl-C between them); returns the new byte count."""
    for i in range(0, len(mv), _WRITE_CHUNK):
        f.write(mv[i:i + _WRITE_CHUNK])
        done += min(_WRITE_CHUNK, len(mv) - i)
        if progress is not None:
            progress(done, total)
    return done


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


