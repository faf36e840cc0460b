"""Cache of what is expensive to rebuild per module (multiplier 1), bounded in bytes, with admission.

Why: a multiplier, block-weight or start/stop change only rescales each module's contribution; with it
cached the patcher never recomputes it (bench/apply.py and bench/apply_webui_budget.py measure the gain).
What is cached is the compactest exact form the patcher can write from: the dense ΔW for LoHa, Tucker,
DoRA, OFT/BOFT, GLoRA (and plain LoRA/LoCon with Patcher(dense_lowrank=True)); the two Kronecker factors for
LoKr. What is not admitted is written from its factors where it has them (LoRA/LoCon, LoHa: patcher.py), so a
budget of 0 holds nothing beyond the backups.

Storage: on the device it was computed on; a dense ΔW in the weight's dtype on fp16/bf16 models (half the
bytes, and a change is one fused add in that dtype; the error bound is stated at patch_terms.Dense and tested
against float64), fp32 otherwise. Factor forms (LoKr) stay fp32: they are small, and rounding them would
compound in their product.

Admission, not plain LRU: the patcher `protect()`s the keys of the apply in progress. When something does
not fit, unprotected entries leave (least recently used first); protected ones never do, and if room is still
missing the new entry is simply not kept. So when one LoRA's deltas exceed the budget, the part that fits
stays and every later change of that LoRA (a weight sweep, an X/Y/Z grid) hits it, where an LRU would evict
each entry just before its reuse and hit nothing.

Budget: bytes, or AUTO = half of what the device the deltas live on could give (its free memory plus what the
cache already holds), re-read at every apply so the cache shrinks when memory gets scarce.

Key: (network identity, module key, dyn). Network identity = (path, mtime_ns, size) for files, so an
edited file on disk gets fresh deltas; in-memory networks get a process-unique token.
"""

from __future__ import annotations

import itertools
import os
from collections import OrderedDict

_tokens = itertools.count(1)
AUTO = -1                     # max_bytes: follow the free memory of the deltas' device
AUTO_FRACTION = 0.5
_FALLBACK_BUDGET = 1 << 30    # a device whose free memory cannot be read


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
    n = getattr(delta, "nbytes", None)
    if isinstance(n, int):
        return n
    n = 0
    for t in (getattr(delta, "weight", None), getattr(delta, "bias", None)):
        if t is not None:
            n += t.numel() * t.element_size()
    return n


def free_bytes(device) -> int | None:
    """Free memory of a device: MemAvailable for the CPU, the driver's free figure for CUDA; None if unknown."""
    kind = getattr(device, "type", str(device))
    if kind == "cuda":
        try:
            import torch
            return int(torch.cuda.mem_get_info(device)[0])
        except Exception:
            return None
    if kind != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil  # Windows/macOS
        return int(psutil.virtual_memory().available)
    except Exception:
        return None


def auto_budget(device, held: int = 0) -> int:
    free = free_bytes(device)
    if free is None:
        return _FALLBACK_BUDGET
    return int((free + held) * AUTO_FRACTION)


class DeltaCache:
    """`get(key)` / `put(key, value)`; `protect(keys)` for the apply in progress; `max_bytes` may be AUTO."""

    def __init__(self, max_bytes: int = AUTO, device="cpu"):
        self.auto = int(max_bytes) < 0
        self.device = device
        self.max_bytes = auto_budget(device) if self.auto else int(max_bytes)
        self._items: OrderedDict = OrderedDict()
        self._protected: frozenset = frozenset()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.refused = 0          # entries not admitted (no room left outside the protected set)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key) -> bool:
        return key in self._items

    def protect(self, keys=(), device=None) -> None:
        """Start of an apply: these keys are needed now and stay; an AUTO budget is re-read here."""
        self._protected = frozenset(keys)
        if device is not None:
            self.device = device
        if self.auto:
            self.resize(AUTO)

    def get(self, key):
        item = self._items.get(key)
        if item is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return item[0]

    def put(self, key, delta) -> bool:
        """Keep `delta` if room can be made without evicting a protected entry; False when not kept."""
        size = delta_nbytes(delta)
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        if size > self.max_bytes or not self._make_room(self.max_bytes - size):
            self.refused += 1
            return False
        self._items[key] = (delta, size)
        self.bytes += size
        return True

    def admits(self, size: int) -> bool:
        """Would `put` keep an entry of `size` bytes (asked before building it)?"""
        evictable = sum(s for k, (_, s) in self._items.items() if k not in self._protected)
        return size <= self.max_bytes and self.bytes - evictable + size <= self.max_bytes

    def _make_room(self, limit: int) -> bool:
        """Evict unprotected entries (least recent first) until bytes ≤ limit; False if it cannot."""
        if self.bytes <= limit:
            return True
        for key in [k for k in self._items if k not in self._protected]:
            _, size = self._items.pop(key)
            self.bytes -= size
            if self.bytes <= limit:
                return True
        return False

    def resize(self, max_bytes: int) -> None:
        """New budget (AUTO re-reads the free memory); protected entries outlive a shrink until the next apply."""
        self.auto = int(max_bytes) < 0
        self.max_bytes = auto_budget(self.device, self.bytes) if self.auto else max(0, int(max_bytes))
        self._make_room(self.max_bytes)

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0
