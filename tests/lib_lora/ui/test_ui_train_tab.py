"""The Train tab's functions as the buttons call them: dataset problems block Start, a queued run trains for
real (tiny model) and lists its epoch files, Cancel stops after a step with only whole files written, configs
round-trip through the TOML the CLI reads, presets give valid configs, names stay inside the folders."""

from __future__ import annotations

import os
import threading

import pytest
from safetensors.torch import save_file

from lib_lora.fileio import read_tensors
from lib_lora.train.config import load_config as read_config
from lib_lora.ui import train_tab as tt
from lib_lora.ui.context import UiContext
from tests.lib_lora.train.helpers import make_images, tiny_model

pytest.importorskip("lycoris")

VALUES = {"resolution": "64", "train_batch_size": 4, "caption_extension": ".txt", "network_dim": 4,
          "network_alpha": 4.0, "learning_rate": 1e-3, "max_train_epochs": 2, "save_every_n_epochs": 1,
          "seed": 1, "output_name": "toy"}


@pytest.fixture
def ctx(tmp_path):
    import torch

    for d in ("lora", "ckpt", "data", "models"):
        (tmp_path / d).mkdir()
    save_file({"x": torch.zeros(1)}, str(tmp_path / "ckpt" / "base.safetensors"))   # the runner's model is given
    make_images(tmp_path / "data" / "set1")
    return UiContext(lora_dirs=[tmp_path / "lora"], checkpoint_dirs=[tmp_path / "ckpt"],
                     tagger_models_dir=tmp_path / "models", image_dirs=[tmp_path / "data"])


def runner(on_done=None):
    from lib_lora.train.trainer import Trainer

    return tt.Runner(trainer=lambda cfg, **k: Trainer(cfg, model=tiny_model(), **k), on_done=on_done)


def test_a_queued_run_trains_and_lists_its_epoch_files(ctx, tmp_path):
    refreshed = []
    r = runner(on_done=lambda: refreshed.append(1))
    msg = tt.start(ctx, r, "base.safetensors", "set1", dict(VALUES))
    assert msg == "✓ queued 'toy'", msg
    assert r.wait(120) and refreshed == [1]             # the host lists the new files
    run = r.runs[0]
    assert run.state == "done", run.message
    names = sorted(os.path.basename(f) for f in run.files)
    assert names == ["toy-000001.safetensors", "toy.safetensors"]
    assert sorted(os.listdir(tmp_path / "lora")) == names          # written into the first LoRA folder
    text = tt.status_text(r)
    assert "**toy**: done: finished: 2 file(s)" in text and "toy.safetensors" in text
    img = tt.loss_plot(r)
    assert img is not None and img.size == (480, 180) and len(run.losses) == run.total > 0


def test_dataset_problems_block_start_and_names_stay_inside(ctx, tmp_path):
    (tmp_path / "data" / "empty" / "3_thing").mkdir(parents=True)
    r = runner()
    msg = tt.start(ctx, r, "base.safetensors", "empty", dict(VALUES))
    assert msg.startswith("⚠ the dataset has problems") and not r.runs, msg
    report, ok = tt.validate(ctx, "base.safetensors", "set1", dict(VALUES))
    assert ok and report.startswith("✓ ready to train"), report
    assert tt.start(ctx, r, "base.safetensors", "../ckpt", dict(VALUES)).startswith("⚠ ")
    assert tt.start(ctx, r, "base.safetensors", str(tmp_path), dict(VALUES)).startswith("⚠ ")
    assert tt.start(ctx, r, "other.safetensors", "set1", dict(VALUES)) == \
        "⚠ pick a base checkpoint in the list (press Refresh if it is new)."
    bad = dict(VALUES, lr_scheduler="constant", lr_warmup_steps=10)
    assert "constant_with_warmup" in tt.start(ctx, r, "base.safetensors", "set1", bad)
    assert not r.runs
    ctx.writes_allowed = False
    assert tt.start(ctx, r, "base.safetensors", "set1", dict(VALUES)).startswith("⚠ Writing files is disabled")


def test_cancel_stops_after_a_step_and_leaves_only_whole_files(ctx, tmp_path):
    started = threading.Event()
    r = runner()
    values = dict(VALUES, max_train_epochs=30)
    assert tt.start(ctx, r, "base.safetensors", "set1", values).startswith("✓")
    assert tt.start(ctx, r, "base.safetensors", "set1", dict(values, output_name="second")).endswith("behind 1 run(s)")
    run = r.runs[0]
    for _ in range(2000):
        if run.step >= 1:
            started.set()
            break
        threading.Event().wait(0.01)
    assert started.is_set()
    assert r.cancel() == "✓ cancelling 2 run(s)"
    assert r.wait(60)
    assert run.state == "cancelled" and run.message.startswith("stopped at step ") and run.step < run.total
    assert r.runs[1].state == "cancelled" and r.runs[1].message == "cancelled before it started"
    for f in os.listdir(tmp_path / "lora"):
        read_tensors(str(tmp_path / "lora" / f))                     # every file left is complete
    assert not any(f.startswith("second") for f in os.listdir(tmp_path / "lora"))


def test_config_round_trip_through_the_cli_toml(ctx, tmp_path):
    vals = dict(VALUES, network_args="conv_dim=2, conv_alpha=1", shuffle_caption=True, keep_tokens=1)
    msg = tt.save_config(ctx, "my run", "base.safetensors", "set1", vals, False)
    path = tmp_path / "lora" / tt.CONFIG_DIR / "my run.toml"
    assert msg.startswith(f"✓ saved {path}") and "accelerate launch -m lib_lora train" in msg, msg
    cfg = read_config(path)                                       # what `python -m lib_lora train --config` reads
    assert cfg.network_args == ["conv_dim=2", "conv_alpha=1"] and cfg.shuffle_caption and cfg.keep_tokens == 1
    assert cfg.train_data_dir == str(tmp_path / "data" / "set1") and cfg.output_dir == str(tmp_path / "lora")
    assert tt.config_names(ctx) == ["my run"]
    assert "already exists" in tt.save_config(ctx, "my run", "base.safetensors", "set1", vals, False)
    assert tt.save_config(ctx, "../evil", "base.safetensors", "set1", vals, True).startswith("⚠ give the config")
    ck, data, loaded, note = tt.load_config(ctx, "my run")
    assert (ck, note) == ("base.safetensors", "✓ loaded my run")
    assert loaded["network_args"] == "conv_dim=2, conv_alpha=1" and loaded["max_train_epochs"] == 2
    assert tt.load_config(ctx, "nope")[3].startswith("⚠ ")


@pytest.mark.parametrize("preset", list(tt.PRESETS))
def test_presets_make_valid_configs(ctx, preset):
    vals = dict(VALUES)
    vals.update(tt.preset_values(preset))
    cfg = tt.make_config(ctx, "base.safetensors", "set1", vals)
    assert cfg.network_dim == tt.PRESETS[preset]["network_dim"] and not cfg.check()


def test_a_failing_run_says_why_and_the_queue_goes_on(ctx):
    calls = []

    def trainer(cfg, **kw):
        calls.append(cfg.name)
        if cfg.name == "broken":
            raise ModuleNotFoundError("No module named 'lycoris'", name="lycoris")
        from lib_lora.train.trainer import Trainer
        return Trainer(cfg, model=tiny_model(), **kw)

    r = tt.Runner(trainer=trainer)
    tt.start(ctx, r, "base.safetensors", "set1", dict(VALUES, output_name="broken"))
    tt.start(ctx, r, "base.safetensors", "set1", dict(VALUES, max_train_epochs=1))
    assert r.wait(120)
    assert r.runs[0].state == "failed" and "lycoris" in r.runs[0].message and r.runs[0].message.startswith("⚠ ")
    assert r.runs[1].state == "done" and calls == ["broken", "toy"]
