"""One loaded LoRA/LyCORIS file (`LoraNetwork`), loading with an architecture check, and a small file cache."""

from __future__ import annotations

import collections
import os
import threading
from dataclasses import dataclass, field
from typing import Optional

from lib_lora import arch as _arch
from lib_lora import fileio
from lib_lora.errors import ArchitectureMismatch, LoraFileError
from lib_lora.keys import LoraModule, group_modules_with_arch


@dataclass
class LoraNetwork:
    name: str                         # file stem, what `<lora:name:…>` refers to
    path: str
    arch: str                         # "sd1" | "sd2" | "sdxl" | "unknown"
    metadata: dict[str, str] = field(default_factory=dict)
    modules: dict[str, LoraModule] = field(default_factory=dict)   # module key → LoraModule
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (key, reason) not loaded
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (module key, problem): damaged, also in skipped
    damaged_keys: frozenset[str] = frozenset()                     # the file keys of those modules
    alias: Optional[str] = None       # metadata ss_output_name (A1111 "alias")
    mtime: float = 0.0
    size: int = 0
    _hash: Optional[str] = field(default=None, repr=False)

    @property
    def hash(self) -> str:
        """Full sha256 of the safetensors body (trainer's `sshs_model_hash` when present); computed once."""
        if self._hash is None:
            self._hash = fileio.model_hash(self.path, trust_metadata=True)
        return self._hash

    @property
    def short_hash(self) -> str:
        return self.hash[:12]  # what A1111 writes in "Lora hashes"

    @property
    def arch_label(self) -> str:
        return _arch.label(self.arch)

    @property
    def algos(self) -> dict[str, int]:
        """algorithm → module count, e.g. {"lora": 264, "loha": 10}."""
        out: dict = {}
        for m in self.modules.values():
            out[m.algo] = out.get(m.algo, 0) + 1
        return dict(sorted(out.items()))

    @property
    def damage_message(self) -> Optional[str]:
        """One line when damaged modules were left out (the rest is applied), else None."""
        if not self.rejected:
            return None
        key, problem = self.rejected[0]
        return (f"LoRA '{self.name}' is partly damaged: {len(self.rejected)} module(s) left out, "
                f"{len(self.modules)} applied (e.g. '{key}': {problem})")

    def check_arch(self, expected_arch: Optional[str]) -> None:
        if expected_arch and self.arch in _arch.ARCHS and expected_arch in _arch.ARCHS and self.arch != expected_arch:
            raise ArchitectureMismatch(mismatch_message(self.name, self.arch, expected_arch))


def mismatch_message(name: str, lora_arch: str, model_arch: str) -> str:
    lab = _arch.label
    return (f"LoRA '{name}' is {lab(lora_arch)}, the model is {lab(model_arch)}; "
            f"use a {lab(model_arch)} LoRA or switch the checkpoint")


def load_network(path, allow_pickle: bool = False, expected_arch: Optional[str] = None,
                 allow_empty: bool = False) -> LoraNetwork:
    """Read a file and normalise its keys. Raises ArchitectureMismatch when the LoRA's known arch differs
    from expected_arch, LoraFileError when nothing in it can be applied (unless allow_empty)."""
    path = os.fspath(path)
    name = os.path.splitext(os.path.basename(path))[0]
    st = os.stat(path) if os.path.exists(path) else None
    tensors, metadata = fileio.read_tensors(path, allow_pickle=allow_pickle)
    arch, conclusive = _arch.detect_arch_raw_detail(tensors, metadata)
    if not conclusive and expected_arch in _arch.ARCHS:
        # a name hint (or none) never blocks a LoRA: follow the model, shape checks catch a real mismatch later
        arch = expected_arch
    if expected_arch and arch in _arch.ARCHS and expected_arch in _arch.ARCHS and arch != expected_arch:
        raise ArchitectureMismatch(mismatch_message(name, arch, expected_arch))
    rejected: list = []
    # the key mapper decides what the keys alone could not (the arch whose names match most keys)
    modules, skipped, arch = group_modules_with_arch(tensors, metadata, arch_hint=arch, rejected=rejected)
    if not modules and not allow_empty:
        if rejected:
            key, problem = rejected[0][:2]
            raise LoraFileError(f"LoRA '{name}' cannot be applied: all {len(rejected)} module(s) are damaged "
                                f"(e.g. '{key}': {problem})")
        kind = _arch.guess_non_lora(tensors)
        if kind:
            raise LoraFileError(f"'{name}' is {kind}; nothing to apply")
        example = f" (e.g. '{skipped[0][0]}': {skipped[0][1]})" if skipped else ""
        raise LoraFileError(f"LoRA '{name}' has no layer this tool can apply to SD1/SD2/SDXL{example}; "
                            f"it may be made for another model family")
    damaged = {k for r in rejected for k in r[2]}
    skipped = [s for s in skipped if s[0] in damaged] + [s for s in skipped if s[0] not in damaged]
    net = LoraNetwork(name=name, path=path, arch=arch, metadata=metadata, modules=modules, skipped=skipped,
                      rejected=[(r[0], r[1]) for r in rejected], damaged_keys=frozenset(damaged),
                      alias=metadata.get("ss_output_name") or None,
                      mtime=st.st_mtime if st else 0.0, size=st.st_size if st else 0)
    net.check_arch(expected_arch)
    return net


class NetworkCache:
    """LRU of loaded networks keyed by (path, mtime, size): X/Y/Z sweeps reload the same files many times."""

    def __init__(self, max_items: int = 8):
        self.max_items = max(0, int(max_items))
        self._items: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, path, allow_pickle: bool = False, expected_arch: Optional[str] = None) -> LoraNetwork:
        path = os.path.abspath(os.fspath(path))
        try:
            st = os.stat(path)
        except OSError as exc:
            raise LoraFileError(f"file not found: '{path}'") from exc
        # expected_arch is part of the key: it decides how files without a conclusive arch are named
        key = (path, st.st_mtime_ns, st.st_size, bool(allow_pickle), expected_arch)
        with self._lock:
            net = self._items.get(key)
            if net is not None:
                self._items.move_to_end(key)
                return net
        net = load_network(path, allow_pickle=allow_pickle, expected_arch=expected_arch)
        with self._lock:
            for old in [k for k in self._items if k[0] == path and k[1:3] != key[1:3]]:
                del self._items[old]  # the file changed: drop what was loaded from its old content
            self._items[key] = net
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
        return net

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
