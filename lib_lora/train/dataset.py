"""Training data as sd-scripts sees it: kohya folders, captions, aspect-ratio buckets, step counts, the
validation report that gates a run, per-sample caption processing, and "prepare a folder".

Bucket rules, caption lookup, tag statistics and the step count follow sd-scripts' DreamBooth dataset, so a
folder gives the same buckets, batches and `ss_*` numbers here as there.
"""

from __future__ import annotations

import math
import os
import random
import shutil
from collections import Counter
from dataclasses import dataclass, field

from lib_lora.errors import LoraStudioError
from lib_lora.train.config import DatasetSpec, SubsetSpec

# sd-scripts globs these exact spellings (all lower or all upper case)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".PNG", ".JPG", ".JPEG", ".WEBP", ".BMP")
TINY_SIDE = 64          # an image with a side below this is refused: it cannot fill even the smallest bucket


# ---- folders -------------------------------------------------------------------------------------------------

def parse_folder_name(name: str) -> tuple[int, str] | None:
    """"10_sks dog" → (10, "sks dog"); None when the first '_' token is not a whole number."""
    head, sep, rest = name.partition("_")
    if not sep:
        return None
    try:
        return int(head), rest
    except ValueError:
        return None


def folder_subsets(root, is_reg: bool, common: dict, warnings: list | None = None) -> list[SubsetSpec]:
    """The `<repeats>_<concept>` sub-folders of `root` as subsets (others skipped, as sd-scripts does)."""
    if not root:
        return []
    if not os.path.isdir(root):
        what = "reg_data_dir" if is_reg else "train_data_dir"
        raise LoraStudioError(f"{what} '{root}' is not a folder; give the folder that holds <repeats>_<concept> "
                              "sub-folders.")
    out = []
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if not os.path.isdir(path):
            continue
        parsed = parse_folder_name(name)
        if parsed is None or parsed[0] < 1:
            if warnings is not None:
                warnings.append(f"folder '{name}' is skipped: name it <repeats>_<concept>, e.g. 10_{name}.")
            continue
        out.append(SubsetSpec(image_dir=path, num_repeats=parsed[0], is_reg=is_reg, class_tokens=parsed[1],
                              **common))
    return out


def glob_images(folder: str) -> list[str]:
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(os.path.join(folder, n) for n in set(names) if n.endswith(IMAGE_EXTENSIONS)
                  and os.path.isfile(os.path.join(folder, n)))


@dataclass
class Caption:
    text: str | None          # None: no caption file
    path: str | None = None
    problem: str | None = None


def read_caption(image_path: str, extension: str) -> Caption:
    """The first line of `<stem><ext>` (or of the face-crop name with the last 4 '_' tokens removed)."""
    base = os.path.splitext(image_path)[0]
    tokens = base.split("_")
    candidates = [base + extension]
    if len(tokens) >= 5:
        candidates.append("_".join(tokens[:-4]) + extension)
    for cap in candidates:
        if not os.path.isfile(cap):
            continue
        try:
            with open(cap, "rb") as f:
                raw = f.read(1 << 20)
        except OSError as exc:
            return Caption(None, cap, f"cannot read caption '{cap}': {exc.strerror or exc}")
        if not raw:
            return Caption("", cap, f"caption file '{cap}' is empty (sd-scripts stops on it); write tags into it "
                                    "or delete it to use the concept name")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return Caption(None, cap, f"caption file '{cap}' is not UTF-8; save it as UTF-8")
        first = text.lstrip("\ufeff").splitlines()[0].strip() if text.strip() else ""
        if not first:
            return Caption("", cap, f"caption file '{cap}' has an empty first line; write tags on it or delete it "
                                    "to use the concept name")
        return Caption(first, cap)
    return Caption(None)


def tag_counts(captions) -> dict[str, int]:
    """sd-scripts' tag statistics: split on ',', strip, lower-case, count."""
    counts: Counter = Counter()
    for c in captions:
        for tag in c.split(","):
            tag = tag.strip()
            if tag:
                counts[tag.lower()] += 1
    return dict(counts)


# ---- buckets -------------------------------------------------------------------------------------------------

def make_bucket_resolutions(max_reso, min_size: int = 256, max_size: int = 1024, divisible: int = 64):
    """The predefined buckets: the square of the resolution's area, plus every width from min to max (step
    `divisible`) with the tallest height that keeps the area, both orientations; sorted."""
    area = max_reso[0] * max_reso[1]
    side = int(math.sqrt(area) // divisible) * divisible
    resos = {(side, side)}
    width = min_size
    while width <= max_size:
        height = min(max_size, int((area // width) // divisible) * divisible)
        if height >= min_size:
            resos.add((width, height))
            resos.add((height, width))
        width += divisible
    return sorted(resos)


def adjust_bucket_range(resolution, min_reso: int, max_reso: int, steps: int) -> tuple[int, int]:
    if min_reso % steps:
        min_reso -= min_reso % steps
    if max_reso % steps:
        max_reso += steps - max_reso % steps
    if min(resolution) < min_reso:
        raise LoraStudioError(f"min_bucket_reso {min_reso} is above the resolution {resolution[0]}x{resolution[1]}; "
                              "lower min_bucket_reso.")
    if max(resolution) > max_reso:
        raise LoraStudioError(f"max_bucket_reso {max_reso} is below the resolution {resolution[0]}x{resolution[1]}; "
                              "raise max_bucket_reso.")
    return min_reso, max_reso


class Buckets:
    """Assigns image sizes to buckets as sd-scripts' BucketManager does."""

    def __init__(self, spec: DatasetSpec):
        w, h = spec.resolution
        self.area = w * h
        self.steps = spec.bucket_reso_steps
        if spec.enable_bucket:
            self.min_reso, self.max_reso = adjust_bucket_range(spec.resolution, spec.min_bucket_reso,
                                                               spec.max_bucket_reso, spec.bucket_reso_steps)
            self.no_upscale = spec.bucket_no_upscale
            self.predefined = [] if self.no_upscale else \
                make_bucket_resolutions((w, h), self.min_reso, self.max_reso, self.steps)
        else:
            self.min_reso = self.max_reso = None
            self.no_upscale = False
            self.predefined = [(w, h)]
        self._set = set(self.predefined)
        self._ratios = [a / b for a, b in self.predefined]

    def _round(self, x: float) -> int:
        x = int(x + 0.5)
        return x - x % self.steps

    def select(self, width: int, height: int):
        """(bucket (w, h), resized size (w, h), aspect-ratio error) of an image."""
        ar = width / height
        if not self.no_upscale:
            reso = (width, height)
            if reso not in self._set:
                errs = [abs(r - ar) for r in self._ratios]
                reso = self.predefined[errs.index(min(errs))]   # first minimum, as numpy's argmin
            scale = reso[1] / height if ar > reso[0] / reso[1] else reso[0] / width
            resized = (int(width * scale + 0.5), int(height * scale + 0.5))
        else:
            if width * height > self.area:
                rw = math.sqrt(self.area * ar)
                rh = self.area / rw
                bw = self._round(rw)
                bh_w = self._round(bw / ar)
                bh = self._round(rh)
                bw_h = self._round(bh * ar)
                if abs(bw / bh_w - ar) < abs(bw_h / bh - ar):
                    resized = (bw, int(bw / ar + 0.5))
                else:
                    resized = (int(bh * ar + 0.5), bh)
            else:
                resized = (width, height)
            reso = (resized[0] - resized[0] % self.steps, resized[1] - resized[1] % self.steps)
        return reso, resized, reso[0] / reso[1] - ar


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

    def bucket_info(self) -> dict:
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


def step_counts(datasets: list[Dataset], cfg, num_processes: int = 1) -> dict:
    """sd-scripts' arithmetic: batches per epoch B = Σ ⌈bucket images×repeats / batch⌉ over all datasets;
    with max_train_epochs E, steps = E·⌈B / processes / GA⌉, else max_train_steps and
    epochs = ⌈steps / ⌈B / GA⌉⌉ (GA = gradient_accumulation_steps)."""
    batches = sum(d.batches_per_epoch() for d in datasets)
    ga = cfg.gradient_accumulation_steps
    per_epoch = math.ceil(batches / num_processes / ga) if batches else 0
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


# ---- captions per sample ---------------------------------------------------------------------------------------

def process_caption(caption: str, sub: SubsetSpec, rng: random.Random, epoch: int, step: int = 0,
                    max_steps: int = 0) -> str:
    """sd-scripts' per-fetch caption steps: prefix/suffix, whole-caption dropout (rate, or every N-th epoch),
    then (when shuffling, tag dropout or token warm-up are on) fixed tags by keep_tokens or
    keep_tokens_separator, token warm-up, shuffle, tag dropout; finally secondary_separator."""
    if sub.caption_prefix:
        caption = sub.caption_prefix + " " + caption
    if sub.caption_suffix:
        caption = caption + " " + sub.caption_suffix
    drop_epoch = sub.caption_dropout_every_n_epochs > 0 and epoch % sub.caption_dropout_every_n_epochs == 0
    if drop_epoch or (sub.caption_dropout_rate > 0 and rng.random() < sub.caption_dropout_rate):
        return ""
    warmup = sub.token_warmup_step
    if warmup and warmup < 1:
        warmup = math.floor(warmup * max_steps)
    if sub.shuffle_caption or warmup > 0 or sub.caption_tag_dropout_rate > 0:
        sep = sub.caption_separator
        fixed_suffix: list[str] = []
        if sub.keep_tokens_separator and sub.keep_tokens_separator in caption:
            head, _, rest = caption.partition(sub.keep_tokens_separator)
            if sub.keep_tokens_separator in rest:
                rest, _, tail = rest.partition(sub.keep_tokens_separator)
                fixed_suffix = [t.strip() for t in tail.split(sep) if t.strip()]
            fixed = [t.strip() for t in head.split(sep) if t.strip()]
            flex = [t.strip() for t in rest.split(sep) if t.strip()]
        else:
            tags = [t.strip() for t in caption.split(sep) if t.strip()]
            fixed, flex = tags[:sub.keep_tokens], tags[sub.keep_tokens:]
        if warmup > 0 and step < warmup:
            keep = math.floor(step * (len(flex) - sub.token_warmup_min) / warmup) + sub.token_warmup_min
            flex = flex[:keep]
        if sub.shuffle_caption:
            rng.shuffle(flex)
        if sub.caption_tag_dropout_rate > 0:
            flex = [t for t in flex if rng.random() >= sub.caption_tag_dropout_rate]
        caption = ", ".join(fixed + flex + fixed_suffix)
    if sub.secondary_separator:
        caption = caption.replace(sub.secondary_separator, sub.caption_separator)
    return caption


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


# ---- latent cache ----------------------------------------------------------------------------------------------
# sd-scripts' --cache_latents_to_disk file: `<image stem>.npz` beside the image with `latents` (C×H/8×W/8, float32,
# before the VAE scale factor), `original_size` (w, h), `crop_ltrb` and, with flip_aug, `latents_flipped`. LoRA
# Studio adds the image's SHA-256, so a file is reused only for the same image at the same bucket.

CACHE_HASH_KEY = "lora_studio_image_sha256"


def cache_problems(datasets: list[Dataset], cfg) -> list[str]:
    """What sd-scripts refuses with latent caching (a random crop would be frozen into the cache), and an image
    the disk cache would need at two sizes (one .npz per image)."""
    if not (cfg.cache_latents or cfg.cache_latents_to_disk):
        return []
    out = []
    crops = sorted({s.image_dir for ds in datasets for s in ds.subsets if s.random_crop})
    if crops:
        out.append(f"random_crop cannot be used with cache_latents (a cached latent has one crop); turn off "
                   f"random_crop for {', '.join(crops)} or caching.")
    if cfg.cache_latents_to_disk:
        seen: dict = {}
        for ds in datasets:
            for it in ds.items:
                if seen.setdefault(it.path, it.bucket) != it.bucket:
                    out.append(f"'{it.path}' is trained at two sizes but cache_latents_to_disk keeps one .npz per "
                               "image; give both datasets the same resolution or use cache_latents only.")
                    break
    return out


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


def cache_path(item: ImageItem) -> str:
    return os.path.splitext(item.path)[0] + ".npz"


def image_sha256(path: str) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_latent_cache(item: ImageItem, sha: str, flips: bool) -> dict | None:
    """The cached latents {False: …, True: …} (True only with `flips`) when the file is there and fits this
    image and bucket; None when it must be (re)built."""
    import numpy as np

    path = cache_path(item)
    if not os.path.isfile(path):
        return None
    bw, bh = item.bucket
    try:
        with np.load(path, allow_pickle=False) as z:
            if CACHE_HASH_KEY not in z.files or bytes(z[CACHE_HASH_KEY]).hex() != sha:
                return None
            out = {False: np.array(z["latents"], dtype=np.float32)}
            if flips:
                if "latents_flipped" not in z.files:
                    return None
                out[True] = np.array(z["latents_flipped"], dtype=np.float32)
    except Exception:      # truncated, not a zip, wrong keys: the cache is rebuilt
        return None
    if any(a.ndim != 3 or a.shape[1:] != (bh // 8, bw // 8) for a in out.values()):
        return None
    return out


def write_latent_cache(item: ImageItem, sha: str, latents: dict) -> str:
    import io

    import numpy as np

    from lib_lora import fileio

    bw, bh = item.bucket
    rw, rh = item.resized
    left, top = (rw - bw) // 2, (rh - bh) // 2
    arrays = {"latents": latents[False], "original_size": np.array(item.size, dtype=np.int64),
              "crop_ltrb": np.array([left, top, left + bw, top + bh], dtype=np.int64),
              CACHE_HASH_KEY: np.frombuffer(bytes.fromhex(sha), dtype=np.uint8)}
    if True in latents:
        arrays["latents_flipped"] = latents[True]
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path = cache_path(item)
    # a cache file: replacing a stale one is what it is for (sd-scripts does the same)
    fileio.atomic_write(path, lambda f: f.write(buf.getvalue()), overwrite=True)
    return path


# ---- prepare a folder -----------------------------------------------------------------------------------------

def repeats_for(target_steps: int, images: int, epochs: int = 1, batch_size: int = 1, grad_accum: int = 1) -> int:
    """Repeats so that `epochs` epochs of `images` reach about `target_steps` optimizer steps."""
    if images < 1:
        raise LoraStudioError("the folder holds no images; add images first.")
    return max(1, round(target_steps * batch_size * grad_accum / (images * max(1, epochs))))


def prepare_folder(src: str, dest_root: str, concept: str, target_steps: int, epochs: int = 1,
                   batch_size: int = 1, grad_accum: int = 1, mode: str = "copy",
                   caption_extensions=(".txt", ".caption")) -> str:
    """Copy (or hard-link, falling back to a copy across file systems; or symlink) the images of `src` and
    their captions into `dest_root/<repeats>_<concept>`. Existing files are never replaced."""
    if mode not in ("copy", "link", "symlink"):
        raise LoraStudioError(f"mode '{mode}' is not copy, link or symlink.")
    if not concept.strip() or os.sep in concept or (os.altsep and os.altsep in concept):
        raise LoraStudioError(f"concept '{concept}' is not a folder name; give words without slashes.")
    images = glob_images(src)
    repeats = repeats_for(target_steps, len(images), epochs, batch_size, grad_accum)
    dest = os.path.join(dest_root, f"{repeats}_{concept.strip()}")
    files = []
    for img in images:
        files.append(img)
        stem = os.path.splitext(img)[0]
        files += [stem + e for e in caption_extensions if os.path.isfile(stem + e)]
    clash = [os.path.basename(f) for f in files if os.path.lexists(os.path.join(dest, os.path.basename(f)))]
    if clash:
        raise LoraStudioError(f"'{dest}' already holds {', '.join(clash[:5])}"
                              f"{' …' if len(clash) > 5 else ''}; choose another folder or remove them.")
    os.makedirs(dest, exist_ok=True)
    for f in files:
        target = os.path.join(dest, os.path.basename(f))
        if mode == "symlink":
            os.symlink(os.path.abspath(f), target)
            continue
        if mode == "link":
            try:
                os.link(f, target)
                continue
            except OSError:
                pass
        shutil.copy2(f, target)
    return dest
