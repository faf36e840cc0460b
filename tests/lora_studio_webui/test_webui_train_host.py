"""The WebUI's training host: a real `python -m lib_lora train --progress-json` subprocess on a tiny
checkpoint, streaming progress and loss into the tab's run, holding the queue lock while it trains, Cancel
(stops after a step, no half-written files), and a failing run that leaves the queue (and the WebUI) going."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest
import torch

from lib_lora.ui import train_tab as T
from lib_lora.ui.context import UiContext
from lora_studio_webui.train_host import SubprocessHost, command
from tests.lib_lora.train.helpers import make_images
from tests.lib_lora.ui.test_ui_train_tab import values
from tests.paths import REPO

pytest.importorskip("lycoris")


class QueueLock:
    """Stands for A1111's call_queue.wrap_gradio_gpu_call: the run holds one lock (not a mock: a real lock,
    and the test checks nobody else gets it while the child trains)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.calls = 0

    def wrap(self, fn):
        def wrapped(*a, **k):
            with self.lock:
                self.calls += 1
                return fn(*a, **k)
        return wrapped


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
    from lib_lora.sd.model import build_model, save_model
    d = tmp_path_factory.mktemp("ckpt")
    save_model(build_model("sd1", "tiny", seed=0, dtype=torch.float32), d / "tiny.safetensors")
    (d / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    return d


@pytest.fixture
def setup(tmp_path, ckpt_dir, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")      # the child: a tiny model on shared cores
    (tmp_path / "lora").mkdir()
    make_images(tmp_path / "images" / "set1", repeats=1)
    lock = QueueLock()
    ctx = UiContext(lora_dirs=[tmp_path / "lora"], checkpoint_dirs=[ckpt_dir], tagger_models_dir=tmp_path / "tm",
                    image_dirs=[tmp_path / "images"], wrap_gpu_call=lock.wrap,
                    train_host=SubprocessHost(python=sys.executable, root=REPO, free_vram=False, cancel_grace=120))
    return ctx, lock, T.TrainQueue(ctx)


def test_command_is_an_argument_list():
    assert command("/x y/run.toml", "/py") == ["/py", "-m", "lib_lora", "train", "--config", "/x y/run.toml",
                                               "--progress-json"]


def test_trains_in_a_subprocess_under_the_queue_lock(setup, tmp_path):
    ctx, lock, q = setup
    assert T.start_run(ctx, q, "set1", "tiny.safetensors", "toy", values()).startswith("✓")
    t0 = time.monotonic()
    while not (q.current and q.current.state == "running") and time.monotonic() - t0 < 30:
        time.sleep(0.02)
    assert not lock.lock.acquire(timeout=0.5)          # the WebUI's queue waits while the child trains
    assert q.wait(300)
    run = q.finished[-1]
    assert run.state == "done", (run.message, list(run.log)[-5:])
    assert [os.path.basename(f) for f in run.files] == ["toy-000001.safetensors", "toy.safetensors"]
    assert all(os.path.isfile(f) for f in run.files) and lock.calls == 1
    assert run.total == 4 and run.step == 4 and len(run.losses) == 4 and run.epochs == 2
    assert lock.lock.acquire(timeout=1)
    lock.lock.release()


def test_cancel_stops_the_child_cleanly(setup, tmp_path):
    ctx, lock, q = setup
    assert T.start_run(ctx, q, "set1", "tiny.safetensors", "long",
                       values(max_train_epochs=100, train_batch_size=1)).startswith("✓")
    t0 = time.monotonic()
    while not (q.current and q.current.step >= 2) and time.monotonic() - t0 < 120:
        time.sleep(0.05)
    assert q.current is not None and q.current.step >= 2
    q.cancel()
    assert q.wait(120)
    run = q.finished[-1]
    assert run.state == "cancelled" and run.step < 800, run.message
    left = os.listdir(tmp_path / "lora")
    assert "long.safetensors" not in left and not [f for f in left if not f.endswith(".safetensors")]


def test_a_failing_run_is_one_line_and_the_queue_goes_on(setup, tmp_path):
    ctx, lock, q = setup
    q.submit("bad", T.build_config(ctx, "set1", "broken.safetensors", "bad", values()),
             None)                                       # no config file: refused before any process starts
    assert q.wait(30) and q.finished[-1].state == "failed"
    # a checkpoint the child cannot load: the child fails, the error line reaches the tab
    cfg = T.build_config(ctx, "set1", "broken.safetensors", "bad2", values())
    path = tmp_path / "bad2.toml"
    path.write_text(T.config_toml(cfg))
    q.submit("bad2", cfg, str(path))
    assert T.start_run(ctx, q, "set1", "tiny.safetensors", "good", values(max_train_epochs=1)).startswith("✓")
    assert q.wait(300)
    runs = {r.name: r for r in q.finished}
    assert runs["bad2"].state == "failed" and "training 'bad2' failed: '" in runs["bad2"].message
    assert "not a safetensors file" in runs["bad2"].message
    assert "\n" not in runs["bad2"].message and "Traceback" not in runs["bad2"].message
    assert runs["good"].state == "done" and runs["good"].files


def test_missing_lycoris_is_one_line_and_blocks_start(tmp_path, monkeypatch):
    from lora_studio_webui import train_host as H
    # a real Python without lycoris-lora: a bare venv (no site packages)
    import venv
    venv.EnvBuilder(with_pip=False).create(tmp_path / "venv")
    py = str(tmp_path / "venv" / "bin" / "python")
    line = H.missing_packages(py)
    assert line and "lycoris-lora" in line and "\n" not in line
    assert H.missing_packages() is None                          # this Python has it
    assert "3.1.x" in H._missing("4.1.3", "2.1.2+cu121")       # 4.x needs torch >= 2.3
    assert H._missing("3.1.1", "2.1.2") is None and H._missing("4.1.3", "2.13.0+cpu") is None
    ctx = UiContext(lora_dirs=[tmp_path], checkpoint_dirs=[tmp_path], tagger_models_dir=tmp_path,
                    train_host=SubprocessHost(python=py))
    assert T.host_problem(ctx) == line
    run = T.Run(1, "x", None, "/nonexistent.toml")
    with pytest.raises(Exception) as e:
        ctx.train_host(run, threading.Event())
    assert str(e.value) == line


def test_child_env_is_one_plain_process(monkeypatch):
    from lora_studio_webui.train_host import child_env
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    e = child_env(REPO)
    assert "WORLD_SIZE" not in e and "ACCELERATE_MIXED_PRECISION" not in e
    assert e["PYTHONPATH"].split(os.pathsep) == [str(REPO), "/elsewhere"]
