"""Running a tab's long jobs: the cancel events of the runs in progress (`Jobs`), the core's progress shown
with an ETA that raises `Cancelled` once Cancel is pressed (`Reporter`), and the one "⚠ …" line a failure
becomes (`error_line`). Shared by the Merge and Training tabs."""

from __future__ import annotations

import contextlib
import threading
import time

from lib_lora.errors import LoraStudioError


class Cancelled(LoraStudioError):
    pass


class Jobs:
    """Cancel events of the runs in progress: Cancel stops every run this tab started (a local tool: one
    user; runs that change the loaded model wait for the WebUI queue anyway)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._events: set = set()

    @contextlib.contextmanager
    def job(self):
        ev = threading.Event()
        with self._lock:
            self._events.add(ev)
        try:
            yield ev
        finally:
            with self._lock:
                self._events.discard(ev)

    def cancel_all(self) -> str:
        with self._lock:
            events = list(self._events)
        for ev in events:
            ev.set()
        return "Cancelling…" if events else "Nothing is running."


class Reporter:
    """`(phase, done, total)` of the core → a gr.Progress (or any callable taking (fraction, desc=…)) with
    an ETA in its text; raises Cancelled at the next call once `cancel` is set (the core then writes nothing
    and leaves any existing file as it was)."""

    def __init__(self, progress, cancel: threading.Event, units: dict | None = None):
        self.progress, self.cancel, self.units = progress, cancel, units or {}
        self.phase, self.t0, self.last = None, 0.0, 0.0

    def check(self) -> None:
        if self.cancel.is_set():
            raise Cancelled("Cancelled; nothing was written and existing files are unchanged.")

    def cancelled(self) -> bool:
        return self.cancel.is_set()

    def __call__(self, phase: str, done: int, total: int) -> None:
        self.check()
        if self.progress is None:
            return
        from lib_lora.cli.progress import fmt_bytes, fmt_eta
        now = time.monotonic()
        if phase != self.phase:
            self.phase, self.t0, self.last = phase, now, 0.0
        if now - self.last < 0.2 and not (total and done >= total):
            return
        self.last = now
        frac = min(1.0, done / total) if total else 0.0
        elapsed = now - self.t0
        eta = elapsed * (1 - frac) / frac if frac > 0 and elapsed > 0.5 else None
        amount = (f"{fmt_bytes(done)}/{fmt_bytes(total)}" if self.units.get(phase) == "bytes"
                  else f"{done}/{total} {self.units.get(phase, '')}".rstrip())
        self.progress(frac, desc=f"{phase}: {amount} · ETA {fmt_eta(eta)}")

    def bytes(self, phase: str):
        """A `(done, total)` callback for cores that report one phase."""
        return lambda done, total: self(phase, done, total)


def error_line(exc: BaseException) -> str:
    """One line for the tab: a LoraStudioError verbatim; anything else (a bug) named, its traceback on the
    console, so the user still gets a line and not Gradio's bare "Error"."""
    if isinstance(exc, LoraStudioError):
        return f"⚠ {exc}"
    import sys
    import traceback
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    text = " ".join(str(exc).split())[:300]
    return f"⚠ unexpected error {type(exc).__name__}: {text}; details are on the console."
