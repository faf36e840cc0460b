"""Training data as sd-scripts sees it: a config's datasets scanned into items and buckets, step counts,
the validation report that gates a run, the per-epoch batch order and the images of a batch.

Bucket rules, caption lookup, tag statistics and the step count follow sd-scripts' DreamBooth dataset, so a
folder gives the same buckets, batches and `ss_*` numbers here as there. The parts have their own homes and
are re-exported here: `folders` (kohya folder names, "prepare a folder"), `captions` (caption files, per-sample
caption processing), `buckets` (bucket resolutions and selection), `latent_cache` (the `.npz` disk cache).
"""

from __future__ import annotations

import math
import os
import random
from collections import Counter
from dataclasses import dataclass, field

from lib_lora.errors import LoraStudioError
from lib_lora.train.buckets import Buckets, adjust_bucket_range, make_bucket_resolutions  # noqa: F401
from lib_lora.train.captions import Caption, process_caption, read_caption, tag_counts  # noqa: F401
from lib_lora.train.config import DatasetSpec, SubsetSpec
from lib_lora.train.folders import (IMAGE_EXTENSIONS, folder_subsets, glob_images,  # noqa: F401
                                    parse_folder_name, prepare_folder, repeats_for, steps_for,
                                    steps_per_epoch)
from lib_lora.train.latent_cache import (CACHE_HASH_KEY, cache_path, cache_problems,  # noqa: F401
                                         read_latent_cache, write_latent_cache)

TINY_SIDE = 64          # an image with a side below this is refused: it cannot fill even the smallest bucket


# ---- the dataset -----------------------------------------------------------------------------------------------

@dataclass
class ImageItem:
    path: str
    caption: str
    subset: SubsetSpec
    repeats: int
    size: tuple[int, int] | None = None
    bucket: tuple[int, int] | None = None
    resized: tuple[int, int] | None = None


@dataclass
class Dataset:
    """One [[datasets]] entry, scanned: its items (reg items carry their round-robin repeats), buckets."""
    spec: DatasetSpec
    items: list[ImageItem] = field(default_factory=list)
    subsets: list[SubsetSpec] = field(default_factory=list)
    img_count: dict = field(default_factory=dict)           # image_dir → images found
    tag_frequency: dict = field(default_factory=dict)       # folder name → {tag: count}
    num_train_images: int = 0
    num_reg_images: int = 0
    buckets: dict = field(default_factory=dict)             # (w, h) → [item index, …] (with repeats)
    mean_ar_error: float = 0.0
    min_bucket_reso: int | None = None
    max_bucket_reso: int | None = None

    def batches_per_epoch(self, per_batch: int | None = None) -> int:
        b = per_batch or self.spec.batch_size
        return sum(math.ceil(len(v) / b) for v in self.buckets.values())

    def bucket_info(self) -> dict | None:
        """What sd-scripts records as `bucket_info`: None (JSON null) when buckets are off."""
        if not self.spec.enable_bucket:
            return None
        return {"buckets": {i: {"resolution": list(r), "count": len(self.buckets[r])}
                            for i, r in enumerate(sorted(self.buckets)) if self.buckets[r]},
                "mean_img_ar_error": self.mean_ar_error}


@dataclass
class Report:
    """What the validation found. `problems` block the start; `warnings` do not."""
    datasets: list[Dataset]
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    concepts: list[dict] = field(default_factory=list)   # {dir, repeats, images, is_reg, missing_captions}
    steps: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def bucket_histogram(self) -> dict:
        hist: Counter = Counter()
        for ds in self.datasets:
            for reso, idx in ds.buckets.items():
                hist[reso] += len(idx)
        return dict(sorted(hist.items()))

    def tag_frequency(self) -> dict:
        out: dict = {}
        for ds in self.datasets:
            for d, counts in ds.tag_frequency.items():
                merged = out.setdefault(d, {})
                for t, n in counts.items():
                    merged[t] = merged.get(t, 0) + n
        return out

    def format(self, top_tags: int = 15) -> str:
        lines = ["Concepts:"]
        for c in self.concepts:
            kind = "reg" if c["is_reg"] else "train"
            lines.append(f"  {c['dir']}: {c['images']} images x {c['repeats']} repeats ({kind})"
                         + (f", {c['missing_captions']} without caption (concept name used)"
                            if c["missing_captions"] else ""))
        lines.append("Buckets (images x repeats):")
        for (w, h), n in self.bucket_histogram().items():
            lines.append(f"  {w}x{h}: {n}")
        tags: Counter = Counter()
        for counts in self.tag_frequency().values():
            tags.update(counts)
        if tags:
            lines.append("Most frequent tags: " + ", ".join(f"{t} ({n})" for t, n in tags.most_common(top_tags)))
        s = self.steps
        if s:
            lines.append(f"Steps: {s['train_images']} train images with repeats, {s['reg_images']} reg; "
                         f"{s['batches_per_epoch']} batches per epoch; {s['steps_per_epoch']} steps per epoch; "
                         f"{s['epochs']} epochs; {s['max_train_steps']} steps in all")
        for n in self.notes:
            lines.append("note: " + n)
        for w in self.warnings:
            lines.append("warning: " + w)
        for p in self.problems:
            lines.append("problem: " + p)
        return "\n".join(lines)

    def raise_if_blocked(self) -> None:
        if self.problems:
            n = len(self.problems)
            raise LoraStudioError(f"the dataset has {n} problem{'s' if n > 1 else ''}; fix "
                                  f"{'them' if n > 1 else 'it'} and start again:\n  " + "\n  ".join(self.problems))


def _image_size(path: str) -> tuple[tuple[int, int] | None, str | None]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:   # verify() leaves the object unusable; sizes come from a fresh open
            return im.size, None
    except Exception as exc:           # PIL raises many types for damaged files
        return None, f"image '{path}' cannot be read ({type(exc).__name__}); replace or remove it"


def scan_dataset(spec: DatasetSpec, report: Report) -> Dataset:
    ds = Dataset(spec)
    reg: list[ImageItem] = []
    seen_dirs = set()
    for sub in spec.subsets:
        if sub.num_repeats < 1:
            report.warnings.append(f"'{sub.image_dir}' is skipped: num_repeats is below 1.")
            continue
        key = os.path.abspath(sub.image_dir)
        if key in seen_dirs:
            report.warnings.append(f"'{sub.image_dir}' is listed twice; the first entry is used.")
            continue
        seen_dirs.add(key)
        if not os.path.isdir(sub.image_dir):
            report.problems.append(f"image folder '{sub.image_dir}' does not exist; fix the path.")
            continue
        paths = glob_images(sub.image_dir)
        if not paths:
            report.problems.append(f"'{sub.image_dir}' holds no images (.png .jpg .jpeg .webp .bmp); add images or "
                                   "remove the folder.")
            continue
        stems: dict[str, list[str]] = {}
        for p in paths:
            stems.setdefault(os.path.splitext(p)[0], []).append(os.path.basename(p))
        for stem, names in stems.items():
            if len(names) > 1:
                report.problems.append(f"{', '.join(sorted(names))} in '{sub.image_dir}' share the caption "
                                       f"'{os.path.basename(stem)}{sub.caption_extension}'; rename or remove one.")
        captions, missing = [], 0
        for p in paths:
            cap = read_caption(p, sub.caption_extension)
            if cap.problem:
                report.problems.append(cap.problem + ".")
            text = cap.text
            if text is None:
                missing += 1
                text = sub.class_tokens or ""
                if not sub.class_tokens:
                    report.warnings.append(f"'{p}' has neither a caption nor a concept name: it trains with an "
                                           "empty caption.")
            size, why = _image_size(p)
            if why:
                report.problems.append(why + ".")
            elif min(size) < TINY_SIDE:
                report.problems.append(f"image '{p}' is {size[0]}x{size[1]}, too small to train on (sides under "
                                       f"{TINY_SIDE} px); replace or remove it.")
            captions.append(text)
            item = ImageItem(p, text, sub, sub.num_repeats, size)
            (reg if sub.is_reg else ds.items).append(item)
        name = os.path.basename(os.path.normpath(sub.image_dir))
        freq = ds.tag_frequency.setdefault(name, {})
        for t, n in tag_counts(captions).items():
            freq[t] = freq.get(t, 0) + n
        if sub.is_reg:
            ds.num_reg_images += sub.num_repeats * len(paths)
        else:
            ds.num_train_images += sub.num_repeats * len(paths)
        ds.img_count[sub.image_dir] = len(paths)
        ds.subsets.append(sub)
        report.concepts.append({"dir": sub.image_dir, "repeats": sub.num_repeats, "images": len(paths),
                                "is_reg": sub.is_reg, "missing_captions": missing})
        if missing and sub.class_tokens:
            report.notes.append(f"{missing} image(s) in '{sub.image_dir}' have no {sub.caption_extension} caption: "
                                f"they train as \"{sub.class_tokens}\".")
    if reg and ds.num_train_images:
        # sd-scripts: reg images are registered round-robin, extra repeats one at a time, until they match
        # the train images (with repeats)
        if ds.num_train_images < ds.num_reg_images:
            report.warnings.append("there are more regularisation images than train images: some are not used.")
        n, first = 0, True
        chosen: list[ImageItem] = []
        while n < ds.num_train_images:
            for item in reg:
                if first:
                    chosen.append(item)
                    n += item.repeats
                else:
                    item.repeats += 1
                    n += 1
                if n >= ds.num_train_images:
                    break
            first = False
        ds.items.extend(chosen)
    elif reg:
        ds.num_reg_images = 0
    if not any(not i.subset.is_reg for i in ds.items) and not report.problems:
        report.problems.append("no training images were found; check train_data_dir / image_dir.")
    # buckets
    try:
        bm = Buckets(spec)
    except LoraStudioError as exc:
        report.problems.append(str(exc))
        return ds
    ds.min_bucket_reso, ds.max_bucket_reso = bm.min_reso, bm.max_reso
    errors = []
    for idx, item in enumerate(ds.items):
        if item.size is None or min(item.size) < TINY_SIDE:
            continue
        item.bucket, item.resized, err = bm.select(*item.size)
        if min(item.bucket) <= 0:
            continue
        errors.append(abs(err))
        ds.buckets.setdefault(item.bucket, []).extend([idx] * item.repeats)
    ds.mean_ar_error = float(sum(errors) / len(errors)) if errors else 0.0
    ds.buckets = dict(sorted(ds.buckets.items()))
    return ds


def folder_buckets(folder: str, spec: DatasetSpec, caption_extension: str = ".txt") -> list[int]:
    """Images per bucket of a plain folder of images (repeats 1) at the spec's resolution and bucket settings,
    formed by the same scan as training (unreadable and tiny images left out, as there)."""
    import dataclasses
    Buckets(spec)        # a bucket range that does not fit the resolution: its one-line error, here
    one = dataclasses.replace(spec, subsets=[SubsetSpec(image_dir=folder, caption_extension=caption_extension)])
    ds = scan_dataset(one, Report([]))
    counts = [len(v) for v in ds.buckets.values()]
    if not sum(counts) and glob_images(folder):
        raise LoraStudioError(f"no image in '{folder}' can be trained on: each is unreadable or has a side under "
                              f"{TINY_SIDE} px; replace them with larger images.")
    return counts


def step_counts(datasets: list[Dataset], cfg, num_processes: int = 1) -> dict:
    """sd-scripts' arithmetic: batches per epoch B = Σ ⌈bucket images×repeats / batch⌉ over all datasets;
    with max_train_epochs E, steps = E·⌈B / processes / GA⌉, else max_train_steps and
    epochs = ⌈steps / ⌈B / GA⌉⌉ (GA = gradient_accumulation_steps)."""
    batches = sum(d.batches_per_epoch() for d in datasets)
    ga = cfg.gradient_accumulation_steps
    per_epoch = steps_per_epoch(batches, ga, num_processes)
    if cfg.max_train_epochs is not None:
        steps = cfg.max_train_epochs * per_epoch
    else:
        steps = cfg.max_train_steps
    epochs = math.ceil(steps / per_epoch) if per_epoch else 0
    return {"train_images": sum(d.num_train_images for d in datasets),
            "reg_images": sum(d.num_reg_images for d in datasets),
            "batches_per_epoch": batches, "steps_per_epoch": per_epoch, "epochs": epochs,
            "max_train_steps": steps}


def validate(cfg, num_processes: int = 1, check_model: bool = False) -> Report:
    """Scan the datasets a config names; the report lists everything found (problems block a run).
    `check_model`: also that the base checkpoint file exists (not when the caller brings the model)."""
    from lib_lora.train.config import dataset_specs

    report = Report([])
    if check_model and not os.path.isfile(cfg.pretrained_model_name_or_path):
        report.problems.append(f"base checkpoint '{cfg.pretrained_model_name_or_path}' is not a file; set "
                               "pretrained_model_name_or_path to a .safetensors checkpoint.")
    try:
        specs = dataset_specs(cfg, report.warnings)
    except LoraStudioError as exc:
        report.problems.append(str(exc))
        return report
    for spec in specs:
        report.datasets.append(scan_dataset(spec, report))
    report.steps = step_counts(report.datasets, cfg, num_processes)
    report.problems.extend(cache_problems(report.datasets, cfg))
    report.problems.extend(sample_problems(cfg, report.warnings))
    if report.steps["batches_per_epoch"] == 0 and not report.problems:
        report.problems.append("no image can be trained on; see the lines above.")
    return report


def sample_problems(cfg, warnings: list) -> list[str]:
    """The sample prompt file is read before the run starts, so a typo in it does not stop training later."""
    if not getattr(cfg, "sample_prompts", None):
        return []
    from lib_lora.train.samples import read_prompts

    try:
        read_prompts(cfg.sample_prompts)
    except LoraStudioError as exc:
        return [str(exc)]
    if not (cfg.sample_every_n_epochs or cfg.sample_every_n_steps or cfg.sample_at_first):
        warnings.append("sample_prompts is set but none of sample_every_n_epochs, sample_every_n_steps, "
                        "sample_at_first; no sample image will be made.")
    return []


# ---- per-epoch order -------------------------------------------------------------------------------------------

def epoch_batches(ds: Dataset, seed: int, epoch: int, per_rank: int, world: int = 1, rank: int = 0):
    """The batches of one epoch (lists of item indices) for `rank`: within each bucket the images (with
    repeats) are shuffled and cut into global batches of per_rank × world; each rank takes its share of every
    global batch (a short last batch is filled from the bucket's start so every rank steps together); the
    batch order is shuffled. All from Random(seed + epoch), so every rank agrees."""
    rng = random.Random(seed + epoch)
    glob = per_rank * world
    batches = []
    for reso in sorted(ds.buckets):
        idx = list(ds.buckets[reso])
        rng.shuffle(idx)
        for start in range(0, len(idx), glob):
            chunk = idx[start:start + glob]
            if world > 1 and len(chunk) < glob:
                chunk = chunk + [idx[i % len(idx)] for i in range(glob - len(chunk))]
            batches.append(chunk)
    rng.shuffle(batches)
    if world == 1:
        return batches
    return [b[rank * per_rank:(rank + 1) * per_rank] for b in batches]


# ---- images ---------------------------------------------------------------------------------------------------

def load_image(item: ImageItem, flip: bool, crop_rng: random.Random | None = None):
    """The image resized to cover its bucket and cropped to it (centre, or random with random_crop), as a
    float tensor C×H×W in [-1, 1]."""
    import numpy as np
    import torch
    from PIL import Image

    with Image.open(item.path) as im:
        im = im.convert("RGB")
        if im.size != item.resized:
            im = im.resize(item.resized, Image.LANCZOS)
        bw, bh = item.bucket
        rw, rh = item.resized
        if item.subset.random_crop and crop_rng is not None:
            left, top = crop_rng.randint(0, rw - bw), crop_rng.randint(0, rh - bh)
        else:
            left, top = (rw - bw) // 2, (rh - bh) // 2
        im = im.crop((left, top, left + bw, top + bh))
        arr = np.asarray(im, dtype=np.float32)
    t = torch.from_numpy(arr.copy()).permute(2, 0, 1) / 127.5 - 1.0
    if flip:
        t = t.flip(-1)
    return t
