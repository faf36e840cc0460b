"""Whole checkpoints (U-Net, text encoders, VAE, noise schedule, position_ids) with the real key names of
tests/fixtures/*_checkpoint_compvis.json and scaled-down widths, written as .safetensors."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from tests.models import fixture_keys, scale_dim


def checkpoint_state(model: str = "sd15", scale: int = 16, seed: int = 0, dtype=torch.float16,
                     keys=None) -> dict[str, torch.Tensor]:
    """Random weights (std 0.05) for every key of the manifest; `position_ids` int64, schedule float32."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in fixture_keys(model).items():
        if keys is not None and key not in keys:
            continue
        shape = [scale_dim(d, scale) if i < 2 else d for i, d in enumerate(shape)]
        if key.endswith("position_ids"):
            sd[key] = torch.arange(shape[-1], dtype=torch.int64).reshape(shape)
        elif not key.startswith(("model.", "cond_stage_model.", "conditioner.", "first_stage_model.")):
            sd[key] = torch.rand(shape, generator=gen, dtype=torch.float32)
        else:
            sd[key] = (torch.randn(shape, generator=gen) * 0.05).to(dtype)
    return sd


def write_checkpoint(path, model: str = "sd15", scale: int = 16, seed: int = 0, dtype=torch.float16,
                     metadata=None, **kw) -> dict[str, torch.Tensor]:
    sd = checkpoint_state(model, scale, seed, dtype, **kw)
    save_file(sd, str(path), metadata=metadata)
    return sd
