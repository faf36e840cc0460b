"""Training tab, runs: a queue of runs trained one after another in a worker thread through a host function
`(run, cancel_event) -> None` (ctx.train_host; standalone: `local_host`, the trainer in this process; WebUI:
lora_studio_webui.train_host), each under the WebUI's queue lock, and what the tab shows about them (status,
ETA, loss plot, files)."""

from __future__ import annotations

import collections
import dataclasses
import html
import itertools
import os
import threading
import time
from pathlib import Path

from lib_lora.errors import LoraStudioError
from lib_lora.train.config import TrainConfig
from lib_lora.ui.jobs import error_line
from lib_lora.ui.train_params import (CONFIG_SUFFIX, build_config, config_toml, report_markdown,
                                      train_folder)

# ---- runs and their queue -------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    id: int
    name: str
    cfg: TrainConfig
    toml_path: str | None = None
    state: str = "queued"            # queued / running / done / cancelled / failed
    step: int = 0
    total: int = 0
    epoch: int = 0
    epochs: int = 0
    loss: float | None = None
    eta: float | None = None
    losses: list = dataclasses.field(default_factory=list)      # (step, loss)
    files: list = dataclasses.field(default_factory=list)
    message: str = ""
    log: collections.deque = dataclasses.field(default_factory=lambda: collections.deque(maxlen=50))

    def on_progress(self, step, total, epoch, epochs, loss, eta) -> None:
        self.step, self.total, self.epoch, self.epochs, self.loss, self.eta = step, total, epoch, epochs, loss, eta
        if loss is not None:
            self.losses.append((step, float(loss)))

    def say(self, line: str) -> None:
        self.log.append(str(line))


def local_host(run: Run, cancel: threading.Event) -> None:
    """Standalone: the CLI trainer in this process (the worker thread); Cancel stops after the current step."""
    from lib_lora.train.trainer import Trainer

    def progress(p):
        run.on_progress(p.step, p.total, p.epoch, p.epochs, p.loss, p.eta)

    result = Trainer(run.cfg, progress=progress, cancel=cancel.is_set, log=run.say).run()
    run.files = [str(f) for f in result.files]
    if result.cancelled:
        raise _Stopped()


class _Stopped(Exception):
    """A run the user cancelled (its finished epoch files stay)."""


class TrainQueue:
    """Runs one after another in a worker thread. `host(run, cancel)` trains (see the module docstring) and
    runs under the WebUI queue lock; Cancel stops the running one (after its current step) and drops the
    queued ones."""

    def __init__(self, ctx, host=None):
        self.ctx = ctx
        self.host = host or getattr(ctx, "train_host", None) or local_host
        self.lock = threading.Lock()
        self.pending: collections.deque = collections.deque()
        self.current: Run | None = None
        self.finished: list[Run] = []
        self.cancel_event = threading.Event()
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None

    def submit(self, name: str, cfg: TrainConfig, toml_path: str | None = None) -> Run:
        run = Run(next(self._ids), name, cfg, toml_path)
        with self.lock:
            clash = [r for r in [self.current, *self.pending] if r is not None and
                     (r.cfg.output_dir, r.cfg.output_name) == (cfg.output_dir, cfg.output_name)]
            if clash:
                raise LoraStudioError(f"A queued run already writes '{cfg.output_name}'; choose another output name.")
            self.pending.append(run)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="lora-studio-train", daemon=True)
                self._thread.start()
        return run

    def busy(self) -> bool:
        with self.lock:
            return self.current is not None or bool(self.pending)

    def cancel(self) -> str:
        with self.lock:
            dropped = list(self.pending)
            self.pending.clear()
            running = self.current
        for r in dropped:
            r.state, r.message = "cancelled", "removed from the queue"
            self.finished.append(r)
        if running is not None:
            self.cancel_event.set()
        if running is None and not dropped:
            return "Nothing is running."
        return "Cancelling: the run stops after its current step" + (
            f"; {len(dropped)} queued run(s) removed." if dropped else ".")

    def wait(self, timeout: float | None = None) -> bool:
        end = None if timeout is None else time.monotonic() + timeout
        while self.busy():
            if end is not None and time.monotonic() > end:
                return False
            time.sleep(0.05)
        return True

    def _work(self) -> None:
        while True:
            with self.lock:
                if not self.pending:
                    self.current = None
                    return
                run = self.current = self.pending.popleft()
                self.cancel_event.clear()
            run.state = "running"
            try:
                self.ctx.under_queue_lock(lambda: self.host(run, self.cancel_event), "the training")
                run.state = "done"
                run.message = f"finished: {len(run.files)} file(s)"
            except _Stopped:
                run.state, run.message = "cancelled", "stopped by Cancel; the files saved so far are complete"
            except Exception as exc:  # noqa: BLE001 — a failed run is one line; the queue goes on
                run.state, run.message = "failed", error_line(exc)[2:]
            finally:
                refresh = self.ctx.refresh_loras
                if refresh is not None and run.files:
                    try:
                        refresh()
                    except Exception:  # noqa: BLE001 — the files exist; only the list is stale
                        pass
                with self.lock:
                    self.finished.append(run)
                    self.current = None


# ---- what the tab shows about the runs -------------------------------------------------------------------


def _fmt_eta(seconds) -> str:
    from lib_lora.cli.progress import fmt_eta
    return fmt_eta(seconds)


def status_markdown(queue: TrainQueue) -> str:
    with queue.lock:
        cur, pending, finished = queue.current, list(queue.pending), list(queue.finished)
    lines = []
    if cur is not None:
        if cur.total:
            pct = 100.0 * cur.step / cur.total
            loss = "–" if cur.loss is None else f"{cur.loss:.4f}"
            lines.append(f"**Training '{html.escape(cur.name)}'**: step {cur.step}/{cur.total} ({pct:.0f}%), "
                         f"epoch {cur.epoch}/{cur.epochs}, loss {loss}, ETA {_fmt_eta(cur.eta)}")
        else:
            last = cur.log[-1] if cur.log else "starting…"
            lines.append(f"**Training '{html.escape(cur.name)}'**: {html.escape(last)}")
    elif not finished:
        lines.append("Nothing is running.")
    if pending:
        lines.append("Queued: " + ", ".join(html.escape(r.name) for r in pending))
    for r in reversed(finished[-5:]):
        mark = {"done": "✓", "cancelled": "■", "failed": "⚠"}.get(r.state, "")
        lines.append(f"{mark} '{html.escape(r.name)}' {r.state}: {html.escape(r.message)}")
    return "\n\n".join(lines)


def files_markdown(queue: TrainQueue) -> str:
    with queue.lock:
        runs = [r for r in [*queue.finished, queue.current] if r is not None and r.files]
    if not runs:
        return ""
    out = []
    for r in reversed(runs):
        out.append(f"**{html.escape(r.name)}**")
        out += [f"- `{html.escape(os.path.basename(f))}`" for f in r.files]
    return "\n".join(out)


def latest_run(queue: TrainQueue) -> Run | None:
    with queue.lock:
        if queue.current is not None:
            return queue.current
        return queue.finished[-1] if queue.finished else None


def loss_plot(losses, width: int = 560, height: int = 220):
    """Loss per step as a small PIL chart (raw points and a moving average); works on every Gradio."""
    from PIL import Image, ImageDraw
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    left, right, top, bottom = 48, width - 10, 10, height - 22
    d.rectangle([left, top, right, bottom], outline=(180, 180, 180))
    if not losses:
        d.text((left + 10, top + 10), "loss appears here while a run trains", fill=(120, 120, 120))
        return img
    steps = [s for s, _ in losses]
    vals = [v for _, v in losses]
    lo, hi = min(vals), max(vals)
    if hi - lo < 1e-12:
        hi = lo + 1e-6
    s0, s1 = steps[0], max(steps[-1], steps[0] + 1)

    def xy(s, v):
        return (left + (s - s0) / (s1 - s0) * (right - left), bottom - (v - lo) / (hi - lo) * (bottom - top))

    if len(losses) > 1:
        d.line([xy(s, v) for s, v in losses], fill=(170, 190, 230), width=1)
        k = max(1, len(vals) // 20)
        avg = [sum(vals[max(0, i - k + 1):i + 1]) / len(vals[max(0, i - k + 1):i + 1]) for i in range(len(vals))]
        d.line([xy(s, v) for s, v in zip(steps, avg)], fill=(30, 80, 200), width=2)
    else:
        x, y = xy(*losses[0])
        d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(30, 80, 200))
    d.text((4, top), f"{hi:.3g}", fill=(60, 60, 60))
    d.text((4, bottom - 10), f"{lo:.3g}", fill=(60, 60, 60))
    d.text((left, bottom + 6), f"step {s0}", fill=(60, 60, 60))
    d.text((right - 70, bottom + 6), f"step {steps[-1]}", fill=(60, 60, 60))
    return img


def snapshot(queue: TrainQueue):
    """(status, loss plot, files) for the tab."""
    run = latest_run(queue)
    return status_markdown(queue), loss_plot(list(run.losses) if run else []), files_markdown(queue)


def start_run(ctx, queue: TrainQueue, dataset, checkpoint, output_name, values: list, extra=None) -> str:
    """Start → validate (problems block it, listed), write the run's TOML beside the configs, queue it."""
    from lib_lora.fileio import atomic_write_text
    from lib_lora.train.dataset import validate
    try:
        ctx.check_writes()
        cfg = build_config(ctx, dataset, checkpoint, output_name, values, extra)
        report = validate(cfg, check_model=True)
        if not report.ok:
            return report_markdown(report)
        final = Path(cfg.output_dir) / f"{cfg.name}.safetensors"
        if final.exists():
            raise LoraStudioError(f"'{final}' exists; choose another output name or move the file away.")
        folder = train_folder(ctx) / "runs"
        folder.mkdir(parents=True, exist_ok=True)
        toml_path = folder / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}{CONFIG_SUFFIX}"
        atomic_write_text(str(toml_path), config_toml(cfg), overwrite=True)
        run = queue.submit(cfg.name, cfg, str(toml_path))
    except Exception as exc:  # noqa: BLE001 — shown as one line
        return error_line(exc)
    return f"✓ Queued '{run.name}' ({report.steps.get('max_train_steps', '?')} steps); config {toml_path}."


def host_problem(ctx) -> str | None:
    """One line when runs cannot start in this host (the WebUI's Python lacks the trainer's packages)."""
    check = getattr(ctx.train_host, "unavailable", None)
    if check is None:
        return None
    try:
        return check()
    except Exception as exc:  # noqa: BLE001 — the check itself failing is shown, not raised
        return error_line(exc)[2:]
