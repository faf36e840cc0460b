"""`python -m lib_lora tag DIR --model-dir M`: caption a folder with a WD14 tagger, with a progress bar."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HELP = "caption a folder of images with a WD14 tagger (writes <image>.txt; existing captions kept by default)"
DEFAULT_MODELS_ROOT = os.path.join("models", "TaggerModels")


def _list(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from lib_lora.tagger.captions import EXISTING_MODES
    from lib_lora.tagger.postprocess import RATING_MODES, SORTS
    from lib_lora.tagger.runtime import PROVIDER_CHOICES

    parser.add_argument("dir", metavar="DIR", help="folder of images (or one image)")
    m = parser.add_argument_group("model")
    m.add_argument("--model-dir", "--model", dest="model", required=True, metavar="M",
                   help="folder holding model.onnx + selected_tags.csv, or a model name (e.g. wd-vit-tagger-v3) "
                        "or Hugging Face repo id, looked up in --models-root, then the HF cache, then downloaded")
    m.add_argument("--models-root", default=DEFAULT_MODELS_ROOT, metavar="DIR",
                   help=f"where named models live and are downloaded to (default: ./{DEFAULT_MODELS_ROOT})")
    m.add_argument("--revision", help="Hugging Face revision to download (default: the pinned one)")
    m.add_argument("--offline", action="store_true", help="never download; use local files only")
    m.add_argument("--provider", default="auto", choices=PROVIDER_CHOICES,
                   help="onnxruntime execution provider; an explicit GPU that cannot run is an error (default: auto)")
    m.add_argument("--threads", type=int, default=0, help="onnxruntime CPU threads (default: onnxruntime's choice)")
    t = parser.add_argument_group("tags")
    t.add_argument("--general-threshold", type=float, default=0.35, help="keep general tags with p > this (0.35)")
    t.add_argument("--character-threshold", type=float, default=0.85, help="keep characters with p > this (0.85; > 1 disables)")
    t.add_argument("--general-mcut", action="store_true", help="MCut threshold for general tags")
    t.add_argument("--character-mcut", action="store_true", help="MCut threshold for characters (at least 0.15)")
    t.add_argument("--no-characters", action="store_true", help="leave character tags out")
    t.add_argument("--characters-first", action="store_true", help="character tags before general tags")
    t.add_argument("--sort", choices=SORTS, default="confidence", help="tag order (default: confidence)")
    t.add_argument("--keep-underscores", action="store_true", help="write long_hair instead of long hair")
    t.add_argument("--escape-brackets", action="store_true", help=r"write \( \) as in prompts")
    t.add_argument("--rating", choices=RATING_MODES, default="none", help="write the rating tag first/last (default: none)")
    t.add_argument("--max-tags", type=int, default=0, help="at most N model tags (0 = no limit)")
    t.add_argument("--exclude", default="", help="comma-separated tags to leave out (underscore/space/case-insensitive)")
    t.add_argument("--exclude-regex", action="append", default=[], metavar="RE", help="full-match regex to leave out; repeatable")
    t.add_argument("--replace", action="append", default=[], metavar="OLD=NEW", help="rename a tag; repeatable")
    t.add_argument("--prepend", default="", help="comma-separated tags written first (e.g. a trigger word)")
    t.add_argument("--append", default="", help="comma-separated tags written last")
    t.add_argument("--weights", action="store_true", help="write (tag:0.87) with confidences")
    c = parser.add_argument_group("files")
    c.add_argument("--existing", choices=EXISTING_MODES, default="skip",
                   help="what to do with an existing caption (default: skip, the image is not even tagged)")
    c.add_argument("--caption-ext", default=".txt", help="caption extension (.txt or .caption)")
    c.add_argument("--output-dir", help="write captions here, mirroring sub-folders (default: beside the images)")
    c.add_argument("--recursive", action="store_true", help="include sub-folders")
    c.add_argument("--ext", default="png,jpg,jpeg,webp,bmp", help="image extensions (default: png,jpg,jpeg,webp,bmp)")
    c.add_argument("--json", action="store_true", help="also write <image>.json with all confidences and ratings")
    c.add_argument("--trailing-newline", action="store_true", help="end caption files with a newline")
    c.add_argument("--frequency", type=int, default=30, metavar="N", help="print the N most frequent tags (0 = all)")
    c.add_argument("--frequency-file", metavar="FILE", help="write the full 'tag: count' summary to FILE")
    p = parser.add_argument_group("speed")
    p.add_argument("--batch-size", type=int, default=0,
                   help="images per inference; 0 = auto: 8 on a GPU, 1 per concurrent stream on CPU "
                        "(fixed-batch models always use their own)")
    p.add_argument("--streams", type=int, default=0,
                   help="concurrent inference runs (default: 1 on a GPU, one per CPU core up to 4)")
    p.add_argument("--workers", type=int, default=0, help="decoding threads (default: auto)")
    p.add_argument("--resize", choices=("bicubic", "area"), default="bicubic", help="resize filter (default: bicubic)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _fmt_eta(s) -> str:
    if s is None:
        return "--:--"
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


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
        line = (f"[{bar}] {p.done}/{total} {p.images_per_s:.2f} img/s ETA {_fmt_eta(p.eta_s)}"
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
    from lib_lora.errors import LoraStudioError
    from lib_lora.tagger import captions
    from lib_lora.tagger.model import get_tagger
    from lib_lora.tagger.pipeline import FolderJob, check_job, run_folder, summary_lines
    from lib_lora.tagger.postprocess import TagOptions

    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    replace = {}
    for pair in args.replace:
        if "=" not in pair:
            raise LoraStudioError(f"--replace '{pair}' must look like OLD=NEW.")
        old, new = pair.split("=", 1)
        replace[old] = new
    opts = TagOptions(
        general_threshold=args.general_threshold, character_threshold=args.character_threshold,
        general_mcut=args.general_mcut, character_mcut=args.character_mcut,
        include_characters=not args.no_characters, characters_first=args.characters_first, sort=args.sort,
        replace_underscores=not args.keep_underscores, escape_brackets=args.escape_brackets, rating=args.rating,
        max_tags=args.max_tags, exclude=_list(args.exclude), exclude_patterns=args.exclude_regex, replace=replace,
        prepend=_list(args.prepend), append=_list(args.append), weights=args.weights).validate()
    if args.batch_size < 0 or args.streams < 0:
        raise LoraStudioError("--batch-size and --streams must be 0 (auto) or more.")
    job = FolderJob(input_dir=Path(args.dir), recursive=args.recursive, extensions=tuple(_list(args.ext)),
                    output_dir=Path(args.output_dir) if args.output_dir else None, caption_ext=args.caption_ext,
                    existing=args.existing, batch_size=args.batch_size, streams=args.streams, workers=args.workers,
                    resize=args.resize,
                    trailing_newline=args.trailing_newline, json_sidecar=args.json, tag_options=opts)
    check_job(job)      # before the model loads: a typo costs nothing
    tagger = get_tagger(args.model, args.models_root, args.provider, allow_download=not args.offline,
                        revision=args.revision, threads=args.threads, throughput=True, log=log)
    if tagger.files.threshold_hint:
        log(f"[tagger] the model card's P=R threshold is {tagger.files.threshold_hint:.4f} "
            f"(using --general-threshold {args.general_threshold})")
    bar = None if args.quiet else ProgressBar()
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
    top = lines[1:] if args.frequency <= 0 else lines[1:1 + args.frequency]
    for line in top:
        print(line)
    if args.frequency_file:
        captions.atomic_write_text(Path(args.frequency_file), "\n".join(lines[1:]) + "\n")
    if report.failed:
        log(f"error: {len(report.failed)} of {report.inferred + len(report.failed)} images could not be tagged "
            "(listed above).")
        return 1
    return 0
