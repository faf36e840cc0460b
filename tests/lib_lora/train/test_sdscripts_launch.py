"""sd-scripts launch: a fake checkout whose train_network.py is a real script printing what the real one prints
(log lines, "epoch i/n", a tqdm "steps" bar redrawn with \\r), run through its venv's real `accelerate launch`
in a real subprocess; progress callbacks, log streaming, cancel ending the process group, one-line errors."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lib_lora.errors import LoraStudioError
from lib_lora.train import sdscripts
from tests.lib_lora.train.helpers import make_images
from tests.paths import REPO

FAKE_TRAIN = r'''
import os, sys, time
args = sys.argv[1:]
cfg = dict(l.split(" = ", 1) for l in open(args[args.index("--config_file") + 1], encoding="utf-8")
           if " = " in l and not l.startswith("#"))
ds = open(cfg["dataset_config"].strip().strip('"'), encoding="utf-8").read()
print("cwd", os.getcwd(), flush=True)
print("pid", os.getpid(), flush=True)
print("network_dim", cfg["network_dim"].strip(), "subsets", ds.count("[[datasets.subsets]]"), flush=True)
open(os.path.join(os.getcwd(), "child.pid"), "w").write(str(os.getpid()))
total = int(os.environ.get("FAKE_STEPS", "6"))
forever = os.environ.get("FAKE_FOREVER") == "1"
sys.stderr.write("steps:   0%%|          | 0/%d [00:00<?, ?it/s]" % total)
step = 0
for epoch in range(2):
    print("\nepoch %d/2\n" % (epoch + 1), flush=True)
    for _ in range(total // 2):
        step += 1
        left = (total - step) * 2
        sys.stderr.write("\rsteps: %3d%%|#         | %d/%d [00:%02d<00:%02d,  2.00it/s, avr_loss=%.3f]"
                         % (100 * step // total, step, total, step, left, 1.0 / step))
        sys.stderr.flush()
        time.sleep(0.02)
if forever:      # like a data-loader worker: a process of its own that only a process-group stop reaches
    import subprocess
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    open(os.path.join(os.getcwd(), "worker.pid"), "w").write(str(worker.pid))
    print("worker started", flush=True)
while forever:
    time.sleep(0.05)
sys.stderr.write("\n")
print("model saved.", flush=True)
sys.exit(int(os.environ.get("FAKE_EXIT", "0")))
'''


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """A folder like an sd-scripts checkout with its own venv; the venv sees this interpreter's packages
    (accelerate) through a .pth file, as a venv made with those packages installed would."""
    root = tmp_path_factory.mktemp("sd-scripts")
    (root / "train_network.py").write_text(FAKE_TRAIN, encoding="utf-8")
    (root / "sdxl_train_network.py").write_text(FAKE_TRAIN, encoding="utf-8")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    sp = subprocess.run([str(root / "venv" / "bin" / "python"), "-c", "import site; print(site.getsitepackages()[0])"],
                        capture_output=True, text=True, check=True).stdout.strip()
    Path(sp, "parent_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return root


@pytest.fixture
def exported(tmp_path):
    data = make_images(tmp_path / "data", repeats=2)
    from lib_lora.train.config import config_from_dict

    cfg = config_from_dict({"pretrained_model_name_or_path": str(tmp_path / "m.safetensors"),
                            "train_data_dir": str(data), "output_dir": str(tmp_path / "out"),
                            "caption_extension": ".txt", "resolution": "64", "network_dim": 8,
                            "max_train_epochs": 2})
    return sdscripts.export(cfg, tmp_path / "exp", arch="sd1")


def test_launch_streams_log_and_progress_through_the_venv(checkout, exported, monkeypatch):
    monkeypatch.setenv("FAKE_STEPS", "6")
    seen, lines = [], []
    code = sdscripts.launch(checkout, exported, progress=seen.append, log=lines.append)
    assert code == 0, lines
    assert f"cwd {checkout}" in lines and "network_dim 8 subsets 1" in lines and "model saved." in lines
    assert [p.step for p in seen] == [0, 1, 2, 3, 4, 5, 6] and all(p.total == 6 for p in seen)
    assert seen[-1].loss == pytest.approx(1 / 6, abs=1e-3) and seen[-1].eta == 0.0 and seen[1].eta == 10.0
    assert (seen[-1].epoch, seen[-1].epochs) == (2, 2) and seen[1].epoch == 1
    assert not any(line.startswith("steps:") for line in lines)      # the bar is progress, not log


def test_nonzero_exit_is_returned(checkout, exported, monkeypatch):
    monkeypatch.setenv("FAKE_EXIT", "3")
    monkeypatch.setenv("FAKE_STEPS", "2")
    assert sdscripts.launch(checkout, exported, log=lambda s: None) != 0    # accelerate reports any failure as 1


def test_cancel_ends_the_whole_process_group(checkout, exported, monkeypatch):
    monkeypatch.setenv("FAKE_FOREVER", "1")
    stop = threading.Event()
    seen = []

    def log(line):
        if line == "worker started":
            stop.set()

    t0 = time.monotonic()
    code = sdscripts.launch(checkout, exported, progress=seen.append, log=log, cancel=stop)
    assert code != 0 and time.monotonic() - t0 < 60 and seen[-1].step == 6
    # the training process (accelerate's child) and its worker (a grandchild) are gone too
    for name in ("child.pid", "worker.pid"):
        pid = int((checkout / name).read_text())
        for _ in range(50):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, 9)
            pytest.fail(f"{name} {pid} still runs after cancel")


def _gone(pid, wait=5.0) -> bool:
    end = time.monotonic() + wait
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.skipif(os.name == "nt", reason="POSIX process groups")
def test_stop_reaches_processes_the_launcher_does_not_end(tmp_path):
    """Older accelerate (what sd-scripts pins) does not end its child's children on SIGTERM: the stop
    signals the whole group, so a grandchild that ignores its parent's death still goes."""
    pidfile = tmp_path / "grandchild.pid"
    code = ("import subprocess, sys, time\n"
            "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
            f"open({str(pidfile)!r}, 'w').write(str(g.pid))\n"
            "time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    for _ in range(100):
        if pidfile.exists() and pidfile.read_text():
            break
        time.sleep(0.05)
    grandchild = int(pidfile.read_text())
    sdscripts._stop(proc, grace=5)
    ok = _gone(grandchild)
    if not ok:
        os.kill(grandchild, 9)
    assert proc.returncode is not None and ok


def test_missing_folder_venv_or_script_is_one_line(tmp_path, checkout, exported):
    with pytest.raises(LoraStudioError, match="does not exist") as e:
        sdscripts.launch(tmp_path / "nope", exported)
    assert "\n" not in str(e.value)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "train_network.py").write_text("")
    with pytest.raises(LoraStudioError, match="has no venv"):
        sdscripts.launch(bare, exported)
    (bare / "train_network.py").unlink()
    with pytest.raises(LoraStudioError, match="has no train_network.py"):
        sdscripts.launch(bare, exported)
    with pytest.raises(LoraStudioError, match="is not a file"):
        sdscripts.launch(checkout, exported, python=str(tmp_path / "python"))


def cli(*args, **env):
    return subprocess.run([sys.executable, "-m", "lib_lora", "train", *args], cwd=str(REPO), capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, **env))


def write_cfg(tmp_path):
    data = make_images(tmp_path / "data", repeats=2)
    from safetensors.torch import save_file
    import torch

    save_file({"model.diffusion_model.out.2.bias": torch.zeros(4)}, str(tmp_path / "m.safetensors"))
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'pretrained_model_name_or_path = "{tmp_path / "m.safetensors"}"\ntrain_data_dir = "{data}"\n'
                   f'output_dir = "{tmp_path / "out"}"\ncaption_extension = ".txt"\nresolution = 64\n'
                   'network_dim = 8\nmax_train_epochs = 2\n')
    return cfg


def test_cli_export_prints_the_command(tmp_path):
    cfg = write_cfg(tmp_path)
    r = cli("--config", str(cfg), "--export-sd-scripts", str(tmp_path / "exp"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith("accelerate launch --num_cpu_threads_per_process 1 train_network.py "
                                       "--config_file ")
    assert (tmp_path / "exp" / sdscripts.CONFIG_NAME).is_file() and (tmp_path / "exp" / sdscripts.DATASET_NAME).is_file()
    r = cli("--config", str(cfg), "--export-sd-scripts", str(tmp_path / "exp"))
    assert r.returncode != 0 and "exists; choose another folder" in r.stderr and "Traceback" not in r.stderr


def test_cli_runs_sd_scripts(tmp_path, checkout):
    cfg = write_cfg(tmp_path)
    r = cli("--config", str(cfg), "--sd-scripts", str(checkout), FAKE_STEPS="4")
    assert r.returncode == 0, r.stderr
    assert "model saved." in r.stderr and "step 4/4 loss 0.2500" in r.stderr
    assert (tmp_path / "out" / "sd-scripts" / sdscripts.CONFIG_NAME).is_file()
    r = cli("--config", str(cfg), "--sd-scripts", str(tmp_path / "none"))
    assert r.returncode != 0 and "does not exist" in r.stderr and "Traceback" not in r.stderr
