"""Model hashes as AUTOMATIC1111 writes them: sha256 of the safetensors body (or of a pickle file) and the legacy
8-hex hash.
"""

from __future__ import annotations

import hashlib

from .paths import _name
from .reader import PICKLE_SUFFIXES, _CHUNK, read_safetensors_header


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
