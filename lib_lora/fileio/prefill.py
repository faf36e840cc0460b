"""A head start for the stream writer: the body of a source .safetensors copied into the output's temporary file on a
thread while the caller is still getting ready.

A bake writes a file that is mostly its input checkpoint, byte for byte. `python -m lib_lora bake` starts that copy
(file to file in the kernel, with its disk writeback) before it imports torch, about a second on a CPU box, so the
copy and the import overlap. Once the patched tensors are known, `atomic_save_safetensors_stream(..., prefill=...)`
checks that the output's layout is the source's (same tensors, dtypes, shapes and offsets; header not bigger than
the space kept for it) and then writes only the tensors that changed, in place, and the header last. Any other
layout (a `--dtype` cast, keys added or dropped) drops the head start and writes the file in full, as without it.

The output's header is padded with spaces up to the space kept for it: JSON allows trailing whitespace, and
safetensors pads its own headers with spaces the same way. Nothing here imports torch.
"""

from __future__ import annotations

import errno
import os
import threading

from .atomic import check_target, drop_temp, open_temp
from .paths import file_stamp
from .reader import read_safetensors_header

_STEP = 64 << 20   # bytes per copy call: the stop flag is checked between calls


def room_for(text: str, records: int = 0) -> int:
    """Header bytes to keep for metadata that quotes `text` (escaped twice when JSON sits inside a JSON value: at
    most 8 bytes a character) and `records` entries of a few hundred bytes each (e.g. a bake's per-LoRA recipe)."""
    return 16384 + 8 * len(text) + 1024 * records


class Prefill:
    """Use `start()`; then the stream writer calls `usable()`, `wait()` and `detach()`, or `close()` drops it."""

    def __init__(self, src: str, out: str, reserve: int):
        n, header = read_safetensors_header(src)
        self.src, self.out = src, out
        self.entries = {k: (v["dtype"], [int(d) for d in v["shape"]], [int(x) for x in v["data_offsets"]])
                        for k, v in header.items() if k != "__metadata__"}
        self.body = max((e[2][1] for e in self.entries.values()), default=0)
        self.src_start = 8 + n
        self.reserve = (max(n, 0) + reserve + 7) // 8 * 8
        self.start_at = 8 + self.reserve            # where the body goes in the output
        self.src_fd = os.open(src, os.O_RDONLY)
        self.identity = file_stamp(os.fstat(self.src_fd))
        self.temp = None
        self.error: BaseException | None = None
        self.copied = 0
        self._stop = False
        self._thread = None

    @classmethod
    def start(cls, src, out, overwrite: bool, reserve: int) -> "Prefill | None":
        """Start copying `src`'s body for output `out`, keeping `reserve` bytes more than `src`'s header for the
        output's header; None when that cannot help (not a safetensors file, a target that will be refused: the
        real run then says why, in its own words)."""
        try:
            src, out = os.fspath(src), os.fspath(out)
            if not hasattr(os, "pwrite"):   # Windows: writes at an offset need pwrite; the plain path is used
                return None
            if not src.lower().endswith(".safetensors") or not os.path.isfile(src):
                return None
            check_target(out, overwrite, ".safetensors")
            self = cls(src, out, reserve)
        except Exception:   # noqa: BLE001 — only a head start: the run itself reports any problem
            return None
        try:
            self.temp = open_temp(out)
        except OSError:
            os.close(self.src_fd)
            return None
        self._thread = threading.Thread(target=self._run, daemon=True, name="st-prefill")
        self._thread.start()
        return self

    def _run(self) -> None:
        from .pieces import _pwrite_all
        from .writer import _Flusher

        fd, src_fd = self.temp[0], self.src_fd   # both stay open until close(), which first stops this thread
        try:
            with os.fdopen(fd, "wb", closefd=False) as f:
                flusher = _Flusher(f)   # the disk writeback starts while copying, as in the stream writer
                try:
                    fast = hasattr(os, "copy_file_range")
                    while self.copied < self.body and not self._stop:
                        left = min(self.body - self.copied, _STEP)
                        src_off, dst_off = self.src_start + self.copied, self.start_at + self.copied
                        n = 0
                        if fast:
                            try:
                                n = os.copy_file_range(src_fd, fd, left, src_off, dst_off)
                            except OSError as exc:
                                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                                    raise
                                fast = False
                        if not fast:
                            data = os.pread(src_fd, min(left, 8 << 20), src_off)
                            n = len(data)
                            _pwrite_all(fd, data, dst_off)
                        if n <= 0:
                            raise OSError(errno.EIO, "the checkpoint got shorter while it was being copied")
                        self.copied += n
                        flusher.written(self.copied)
                finally:
                    flusher.finish()
        except BaseException as exc:   # noqa: BLE001 — raised again by wait(), in the caller's thread
            self.error = exc

    def usable(self, order: list, header_len: int) -> bool:
        """True when the output laid out as `order` = [(key, safetensors dtype, shape, [begin, end])] with a
        header of `header_len` bytes (without its 8-byte length) matches the copied body and the source is unchanged
        since (pieces read from another file are written anyway: `is_source_bytes`)."""
        if header_len > self.reserve or len(order) != len(self.entries):
            return False
        try:
            if file_stamp(os.fstat(self.src_fd)) != self.identity:
                return False
        except OSError:
            return False
        for key, dt, shape, offs in order:
            e = self.entries.get(key)
            if e is None or e[0] != dt or e[1] != list(shape) or e[2] != list(offs):
                return False
        return True

    def is_source_bytes(self, fd: int, offset: int, out_offset: int) -> bool:
        """Whether bytes at `offset` of the open file `fd` are the ones the head start put at body offset
        `out_offset` of the output."""
        try:
            same = file_stamp(os.fstat(fd)) == self.identity
        except OSError:
            return False
        return same and offset - self.src_start == out_offset

    def wait(self) -> None:
        """Until the copy is done; its error, if any, is raised here."""
        if self._thread is not None:
            try:
                self._thread.join()
            except BaseException:   # Ctrl-C: the copy must stop before its file descriptor is closed
                self._stop = True
                self._thread.join()
                raise
        if self.error is not None:
            raise self.error

    def detach(self):
        """The temporary (fd, name), now the caller's (atomic_write takes it over; its `write` must `wait()` first)."""
        temp, self.temp = self.temp, None
        return temp

    def close(self) -> None:
        """Stop the copy and remove its temporary (nothing of it is ever visible at the output path)."""
        self._stop = True
        if self._thread is not None:
            self._thread.join()
        if self.temp is not None:
            drop_temp(self.temp)
            self.temp = None
        self._close_src()

    def _close_src(self) -> None:
        if self.src_fd is not None:
            try:
                os.close(self.src_fd)
            except OSError:
                pass
            self.src_fd = None
