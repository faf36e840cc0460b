"""A real-size SD1.5 U-Net (random weights) runs one step at 64x64."""

import pytest
import torch

from lib_lora.sd import build_model


@pytest.mark.slow
def test_full_sd15_unet_step():
    model = build_model("sd1", "full", seed=0, parts=("unet",))
    assert sum(p.numel() for p in model.unet.parameters()) == 859_520_964
    with torch.no_grad():
        out = model.unet(torch.randn(1, 4, 8, 8), torch.tensor([500]), torch.randn(1, 77, 768))
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()
