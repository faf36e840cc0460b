"""Shared pieces of the trainer tests: 8 synthetic images in a kohya folder, a config, the tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from lib_lora.train.config import config_from_dict

COLORS = [(230, 30, 30), (30, 230, 30), (30, 30, 230), (230, 230, 30), (230, 30, 230), (30, 230, 230),
          (240, 240, 240), (20, 20, 20)]


def make_images(root: Path, repeats: int = 2, size=(64, 64), concept: str = "toy") -> Path:
    """8 images: a colour each, with a diagonal stripe pattern that differs per image; tag captions."""
    folder = root / f"{repeats}_{concept}"
    folder.mkdir(parents=True, exist_ok=True)
    for i, c in enumerate(COLORS):
        yy, xx = np.mgrid[0:size[1], 0:size[0]]
        stripe = ((xx + yy * (i % 3 + 1)) // (4 + i)) % 2
        arr = np.array(c, dtype=np.float32)[None, None, :] * (0.55 + 0.45 * stripe[..., None])
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"{concept}, color{i}, pattern{i % 3}")
    return root


def config(tmp: Path, data: Path, **kw):
    base = {"pretrained_model_name_or_path": "tiny-sd1", "train_data_dir": str(data),
            "output_dir": str(tmp / "out"), "output_name": "toy", "caption_extension": ".txt",
            "resolution": "64", "train_batch_size": 4, "network_dim": 4, "network_alpha": 4.0,
            "learning_rate": 1e-3, "max_train_epochs": 3, "seed": 1, "save_every_n_epochs": 1}
    base.update(kw)
    return config_from_dict(base)


def tiny_model(arch: str = "sd1"):
    import torch

    from lib_lora.sd import build_model

    return build_model(arch, "tiny", seed=0, dtype=torch.float32)


def trainable_model():
    """A small runnable SD1-shaped model whose random weights pass signal through the U-Net (tinysd.py).
    lib_lora.sd's tiny model draws every weight from N(0, 0.02): its U-Net output has std ~0.01 whatever the
    input, and a LoRA on it does not lower the loss in a test's budget, so memorisation is shown here."""
    from tests.lib_lora.train.tinysd import build

    return build(seed=0)
