"""A full-size random SD1.5 checkpoint (the real key names and shapes of tests/fixtures) trains 2 epochs at 64×64
on the CPU through the CLI: one image, rank 4, U-Net only, to keep it as cheap as a full model allows
(about 2 GB on disk, ~5 GB RAM in the training process)."""

from __future__ import annotations

import gc

import pytest
import torch

from lib_lora import fileio
from lib_lora.network import load_network
from tests.lib_lora.train.helpers import make_images
from tests.lib_lora.train.test_cli_train import cli

pytest.importorskip("lycoris")


@pytest.mark.slow
def test_full_size_sd15_trains_two_epochs_through_the_cli(tmp_path):
    from tests.checkpoints import write_checkpoint

    write_checkpoint(tmp_path / "sd15.safetensors", scale=1, dtype=torch.float16)
    gc.collect()
    data = make_images(tmp_path / "data", repeats=1)
    for p in sorted((data / "1_toy").iterdir()):         # keep one image: one step per epoch
        if not p.name.startswith("img0."):
            p.unlink()
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'pretrained_model_name_or_path = "{tmp_path / "sd15.safetensors"}"\n'
                   f'train_data_dir = "{data}"\noutput_dir = "{tmp_path / "out"}"\noutput_name = "full"\n'
                   'caption_extension = ".txt"\nresolution = 64\ntrain_batch_size = 1\nmax_train_epochs = 2\n'
                   'save_every_n_epochs = 1\nnetwork_dim = 4\nnetwork_alpha = 4\nnetwork_train_unet_only = true\n'
                   'learning_rate = 1e-4\nseed = 3\n')
    r = cli("--config", str(cfg), "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["full-000001.safetensors", "full.safetensors"]
    md = fileio.read_metadata(str(out / "full.safetensors"))
    assert md["ss_epoch"] == "2" and md["ss_steps"] == "2" and md["ss_base_model_version"] == "sd_v1"
    net = load_network(str(out / "full.safetensors"))
    assert net.arch == "sd1" and not net.skipped and not net.rejected
    # kohya's SD1 U-Net LoRA: the 16 transformers' attention, feed-forward and projection layers
    assert len(net.modules) == 192
    tensors, _ = fileio.read_tensors(str(out / "full.safetensors"))
    assert any(float(t.abs().max()) > 0 for k, t in tensors.items() if ".lora_up." in k)   # it trained
