"""`python -m lib_lora resize` as a user runs it."""
import os
import subprocess
import sys

from safetensors import safe_open

from tests.factory import write_lora
from tests.paths import REPO


def _cli(*args, env_extra=None):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-X", "importtime", "-m", "lib_lora", *args], cwd=str(REPO),
                          capture_output=True, text=True, timeout=300, env=env)


def _small(layer):
    return "input_blocks.1." in layer and ("attn1" in layer or "in_layers.2" in layer)


def test_help_imports_no_torch():
    r = _cli("resize", "--help")
    assert r.returncode == 0 and "--conv-rank" in r.stdout and "sv_cumulative" in r.stdout
    assert not any(line.rstrip().endswith("| torch") for line in r.stderr.splitlines())


def test_resize_writes_and_reports(tmp_path):
    src = write_lora(tmp_path / "in.safetensors", algo="locon", rank=8, layers=_small)
    out = tmp_path / "out.safetensors"
    r = _cli("resize", src, "--rank", "4", "--conv-rank", "2", "--out", str(out), "--verbose")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Frobenius norm kept" in r.stdout and "rank 8 → 4" in r.stdout and "rank 8 → 2" in r.stdout
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["ss_network_dim"] == "4"
    # the output exists now: a second run refuses in one line, the file is unchanged
    before = out.read_bytes()
    r = _cli("resize", src, "--rank", "2", "--out", str(out))
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error:")
    assert out.read_bytes() == before


def test_bad_input_is_one_line(tmp_path):
    src = write_lora(tmp_path / "in.safetensors", algo="lora", rank=4)
    for args in (["--method", "sv_fro"], ["--method", "sv_fro", "--param", "2"], ["--method", "sv_ratio", "--param", "1"]):
        r = subprocess.run([sys.executable, "-m", "lib_lora", "resize", src, "--rank", "2", "--out",
                            str(tmp_path / "o.safetensors"), *args], cwd=str(REPO), capture_output=True, text=True,
                           timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO)))
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "lib_lora", "resize", str(tmp_path / "missing.safetensors"), "--rank", "2",
                        "--out", str(tmp_path / "o.safetensors")], cwd=str(REPO), capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "o.safetensors").exists()
