"""`python -m lib_lora tag DIR --model-dir M`: caption a folder with a WD14 tagger, with a progress bar."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from lib_lora.options import DEFAULT_TAGGER_MODELS_DIR as DEFAULT_MODELS_ROOT  # noqa: F401 (tests, app)
from lib_lora.cli.progress import fmt_eta
from lib_lora.options import TagFolderOptions, add_arguments as add_options, from_args

HELP = "caption a folder of images with a WD14 tagger (writes <image>.txt; existing captions kept by default)"


def _list(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, TagFolderOptions)


class ProgressBar:
    """One redrawn line on a terminal; a line every 10 s otherwise (logs stay readable)."""

    def __init__(self, stream=sys.stderr):
        self.stream, self.tty = stream, stream.isatty()
        self.last = 0.0
        self.unshown = None

    def __call__(self, p) -> None:
        now = time.monotonic()
        final = p.total is not None and p.done >= p.total
        if not final and now - self.last < (0.25 if self.tty else 10.0):
            self.unshown = p
            return
        self.last, self.unshown = now, None
        total = "?" if p.total is None else str(p.total)
        frac = (p.done / p.total) if p.total else 0.0
        bar = "#" * int(frac * 24) + "." * (24 - int(frac * 24))
        line = (f"[{bar}] {p.done}/{total} {p.images_per_s:.2f} img/s ETA {fmt_eta(p.eta_s)}"
                f"  written {p.written} skipped {p.skipped} failed {p.failed}")
        self.stream.write(("\r" + line) if self.tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.unshown is not None:
            self.last = 0.0
            self(self.unshown)
        if self.tty and self.last:
            self.stream.write("\n")
            self.stream.flush()


def run(args: argparse.Namespace) -> int:
    from lib_lora import fileio
    from lib_lora.tagger.model import get_tagger
    from lib_lora.tagger.pipeline import FolderJob, check_job, run_folder, summary_lines
    from lib_lora.tagger.postprocess import TagOptions, parse_replace

    o = from_args(TagFolderOptions, args)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    replace = parse_replace(o.replace)
    opts = TagOptions(
        general_threshold=o.general_threshold, character_threshold=o.character_threshold,
        general_mcut=o.general_mcut, character_mcut=o.character_mcut,
        include_characters=o.include_characters, characters_first=o.characters_first, sort=o.sort,
        replace_underscores=o.replace_underscores, escape_brackets=o.escape_brackets, rating=o.rating,
        max_tags=o.max_tags, exclude=_list(o.exclude), exclude_patterns=o.exclude_regex, replace=replace,
        prepend=_list(o.prepend), append=_list(o.append), weights=o.weights).validate()
    job = FolderJob(input_dir=Path(o.dir), recursive=o.recursive, extensions=tuple(_list(o.ext)),
                    output_dir=Path(o.output_dir) if o.output_dir else None, caption_ext=o.caption_ext,
                    existing=o.existing, batch_size=o.batch_size, streams=o.streams, workers=o.workers,
                    resize=o.resize,
                    trailing_newline=o.trailing_newline, json_sidecar=o.json, tag_options=opts)
    check_job(job)      # before the model loads: a typo costs nothing
    freq_file = Path(o.frequency_file) if o.frequency_file else None
    if freq_file is not None:
        fileio.check_target(freq_file, overwrite=True)    # a report, rewritten each run; its folder must exist
    tagger = get_tagger(o.model, o.models_root, o.provider, allow_download=not o.offline,
                        revision=o.revision, threads=o.threads, throughput=True, log=log)
    if tagger.files.threshold_hint:
        log(f"[tagger] the model card's P=R threshold is {tagger.files.threshold_hint:.4f} "
            f"(using --general-threshold {o.general_threshold})")
    bar = None if o.quiet else ProgressBar()
    try:
        report = run_folder(tagger, job, progress=bar, log=log)
    finally:
        if bar:
            bar.close()
    lines = summary_lines(report)
    log(lines[0])
    for path, reason in report.failed:
        log(f"  unreadable: {reason}")
    for path in report.truncated:
        log(f"  truncated: {path}")
    for path in report.read_only:
        log(f"  read-only, kept: {path}")
    top = lines[1:] if o.frequency <= 0 else lines[1:1 + o.frequency]
    for line in top:
        print(line)
    if freq_file is not None:
        fileio.atomic_write_text(freq_file, "\n".join(lines[1:]) + "\n")
    if report.failed:
        log(f"error: {len(report.failed)} of {report.inferred + len(report.failed)} images could not be tagged "
            "(listed above).")
        return 1
    return 0
