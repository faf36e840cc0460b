"""Aspect-ratio buckets as sd-scripts' BucketManager forms them: the predefined resolutions, the bucket range,
and the bucket an image size goes to.
"""

from __future__ import annotations

import math

from lib_lora.errors import LoraStudioError
from lib_lora.train.config import DatasetSpec


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
