"""Latent caching: in memory it trains exactly what encoding every step trains; on disk a .npz beside each
image (sd-scripts' keys) is reused across runs while the image and bucket stay, and rebuilt when either
changes or the file is broken; random_crop is refused with caching, as sd-scripts does."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from lib_lora import fileio
from lib_lora.errors import LoraStudioError
from lib_lora.train.trainer import Trainer
from tests.lib_lora.train.helpers import config, make_images, tiny_model

pytest.importorskip("lycoris")


def run(cfg):
    return Trainer(cfg, model=tiny_model(), log=lambda *_: None).run()


def same(a, b):
    ta, tb = fileio.read_tensors(a)[0], fileio.read_tensors(b)[0]
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_memory_cache_trains_what_encoding_each_step_trains(tmp_path):
    data = make_images(tmp_path / "data")
    kw = dict(max_train_epochs=2, flip_aug=True, save_every_n_epochs=None)
    a = run(config(tmp_path / "a", data, **kw))
    b = run(config(tmp_path / "b", data, cache_latents=True, **kw))
    assert same(a.files[-1], b.files[-1])
    assert fileio.read_metadata(b.files[-1])["ss_cache_latents"] == "True"


def stats(folder):
    return {f: (os.stat(folder / f).st_ino, os.stat(folder / f).st_mtime_ns) for f in sorted(os.listdir(folder))
            if f.endswith(".npz")}


def test_disk_cache_written_reused_and_rebuilt(tmp_path):
    data = make_images(tmp_path / "data")
    folder = data / "2_toy"
    kw = dict(max_train_epochs=1, flip_aug=True, save_every_n_epochs=None, cache_latents_to_disk=True)
    first = run(config(tmp_path / "r1", data, **kw))
    files = stats(folder)
    assert sorted(files) == [f"img{i}.npz" for i in range(8)]
    with np.load(folder / "img0.npz") as z:
        assert {"latents", "latents_flipped", "original_size", "crop_ltrb"} <= set(z.files)
        assert z["latents"].shape == (4, 8, 8) and z["latents"].dtype == np.float32
        assert list(z["original_size"]) == [64, 64] and list(z["crop_ltrb"]) == [0, 0, 64, 64]
    # second run: every file reused untouched, and the same weights
    second = run(config(tmp_path / "r2", data, **kw))
    assert stats(folder) == files and same(first.files[-1], second.files[-1])
    # a changed image, a broken cache file and a cache without the flipped latents are rebuilt; the rest stay
    Image.new("RGB", (64, 64), (9, 99, 199)).save(folder / "img1.png")
    (folder / "img2.npz").write_bytes(b"not a zip")
    with np.load(folder / "img3.npz") as z:
        np.savez(folder / "img3.npz", **{k: z[k] for k in z.files if k != "latents_flipped"})
    files3 = stats(folder)
    run(config(tmp_path / "r3", data, **kw))
    now = stats(folder)
    changed = sorted(f for f in now if now[f] != files3[f])
    assert changed == ["img1.npz", "img2.npz", "img3.npz"]
    with np.load(folder / "img3.npz") as z:
        assert "latents_flipped" in z.files
    # another resolution: the cached latents no longer fit the bucket, all are rebuilt
    files4 = stats(folder)
    run(config(tmp_path / "r4", data, resolution="128", **kw))
    with np.load(folder / "img0.npz") as z:
        assert z["latents"].shape == (4, 16, 16)
    now = stats(folder)
    assert all(now[f] != files4[f] for f in now)


@pytest.mark.parametrize("flag", ["cache_latents", "cache_latents_to_disk"])
def test_random_crop_refused_with_caching(tmp_path, flag):
    data = make_images(tmp_path / "data")
    with pytest.raises(LoraStudioError, match="random_crop cannot be used with cache_latents"):
        run(config(tmp_path, data, random_crop=True, **{flag: True}))
    assert not list((data / "2_toy").glob("*.npz"))
