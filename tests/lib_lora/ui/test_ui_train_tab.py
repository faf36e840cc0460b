"""Training tab functions called directly: dataset picking and validation (problems block Start), the run
TOML round trip with the CLI's reader, presets, a real tiny training in the queue's worker thread, Cancel,
and the epoch × weight grid."""

from __future__ import annotations

import os

import pytest
import torch

from lib_lora.ui import train_tab as T
from lib_lora.ui.context import UiContext
from tests.lib_lora.train.helpers import make_images

pytest.importorskip("lycoris")

SMALL = dict(resolution="64", train_batch_size=4, network_dim=2, network_alpha=2.0, max_train_epochs=2,
             mixed_precision="no", save_precision=None, max_token_length=None, min_snr_gamma=None,
             lr_warmup_steps=0.0, lr_scheduler="constant", learning_rate=1e-3, unet_lr=None, text_encoder_lr=None,
             cache_latents=False, enable_bucket=False)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def ckpt_file(tmp_path_factory):
    from lib_lora.sd.model import build_model, save_model
    d = tmp_path_factory.mktemp("ckpt")
    save_model(build_model("sd1", "tiny", seed=0, dtype=torch.float32), d / "tiny.safetensors")
    return d


@pytest.fixture
def ctx(tmp_path, ckpt_file):
    (tmp_path / "lora").mkdir()
    make_images(tmp_path / "images" / "set1", repeats=1)
    return UiContext(lora_dirs=[tmp_path / "lora"], checkpoint_dirs=[ckpt_file], tagger_models_dir=tmp_path / "tm",
                     image_dirs=[tmp_path / "images"])


def values(**kw):
    v = T.default_values()
    v.update(SMALL)
    v.update(kw)
    return [T.control_value(n, v[n]) for n in T.SHOWN]


def test_datasets_are_listed_inside_the_roots_only(ctx, tmp_path):
    assert T.list_datasets(ctx) == ["set1"]
    assert T.dataset_path(ctx, "set1") == tmp_path / "images" / "set1"
    for bad in ("../lora", str(tmp_path), "/etc"):
        with pytest.raises(Exception) as e:
            T.dataset_path(ctx, bad)
        assert "\n" not in str(e.value)


def test_validation_report_and_problems_block_start(ctx, tmp_path):
    md, ok = T.validate_run(ctx, "set1", "tiny.safetensors", "toy", values())
    assert ok and "ready to train" in md and "1_toy: 8 images x 1 repeats" in md
    (tmp_path / "images" / "set1" / "1_toy" / "img0.txt").write_bytes(b"")
    md, ok = T.validate_run(ctx, "set1", "tiny.safetensors", "toy", values())
    assert not ok and "1 problem must be fixed" in md and "img0.txt' is empty" in md
    q = T.TrainQueue(ctx)
    line = T.start_run(ctx, q, "set1", "tiny.safetensors", "toy", values())
    assert "problem" in line and not q.busy() and not os.listdir(tmp_path / "lora")


def test_bad_values_are_one_line(ctx):
    line = T.start_run(ctx, T.TrainQueue(ctx), "set1", "nope.safetensors", "toy", values())
    assert line.startswith("⚠") and "not in the checkpoint list" in line
    line = T.start_run(ctx, T.TrainQueue(ctx), "set1", "tiny.safetensors", "../x", values())
    assert line.startswith("⚠") and "plain file name" in line
    line = T.start_run(ctx, T.TrainQueue(ctx), "set1", "tiny.safetensors", "toy",
                       values(lr_scheduler="constant", lr_warmup_steps=5.0))
    assert line.startswith("⚠") and "constant_with_warmup" in line


def test_config_toml_round_trip_reads_in_the_cli(ctx, tmp_path):
    from lib_lora.train.config import load_config
    vals = values(network_args="conv_dim=4, conv_alpha=2", noise_offset=0.05, keep_tokens=2, loraplus_lr_ratio=16.0)
    line, text = T.save_config(ctx, "run1", "set1", "tiny.safetensors", "toy", vals, {"random_crop": True,
                                                                                      "prior_loss_weight": 0.5})
    assert line.startswith("✓"), line
    path = T.train_folder(ctx) / "configs" / "run1.toml"
    assert "accelerate launch --num_processes 2 -m lib_lora train --config" in text and str(path) in text
    cfg = load_config(path)        # the CLI's reader
    assert cfg.network_args == ["conv_dim=4", "conv_alpha=2"] and cfg.noise_offset == 0.05
    assert cfg.loraplus_lr_ratio == 16.0 and "loraplus_lr_ratio = 16" in text   # LoRA+ from its own field
    assert cfg.train_data_dir == str(tmp_path / "images" / "set1") and cfg.output_name == "toy"
    status, ds, ck, out, got, extra = T.load_config_values(ctx, "run1")
    assert status.startswith("✓ Loaded") and "Note" not in status
    assert (ds, ck, out) == ("set1", "tiny.safetensors", "toy") and got == vals
    assert extra == {"random_crop": True, "prior_loss_weight": 0.5}     # keys the tab does not show are kept
    # nothing is overwritten silently
    line, _ = T.save_config(ctx, "run1", "set1", "tiny.safetensors", "toy", vals)
    assert line.startswith("⚠") and "Replace" in line


def test_presets_shipped_and_saved(ctx):
    style = dict(zip(T.SHOWN, T.preset_values(ctx, "style")))
    assert style["network_args"] == "conv_dim=16, conv_alpha=8" and style["caption_tag_dropout_rate"] == 0.3
    char = dict(zip(T.SHOWN, T.preset_values(ctx, "character")))
    assert char["keep_tokens"] == 1 and char["network_dim"] == 32 and char["lr_scheduler"] == "cosine"
    assert T.save_preset(ctx, "mine", values(network_dim=8)).startswith("✓")
    assert "mine" in T.preset_names(ctx)
    assert dict(zip(T.SHOWN, T.preset_values(ctx, "mine")))["network_dim"] == 8
    assert T.save_preset(ctx, "mine", values()).startswith("⚠")       # not replaced
    assert T.save_preset(ctx, "style", values()).startswith("⚠")


def test_real_training_in_the_queue_then_files_and_plot(ctx, tmp_path):
    q = T.TrainQueue(ctx)
    line = T.start_run(ctx, q, "set1", "tiny.safetensors", "toy", values())
    assert line.startswith("✓ Queued 'toy'"), line
    line2 = T.start_run(ctx, q, "set1", "tiny.safetensors", "toy2", values(max_train_epochs=1))
    assert line2.startswith("✓ Queued"), line2
    assert q.wait(300)
    runs = {r.name: r for r in q.finished}
    assert runs["toy"].state == "done", runs["toy"].message
    assert [os.path.basename(f) for f in runs["toy"].files] == ["toy-000001.safetensors", "toy.safetensors"]
    assert runs["toy"].losses and runs["toy"].total == 4 and runs["toy"].step == 4
    assert runs["toy2"].state == "done" and len(runs["toy2"].files) == 1
    status, plot, files = T.snapshot(q)
    assert "'toy' done" in status and "toy-000001.safetensors" in files and plot.size == (560, 220)
    # the same output name again is refused before any work
    assert "exists" in T.start_run(ctx, q, "set1", "tiny.safetensors", "toy", values())


def test_cancel_stops_after_the_current_step(ctx, tmp_path):
    q = T.TrainQueue(ctx)
    assert T.start_run(ctx, q, "set1", "tiny.safetensors", "long", values(max_train_epochs=50,
                                                                          train_batch_size=1)).startswith("✓")
    assert T.start_run(ctx, q, "set1", "tiny.safetensors", "later", values()).startswith("✓")
    import time
    t0 = time.monotonic()
    while not (q.current and q.current.step >= 1) and time.monotonic() - t0 < 120:
        time.sleep(0.05)
    assert "Cancelling" in q.cancel()
    assert q.wait(120)
    runs = {r.name: r for r in q.finished}
    assert runs["long"].state == "cancelled" and runs["long"].step < 400
    assert runs["later"].state == "cancelled"        # the queued run is dropped, not started
    assert not (tmp_path / "lora" / "long.safetensors").exists()
    assert not [f for f in os.listdir(tmp_path / "lora") if not f.endswith(".safetensors")]   # no temp files
    assert q.cancel() == "Nothing is running."


def test_compare_epochs_grid(ctx, tmp_path):
    q = T.TrainQueue(ctx)
    assert T.start_run(ctx, q, "set1", "tiny.safetensors", "cmp", values()).startswith("✓")
    assert q.wait(300) and q.finished[-1].state == "done"
    grid, note = T.compare_epochs(ctx, None, "cmp", "0.5, 1", "toy, color1", seed=3, steps=2, size=64)
    assert note == "Rendered with the run's base model 'tiny.safetensors'."   # recorded by the run, none picked
    assert grid.size == (150 + 64 * 3, 24 + 64 * 2)        # 2 epoch files × (no LoRA + 2 weights)
    import numpy as np
    a = np.asarray(grid)
    first = a[24:88, 150:214]
    assert not np.array_equal(first, a[24:88, 150 + 128:214 + 128])     # the LoRA changes the image
    assert "LoRA epoch" in T.xyz_settings("cmp", T.epoch_files(ctx, "cmp"), "0.5, 1")
    # the tab's negative prompt and CFG scale reach the standalone renderer (the no-LoRA cell changes with them)
    line, neg = T.compare_run(ctx, "tiny.safetensors", "cmp", "1", "toy, color1", seed=3, steps=2, size=64,
                              negative="color2", cfg_scale=9)
    assert line.startswith("✓") and neg.size == (150 + 64 * 2, 24 + 64 * 2)
    assert not np.array_equal(np.asarray(neg)[24:88, 150:214], first)


def test_the_grid_model_is_the_one_the_run_records_else_the_pick_said_in_the_note(tmp_path):
    import torch
    from safetensors.torch import save_file

    from lib_lora.ui import train_compare as TC
    names = {"a.safetensors": tmp_path / "a.safetensors", "sub/b.safetensors": tmp_path / "sub" / "b.safetensors",
             "b.safetensors": tmp_path / "b.safetensors"}

    def run(recorded):
        save_file({"x": torch.zeros(1)}, str(tmp_path / "run.safetensors"),
                  metadata={"ss_sd_model_name": recorded} if recorded else {"ss_output_name": "run"})
        return [tmp_path / "run.safetensors"]

    assert TC.choose_base(run("b.safetensors"), "a.safetensors", names)[0] == "sub/b.safetensors"
    assert TC.choose_base(run("C:\\models\\b.safetensors"), "b.safetensors", names)[0] == "b.safetensors"
    name, note = TC.choose_base(run("runwayml/stable-diffusion-v1-5"), "a.safetensors", names)
    assert name == "a.safetensors" and "'stable-diffusion-v1-5'" in note and "'a.safetensors'" in note
    assert TC.choose_base(run("gone.safetensors"), None, names)[0] is None
    assert TC.choose_base(run(None), "a.safetensors", names) == (
        "a.safetensors", "Rendered with 'a.safetensors' (the run does not name its base model).")
    assert TC.choose_base(run(None), None, names)[0] is None
