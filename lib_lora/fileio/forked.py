"""The stream writer's tensors computed by forked processes (`atomic_save_safetensors_stream(processes=N)`): for a
process that owns its runtime, the CLI. Python threads do not scale torch's many small operations (each hands the
GIL over); processes do. Each child writes a run of whole tensors at their offsets; the parent writes the header,
reports progress, and kills every child on an error or Ctrl-C (a child also dies with its parent)."""

from __future__ import annotations

import os
import struct
import sys

from lib_lora.errors import LoraStudioError
from .layout import _itemsize, _numel
from .pieces import _Pieces, _pwrite_all
from .writer import _FLUSH_STEP, _final_header, _Flusher


def fork_processes() -> int:
    """How many forked writer processes a command-line merge uses: one per core up to 4, on Linux only (fork
    is the only cheap way to hand children the open inputs; macOS's fork is unsafe with the frameworks torch
    loads; Windows has none); 0 (threads) on one core."""
    cores = os.cpu_count() or 1
    return min(4, cores) if sys.platform.startswith("linux") and cores >= 2 else 0


def write_forked(f, head, order, produce, total, progress, final_metadata, processes: int) -> None:
    """The stream writer's body with `processes` forked children, each writing a run of whole tensors at their
    offsets (the header goes first, its final version last). Children report bytes written and their error (one
    line, with the errno of an OS error) through a pipe; any failure, Ctrl-C included, kills them all."""
    import select

    f.write(head)
    f.flush()
    fd = f.fileno()
    sizes = [(key, _numel(shape) * _itemsize(dt)) for key, dt, shape in order]
    body = sum(n for _, n in sizes)
    runs, at, cut = [[] for _ in range(processes)], len(head), 0
    for key, n in sizes:   # contiguous runs of about body/processes bytes: each child writes sequentially
        k = min(processes - 1, cut * processes // max(body, 1))
        runs[k].append((key, at))
        at += n
        cut += n
    children = {}   # read end of its pipe -> pid
    alive = set()   # pids not reaped yet (a reaped pid may be reused: never signalled again)
    parent = os.getpid()
    try:
        for run in runs:
            if not run:
                continue
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:   # the child: never returns
                os.close(r)
                _die_with(parent)
                _forked_child(fd, run, order, produce, w)
            os.close(w)
            children[r] = pid
            alive.add(pid)
        flusher = _Flusher(f) if total >= _FLUSH_STEP else None
        done, errors, pending, partial = len(head), [], dict(children), {}
        try:
            while pending and not errors:
                ready, _, _ = select.select(list(pending), [], [], 0.2)
                for r in ready:
                    data = os.read(r, 1 << 16)
                    if not data:
                        del pending[r]
                        continue
                    buf = partial.get(r, b"") + data
                    while len(buf) >= 9:
                        kind, n = buf[:1], struct.unpack("<Q", buf[1:9])[0]
                        if kind == b"P":
                            done += n
                            buf = buf[9:]
                            continue
                        if len(buf) < 9 + n:
                            break
                        errors.append(buf[9:9 + n].decode("utf-8", "replace"))
                        buf = buf[9 + n:]
                    partial[r] = buf
                if progress is not None:
                    progress(min(done, total), total)
                if flusher is not None:
                    flusher.written(done)
            if errors:
                _kill(alive)   # one child failed: the others stop now instead of finishing their runs
            for pid in sorted(alive):
                _, status = os.waitpid(pid, 0)
                alive.discard(pid)
                if status and not errors:
                    errors.append(f"0:a writer process ended with status {status}")
            if flusher is not None:
                flusher.finish()
        except BaseException:
            _kill(alive)   # before waiting for the writeback below, so that wait does not also cover data the
            raise          # children would still be writing
        finally:
            if flusher is not None:
                flusher.stop()
        if errors:
            code, _, msg = errors[0].partition(":")
            if int(code or 0):
                raise OSError(int(code), msg)
            raise LoraStudioError(msg)
    except BaseException:
        _kill(alive)   # an error or Ctrl-C: nothing keeps writing into the temporary
        raise
    finally:
        for r in children:
            os.close(r)
    if final_metadata is not None:
        _pwrite_all(fd, _final_header(order, final_metadata, len(head)), 0)
    os.lseek(fd, 0, os.SEEK_END)
    if progress is not None:
        progress(total, total)


def _kill(alive: set) -> None:
    """SIGKILL and reap every child in `alive` (emptied)."""
    import signal

    while alive:
        pid = alive.pop()
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (OSError, ChildProcessError):
            pass


def _die_with(parent: int) -> None:
    """A child of a killed parent (kill -9, a crash) stops at once instead of computing on for nobody: Linux's
    PR_SET_PDEATHSIG; a parent already gone before it was set is caught by its pid."""
    import signal

    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)   # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(1)


def _forked_child(fd: int, run: list, order, produce: dict, w: int) -> None:
    """Write `run` = [(key, offset)] (`order`: the header's (key, dtype, shape)) into `fd`; report through pipe
    `w`; exit without returning (no atexit handlers, no flushing of the parent's buffers: os._exit)."""
    code = 0
    try:
        if "torch" in sys.modules:   # the children are the parallelism: one thread each, no intra-op pool
            sys.modules["torch"].set_num_threads(1)
        unreported, check = 0, _Pieces(order)
        for key, at in run:
            for t in produce[key]():
                if callable(t):
                    t = t()
                here = at + check.got
                buf, t, mv, n = check.take(key, t)
                if mv is None:
                    t.copy_to(fd, here)
                else:
                    _pwrite_all(fd, mv, here)
                    del mv
                if buf is not None:
                    buf.release()
                unreported += n
                if unreported >= 8 << 20:
                    os.write(w, b"P" + struct.pack("<Q", unreported))
                    unreported = 0
            check.end(key)
        if unreported:
            os.write(w, b"P" + struct.pack("<Q", unreported))
    except BaseException as exc:   # noqa: BLE001 — reported to the parent as one line
        code = 1
        try:
            if isinstance(exc, OSError) and exc.errno:
                msg = f"{exc.errno}:{exc.strerror or exc}"
            else:
                msg = f"0:{exc}" if str(exc) else f"0:{type(exc).__name__}"
            data = msg.encode("utf-8", "replace")
            os.write(w, b"E" + struct.pack("<Q", len(data)) + data)
        except BaseException:   # noqa: BLE001
            pass
    finally:
        os._exit(code)
