"""`python -m lib_lora train`: --validate-only report, one-line errors, prepare a folder."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.lib_lora.train.helpers import make_images
from tests.paths import REPO


def cli(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")     # small model, shared cores: one thread is much faster
    return subprocess.run([sys.executable, "-m", "lib_lora", "train", *args], cwd=str(REPO), capture_output=True,
                          text=True, timeout=300, env=env)


def write_cfg(path, data, extra=""):
    path.write_text(f'pretrained_model_name_or_path = "{path.parent / "m.safetensors"}"\ntrain_data_dir = "{data}"\n'
                    f'output_dir = "{path.parent / "out"}"\ncaption_extension = ".txt"\nresolution = 64\n'
                    f'train_batch_size = 2\nmax_train_epochs = 5\n{extra}')
    return path


def test_validate_only_prints_the_report_and_steps(tmp_path):
    data = make_images(tmp_path / "data", repeats=5)
    (tmp_path / "m.safetensors").write_bytes(b"")
    r = cli("--config", str(write_cfg(tmp_path / "c.toml", data)), "--validate-only")
    assert r.returncode == 0, r.stderr
    assert "5_toy: 8 images x 5 repeats (train)" in r.stdout
    assert "20 batches per epoch; 20 steps per epoch; 5 epochs; 100 steps in all" in r.stdout
    assert "64x64: 40" in r.stdout


def test_validate_only_fails_with_the_problem_list(tmp_path):
    data = make_images(tmp_path / "data")
    (data / "2_toy" / "img0.txt").write_bytes(b"")
    r = cli("--config", str(write_cfg(tmp_path / "c.toml", data)), "--validate-only")
    assert r.returncode == 1 and "problem: caption file" in r.stdout and "img0.txt' is empty" in r.stdout
    assert "problem: base checkpoint" in r.stdout


def test_unsupported_keys_one_line_no_traceback(tmp_path):
    data = make_images(tmp_path / "data")
    r = cli("--config", str(write_cfg(tmp_path / "c.toml", data, "full_fp16 = true\nzero_terminal_snr = true\n")))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    line = r.stderr.strip()
    assert "\n" not in line and "full_fp16" in line and "zero_terminal_snr" in line


def test_prepare_folder(tmp_path):
    data = make_images(tmp_path / "src")
    r = cli("--prepare-from", str(data / "2_toy"), "--into", str(tmp_path / "train"), "--concept", "toy",
            "--target-steps", "80", "--epochs", "2")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "train" / "5_toy" / "img3.txt").read_text() == "toy, color3, pattern0"
    # one bucket: ⌈4r/4⌉ = r steps, so 3 repeats; two buckets of 2: 2·⌈2r/4⌉ = 2, 2, 4 steps for r = 1, 2, 3, so
    # 3 is missed by 1 at best and the fewest repeats win
    from PIL import Image
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for i in range(2):
        Image.new("RGB", (512, 512)).save(mixed / f"sq{i}.png")
        Image.new("RGB", (1024, 512)).save(mixed / f"wide{i}.png")
    for flags, folder in (([], "3_m"), (["--enable-bucket"], "1_m")):
        r = cli("--prepare-from", str(mixed), "--into", str(tmp_path / f"t{len(flags)}"), "--concept", "m",
                "--target-steps", "3", "--epochs", "1", "--batch-size", "4", "--resolution", "512", *flags)
        assert r.returncode == 0, r.stderr
        assert (tmp_path / f"t{len(flags)}" / folder).is_dir(), os.listdir(tmp_path / f"t{len(flags)}")


def test_prepare_folder_refusals_are_one_line(tmp_path):
    from PIL import Image
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    Image.new("RGB", (32, 32)).save(tiny / "a.png")
    base = ("--prepare-from", str(tiny), "--into", str(tmp_path / "t"), "--concept", "c")
    for flags, words in ((["--enable-bucket"], "--enable-bucket needs --resolution"),
                         (["--resolution", "512"], "has a side under 64 px")):
        r = cli(*base, *flags)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert words in r.stderr and "\n" not in r.stderr.strip()
    assert not (tmp_path / "t").exists()     # nothing prepared with a made-up repeat count


@pytest.mark.slow
def test_trains_from_a_checkpoint_file(tmp_path):
    """The whole CLI path: a single-file checkpoint loaded by lib_lora.sd, one epoch, the final file."""
    import torch

    from lib_lora import fileio
    from lib_lora.sd.model import build_model, save_model

    save_model(build_model("sd1", "tiny", seed=0, dtype=torch.float32), tmp_path / "m.safetensors")
    data = make_images(tmp_path / "data")
    cfg = write_cfg(tmp_path / "c.toml", data, 'output_name = "cli"\nnetwork_dim = 2\nlearning_rate = 1e-3\n'
                    f'logging_dir = "{tmp_path / "logs"}"\n').read_text().replace("max_train_epochs = 5",
                                                                                 "max_train_epochs = 1")
    (tmp_path / "c.toml").write_text(cfg)
    r = cli("--config", str(tmp_path / "c.toml"), "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "out" / "cli.safetensors"
    import importlib.util
    # the log's kind: TensorBoard event files where tensorboard is installed, else a CSV (A1111's venv has none)
    kind = "(tensorboard)" if importlib.util.find_spec("tensorboard") is not None else "(csv)"
    assert r.stdout.strip() == str(out) and kind in r.stderr
    md = fileio.read_metadata(str(out))
    assert md["ss_sd_model_name"] == "m.safetensors" and len(md["ss_new_sd_model_hash"]) == 64
    assert md["ss_steps"] == "8" and md["ss_base_model_version"] == "sd_v1"
    # what sd-scripts writes for an l2 run: its Huber defaults, not "None" (bench/train_sdscripts.py compares)
    assert (md["ss_huber_c"], md["ss_huber_scale"], md["ss_huber_schedule"]) == ("0.1", "1.0", "snr")
    r2 = cli("--config", str(tmp_path / "c.toml"), "--quiet")        # never overwrites a finished LoRA
    assert r2.returncode == 2 and "exists" in r2.stderr and "Traceback" not in r2.stderr
