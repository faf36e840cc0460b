"""Preprocessing: alpha on white, centred white square, resize, BGR float32 0–255; odd images load."""

import numpy as np
import pytest
from PIL import Image

from lib_lora.tagger.preprocess import ImageReadError, load_and_prepare, pad_square, prepare


def test_rgb_becomes_bgr_float32_0_255():
    arr = prepare(Image.new("RGB", (10, 10), (255, 10, 0)), 8)
    assert arr.shape == (8, 8, 3) and arr.dtype == np.float32
    assert arr[0, 0].tolist() == [0.0, 10.0, 255.0]          # B, G, R


def test_rgba_transparent_composited_on_white():
    img = Image.new("RGBA", (6, 6), (0, 0, 0, 0))             # fully transparent black
    img.putpixel((0, 0), (255, 0, 0, 255))                    # one opaque red pixel
    img.putpixel((1, 0), (0, 0, 255, 128))                    # half-transparent blue
    arr = prepare(img, 6)
    assert arr[5, 5].tolist() == [255.0, 255.0, 255.0]
    assert arr[0, 0].tolist() == [0.0, 0.0, 255.0]
    b, g, r = arr[0, 1]
    assert b == 255.0 and 125 <= g <= 129 and 125 <= r <= 129  # blue over white at 50 %


def test_la_and_palette_transparency_on_white():
    la = Image.new("LA", (4, 4), (0, 0))
    assert prepare(la, 4).min() == 255.0
    p = Image.new("P", (4, 4), 0)
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    p.putpixel((0, 0), 1)
    p.info["transparency"] = 0                                 # palette index 0 (black) is transparent
    arr = prepare(p, 4)
    assert arr[3, 3].tolist() == [255.0] * 3
    assert arr[0, 0].tolist() == [0.0, 0.0, 255.0]


def test_grayscale_and_16bit():
    assert prepare(Image.new("L", (5, 5), 77), 5)[2, 2].tolist() == [77.0] * 3
    i16 = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert prepare(i16, 4).min() == 255.0
    cmyk = Image.new("CMYK", (4, 4), (0, 0, 0, 0))
    assert prepare(cmyk, 4).min() == 255.0


def test_pad_is_centred_white_square():
    img = Image.new("RGB", (10, 4), (0, 0, 0))
    sq = pad_square(img)
    a = np.asarray(sq)
    assert sq.size == (10, 10)
    assert (a[:3] == 255).all() and (a[7:] == 255).all() and (a[3:7] == 0).all()   # offset (10-4)//2 = 3
    tall = np.asarray(pad_square(Image.new("RGB", (3, 8), (0, 0, 0))))
    assert (tall[:, :2] == 255).all() and (tall[:, 2:5] == 0).all() and (tall[:, 5:] == 255).all()


def test_tiny_and_huge_images():
    assert prepare(Image.new("RGB", (1, 1), (0, 0, 255)), 16)[8, 8].tolist() == [255.0, 0.0, 0.0]
    wide = prepare(Image.new("RGB", (4000, 300), (0, 255, 0)), 32)
    assert wide.shape == (32, 32, 3)
    assert wide[0, 0].tolist() == [255.0] * 3 and wide[16, 16].tolist() == [0.0, 255.0, 0.0]


def test_area_resize_averages():
    img = Image.new("RGB", (64, 64), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 32, 64))                # left half white
    arr = prepare(img, 2, "area")
    assert arr[0, 0].tolist() == [255.0] * 3 and arr[0, 1].tolist() == [0.0] * 3
    with pytest.raises(Exception, match="resize method"):
        prepare(img, 2, "nearest")


def test_truncated_image_loads_and_corrupt_is_a_clear_error(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) * 2 // 3])
    assert load_and_prepare(tmp_path / "cut.png", 16).shape == (16, 16, 3)
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    with pytest.raises(ImageReadError, match="junk.jpg: cannot read image"):
        load_and_prepare(tmp_path / "junk.jpg", 16)
    from PIL import ImageFile
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False           # the global switch was restored


def test_16bit_strips_match_the_float_formula_and_big_files_are_reduced_while_decoding(tmp_path):
    from lib_lora.tagger import preprocess as pp
    rng = np.random.default_rng(1)
    a16 = rng.integers(0, 65536, (700, 1500), dtype=np.uint16)
    want = np.clip(a16.astype(np.float64) * (255.0 / 65535.0), 0, 255).astype(np.uint8)
    assert (np.asarray(pp._to_8bit(Image.fromarray(a16))) == want).all()
    low = rng.integers(0, 256, (50, 60), dtype=np.uint16)                    # 16-bit holding 8-bit values
    assert (np.asarray(pp._to_8bit(Image.fromarray(low))) == low).all()
    Image.new("RGB", (4000, 3000), (10, 200, 30)).save(tmp_path / "big.jpg", quality=90)
    img, truncated = pp._open(tmp_path / "big.jpg", 32)
    assert max(img.size) <= 1000 and not truncated                          # JPEG draft: decoded at 1/4 or less
    Image.fromarray(a16).save(tmp_path / "g16.png")
    shrunk = pp.shrink(pp._open(tmp_path / "g16.png")[0], 32)
    assert shrunk.mode == "L" and max(shrunk.size) < 130                   # 8 bits, about twice the model size
    d = pp.decode(tmp_path / "g16.png", 32)
    assert d.array.shape == (32, 32, 3) and not d.truncated


def test_decode_budget_lets_one_oversized_job_run_alone():
    import threading
    from lib_lora.tagger.preprocess import _Budget
    b = _Budget(100)
    held = b.acquire(10**9)                     # bigger than the budget: clamped, runs when nothing else does
    assert held == 100
    got = []
    t = threading.Thread(target=lambda: got.append(b.acquire(10)))
    t.start()
    t.join(0.2)
    assert not got                              # waits while the big one holds everything
    b.release(held)
    t.join(2)
    assert got == [10]
