"""Progress lines for long CLI verbs: one redrawn line with a rate and an ETA on a terminal; nothing when
the output is not a terminal (logs get the verb's one summary line instead)."""

from __future__ import annotations

import sys
import time


def fmt_eta(seconds) -> str:
    if seconds is None:
        return "--:--"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} GB"


class PhaseProgress:
    """`bar(phase, done, total)`: one line per phase ("read 1.2 GB/6.9 GB … ETA 0:12"), redrawn at most
    4 times a second; a new phase ends the previous line. `units` maps a phase to "bytes" or a count noun."""

    def __init__(self, units: dict, stream=None, enabled: bool | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.units = units
        self.phase = None
        self.t0 = self.last = 0.0
        self.drawn = False

    def __call__(self, phase: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if phase != self.phase:
            self._end()
            self.phase, self.t0, self.last = phase, now, 0.0
        final = total and done >= total
        if not final and now - self.last < 0.25:
            return
        self.last = now
        frac = done / total if total else 0.0
        elapsed = now - self.t0
        eta = elapsed * (1 - frac) / frac if frac > 0 and elapsed > 0.5 else None
        unit = self.units.get(phase, "")
        if unit == "bytes":
            amount = f"{fmt_bytes(done)}/{fmt_bytes(total)}"
        else:
            amount = f"{done}/{total} {unit}".rstrip()
        bar = "#" * int(frac * 24) + "." * (24 - int(frac * 24))
        self.drawn = True  # first: a Ctrl-C inside write() must still end the line in close()
        self.stream.write(f"\r{phase:<6} [{bar}] {frac * 100:3.0f}% {amount}  "
                          + (f"{elapsed:.0f} s" if final else f"ETA {fmt_eta(eta)}") + "   ")
        self.stream.flush()

    def _end(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False

    def close(self) -> None:
        self._end()
