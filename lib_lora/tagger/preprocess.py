"""Image → model input, as the WD14 models were trained: alpha on white, centred white square pad,
resize to the model size, float32 BGR 0–255 (NHWC; normalisation lives in the graph)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from lib_lora.errors import LoraStudioError

RESIZE_METHODS = ("bicubic", "area")
WHITE = (255, 255, 255)
_truncated_lock = threading.Lock()


class ImageReadError(LoraStudioError):
    """An image that cannot be decoded; the folder run reports it and goes on."""


def open_image(path) -> Image.Image:
    """Decode fully; a truncated file is loaded as far as it goes (datasets often hold a few)."""
    path = Path(path)
    try:
        img = Image.open(path)
        try:
            img.load()
        except OSError as exc:
            if "truncated" not in str(exc).lower():
                raise
            img = Image.open(path)
            # A process-wide PIL switch: set only around this load so other code keeps its behaviour.
            with _truncated_lock:
                old = ImageFile.LOAD_TRUNCATED_IMAGES
                ImageFile.LOAD_TRUNCATED_IMAGES = True
                try:
                    img.load()
                finally:
                    ImageFile.LOAD_TRUNCATED_IMAGES = old
        return img
    except FileNotFoundError:
        raise ImageReadError(f"{path}: file not found.") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"{path}: cannot read image ({type(exc).__name__}: {exc}).") from None


def to_rgb_on_white(img: Image.Image) -> Image.Image:
    """Composite any transparency (RGBA, LA, PA, P/L/RGB with a transparent colour) onto white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16/32-bit greyscale: PIL's convert clips instead of scaling; scale to 8 bits ourselves.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8), "L")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def pad_square(img: Image.Image) -> Image.Image:
    """Centre on a white square of side max(w, h): never crop, never stretch."""
    w, h = img.size
    side = max(w, h)
    if w == h:
        return img
    canvas = Image.new("RGB", (side, side), WHITE)
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
    return canvas


def resize(img: Image.Image, size: int, method: str = "bicubic") -> Image.Image:
    """Bicubic (canonical); "area" averages when shrinking (toriato/kohya parity), bicubic when growing."""
    if method not in RESIZE_METHODS:
        raise LoraStudioError(f"resize method '{method}' is unknown; use one of {', '.join(RESIZE_METHODS)}.")
    if img.size == (size, size):
        return img
    shrinking = img.size[0] > size
    resample = Image.BOX if (method == "area" and shrinking) else Image.BICUBIC
    return img.resize((size, size), resample)


def prepare(img: Image.Image, size: int, method: str = "bicubic") -> np.ndarray:
    """One image → float32 array [size, size, 3], BGR, 0–255 (no batch axis)."""
    img = resize(pad_square(to_rgb_on_white(img)), size, method)
    arr = np.asarray(img, dtype=np.float32)
    return np.ascontiguousarray(arr[:, :, ::-1])


def load_and_prepare(path, size: int, method: str = "bicubic") -> np.ndarray:
    img = open_image(path)
    try:
        return prepare(img, size, method)
    except (OSError, ValueError) as exc:  # lazy decoders may fail only here
        raise ImageReadError(f"{path}: cannot read image ({type(exc).__name__}: {exc}).") from None
    finally:
        img.close()
