"""Reading and writing tensor files: safetensors (preferred), gated pickle, atomic writes, hashes."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import pathlib
import re
import secrets
import socket
import stat
import struct
import time
from contextlib import contextmanager
from typing import Iterable

from lib_lora.errors import LoraFileError, LoraStudioError

PICKLE_SUFFIXES = (".pt", ".ckpt", ".bin", ".pth")
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header
_CHUNK = 1 << 20
_WRITE_CHUNK = 16 << 20  # progress and Ctrl-C granularity of big writes


def _name(path) -> str:
    return os.fspath(path)


def display_path(path) -> str:
    """A path as printable text: a file name that is not UTF-8 shows U+FFFD instead of breaking a print."""
    return os.fsencode(os.fspath(path)).decode("utf-8", "replace")


def read_safetensors_header(path) -> tuple[int, dict]:
    """(header length N, parsed header) after checking the file is a complete safetensors file.

    Done by hand so that empty, truncated and foreign files give one clear line instead of a Rust panic text.
    """
    name = _name(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if size == 0:
                raise LoraFileError(f"'{name}' is empty (0 bytes); download or copy it again")
            if len(head) < 8:
                raise LoraFileError(f"'{name}' is not a safetensors file (only {size} bytes); download it again")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER or 8 + n > size:
                raise LoraFileError(f"'{name}' is truncated or not a safetensors file (header says {n} bytes, "
                                    f"file has {size}); download it again")
            raw = f.read(n)
    except OSError as exc:
        raise LoraFileError(f"cannot read '{name}': {exc.strerror or exc}") from exc
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
    except (UnicodeDecodeError, ValueError) as exc:
        raise LoraFileError(f"'{name}' is not a safetensors file (unreadable header); "
                            f"check that it is a LoRA/model file and download it again") from exc
    meta = header.get("__metadata__")
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        # safetensors itself refuses such a header; say so for this file only, before any reader trips on it
        what = "an object with non-text values" if isinstance(meta, dict) else f"a JSON {type(meta).__name__}"
        raise LoraFileError(f"'{name}' has a malformed header (its __metadata__ is {what}, not an object of "
                            f"texts); re-save it with a current tool or move it out of the LoRA folder")
    body = size - 8 - n
    end = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (TypeError, KeyError, IndexError, ValueError) as exc:
            raise LoraFileError(f"'{name}' is corrupt (bad entry for tensor '{key}'); download it again") from exc
    if end > body:
        raise LoraFileError(f"'{name}' is truncated ({body} data bytes, {end} expected); download it again")
    return n, header


def read_metadata(path) -> dict[str, str]:
    """Only the `__metadata__` of a safetensors file (cheap: no tensor is read)."""
    _, header = read_safetensors_header(path)
    meta = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()}


def read_tensors(path, allow_pickle: bool = False, progress=None) -> tuple[dict, dict[str, str]]:
    """All tensors (on CPU) and the string metadata of a LoRA/checkpoint file.

    `progress(done_bytes, total_bytes)` is called after each tensor of a safetensors file."""
    name = _name(path)
    if not os.path.exists(path):
        raise LoraFileError(f"file not found: '{name}'")
    if name.lower().endswith(PICKLE_SUFFIXES):
        return _read_pickle(path, allow_pickle)
    _, header = read_safetensors_header(path)
    from safetensors import safe_open

    sizes = {k: v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"}
    total, done = sum(sizes.values()), 0
    try:
        tensors = {}
        with _utf8_path(name) as openable, safe_open(openable, framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
                if progress is not None:
                    done += sizes.get(key, 0)
                    progress(done, total)
    except LoraFileError:
        raise
    except Exception as exc:  # the Rust side raises a generic SafetensorError
        raise LoraFileError(f"'{name}' is corrupt ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                            f"download it again") from exc
    return tensors, {str(k): str(v) for k, v in meta.items()}


@contextlib.contextmanager
def _utf8_path(name: str):
    """A path safe_open accepts: it takes UTF-8 paths only, so a file named in another encoding (a Linux
    byte name, decoded with surrogates) is opened through its descriptor instead of being called corrupt."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        if os.path.isdir("/proc/self/fd"):
            fd = os.open(name, os.O_RDONLY)
            try:
                yield f"/proc/self/fd/{fd}"
            finally:
                os.close(fd)
            return
        raise LoraFileError(f"'{os.fsencode(name).decode('utf-8', 'replace')}' has a file name that is not "
                            f"UTF-8; rename it") from None
    yield name


def _read_pickle(path, allow_pickle: bool):
    import torch

    name = _name(path)
    if not allow_pickle:
        raise LoraFileError(f"'{name}' is a pickle file and pickle loading is disabled; convert it to .safetensors "
                            f"or enable 'allow pickle files' (CLI: --allow-pickle)")
    try:
        import torch   # here, not at the top: the text helpers (captions, presets) must not pay for torch
        obj = torch.load(name, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LoraFileError(f"'{name}' cannot be loaded as a weights-only pickle ({first[:200]}); "
                            f"convert it to .safetensors") from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise LoraFileError(f"'{name}' holds a {type(obj).__name__}, not a dictionary of tensors")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise LoraFileError(f"'{name}' contains no tensors")
    return tensors, {}


def _lexical(path) -> str:
    return os.path.normcase(os.path.normpath(os.path.abspath(os.fspath(path))))


def _within(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # other drive (Windows)
        return False


def resolve_inside(path: str | os.PathLike, roots: Iterable[str | os.PathLike], what: str) -> pathlib.Path:
    """The absolute path of `path` if it lies inside one of `roots`, else LoraStudioError (one line).

    Containment is tested on the lexically normalised absolute path, so a symlink the user placed inside a
    configured folder is accepted even when it points elsewhere (that is the user's choice, and the WebUI
    loads it too). Because `a/..` lexically differs from what the OS does when `a` is a link, any `..`
    component is refused outright. A path whose real location is inside a root's real location is accepted
    as well (the configured folder itself may be a link). A relative path is taken relative to each root in
    turn: the first root where it exists, else the first root. Existence is not required (writes).
    """
    try:
        raw = os.fspath(path)
    except TypeError:
        raise LoraStudioError(f"{what}: expected a file path, got {type(path).__name__}") from None
    if isinstance(raw, bytes):
        raw = os.fsdecode(raw)
    root_list = [os.fspath(r) for r in roots if r is not None and os.fspath(r) != ""]
    where = ", ".join(f"'{r}'" for r in root_list) or "(none configured)"
    shown = "".join(c if c.isprintable() else "?" for c in raw[:300])
    if not raw.strip() or "\0" in raw:
        raise LoraStudioError(f"{what}: '{shown}' is not a valid path; pick a file inside {where}")
    parts = pathlib.PurePath(raw).parts
    if ".." in parts or (os.sep != "/" and ".." in raw.replace(os.sep, "/").split("/")):
        raise LoraStudioError(f"{what} '{shown}' contains '..'; give a path inside {where} without '..'")
    if not root_list:
        raise LoraStudioError(f"{what} '{shown}' refused: no folder is configured for it")
    if os.path.isabs(raw):
        candidates = [raw]
    else:
        candidates = [os.path.join(r, raw) for r in root_list]
        existing = [c for c in candidates if os.path.lexists(c)]
        candidates = existing[:1] or candidates[:1]
    cand = candidates[0]
    lex = _lexical(cand)
    for r in root_list:
        if _within(lex, _lexical(r)):
            return pathlib.Path(os.path.normpath(os.path.abspath(cand)))
    real = os.path.normcase(os.path.realpath(cand))
    for r in root_list:
        if _within(real, os.path.normcase(os.path.realpath(r))):
            return pathlib.Path(os.path.normpath(os.path.abspath(cand)))
    raise LoraStudioError(f"{what} '{shown}' is outside the configured folders ({where}); "
                          f"move it into one of them or configure its folder")


def read_small_text(path, what: str, max_bytes: int = 1 << 20, encoding: str = "utf-8-sig") -> str:
    """The text of a small regular file, or LoraStudioError (one line, never the file's content).

    Opened non-blocking and checked with fstat before reading, so a FIFO, device or folder offered as a
    text file is refused at once instead of blocking forever (a plain open() of a FIFO waits for a writer).
    """
    name = _name(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(name, flags)
    except FileNotFoundError:
        raise LoraStudioError(f"{what} '{name}' does not exist; check the path") from None
    except IsADirectoryError:
        raise LoraStudioError(f"{what} '{name}' is a folder, not a file; give a text file") from None
    except OSError as exc:
        raise LoraStudioError(f"cannot read {what} '{name}': {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise LoraStudioError(f"{what} '{name}' is a folder, not a file; give a text file")
        if not stat.S_ISREG(st.st_mode):
            raise LoraStudioError(f"{what} '{name}' is not a regular file (a pipe or device); give a text file")
        if st.st_size > max_bytes:
            raise LoraStudioError(f"{what} '{name}' is {st.st_size} bytes, over the {max_bytes} byte limit; "
                                  f"it should be a small text file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        with os.fdopen(fd, "rb") as f:
            fd = -1
            raw = f.read(max_bytes + 1)
    except OSError as exc:
        raise LoraStudioError(f"cannot read {what} '{name}': {exc.strerror or exc}") from None
    finally:
        if fd >= 0:
            os.close(fd)
    if len(raw) > max_bytes:
        raise LoraStudioError(f"{what} '{name}' is over the {max_bytes} byte limit; it should be a small text file")
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError:
        raise LoraStudioError(f"{what} '{name}' is not {encoding.replace('-sig', '').upper()} text; "
                              f"save it as UTF-8 and try again") from None


LOCK_SUFFIX = ".lock"


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
            yield
        finally:
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


def atomic_write(path, write, overwrite: bool = False) -> str:
    """`write(f)` fills a binary file object; `path` then appears complete in one step or not at all.

    Linux: the data go to an O_TMPFILE (no name, so a killed process leaves nothing) linked in when done.
    Elsewhere: a named hidden temporary carrying our PID, renamed into place; the next write in the same
    folder removes those of dead processes. Out of space and other OS errors become one LoraFileError line.
    """
    path = _name(path)
    d = os.path.dirname(os.path.abspath(path))
    remove_dead_temps(d, force=False)
    fd, tmp = None, None
    try:
        if USE_O_TMPFILE:
            try:
                fd = os.open(d, os.O_TMPFILE | os.O_WRONLY, 0o666)  # umask applies, as for a new file
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
                    raise
                fd = None  # this filesystem has no O_TMPFILE
        if fd is None:
            tmp, fd = _named_temp(path)
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


def _itemsize(dtype) -> int:
    import torch

    return torch.empty((), dtype=dtype).element_size()


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
            mv = _tensor_bytes(t)
            for i in range(0, len(mv), _WRITE_CHUNK):
                f.write(mv[i:i + _WRITE_CHUNK])
                done += min(_WRITE_CHUNK, len(mv) - i)
                if progress is not None:
                    progress(done, total)
        if progress is not None:
            progress(total, total)

    return atomic_write(path, write, overwrite)


def atomic_save_safetensors_stream(specs, path, metadata: dict | None = None, overwrite: bool = False,
                                   progress=None, final_metadata=None, workers: int = 0) -> str:
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

    def write(f):
        f.write(head)
        done = len(head)
        wants = {key: _numel(shape) * _itemsize(dt) for key, dt, shape in order}
        dtypes = {key: dt for key, dt, _ in order}
        got = 0
        for key, t in _ahead(pieces(), workers):
            if t is None:
                if got != wants[key]:
                    raise LoraStudioError(f"internal error: '{key}' produced {got} bytes, expected {wants[key]}")
                got = 0
                continue
            if t.dtype != dtypes[key]:
                raise LoraStudioError(f"internal error: '{key}' produced {t.dtype}, expected {dtypes[key]}")
            if isinstance(t, FilePiece):
                got += t.nbytes
                if got > wants[key]:
                    raise LoraStudioError(f"internal error: '{key}' produced more than {wants[key]} bytes")
                f.flush()
                t.copy_to(f.fileno())
                done += t.nbytes
                if progress is not None:
                    progress(done, total)
                continue
            mv = _tensor_bytes(t)
            got += len(mv)
            if got > wants[key]:
                raise LoraStudioError(f"internal error: '{key}' produced more than {wants[key]} bytes")
            for i in range(0, len(mv), _WRITE_CHUNK):
                f.write(mv[i:i + _WRITE_CHUNK])
                done += min(_WRITE_CHUNK, len(mv) - i)
                if progress is not None:
                    progress(done, total)
        if final_metadata is not None:
            head2, _ = _st_header([(k, dt, shape) for k, dt, shape in order], final_metadata())
            if len(head2) != len(head):
                raise LoraStudioError("internal error: the final header does not fit the space written for it")
            f.flush()
            f.seek(0)
            f.write(head2)
            f.seek(0, os.SEEK_END)
        if progress is not None:
            progress(total, total)

    return atomic_write(path, write, overwrite)


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

    def copy_to(self, out_fd: int) -> None:
        off, left = self.offset, self.nbytes
        fast = hasattr(os, "copy_file_range")
        while left:
            n = 0
            if fast:
                try:
                    n = os.copy_file_range(self.fd, out_fd, min(left, 1 << 30), off)
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                        raise
                    fast = False   # this kernel/filesystem pair cannot: plain reads and writes
            if not fast:
                data = os.pread(self.fd, min(left, _WRITE_CHUNK), off)
                n = len(data)
                view = memoryview(data)
                while view:
                    view = view[os.write(out_fd, view):]
            if n <= 0:
                raise LoraFileError("an input file got shorter while it was being copied; is another program "
                                    "writing it?")
            off += n
            left -= n


class MappedTensors:
    """A safetensors file opened lazily: the header is parsed (and checked) at once; `get(key)` returns a
    tensor viewing the file's memory map, so nothing is read until its pages are touched and those pages
    are the page cache's (file-backed), not the process's anonymous memory. Copy-on-write: writing to a
    returned tensor never changes the file. Use as a context manager or call `close()`."""

    def __init__(self, path):
        import mmap

        import torch

        self.path = _name(path)
        if not os.path.exists(self.path):
            raise LoraFileError(f"file not found: '{self.path}'")
        n, header = read_safetensors_header(self.path)
        self.metadata = {str(k): str(v) for k, v in (header.get("__metadata__") or {}).items()}
        names = {s: getattr(torch, t) for s, t in _ST_DTYPES if hasattr(torch, t)}
        self._info: dict = {}
        for key, info in header.items():
            if key == "__metadata__":
                continue
            try:
                dt = names[info["dtype"]]
                shape = tuple(int(d) for d in info["shape"])
                begin, end = (int(x) for x in info["data_offsets"])
            except (KeyError, TypeError, ValueError) as exc:
                raise LoraFileError(f"'{self.path}' is corrupt or uses an unknown dtype (tensor '{key}'); "
                                    f"download it again") from exc
            if end - begin != _numel(shape) * _itemsize(dt) or begin < 0:
                raise LoraFileError(f"'{self.path}' is corrupt (tensor '{key}' has {end - begin} bytes for "
                                    f"shape {list(shape)}); download it again")
            self._info[key] = (dt, shape, 8 + n + begin)
        self._mm = None
        self._fd = None
        try:
            with open(self.path, "rb") as f:
                if os.fstat(f.fileno()).st_size > 0:
                    self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        except OSError as exc:
            raise LoraFileError(f"cannot read '{self.path}': {exc.strerror or exc}") from exc

    def keys(self) -> list[str]:
        return list(self._info)

    def __contains__(self, key) -> bool:
        return key in self._info

    def dtype(self, key: str):
        return self._info[key][0]

    def shape(self, key: str) -> tuple:
        return self._info[key][1]

    def nbytes(self, key: str) -> int:
        dt, shape, _ = self._info[key]
        return _numel(shape) * _itemsize(dt)

    def get(self, key: str):
        import torch

        dt, shape, off = self._info[key]
        count = _numel(shape)
        if count == 0:
            return torch.empty(shape, dtype=dt)
        return torch.frombuffer(self._mm, dtype=dt, count=count, offset=off).reshape(shape)

    def piece(self, key: str) -> FilePiece:
        """The stored bytes of `key` for the stream writer, copied file to file (see FilePiece)."""
        dt, shape, off = self._info[key]
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except OSError as exc:
                raise LoraFileError(f"cannot read '{self.path}': {exc.strerror or exc}") from exc
        return FilePiece(self._fd, off, _numel(shape) * _itemsize(dt), dt)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:  # a returned tensor still views it: the map goes when that tensor does
                pass
            self._mm = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def atomic_write_text(path, text: str, overwrite: bool = True, encoding: str = "utf-8",
                      make_dirs: bool = False) -> str:
    """Readers see the old file or the new one, never a partial one (`atomic_write`)."""
    path = _name(path)
    if make_dirs:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    check_target(path, overwrite)
    data = text.encode(encoding)
    return atomic_write(path, lambda f: f.write(data), overwrite)


def model_hash(path, trust_metadata: bool = False) -> str:
    """sha256 (hex) of the safetensors body after the header: A1111's "Lora hashes" value (first 12 hex shown).

    With trust_metadata, a `sshs_model_hash` written by the trainer is returned instead (what A1111 does).
    Pickle files hash the whole file.
    """
    name = _name(path)
    start = 0
    if not name.lower().endswith(PICKLE_SUFFIXES):
        n, header = read_safetensors_header(path)
        if trust_metadata:
            h = (header.get("__metadata__") or {}).get("sshs_model_hash")
            if h:
                return str(h).lower()
        start = 8 + n
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(start)
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def legacy_hash(path) -> str:
    """Old kohya/A1111 short hash: first 8 hex of sha256 over 64 KiB at offset 1 MiB of the whole file."""
    with open(path, "rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]
