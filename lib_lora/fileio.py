"""Reading and writing tensor files: safetensors (preferred), gated pickle, atomic writes, hashes."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import stat
import struct
import tempfile
from typing import Iterable

from lib_lora.errors import LoraFileError, LoraStudioError

PICKLE_SUFFIXES = (".pt", ".ckpt", ".bin", ".pth")
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header
_CHUNK = 1 << 20


def _name(path) -> str:
    return os.fspath(path)


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


def read_tensors(path, allow_pickle: bool = False) -> tuple[dict[str, "torch.Tensor"], dict[str, str]]:  # noqa: F821
    """All tensors (on CPU) and the string metadata of a LoRA/checkpoint file."""
    name = _name(path)
    if not os.path.exists(path):
        raise LoraFileError(f"file not found: '{name}'")
    if name.lower().endswith(PICKLE_SUFFIXES):
        return _read_pickle(path, allow_pickle)
    _, header = read_safetensors_header(path)
    from safetensors import safe_open

    try:
        tensors = {}
        with safe_open(name, framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    except LoraFileError:
        raise
    except Exception as exc:  # the Rust side raises a generic SafetensorError
        raise LoraFileError(f"'{name}' is corrupt ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                            f"download it again") from exc
    return tensors, {str(k): str(v) for k, v in meta.items()}


def _read_pickle(path, allow_pickle: bool):
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


# Hidden temporary files end with this, so a later run can find leftovers of a killed one.
TMP_SUFFIX = ".lorastudio-tmp"


def _temp_path(path: str) -> str:
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=TMP_SUFFIX, dir=d)
    os.close(fd)
    return tmp


def check_target(path: str, overwrite: bool) -> None:
    """Refuse before any slow work: an existing file needs `overwrite`, and the folder must exist."""
    if os.path.exists(path) and not overwrite:
        raise LoraFileError(f"'{path}' already exists; choose another name or pass --overwrite to replace it")
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        raise LoraFileError(f"folder '{d}' does not exist; create it first")


def atomic_save_safetensors(tensors: dict, path, metadata: dict | None = None, overwrite: bool = False) -> str:
    """Write to a temporary file in the target folder, then rename: readers never see a partial file."""
    from safetensors.torch import save_file

    path = _name(path)
    check_target(path, overwrite)
    seen: set[int] = set()
    clean = {}
    for k, t in tensors.items():
        t = t.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        if ptr is not None and ptr in seen:  # safetensors refuses shared storage
            t = t.clone()
        elif ptr is not None:
            seen.add(ptr)
        clean[k] = t
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    return _write_then_rename(path, overwrite, lambda tmp: save_file(clean, tmp, metadata=meta))


def _umask() -> int:
    try:  # Linux: read it; os.umask can only be read by setting it (racy with other threads)
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def _final_mode(path: str) -> int:
    """The replaced file's permissions, or what a plain open() would give a new file (the temporary
    file itself is created 0600)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _write_then_rename(path: str, overwrite: bool, write) -> str:
    """`write(tmp)` fills a hidden temporary beside `path`, which then replaces `path` in one rename."""
    tmp = _temp_path(path)
    try:
        write(tmp)
        try:
            os.chmod(tmp, _final_mode(path))
        except OSError:  # a filesystem without permissions (FAT, some shares): keep what it gives
            pass
        if os.path.exists(path) and not overwrite:  # appeared while we were writing
            raise LoraFileError(f"'{path}' already exists; choose another name or pass --overwrite to replace it")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path, text: str, overwrite: bool = True, encoding: str = "utf-8",
                      make_dirs: bool = False) -> str:
    """Write to a hidden temporary file beside `path`, fsync, then rename over it: readers see the old
    file or the new one, never a partial one (one filesystem)."""
    path = _name(path)
    if make_dirs:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    check_target(path, overwrite)

    def write(tmp):
        with open(tmp, "w", encoding=encoding, newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    return _write_then_rename(path, overwrite, write)


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
