"""The trainer on the tiny SD model: loss falls on 8 images, per-epoch files load in the core engine and change
the U-Net, resume equals the uninterrupted run, cancel leaves only complete files."""

from __future__ import annotations

import json
import os

import pytest
import torch

from lib_lora import fileio
from lib_lora.network import load_network
from lib_lora.train.trainer import Trainer
from tests.lib_lora.train.helpers import config, make_images, tiny_model, trainable_model

pytest.importorskip("lycoris")


def run(cfg, model=None, **kw):
    return Trainer(cfg, model=model or tiny_model(), log=lambda *_: None, **kw).run()


def test_loss_falls_when_memorising_8_images(tmp_path):
    data = make_images(tmp_path / "data", repeats=4)
    cfg = config(tmp_path, data, max_train_epochs=8, save_every_n_epochs=None, learning_rate=5e-3,
                 min_timestep=400, max_timestep=600, network_train_unet_only=True, cache_latents=True)
    res = run(cfg, trainable_model())
    losses = [l for _, l in res.losses]
    per_epoch = len(losses) // 8
    first, last = sum(losses[:per_epoch * 2]) / (per_epoch * 2), sum(losses[-per_epoch * 2:]) / (per_epoch * 2)
    assert last < 0.8 * first, (first, last)


def test_epoch_files_names_keys_metadata_and_effect(tmp_path):
    data = make_images(tmp_path / "data")
    cfg = config(tmp_path, data, network_args=["conv_dim=2", "conv_alpha=1"], logging_dir=str(tmp_path / "logs"))
    model = tiny_model()
    res = run(cfg, model)
    out = tmp_path / "out"
    assert sorted(os.listdir(out)) == ["toy-000001.safetensors", "toy-000002.safetensors", "toy.safetensors"]
    assert [os.path.basename(f) for f in res.files] == ["toy-000001.safetensors", "toy-000002.safetensors",
                                                        "toy.safetensors"]
    tensors, md = fileio.read_tensors(str(out / "toy.safetensors"))
    assert all(k.startswith(("lora_unet_", "lora_te_")) for k in tensors)
    assert any(k.startswith("lora_te_text_model_encoder_layers_0_") for k in tensors)
    assert any("_resnets_0_conv1.lora_down" in k for k in tensors)   # conv_dim: ResNet 3×3 convs
    assert md["ss_network_module"] == "networks.lora" and md["ss_network_dim"] == "4"
    assert md["ss_network_alpha"] == "4.0" and json.loads(md["ss_network_args"]) == {"conv_dim": "2",
                                                                                       "conv_alpha": "1"}
    assert md["ss_epoch"] == "3" and md["ss_steps"] == "12" and md["ss_num_train_images"] == "16"
    assert md["ss_output_name"] == "toy" and md["ss_seed"] == "1" and md["ss_max_train_steps"] == "12"
    assert json.loads(md["ss_dataset_dirs"]) == {"2_toy": {"n_repeats": 2, "img_count": 8}}
    assert md["ss_bucket_info"] == "null"                # buckets off: sd-scripts writes None
    assert json.loads(md["ss_tag_frequency"])["2_toy"]["toy"] == 8
    assert md["sshs_model_hash"] == fileio.model_hash(str(out / "toy.safetensors"))
    # sd-scripts hashes the file as it would be with only the ss_* keys
    ss_only = str(tmp_path / "ss_only.safetensors")
    fileio.atomic_save_safetensors(tensors, ss_only, {k: v for k, v in md.items() if k.startswith("ss_")})
    assert os.path.getsize(ss_only) > 0x110000 and md["sshs_legacy_hash"] == fileio.legacy_hash(ss_only)
    e1 = fileio.read_metadata(str(out / "toy-000001.safetensors"))
    assert e1["ss_epoch"] == "1" and e1["ss_session_id"] == md["ss_session_id"]
    assert res.log_kind in ("tensorboard", "csv") and os.listdir(res.log_path)
    # every file loads in the core engine and moves the U-Net's output
    from lib_lora.host import Host
    from lib_lora.patcher import ActiveLora, Patcher
    from lib_lora.train.trainer import model_layers

    host = Host.from_named_modules([(layer, m) for layer, m, _ in model_layers(model)], arch="sd1")
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ctx, _ = model.encode_text(["toy, color1"], clip_skip=1, max_length=75)
    t = torch.tensor([500])
    with torch.no_grad():
        ref = model.unet(x, t, ctx)
    for f in res.files:
        net = load_network(f)
        assert not net.skipped and not net.rejected and net.arch == "sd1"
        assert len(net.modules) == len({k.split(".")[0] for k in tensors})
        p = Patcher(host)
        p.apply([ActiveLora(net)])
        with torch.no_grad():
            moved = model.unet(x, t, ctx)
        p.restore()
        assert not torch.allclose(moved, ref, atol=1e-6), f
    with torch.no_grad():
        assert torch.equal(model.unet(x, t, ctx), ref)        # restored exactly


RUN = dict(max_train_epochs=3, flip_aug=True, shuffle_caption=True, caption_tag_dropout_rate=0.2,
           noise_offset=0.05, lr_scheduler="cosine", lr_warmup_steps=2, network_dropout=0.1)


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    data = make_images(tmp_path / "data")
    full = run(config(tmp_path / "a", data, save_state=True, **RUN))
    assert [os.path.basename(s) for s in full.states] == ["toy-000001-state", "toy-000002-state", "toy-state"]
    resumed = run(config(tmp_path / "b", data, resume=str(tmp_path / "a" / "out" / "toy-000001-state"), **RUN))
    a, _ = fileio.read_tensors(str(tmp_path / "a" / "out" / "toy.safetensors"))
    b, _ = fileio.read_tensors(str(tmp_path / "b" / "out" / "toy.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed.losses == full.losses[4:]


def test_cancel_stops_after_the_step_and_writes_nothing_partial(tmp_path):
    data = make_images(tmp_path / "data")
    res = run(config(tmp_path, data), cancel=lambda: True)
    assert res.cancelled and res.steps == 1 and res.files == []
    assert not os.path.exists(tmp_path / "out") or os.listdir(tmp_path / "out") == []


def test_gradient_checkpointing_and_bf16(tmp_path):
    data = make_images(tmp_path / "data")
    a = run(config(tmp_path / "a", data, max_train_epochs=None, max_train_steps=2))
    b = run(config(tmp_path / "b", data, max_train_epochs=None, max_train_steps=2, gradient_checkpointing=True))
    assert a.losses == b.losses                                   # recomputation gives the same gradients
    ta, _ = fileio.read_tensors(a.files[-1])
    tb, _ = fileio.read_tensors(b.files[-1])
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    c = run(config(tmp_path / "c", data, max_train_epochs=None, max_train_steps=2, mixed_precision="bf16",
                   save_precision="fp16"))
    tc, md = fileio.read_tensors(c.files[-1])
    assert md["ss_mixed_precision"] == "bf16" and all(t.dtype == torch.float16 for t in tc.values())
    assert abs(c.losses[0][1] - a.losses[0][1]) < 0.05 * a.losses[0][1]


def test_sdxl_files_name_both_text_encoders(tmp_path):
    data = make_images(tmp_path / "data")
    res = run(config(tmp_path, data, max_train_epochs=None, max_train_steps=1, bucket_reso_steps=32),
              tiny_model("sdxl"))
    tensors, md = fileio.read_tensors(res.files[-1])
    assert md["ss_base_model_version"] == "sdxl_base_v1-0"
    prefixes = {k.split("_", 2)[1] for k in tensors}
    assert prefixes == {"unet", "te1", "te2"}
    net = load_network(res.files[-1])
    assert net.arch == "sdxl" and not net.skipped


def test_dataset_toml_metadata_has_sd_scripts_fields(tmp_path):
    """From a dataset TOML (how an sd-scripts export runs), `ss_datasets` carries the dataset and subset fields
    sd-scripts' train_network.py writes (read off a real run: bench/train_sdscripts.py), and `bucket_info` is
    null when buckets are off, as there."""
    data = make_images(tmp_path / "data")
    (tmp_path / "ds.toml").write_text(
        f'[[datasets]]\nresolution = 64\nbatch_size = 4\n[[datasets.subsets]]\nimage_dir = "{data / "2_toy"}"\n'
        'num_repeats = 2\ncaption_extension = ".txt"\nkeep_tokens_separator = "|||"\n')
    cfg = config(tmp_path, data, train_data_dir=None, dataset_config=str(tmp_path / "ds.toml"), max_train_epochs=1,
                 save_every_n_epochs=None)
    res = run(cfg, tiny_model())
    md = fileio.read_metadata(res.files[-1])
    ds = json.loads(md["ss_datasets"])[0]
    assert ds["bucket_info"] is None and ds["resize_interpolation"] is None and ds["resolution"] == [64, 64]
    sub = ds["subsets"][0]
    assert {"keep_tokens_separator", "secondary_separator", "enable_wildcard", "caption_prefix", "caption_suffix",
            "resize_interpolation", "img_count", "num_repeats", "class_tokens", "is_reg"} <= sub.keys()
    assert sub["keep_tokens_separator"] == "|||" and sub["enable_wildcard"] is False
    assert "ss_bucket_info" not in md and "ss_resolution" not in md     # the folder form's keys
