"""generate() gives an image that depends on the seed and only on it."""

import numpy as np
import pytest

from lib_lora.errors import LoraStudioError
from lib_lora.sd import build_model
from lib_lora.sd.sample import generate


@pytest.fixture(scope="module")
def tiny():
    return build_model("sd1", "tiny", seed=0)


def test_generate_is_deterministic_per_seed(tiny):
    steps = []
    a = generate(tiny, "a cat", seed=7, steps=2, width=64, height=64, progress=lambda i, n: steps.append((i, n)))
    b = generate(tiny, "a cat", seed=7, steps=2, width=64, height=64)
    c = generate(tiny, "a cat", seed=8, steps=2, width=64, height=64)
    assert a.size == (64, 64) and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b)) and not np.array_equal(np.asarray(a), np.asarray(c))
    assert steps == [(1, 2), (2, 2)]
    d = generate(tiny, "a cat", seed=7, steps=2, width=64, height=64, sampler="ddim")
    assert d.size == (64, 64)


def test_sdxl_generates():
    m = build_model("sdxl", "tiny", seed=0)
    img = generate(m, "a cat", "blurry", seed=1, steps=1, width=64, height=64)
    assert img.size == (64, 64)


def test_bad_settings_are_one_line_errors(tiny):
    with pytest.raises(LoraStudioError, match="sampler"):
        generate(tiny, "x", seed=1, sampler="plms")
    with pytest.raises(LoraStudioError, match="multiple of 8"):
        generate(tiny, "x", seed=1, width=65)
