"""bake when the disk fills up or the process is killed: one line, the old output untouched, no temporary."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
import uuid

import pytest
import torch
from safetensors.torch import save_file

from tests.engine_helpers import SD15_LAYERS
from tests.factory import write_lora
from tests.models import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bake_faults")
    sd = {k: v.detach().clone() for k, v in build_model("sd15", include=SD15_LAYERS, seed=5).state_dict().items()}
    sd["first_stage_model.pad.weight"] = torch.ones(1 << 20)  # 4 MB: more than the tiny disk holds
    save_file(sd, str(tmp / "base.safetensors"))
    (tmp / "loras").mkdir()
    write_lora(tmp / "loras" / "style.safetensors", algo="lora", rank=4, layers=lambda l: l in set(SD15_LAYERS))
    return {"ckpt": str(tmp / "base.safetensors"), "loras": str(tmp / "loras")}


def _bake(env, out, **kw):
    return subprocess.run([sys.executable, "-m", "lib_lora", "bake", "--base", env["ckpt"], "--prompt",
                           "<lora:style:0.7>", "--lora-dir", env["loras"], "--out", str(out), "--overwrite"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, **kw)


def _check_refused(r, folder, target, reason):
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: cannot write") and reason in r.stderr, r.stderr
    assert "nothing was written" in r.stderr
    assert os.listdir(folder) == [target.name] and target.read_bytes() == b"previous bake"


def test_disk_full_during_bake(env, tmp_path):
    mnt = tmp_path / f"tiny-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    m = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if m.returncode != 0:
        pytest.skip(f"cannot mount a 1 MiB tmpfs here ({m.stderr.strip() or 'needs root'})")
    try:
        target = mnt / "baked.safetensors"
        target.write_bytes(b"previous bake")
        _check_refused(_bake(env, target), mnt, target, "No space left on device")
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_file_size_limit_during_bake(env, tmp_path):
    target = tmp_path / "baked.safetensors"
    target.write_bytes(b"previous bake")

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    _check_refused(_bake(env, target, preexec_fn=limit), tmp_path, target, "File too large")


def test_sigkill_during_bake_then_next_bake_cleans_up(env, tmp_path):
    """A bake killed with SIGKILL at any moment leaves the old output and nothing a later write keeps."""
    ref = tmp_path / "ref" / "baked.safetensors"
    ref.parent.mkdir()
    assert _bake(env, ref).returncode == 0
    done = ref.read_bytes()
    target = tmp_path / "baked.safetensors"
    target.write_bytes(b"previous bake")
    for delay in (0.5, 1.0, 1.5, 2.0):
        p = subprocess.Popen([sys.executable, "-m", "lib_lora", "bake", "--base", env["ckpt"], "--prompt",
                              "<lora:style:0.7>", "--lora-dir", env["loras"], "--out", str(target), "--overwrite"],
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        p.kill()
        p.wait(timeout=60)
        assert target.read_bytes() in (b"previous bake", done)   # the old file or the whole new one
        target.write_bytes(b"previous bake")
    r = _bake(env, target)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path)) == ["baked.safetensors", "ref"] and target.read_bytes() == done
