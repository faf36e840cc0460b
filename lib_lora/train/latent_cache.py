"""The latent disk cache, sd-scripts' --cache_latents_to_disk file: `<image stem>.npz` beside the image with
`latents` (C×H/8×W/8, float32, before the VAE scale factor), `original_size` (w, h), `crop_ltrb` and, with
flip_aug, `latents_flipped`. LoRA Studio adds the image's SHA-256, so a file is reused only for the same image at
the same bucket.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lib_lora.train.dataset import Dataset, ImageItem

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


def cache_path(item: ImageItem) -> str:
    return os.path.splitext(item.path)[0] + ".npz"


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

