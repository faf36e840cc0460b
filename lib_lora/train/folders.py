"""The kohya folder layout: `<repeats>_<concept>` sub-folders of images (read as subsets, written by
"prepare a folder"), and the image spellings sd-scripts globs.
"""

from __future__ import annotations

import math
import os
import shutil

from lib_lora.errors import LoraStudioError
from lib_lora.train.config import SubsetSpec

# sd-scripts globs these exact spellings (all lower or all upper case)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".PNG", ".JPG", ".JPEG", ".WEBP", ".BMP")


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


# ---- prepare a folder -----------------------------------------------------------------------------------------

def steps_per_epoch(batches: int, grad_accum: int = 1, processes: int = 1) -> int:
    """sd-scripts' optimizer steps in an epoch of `batches` batches: ⌈batches / processes / grad_accum⌉."""
    return math.ceil(batches / processes / grad_accum) if batches else 0


def steps_for(repeats: int, buckets, epochs: int = 1, batch_size: int = 1, grad_accum: int = 1) -> int:
    """Optimizer steps of `epochs` epochs with `repeats`, counted as sd-scripts counts them: each bucket gives
    ⌈images in it × repeats / batch⌉ batches (as `dataset.step_counts`), then `steps_per_epoch`."""
    batches = sum(math.ceil(n * repeats / batch_size) for n in buckets if n)
    return steps_per_epoch(batches, grad_accum) * max(1, epochs)


def repeats_for(target_steps: int, images: int, epochs: int = 1, batch_size: int = 1, grad_accum: int = 1,
                buckets=None) -> int:
    """Repeats so that `epochs` epochs of `images` reach about `target_steps` optimizer steps. `buckets`: the
    images per aspect-ratio bucket (dataset.folder_buckets); without it all images are one bucket. The closest
    count wins, the fewer repeats on a tie (steps only grow with repeats, so the search stops past the target)."""
    if images < 1:
        raise LoraStudioError("the folder holds no images; add images first.")
    buckets = [images] if buckets is None else [n for n in buckets if n]
    best, best_err = 1, None
    for r in range(1, max(2, 2 * target_steps * batch_size * grad_accum // max(1, epochs) + 2)):
        got = steps_for(r, buckets, epochs, batch_size, grad_accum)
        err = abs(got - target_steps)
        if best_err is None or err < best_err:
            best, best_err = r, err
        if got >= target_steps:
            break
    return best


def prepare_folder(src: str, dest_root: str, concept: str, target_steps: int, epochs: int = 1,
                   batch_size: int = 1, grad_accum: int = 1, mode: str = "copy",
                   caption_extensions=(".txt", ".caption"), buckets=None) -> str:
    """Copy (or hard-link, falling back to a copy across file systems; or symlink) the images of `src` and
    their captions into `dest_root/<repeats>_<concept>`. Existing files are never replaced. `buckets`: the
    images per bucket at the run's resolution (dataset.folder_buckets), for the repeats."""
    if mode not in ("copy", "link", "symlink"):
        raise LoraStudioError(f"mode '{mode}' is not copy, link or symlink.")
    if not concept.strip() or os.sep in concept or (os.altsep and os.altsep in concept):
        raise LoraStudioError(f"concept '{concept}' is not a folder name; give words without slashes.")
    images = glob_images(src)
    repeats = repeats_for(target_steps, len(images), epochs, batch_size, grad_accum, buckets)
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
