"""Model hashes as AUTOMATIC1111 writes them: sha256 of the safetensors body (or of a pickle file) and the legacy
8-hex hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

from lib_lora.errors import LoraStudioError
from .atomic import atomic_write_text, locked
from .paths import _name, file_stamp
from .reader import PICKLE_SUFFIXES, read_safetensors_header


_HASH_CHUNK = 4 << 20


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
    return file_sha256(path, start)


def file_sha256(path, start: int = 0) -> str:
    """sha256 (hex) of a file from byte `start` on (0: the whole file, sd-scripts' `ss_new_sd_model_hash` and
    the latent cache's image hash)."""
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        # into one reused buffer: f.read() allocated (and the kernel zero-filled) a fresh MiB per chunk
        f.seek(start)
        buf = bytearray(_HASH_CHUNK)
        view = memoryview(buf)
        while True:
            n = f.readinto(buf)
            if not n:
                break
            digest.update(view[:n])
    return digest.hexdigest()


def legacy_hash(path) -> str:
    """Old kohya/A1111 short hash: first 8 hex of sha256 over 64 KiB at offset 1 MiB of the whole file."""
    with open(path, "rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]


# ---------------------------------------------------------------- a persistent cache of body hashes
# Hashing two 2 GB checkpoints for a merge recipe costs several CPU seconds, more than reading and writing
# them; a merge of the same inputs again (the usual case: trying block weights) reuses the hashes. An entry is
# used only while the file's identity and stamps are unchanged (device, inode, size, mtime_ns, ctime_ns: a
# rewrite changes ctime even when mtime is set back), and is stored only when the stamps did not change while
# hashing. The cache is an optimisation: an unreadable/corrupt/unwritable cache file is ignored (hashed again).
HASH_CACHE_ENV = "LORA_STUDIO_HASH_CACHE"   # path of the cache file; "" or "off" disables it
HASH_CACHE_MAX = 2000                       # entries kept (the oldest stored are dropped)


def default_hash_cache_path() -> str | None:
    """The cache file: $LORA_STUDIO_HASH_CACHE, else $XDG_CACHE_HOME (or ~/.cache)/lora-studio/model-hashes.json;
    None when disabled."""
    env = os.environ.get(HASH_CACHE_ENV)
    if env is not None:
        return None if env.strip().lower() in ("", "off", "0", "none") else env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "lora-studio", "model-hashes.json")


def _stamp(path) -> tuple[str, list]:
    return os.path.realpath(path), list(file_stamp(os.stat(path)))


def _load_cache(cache_path: str) -> dict:
    try:
        with open(cache_path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def cached_model_hash(path, cache_path: str | None = "default", whole_file: bool = False) -> tuple[str, bool]:
    """(model_hash(path), True when it came from the cache). `cache_path`: "default" (see
    `default_hash_cache_path`), None (no cache), or a file. `whole_file`: the sha256 of the whole file instead, the
    hash AUTOMATIC1111 (and Civitai) give a checkpoint (its short hash is the first 10 hex digits); the body hash is
    the one it gives a LoRA."""
    def compute():
        return file_sha256(path) if whole_file else model_hash(path)

    field_name = "file_sha256" if whole_file else "sha256"
    if cache_path == "default":
        cache_path = default_hash_cache_path()
    if cache_path is None:
        return compute(), False
    key, stamp = _stamp(path)
    entry = _load_cache(cache_path).get(key)
    if isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get(field_name), str):
        return entry[field_name], True
    digest = compute()
    if _stamp(path)[1] != stamp:   # the file changed while it was read: nothing to remember
        return digest, False
    try:
        os.makedirs(os.path.dirname(os.path.abspath(cache_path)), exist_ok=True)
        with locked(cache_path):
            data = _load_cache(cache_path)
            old = data.get(key)
            kept = {k: v for k, v in old.items() if k in ("sha256", "file_sha256")} \
                if isinstance(old, dict) and old.get("stamp") == stamp else {}   # the other hash of the same file
            data[key] = {**kept, "stamp": stamp, field_name: digest, "stored": time.time()}
            if len(data) > HASH_CACHE_MAX:
                def stored(k):
                    v = data[k]
                    return v.get("stored", 0) if isinstance(v, dict) else 0
                for k in sorted(data, key=stored)[: len(data) - HASH_CACHE_MAX]:
                    del data[k]
            atomic_write_text(cache_path, json.dumps(data, indent=0), overwrite=True)
    except (OSError, LoraStudioError):
        pass   # a read-only or full cache folder: the hash is still right, only not remembered
    return digest, False
