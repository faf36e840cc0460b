"""Image → model input, as each tagger family was trained. WD14 and Z3D-E621: alpha on white, centred
white square pad, resize to the model size, float32 BGR 0–255 (NHWC; normalisation lives in the graph).
DeepDanbooru: the same geometry, padded with black, RGB scaled to 0–1."""

from __future__ import annotations

import contextlib
import io
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from lib_lora.errors import LoraStudioError

RESIZE_METHODS = ("bicubic", "area")
WHITE = (255, 255, 255)
_truncated_lock = threading.Lock()
_warn_lock = threading.Lock()


@dataclass(frozen=True)
class Pixels:
    """How a family wants its pixels: channel order, value scale (times the 0–255 values), pad colour."""
    bgr: bool = True
    scale: float = 1.0
    fill: tuple = WHITE


WD14_PIXELS = Pixels()
DEEPDANBOORU_PIXELS = Pixels(bgr=False, scale=1 / 255, fill=(0, 0, 0))


class ImageReadError(LoraStudioError):
    """An image that cannot be decoded; the folder run reports it and goes on."""


# Refused before decoding: PIL's own decompression-bomb warning level (~89.5 MP). A tiny PNG can declare
# 13000x13000 16-bit pixels and decode to gigabytes.
MAX_PIXELS = 89_478_485
# Bytes of decoded pixels all decode workers may hold at once; one image bigger than this decodes alone.
DECODE_BUDGET = 1 << 30
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_REDUCIBLE = ("L", "LA", "RGB", "RGBA", "RGBX", "RGBa", "La", "I", "F", "CMYK", "YCbCr")


class _Budget:
    """A counting limit on bytes held by concurrent decodes (bounded memory with several workers)."""

    def __init__(self, total: int):
        self.total, self.used = total, 0
        self._cond = threading.Condition()

    def acquire(self, n: int) -> int:
        n = max(1, min(int(n), self.total))
        with self._cond:
            while self.used and self.used + n > self.total:
                self._cond.wait()
            self.used += n
        return n

    def release(self, n: int) -> None:
        with self._cond:
            self.used -= n
            self._cond.notify_all()


_budget = _Budget(DECODE_BUDGET)


@contextlib.contextmanager
def _quiet_bomb_warning():
    """PIL warns (to stderr) on images we then refuse with our own line anyway. The filter change is
    process-wide: one lock keeps concurrent decodes from restoring each other's filters."""
    with _warn_lock, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


@dataclass
class Decoded:
    array: np.ndarray          # the model input, [size, size, 3] float32 BGR 0–255
    truncated: bool = False    # the file ended early: decoded as far as it goes


def _bytes_per_pixel(mode: str) -> int:
    return 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4


def _check_pixels(img: Image.Image, path) -> None:
    w, h = img.size
    if w * h > MAX_PIXELS:
        raise ImageReadError(f"{path}: {w}x{h} pixels ({w * h / 1e6:.0f} MP) is over the {MAX_PIXELS / 1e6:.0f} MP "
                             "limit for tagging; downscale it.")


def _fresh(src):
    """Image.open's argument: a path, or a new reader over uploaded bytes (each open reads from the start)."""
    return io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src


def _label(src) -> str:
    return "the uploaded image" if isinstance(src, (bytes, bytearray)) else str(src)


def _load(path, target: int | None) -> tuple[Image.Image, bool]:
    img = Image.open(_fresh(path))
    _check_pixels(img, _label(path))
    if target:
        img.draft(None, (2 * target, 2 * target))   # JPEG: decode at 1/2..1/8 scale when far larger
    try:
        img.load()
        return img, False
    except OSError as exc:
        if "truncated" not in str(exc).lower():
            raise
    img = Image.open(_fresh(path))
    if target:
        img.draft(None, (2 * target, 2 * target))
    # A process-wide PIL switch: set only around this load so other code keeps its behaviour.
    with _truncated_lock:
        old = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            img.load()
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = old
    return img, True


def _unreadable(name: str, exc: BaseException) -> ImageReadError:
    """One line for a file PIL cannot decode. PIL's own "cannot identify image file '<full path>'" repeats
    the path and says nothing about the fix."""
    if isinstance(exc, Image.UnidentifiedImageError):
        return ImageReadError(f"{name}: cannot read image: not an image format this tagger reads, or damaged; "
                              "replace or remove the file.")
    return ImageReadError(f"{name}: cannot read image ({type(exc).__name__}: {exc}); replace or remove the file.")


def _open(path, target: int | None = None) -> tuple[Image.Image, bool]:
    """Decode fully (reduced to about 2x `target` when much larger); a truncated file is loaded as far as
    it goes (datasets often hold a few) and flagged. `path` may be the bytes of an upload."""
    path = path if isinstance(path, (bytes, bytearray)) else Path(path)
    name = _label(path)
    try:
        return _load(path, target)
    except FileNotFoundError:
        raise ImageReadError(f"{name}: file not found.") from None
    except Image.DecompressionBombError:
        raise ImageReadError(f"{name}: over PIL's decompression-bomb limit of {Image.MAX_IMAGE_PIXELS} pixels; "
                             "downscale it.") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise _unreadable(name, exc) from None


def _to_8bit(img: Image.Image) -> Image.Image:
    """16/32-bit greyscale → L, scaled (PIL's convert clips instead). Row strips keep the float temporaries
    small: a whole-image float64 copy of a 16-bit scan is 8 bytes per pixel."""
    w, h = img.size
    strip = max(1, (1 << 20) // max(1, w))
    top = 255.0
    for y in range(0, h, strip):
        if np.asarray(img.crop((0, y, w, min(h, y + strip)))).max() > 255:
            top = 65535.0
            break
    out = np.empty((h, w), dtype=np.uint8)
    for y in range(0, h, strip):
        arr = np.asarray(img.crop((0, y, w, min(h, y + strip))), dtype=np.float64)
        out[y:y + strip] = np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8)
    return Image.fromarray(out, "L")


def shrink(img: Image.Image, target: int) -> Image.Image:
    """Box-reduce by an integer factor while the result stays ≥ 2x `target` on its long side, so
    conversions and the final resize work on a small copy (quality: the final resize still filters)."""
    k = max(img.size) // (2 * target)
    if k < 2:
        return img
    if img.mode in _WIDE_MODES:   # PIL cannot reduce I;16; and Pillow 9.5 (A1111's) opens a 16-bit PNG as "I":
        img = _to_8bit(img)       # 8 bits first either way, so every Pillow gives the same pixels
    elif img.mode in ("P", "1") or "transparency" in img.info:   # a palette or key colour does not average
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode not in _REDUCIBLE:
        return img
    return img.reduce(k)


def to_rgb_on_white(img: Image.Image) -> Image.Image:
    """Composite any transparency (RGBA, LA, PA, P/L/RGB with a transparent colour) onto white."""
    if img.mode in _WIDE_MODES:
        img = _to_8bit(img)
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def pad_square(img: Image.Image, fill: tuple = WHITE) -> Image.Image:
    """Centre on a square of side max(w, h) (white unless told): never crop, never stretch."""
    w, h = img.size
    side = max(w, h)
    if w == h:
        return img
    canvas = Image.new("RGB", (side, side), tuple(fill))
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


def prepare(img: Image.Image, size: int, method: str = "bicubic", pixels: Pixels = WD14_PIXELS) -> np.ndarray:
    """One image → float32 array [size, size, 3] (no batch axis): BGR 0–255 for WD14, as `pixels` says."""
    img = resize(pad_square(to_rgb_on_white(img), pixels.fill), size, method)
    arr = np.asarray(img, dtype=np.float32)
    if pixels.scale != 1.0:
        arr = arr * np.float32(pixels.scale)
    return np.ascontiguousarray(arr[:, :, ::-1] if pixels.bgr else arr)


def decode(path, size: int, method: str = "bicubic", pixels: Pixels = WD14_PIXELS) -> Decoded:
    """A file → model input. Decoded pixels are counted against a budget shared by all decode workers and
    reduced at once to about twice the model size, so a folder of huge scans never holds several
    full-size copies. `path` may be the bytes of an upload."""
    path = path if isinstance(path, (bytes, bytearray)) else Path(path)
    name = _label(path)
    try:
        with _quiet_bomb_warning(), Image.open(_fresh(path)) as head:
            _check_pixels(head, name)
            w, h = head.size
            cost = w * h * _bytes_per_pixel(head.mode) * 2   # the decode plus one conversion copy
    except Image.DecompressionBombError:
        raise ImageReadError(f"{name}: over PIL's decompression-bomb limit of {Image.MAX_IMAGE_PIXELS} pixels; "
                             "downscale it.") from None
    except FileNotFoundError:
        raise ImageReadError(f"{name}: file not found.") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise _unreadable(name, exc) from None
    held = _budget.acquire(cost)
    img = None
    try:
        img, truncated = _open(path, size)
        try:
            small = shrink(img, size)
            if small is not img:
                img.close()
                img = small
            return Decoded(prepare(img, size, method, pixels), truncated)
        except (OSError, ValueError) as exc:  # lazy decoders may fail only here
            raise _unreadable(name, exc) from None
    finally:
        if img is not None:
            img.close()
        _budget.release(held)


def prepare_loaded(img: Image.Image, size: int, method: str = "bicubic",
                   pixels: Pixels = WD14_PIXELS) -> np.ndarray:
    """An image someone else decoded (an upload): the same pixel limit, then reduced before converting."""
    _check_pixels(img, "the image")
    return prepare(shrink(img, size), size, method, pixels)


def load_and_prepare(path, size: int, method: str = "bicubic", pixels: Pixels = WD14_PIXELS) -> np.ndarray:
    return decode(path, size, method, pixels).array
