"""Atomic writes: a temporary name (Linux: an unnamed O_TMPFILE) renamed/linked into place, refusals of existing
targets, file locks, and the clean-up of temporaries left by dead processes.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import socket
import stat
import time
from contextlib import contextmanager

from lib_lora.errors import LoraFileError, LoraStudioError
from .paths import _name

LOCK_SUFFIX = ".lock"
# Descriptors of the flock()s `locked` holds now. A forked child (the merge CLI's writer processes) shares each
# one's open file description, so the lock would stay held until the child ended even after the parent released
# it: children close them at once.
_HELD_LOCK_FDS: set = set()


def _close_inherited_locks() -> None:
    for fd in list(_HELD_LOCK_FDS):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_LOCK_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


@contextmanager
def locked(path, timeout: float = 30.0):
    """Exclusive lock for a read-modify-write of `path` between processes (the WebUI and the standalone
    app share a presets file). The lock is a separate hidden `.NAME.lock` file beside it, because the data file itself is
    replaced by rename and a lock on the old inode would not exclude the next writer.

    POSIX: fcntl.flock (released by the kernel if the process dies). Elsewhere: an exclusively created
    lock file, taken over when older than `timeout` (a crashed holder).
    """
    d, base = os.path.split(os.path.abspath(_name(path)))
    lock_path = os.path.join(d, "." + base + LOCK_SUFFIX)   # hidden; kept (deleting a flock file races)
    os.makedirs(os.path.dirname(os.path.abspath(lock_path)) or ".", exist_ok=True)
    deadline = time.monotonic() + timeout
    try:
        import fcntl
    except ImportError:
        fcntl = None
    if fcntl is not None:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise LoraStudioError(f"'{path}' is locked by another LoRA Studio process for over "
                                              f"{timeout:.0f} s; try again") from None
                    time.sleep(0.05)
            _HELD_LOCK_FDS.add(fd)
            yield
        finally:
            _HELD_LOCK_FDS.discard(fd)
            os.close(fd)    # releases the lock
        return
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            os.close(fd)
            break
        except FileExistsError:
            try:
                if time.time() - os.path.getmtime(lock_path) > timeout:
                    os.unlink(lock_path)
                    continue
            except OSError:
                continue
            if time.monotonic() > deadline:
                raise LoraStudioError(f"'{path}' is locked ('{lock_path}' exists); if no LoRA Studio is saving, "
                                      f"delete that file") from None
            time.sleep(0.05)
    try:
        yield
    finally:
        try:
            os.unlink(lock_path)
        except OSError:
            pass


# Hidden temporary files end with this, so a later run can find leftovers of a killed one.
TMP_SUFFIX = ".lorastudio-tmp"
# `.<target name>.<host>.<pid>.<random>.lorastudio-tmp`: the next write in the folder removes those whose
# process is gone (same host only: a shared network folder may hold another machine's write in progress).
_TMP_RE = re.compile(r"^\..*\.([0-9a-f]{8})\.(\d+)\.[A-Za-z0-9_]+" + re.escape(TMP_SUFFIX) + "$")
# Names of versions before PIDs were recorded (`.<name>.<8 random>.lorastudio-tmp`): removed once a day old.
_LEGACY_TMP_RE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}" + re.escape(TMP_SUFFIX) + "$")
_LEGACY_TMP_AGE = 24 * 3600.0
# Set to False to force named temporaries (what runs where O_TMPFILE is missing: other OSes, some filesystems).
USE_O_TMPFILE = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")
_NO_SPACE = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill(pid, 0) there would send Ctrl-C (CTRL_C_EVENT == 0) to a process group
        return _pid_alive_windows(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # exists but not ours, or unknowable (Windows): keep the file
        return True
    return True


def _pid_alive_windows(pid: int) -> bool:
    import ctypes

    kernel32 = ctypes.windll.kernel32
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return ctypes.GetLastError() == 5  # access denied: it exists
    try:
        code = ctypes.c_ulong()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


_SWEPT: dict = {}  # folder → monotonic time of its last sweep
_SWEEP_EVERY = 60.0  # a caption run writes thousands of files into one folder: do not list it each time


def remove_dead_temps(folder, force: bool = True) -> int:
    """Delete our named temporaries in `folder` whose writing process no longer exists (killed run).
    Without `force`, a folder swept less than a minute ago is skipped."""
    key, now = os.path.abspath(folder), time.monotonic()
    if not force and now - _SWEPT.get(key, -_SWEEP_EVERY) < _SWEEP_EVERY:
        return 0
    _SWEPT[key] = now
    host, removed = _host_tag(), 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for e in entries:
        m = _TMP_RE.match(e.name)
        if m is None:
            if not _LEGACY_TMP_RE.match(e.name) or not _older_than(e, _LEGACY_TMP_AGE):
                continue
        elif m.group(1) != host or _pid_alive(int(m.group(2))):
            continue
        try:
            os.unlink(e.path)
            removed += 1
        except OSError:
            pass
    return removed


def _older_than(entry, seconds: float) -> bool:
    try:
        return time.time() - entry.stat().st_mtime > seconds
    except OSError:
        return False


def _named_temp(path: str) -> tuple[str, int]:
    """(name, fd) of a new hidden temporary beside `path` that carries this process's id."""
    d, base = os.path.split(os.path.abspath(path))
    while True:
        tmp = os.path.join(d, f".{base[:120]}.{_host_tag()}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}")
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue


class WriteFailed(LoraFileError, OSError):
    """A write that failed in the OS (full disk, permissions...): one line for users, still an OSError
    (with errno/strerror) for callers that count I/O failures."""

    def __str__(self) -> str:  # OSError would print "[Errno N] strerror" once errno is set
        return str(self.args[0]) if self.args else ""


def _exists_error(path: str) -> LoraFileError:
    return LoraFileError(f"'{path}' already exists; choose another name or pass --overwrite to replace it")


def check_target(path, overwrite: bool, suffix: str | None = None) -> None:
    """Refuse before any slow work: a folder, a wrong extension, a missing or read-only parent folder,
    or an existing file without `overwrite`."""
    path = _name(path)
    if os.path.isdir(path):
        if suffix:
            err = WriteFailed(f"cannot write '{path}': it is a folder; give a file name ending in {suffix}, e.g. "
                              + os.path.join(path, "baked" + suffix))
        else:
            err = WriteFailed(f"cannot write '{path}': it is a folder; rename or remove that folder")
        err.errno, err.strerror = errno.EISDIR, "is a folder"
        raise err
    if suffix and not path.lower().endswith(suffix):
        raise LoraFileError(f"'{path}' does not end in {suffix}; the file written is {suffix[1:]}, "
                            f"so name it ….{suffix[1:]}")
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        raise LoraFileError(f"folder '{d}' does not exist; create it first")
    if os.path.exists(path) and not overwrite:
        raise _exists_error(path)
    if not os.access(d, os.W_OK):
        raise LoraFileError(f"folder '{d}' is not writable; choose another folder")


def _write_error(path: str, exc: OSError) -> WriteFailed:
    why = exc.strerror or str(exc)
    if exc.errno in _NO_SPACE:
        err = WriteFailed(f"cannot write '{path}': {why} (disk full or file too large); nothing was "
                          f"written: free some space or write to another disk")
    else:
        err = WriteFailed(f"cannot write '{path}': {why}; nothing was written")
    err.errno, err.strerror = exc.errno, exc.strerror
    return err


def _keep_mode(fd: int, path: str) -> None:
    """A replaced file keeps its permissions (a new one got the umask's when its temporary was created)."""
    try:
        os.fchmod(fd, stat.S_IMODE(os.stat(path).st_mode))
    except (OSError, AttributeError):  # no such file yet, or a filesystem/OS without modes
        pass


def open_temp(path) -> tuple[int, str | None]:
    """(fd, name or None) of a new temporary file for `path`, in its folder: an O_TMPFILE (no name, so a killed
    process leaves nothing) where the filesystem has them, else a hidden name carrying our PID (the next write in
    that folder removes those of dead processes). `atomic_write(..., temp=...)` takes it over."""
    d = os.path.dirname(os.path.abspath(path))
    remove_dead_temps(d, force=False)
    if USE_O_TMPFILE:
        try:
            return os.open(d, os.O_TMPFILE | os.O_WRONLY, 0o666), None  # umask applies, as for a new file
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
                raise
    tmp, fd = _named_temp(path)
    return fd, tmp


def drop_temp(temp) -> None:
    """Close and remove a temporary of `open_temp` that will not be used."""
    fd, tmp = temp
    try:
        os.close(fd)
    except OSError:
        pass
    if tmp is not None and os.path.lexists(tmp):
        try:
            os.unlink(tmp)
        except OSError:
            pass


def atomic_write(path, write, overwrite: bool = False, temp=None) -> str:
    """`write(f)` fills a binary file object; `path` then appears complete in one step or not at all.

    Linux: the data go to an O_TMPFILE (no name, so a killed process leaves nothing) linked in when done.
    Elsewhere: a named hidden temporary carrying our PID, renamed into place; the next write in the same
    folder removes those of dead processes. Out of space and other OS errors become one LoraFileError line.
    `temp`: an `open_temp(path)` result already partly written (the stream writer's head start); it is taken over
    (closed and removed on any failure).
    """
    path = _name(path)
    fd, tmp = temp if temp is not None else (None, None)
    try:
        if fd is None:
            fd, tmp = open_temp(path)
        with os.fdopen(fd, "wb", closefd=False) as f:
            write(f)
            f.flush()
            _keep_mode(fd, path)
            os.fsync(fd)
        if tmp is None:
            proc = f"/proc/self/fd/{fd}"
            if not overwrite:
                try:
                    _link_fd(proc, path)  # fails if the name appeared meanwhile
                except FileExistsError:
                    raise _exists_error(path) from None
                return path
            tmp = _link_named(proc, path)
        if not overwrite:
            try:
                os.link(tmp, path)  # atomic create-if-absent
            except FileExistsError:
                raise _exists_error(path) from None
            except OSError:  # no hard links here (FAT, some network shares): check, then rename
                if os.path.exists(path):
                    raise _exists_error(path) from None
                os.replace(tmp, path)
        else:
            os.replace(tmp, path)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    finally:
        if fd is not None:
            os.close(fd)
        if tmp is not None and os.path.lexists(tmp):
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return path


def _link_fd(proc: str, dst: str) -> None:
    """linkat(…, AT_SYMLINK_FOLLOW) of /proc/self/fd/N. CPython calls plain link() (which does not follow
    the magic link: EXDEV) unless a dir fd is given; the absolute path makes that fd irrelevant."""
    root = os.open("/", os.O_RDONLY)
    try:
        os.link(proc, dst, src_dir_fd=root, follow_symlinks=True)
    finally:
        os.close(root)


def _link_named(proc: str, path: str) -> str:
    """Give the finished O_TMPFILE a PID-carrying hidden name beside `path` (to be renamed over it)."""
    while True:
        tmp, fd = _named_temp(path)
        os.close(fd)
        os.unlink(tmp)
        try:
            _link_fd(proc, tmp)
            return tmp
        except FileExistsError:
            continue


# safetensors dtype names, in the order safetensors sorts them (largest first in the file).
def atomic_write_text(path, text: str, overwrite: bool = True, encoding: str = "utf-8",
                      make_dirs: bool = False) -> str:
    """Readers see the old file or the new one, never a partial one (`atomic_write`)."""
    path = _name(path)
    if make_dirs:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    check_target(path, overwrite)
    data = text.encode(encoding)
    return atomic_write(path, lambda f: f.write(data), overwrite)
