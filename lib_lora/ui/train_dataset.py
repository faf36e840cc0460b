"""Training tab, dataset tools: "Prepare a folder" (a tagged folder copied or linked into `<repeats>_<concept>`
with the repeats a target step count needs, lib_lora.train.dataset.prepare_folder) and "Tag this folder" (the
tagger tab's folder run with the tagger tab's current settings on the picked dataset, then the validation
report again). Both write files: they honour the write gate (ctx.check_writes) first; every folder a user
names must lie inside the dataset roots (the tagger's image folders), as the tagger tab requires.
"""

from __future__ import annotations

import html

from lib_lora import options
from lib_lora.errors import LoraStudioError
from lib_lora.ui.jobs import error_line
from lib_lora.ui.train_params import _dataset_name, dataset_path, dataset_roots, validate_run

PREPARE_MODES = {"copy": "copy the files", "link": "hard-link them (a copy across file systems)",
                 "symlink": "symbolic links to the originals"}


def _folder(ctx, text, what: str):
    """A typed folder → an absolute path inside the dataset roots (the tagger tab's rule and helper)."""
    from lib_lora.ui.tagger_tab import _inside
    roots = dataset_roots(ctx)
    if not str(text or "").strip():
        raise LoraStudioError(f"Type the {what.lower()} (a folder inside {', '.join(map(str, roots))}).")
    return _inside(text, roots, what)


def _whole(value, what: str, low: int = 1) -> int:
    try:
        n = float(value)
    except (TypeError, ValueError):
        raise LoraStudioError(f"{what} '{value}' is not a number; type a whole number ≥ {low}.") from None
    if n != int(n) or n < low:
        raise LoraStudioError(f"{what} must be a whole number ≥ {low}, not {value}.")
    return int(n)


def bucket_spec(resolution, enable_bucket, extra: dict | None = None):
    """The tab's resolution and bucket settings (the bucket range keys of a loaded config ride in `extra`) as the
    DatasetSpec the folder's images are bucketed with; None without a resolution (then one bucket)."""
    from lib_lora.train.config import DatasetSpec, TrainConfig, parse_resolution
    if resolution in (None, ""):
        return None
    keys = ("min_bucket_reso", "max_bucket_reso", "bucket_reso_steps", "bucket_no_upscale")
    extra = extra or {}
    return DatasetSpec(resolution=parse_resolution(resolution), enable_bucket=bool(enable_bucket),
                       **{k: extra.get(k, options.get(TrainConfig, k).default) for k in keys})


def prepare_plan(ctx, source, dest_root, concept, target_steps, epochs, batch_size, grad_accum=1,
                 mode="copy", resolution=None, enable_bucket=False, extra=None) -> dict:
    """The checked inputs of a prepare and what it will do: {src, dest_root, dest, images, repeats, steps,
    buckets, text}. With the tab's resolution the images are bucketed as the run will bucket them, so the
    steps are the validation report's. Nothing is written."""
    from lib_lora.train.dataset import folder_buckets, glob_images, repeats_for, steps_for
    src = _folder(ctx, source, "Source folder")
    if not src.is_dir():
        raise LoraStudioError(f"Source folder '{source}' does not exist; type a folder of tagged images.")
    dest_root = _folder(ctx, dest_root, "Destination folder")
    name = str(concept or "").strip()
    if not name or any(c in name for c in "/\\:") or name.startswith("."):
        raise LoraStudioError(f"Concept '{name}' must be a plain folder name (the trigger word), without slashes.")
    if mode not in PREPARE_MODES:
        raise LoraStudioError(f"Mode '{mode}' is not one of {', '.join(PREPARE_MODES)}.")
    steps = _whole(target_steps, "Target steps")
    ep, bs, ga = _whole(epochs, "Epochs"), _whole(batch_size, "Batch size"), _whole(grad_accum or 1, "Accumulation")
    images = len(glob_images(str(src)))
    if not images:
        raise LoraStudioError(f"Source folder '{src}' holds no images (.png, .jpg, .webp, …).")
    spec = bucket_spec(resolution, enable_bucket, extra)
    buckets = folder_buckets(str(src), spec) if spec is not None else [images]
    repeats = repeats_for(steps, sum(buckets), ep, bs, ga, buckets)
    dest = dest_root / f"{repeats}_{name}"
    got = steps_for(repeats, buckets, ep, bs, ga)
    where = f" in {len(buckets)} buckets (each gives whole batches)" if len(buckets) > 1 else ""
    text = (f"{sum(buckets)} images{where} × {repeats} repeats × {ep} epochs ÷ (batch {bs} × accumulation {ga}) = "
            f"**{got} steps** (target {steps}). Will {PREPARE_MODES[mode]} with their captions into "
            f"`{html.escape(str(dest))}`.")
    if images > sum(buckets):
        text += f" {images - sum(buckets)} image(s) cannot be trained on (unreadable or too small)."
    if dest.exists():
        text += " That folder exists: files already there are kept, a name clash stops the prepare."
    return {"src": src, "dest_root": dest_root, "dest": dest, "images": images, "repeats": repeats,
            "steps": got, "buckets": buckets, "text": text}


def preview_prepare(ctx, *args) -> str:
    try:
        return prepare_plan(ctx, *args)["text"]
    except Exception as exc:  # noqa: BLE001 — shown as one line
        return error_line(exc)


def run_prepare(ctx, source, dest_root, concept, target_steps, epochs, batch_size, grad_accum=1, mode="copy",
                resolution=None, enable_bucket=False, extra=None):
    """Prepare button → (status markdown, the dataset name to pick or None). The dataset picker then points at
    the destination root (the folder holding `<repeats>_<concept>`)."""
    from lib_lora.train.dataset import prepare_folder
    try:
        ctx.check_writes()
        plan = prepare_plan(ctx, source, dest_root, concept, target_steps, epochs, batch_size, grad_accum, mode,
                            resolution, enable_bucket, extra)
        dest = prepare_folder(str(plan["src"]), str(plan["dest_root"]), str(concept).strip(), int(target_steps),
                              epochs=int(float(epochs)), batch_size=int(float(batch_size)),
                              grad_accum=int(float(grad_accum or 1)), mode=mode, buckets=plan["buckets"])
    except Exception as exc:  # noqa: BLE001 — shown as one line
        return error_line(exc), None
    name = _dataset_name(ctx, plan["dest_root"])
    line = f"✓ Prepared `{html.escape(str(dest))}` ({plan['images']} images × {plan['repeats']} repeats, ≈ " \
           f"{plan['steps']} steps)."
    if name is None:
        line += " It is deeper than the dataset list looks (3 folders); pick it by typing its path."
    else:
        line += f" The dataset picker now shows '{html.escape(name)}'."
    return line, name


# ---- tag this folder ---------------------------------------------------------------------------------------

# The tagger tab's settings the Training tab reads (tagger_tab.build puts its components in ctx.tagger_settings
# in this order; without the tagger tab, `tagger_defaults` stands in).
TAGGER_SETTINGS = ("model", "model_folder", "provider", "allow_download", "existing", "batch_size")


def tagger_defaults(ctx) -> list:
    """The tagger tab's starting values (its model list's first choice, options as the tab starts them)."""
    from lib_lora.ui.tagger_tab import default_choice, model_choices
    opts = [0.35, 0.85, False, False, True, False, "confidence", True, False, "none", 0, "", "", "", "", "", False]
    return [default_choice(ctx, model_choices(ctx)), "", "auto", ctx.writes_allowed, "skip", 0, *opts]


def tag_dataset(ctx, dataset, caption_ext, settings: list, report_args: tuple):
    """Generator: tag every image of the picked dataset (its `<repeats>_<concept>` sub-folders, captions beside
    the images with the run's caption extension) with the tagger tab's settings, yielding the tagger's progress
    line; at the end the validation report again, under the tagger's summary."""
    from lib_lora.ui.tagger_tab import run_folder_ui
    try:
        ctx.check_writes()
        folder = dataset_path(ctx, dataset)
    except Exception as exc:  # noqa: BLE001 — shown as one line
        yield error_line(exc)
        return
    model, model_folder, provider, allow_dl, existing, batch, *opts = settings
    last = ""
    for progress, _rows, _log, _status in run_folder_ui(ctx, model, model_folder, provider, allow_dl, str(folder),
                                                        True, existing, caption_ext or ".txt", "", batch, False,
                                                        False, *opts):
        last = progress
        if progress.startswith("**Error:**"):
            yield progress      # the tagger's one-line error (no model, a bad setting, …)
            return
        yield f"Tagging `{html.escape(str(folder))}`: {progress}"
    report, _ok = validate_run(ctx, dataset, *report_args)
    yield f"Tagger: {last}\n\n{report}"
