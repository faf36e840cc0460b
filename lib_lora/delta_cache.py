"""LRU cache of per-module deltas (multiplier 1), bounded in bytes.

Why: a multiplier, block-weight or start/stop change only rescales deltas; with the delta cached the
patcher never recomputes it (bench/apply.py measures the gain).

Storage: deltas stay in **fp32** on the device they were computed on, whatever the weight dtype.
Keeping them in fp16/bf16 would halve the memory but add a second rounding (ARCHITECTURE rule: compute
in fp32, cast once); bench/README.md records the measured error of that alternative.

Key: (network identity, module key, dyn). Network identity = (path, mtime_ns, size) for files, so an
edited file on disk gets fresh deltas; in-memory networks get a process-unique token.
"""

from __future__ import annotations

import itertools
import os
from collections import OrderedDict

_tokens = itertools.count(1)


def network_identity(network) -> tuple:
    path = getattr(network, "path", None)
    if path:
        try:
            st = os.stat(path)
            return ("file", os.path.abspath(str(path)), st.st_mtime_ns, st.st_size)
        except OSError:
            pass
    # In-memory network (tests, tools): tag the object itself; id() could be reused after GC.
    token = getattr(network, "_lora_studio_token", None)
    if token is None:
        token = next(_tokens)
        try:
            setattr(network, "_lora_studio_token", token)
        except AttributeError:  # slotted object: fall back to id (object kept alive by the caller)
            return ("mem-id", id(network))
    return ("mem", token)


def delta_nbytes(delta) -> int:
    n = 0
    for t in (getattr(delta, "weight", None), getattr(delta, "bias", None)):
        if t is not None:
            n += t.numel() * t.element_size()
    return n


class DeltaCache:
    """`get(key)` / `put(key, delta)`; least recently used entries leave first when over `max_bytes`."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max(0, int(max_bytes))
        self._items: OrderedDict = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key) -> bool:
        return key in self._items

    def get(self, key):
        item = self._items.get(key)
        if item is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return item[0]

    def put(self, key, delta) -> bool:
        """Store `delta`; False when it alone exceeds the budget (then it is not kept)."""
        size = delta_nbytes(delta)
        if key in self._items:
            self.bytes -= self._items.pop(key)[1]
        if size > self.max_bytes:
            return False
        while self._items and self.bytes + size > self.max_bytes:
            _, (_, old) = self._items.popitem(last=False)
            self.bytes -= old
        self._items[key] = (delta, size)
        self.bytes += size
        return True

    def resize(self, max_bytes: int) -> None:
        self.max_bytes = max(0, int(max_bytes))
        while self._items and self.bytes > self.max_bytes:
            _, (_, old) = self._items.popitem(last=False)
            self.bytes -= old

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0
