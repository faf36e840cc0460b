"""Folder tagging: streamed listing, decoding + preprocessing in worker threads that run ahead of
inference (bounded window), batched inference, per-image atomic caption writes, progress, cancel."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from lib_lora.errors import LoraStudioError
from lib_lora.tagger import captions
from lib_lora.tagger.model import Tagger
from lib_lora.tagger.postprocess import Postprocessor, TagOptions, TagResult
from lib_lora.tagger.preprocess import ImageReadError, decode, load_and_prepare, prepare_loaded

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


MAX_BATCH, MAX_STREAMS, MAX_WORKERS = 256, 64, 64


@dataclass
class FolderJob:
    input_dir: Path
    recursive: bool = False
    extensions: tuple = IMAGE_EXTS
    output_dir: Path | None = None        # None: captions beside the images
    caption_ext: str = ".txt"
    existing: str = "skip"                # skip | overwrite | append | prepend
    batch_size: int = 0                   # 0 = auto (GPU 8, CPU 1 per stream); clamped to a fixed batch dim
    workers: int = 0                      # decode threads; 0 = auto
    streams: int = 0                      # concurrent inference calls; 0 = the tagger's choice
    resize: str = "bicubic"
    separator: str = ", "
    trailing_newline: bool = False
    json_sidecar: bool = False
    tag_options: TagOptions = field(default_factory=TagOptions)
    files: tuple = ()                     # only these images (inside input_dir) instead of the listing


@dataclass
class Progress:
    done: int                 # images inferred or failed
    total: int | None         # images to infer (None while the listing is still being counted)
    written: int
    skipped: int              # existing captions kept (skip mode) and name collisions
    failed: int
    images_per_s: float
    eta_s: float | None
    current: str = ""


@dataclass
class FolderReport:
    inferred: int = 0
    written: int = 0
    skipped_existing: int = 0
    collisions: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    read_only: list[str] = field(default_factory=list)      # existing captions kept because read-only
    truncated: list[str] = field(default_factory=list)      # images tagged from a file that ends early
    cancelled: bool = False
    elapsed: float = 0.0
    images_per_s: float = 0.0
    frequencies: Counter = field(default_factory=Counter)
    batch_size: int = 1
    provider: str = ""


@dataclass
class _Item:
    kind: str                 # todo | exists | collision
    image: Path
    caption: Path
    note: str = ""


def iter_images(root: Path, recursive: bool = False, extensions=IMAGE_EXTS) -> Iterator[Path]:
    """Streams the folder one directory at a time (sorted names), so memory stays bounded by the largest
    directory, not the tree. Hidden folders are skipped."""
    exts = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
    stack = [Path(root)]
    while stack:
        d = stack.pop()
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError:
            continue
        subdirs = []
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    if recursive and not e.name.startswith("."):
                        subdirs.append(Path(e.path))
                elif os.path.splitext(e.name)[1].lower() in exts and e.is_file():
                    yield Path(e.path)
            except OSError:
                continue
        stack.extend(reversed(subdirs))


def plan(job: FolderJob) -> Iterator[_Item]:
    """Images → what to do with each. `a.png` and `a.jpg` share `a.txt`: the first (sorted) wins."""
    root = Path(job.input_dir)
    claimed: dict[Path, Path] = {}
    current_dir = None
    images = (Path(f) for f in job.files) if job.files else iter_images(root, job.recursive, job.extensions)
    for img in images:
        cap = captions.caption_path(img, root, job.output_dir, job.caption_ext)
        if cap.parent != current_dir:          # names only collide within one folder: keep the set small
            current_dir, claimed = cap.parent, {}
            captions.remove_stale_temps(cap.parent)
        owner = claimed.get(cap)
        if owner is not None:
            yield _Item("collision", img, cap, f"{img}: skipped, its caption {cap.name} belongs to {owner.name}")
            continue
        claimed[cap] = img
        if job.existing == "skip" and cap.exists():
            yield _Item("exists", img, cap)
        else:
            yield _Item("todo", img, cap)


def check_job(job: FolderJob) -> FolderJob:
    """Everything that can be refused before a model is loaded: mode, extension, added text, the folder
    (a file is taken as a one-image job) and whether it holds any image at all."""
    captions.check_mode(job.existing)
    job.caption_ext = captions.check_ext(job.caption_ext)
    job.tag_options.validate()
    for what, n, top in (("batch size", job.batch_size, MAX_BATCH), ("streams", job.streams, MAX_STREAMS),
                         ("decode workers", job.workers, MAX_WORKERS)):
        # a request (or typo) asking for 10^9 images per batch would decode a whole folder into memory
        if not isinstance(n, int) or not 0 <= n <= top:
            raise LoraStudioError(f"{what} {n!r} must be 0 (auto) to {top}.")
    root = Path(job.input_dir)
    exts = {e.lower() if e.startswith(".") else "." + e.lower() for e in job.extensions}
    if root.is_file():
        if root.suffix.lower() not in exts:
            raise LoraStudioError(f"'{root}' is a file, not an image ({', '.join(sorted(exts))}); "
                                  "give a folder of images or one image.")
        job.input_dir, job.files = root.parent, (root,)
        return job
    if not root.is_dir():
        raise LoraStudioError(f"image folder '{root}' does not exist; give a folder of images.")
    if next(iter_images(root, job.recursive, job.extensions), None) is None:
        # Hint at sub-folders only when they hold images (an empty folder gets no misleading hint).
        nested = not job.recursive and next(iter_images(root, True, job.extensions), None) is not None
        sub = (" (its sub-folders do: include them with --recursive, in the tab \"Include sub-folders\")"
               if nested else "")
        raise LoraStudioError(f"'{root}' holds no images ({', '.join(sorted(exts))}){sub}; give a folder of "
                              "images.")
    return job


def tag_image(tagger: Tagger, image, opts: TagOptions | None = None, resize: str = "bicubic") -> TagResult:
    """One image (path, bytes or PIL image) → tags, ratings and confidences."""
    post = Postprocessor(tagger.tagset, opts or TagOptions())
    if isinstance(image, (str, Path, bytes, bytearray)):
        arr = load_and_prepare(image, tagger.size, resize, tagger.pixels)
    else:
        arr = prepare_loaded(image, tagger.size, resize, tagger.pixels)
    return post(tagger.infer(arr[None])[0])


def auto_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _count_todo(job: FolderJob, out: dict, stop: threading.Event) -> None:
    n = 0
    for it in plan(job):
        if stop.is_set():
            return
        n += it.kind == "todo"
    out["total"] = n


def run_folder(tagger: Tagger, job: FolderJob, progress: Callable[[Progress], None] | None = None,
               cancel: threading.Event | None = None, log: Callable[[str], None] = print) -> FolderReport:
    """Tag every image of a folder. Each caption is written (atomically) as soon as its batch is done,
    so stopping at any point loses at most the current batch and a re-run in skip mode resumes."""
    captions.check_mode(job.existing)
    job.caption_ext = captions.check_ext(job.caption_ext)
    root = Path(job.input_dir)
    if not root.is_dir():
        raise LoraStudioError(f"image folder '{root}' does not exist; give a folder of images.")
    post = Postprocessor(tagger.tagset, job.tag_options)
    bs = tagger.batch_size(job.batch_size)
    workers = job.workers or auto_workers()
    report = FolderReport(batch_size=bs, provider=tagger.provider_label)
    cancel = cancel or threading.Event()
    counted: dict = {}
    stop_count = threading.Event()
    threading.Thread(target=_count_todo, args=(job, counted, stop_count), daemon=True).start()

    streams = max(1, job.streams or tagger.streams)
    items = plan(job)
    window: deque = deque()
    # Decoded images held at most (bounded memory whatever the folder size) while every stream and
    # worker stays busy: the batches being inferred, one more, and what the workers are decoding.
    max_ahead = (streams + 1) * bs + workers
    write_errors = [0]
    t0 = time.perf_counter()

    def refill(pool) -> None:
        while len(window) < max_ahead:
            it = next(items, None)
            if it is None:
                return
            if it.kind == "collision":
                report.collisions.append(str(it.image))
                log(f"[tagger] {it.note}")
            elif it.kind == "exists":
                report.skipped_existing += 1
                try:
                    report.frequencies.update(captions.read_caption(it.caption))
                except OSError:
                    pass
            else:
                window.append((it, pool.submit(decode, it.image, tagger.size, job.resize, tagger.pixels)))

    def emit(current: str) -> None:
        if progress is None:
            return
        done = report.inferred + len(report.failed)
        elapsed = time.perf_counter() - t0
        rate = report.inferred / elapsed if elapsed > 0 else 0.0
        total = counted.get("total")
        eta = (max(0, total - done) / rate) if (total is not None and rate > 0) else None
        progress(Progress(done, total, report.written, report.skipped_existing + len(report.collisions),
                          len(report.failed), rate, eta, current))

    def finish(batch, probs) -> None:
        for (it, _), p in zip(batch, probs):
            result = post(p)
            try:
                final = captions.write_caption(it.caption, result.tags, job.existing, job.separator,
                                               job.trailing_newline)
                if job.json_sidecar:
                    try:
                        captions.write_sidecar(it.caption.with_suffix(".json"), result, tagger.name, final)
                    except captions.ReadOnlyCaption as exc:
                        report.read_only.append(str(it.caption.with_suffix(".json")))
                        log(f"[tagger] {exc}")
            except captions.ReadOnlyCaption as exc:   # the user protected it: keep it, say so, go on
                report.read_only.append(str(it.caption))
                log(f"[tagger] {exc}")
                continue
            except LoraStudioError as exc:            # e.g. a label with a line break in a foreign CSV
                report.failed.append((str(it.image), str(exc)))
                log(f"[tagger] {it.image}: {exc}")
                continue
            except OSError as exc:   # one read-only file is reported; a full disk stops the run
                write_errors[0] += 1
                report.failed.append((str(it.image), f"cannot write {it.caption}: {exc.strerror or exc}"))
                log(f"[tagger] cannot write {it.caption}: {exc.strerror or exc}")
                if write_errors[0] >= 5:
                    raise LoraStudioError(f"5 caption files in a row could not be written (last: {it.caption}: "
                                          f"{exc.strerror or exc}); check free space and permissions.") from None
                continue
            write_errors[0] = 0
            report.inferred += 1
            report.written += 1
            report.frequencies.update(final)
        emit(str(batch[-1][0].image))

    def next_batch(pool) -> list:
        batch = []
        while window and len(batch) < bs:
            it, fut = window.popleft()
            try:
                dec = fut.result()
                if dec.truncated:
                    report.truncated.append(str(it.image))
                    log(f"[tagger] warning: {it.image} is truncated (the file ends early); tagged what could be "
                        "decoded: check or replace it.")
                batch.append((it, dec.array))
            except ImageReadError as exc:
                report.failed.append((str(it.image), str(exc)))
                log(f"[tagger] skipped: {exc}")
            except Exception as exc:  # noqa: BLE001 — one bad file never stops the run
                report.failed.append((str(it.image), f"{type(exc).__name__}: {exc}"))
                log(f"[tagger] skipped {it.image}: {type(exc).__name__}: {exc}")
            refill(pool)
        return batch

    # Inference runs in its own thread(s) so decoding, caption writing and inference overlap; on CPU
    # several single-threaded runs at once (Tagger.streams) beat one run on every core.
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tagger-decode")
    infer_pool = ThreadPoolExecutor(max_workers=streams, thread_name_prefix="tagger-infer")
    running: deque = deque()
    try:
        refill(pool)
        while True:
            while len(running) < streams and window and not cancel.is_set():
                batch = next_batch(pool)
                if batch:
                    running.append((batch, infer_pool.submit(tagger.infer_stream, np.stack([a for _, a in batch]))))
                elif report.failed:
                    emit("")
            if not running:
                break
            batch, fut = running.popleft()
            finish(batch, fut.result())   # captions in listing order; cancel lets started batches finish
        report.cancelled = cancel.is_set() and bool(window)
        if not report.cancelled:   # everything is listed and done: the total is now exact
            counted["total"] = report.inferred + len(report.failed)
            emit("")
    finally:
        stop_count.set()
        for _, fut in window:
            fut.cancel()
        pool.shutdown(wait=True)
        infer_pool.shutdown(wait=True)
    report.elapsed = time.perf_counter() - t0
    report.images_per_s = report.inferred / report.elapsed if report.elapsed > 0 else 0.0
    return report


def summary_lines(report: FolderReport, top: int = 0) -> list[str]:
    head = (f"{report.inferred} images tagged ({report.images_per_s:.2f} images/s, batch {report.batch_size}, "
            f"{report.provider}), {report.skipped_existing} kept existing captions, "
            f"{len(report.collisions)} name collisions, {len(report.failed)} unreadable"
            + (f", {len(report.truncated)} truncated (tagged, check them)" if report.truncated else "")
            + (f", {len(report.read_only)} read-only captions kept" if report.read_only else "")
            + (", CANCELLED" if report.cancelled else ""))
    return [head] + captions.frequency_lines(report.frequencies, top)
