"""`python -m lib_lora merge-loras` as a user runs it."""
import os
import subprocess
import sys

from safetensors import safe_open

from tests.factory import write_lora
from tests.paths import REPO


def _cli(*args):
    return subprocess.run([sys.executable, "-X", "importtime", "-m", "lib_lora", "merge-loras", *args], cwd=str(REPO),
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO)))


def _layers(layer):
    return "input_blocks.1." in layer and ("attn1.to_q" in layer or "in_layers.2" in layer)


def test_help_imports_no_torch():
    r = _cli("--help")
    assert r.returncode == 0 and "--lora-dir" in r.stdout and "concat" in r.stdout
    assert not any(line.rstrip().endswith("| torch") for line in r.stderr.splitlines())


def test_merge_writes_and_bad_input_is_one_line(tmp_path):
    d = tmp_path / "loras"
    d.mkdir()
    write_lora(d / "a.safetensors", algo="locon", rank=4, layers=_layers, seed=1)
    write_lora(d / "b.safetensors", algo="locon", rank=2, layers=_layers, seed=2)
    out = tmp_path / "m.safetensors"
    r = _cli("<lora:a:0.5>", "<lora:b:0.7>", "--lora-dir", str(d), "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "wrote" in r.stdout and "rank 6" in r.stdout
    assert "lora_studio_merged" in safe_open(str(out), "pt").metadata()
    r = _cli("<lora:a:0.5>", "--lora-dir", str(d), "--out", str(tmp_path / "s.safetensors"), "--mode", "svd",
             "--rank", "2")
    assert r.returncode == 0 and "Frobenius" in r.stdout, r.stderr[-2000:]
    for args in (["<lora:nosuch:1>"], ["<lora:a:1>", "--mode", "svd"], ["<lora:a:1"]):
        r = _cli(*args, "--lora-dir", str(d), "--out", str(tmp_path / "x.safetensors"))
        lines = [ln for ln in r.stderr.splitlines() if not ln.startswith("import time:")]
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), r.stderr[-1500:]
    assert not (tmp_path / "x.safetensors").exists()
