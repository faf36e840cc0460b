"""Reading tensor files: safetensors headers and tensors (also lazily, memory-mapped), gated pickles, small user text
files.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import struct

from lib_lora.errors import LoraFileError, LoraStudioError
from .paths import _name
from .layout import _ST_DTYPES, _itemsize, _numel
from .pieces import FilePiece

PICKLE_SUFFIXES = (".pt", ".ckpt", ".bin", ".pth")
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header
_CHUNK = 1 << 20


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
