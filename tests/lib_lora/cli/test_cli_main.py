"""`python -m lib_lora` as a user runs it: fast help without torch, --version, quiet on a closed pipe."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lib_lora import __version__
from tests.factory import write_lora
from tests.paths import REPO

ROOT = str(REPO)
HEAVY = ("torch", "numpy", "safetensors", "gradio", "onnxruntime")


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-X", "importtime", "-m", "lib_lora", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, **kw)


def _imported(stderr: str) -> set:
    """Top-level packages `-X importtime` saw imported."""
    out = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            out.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return out


@pytest.mark.parametrize("args,rc,expect", [
    (["--help"], 0, "bake-lora"),
    (["bake", "--help"], 0, "--lora-dir"),
    (["bake-lora", "--help"], 0, "--presets"),
    (["inspect", "--help"], 0, "--json"),
    (["bake", "--base"], 2, "expected one argument"),
    (["bake", "--bogus"], 2, "required"),
    (["frobnicate"], 2, "invalid choice"),
    (["--version"], 0, __version__),
])
def test_help_and_argument_errors_import_no_heavy_module(args, rc, expect):
    r = _cli(*args)
    assert r.returncode == rc, r.stderr[-2000:]
    assert expect in r.stdout + r.stderr
    assert not _imported(r.stderr) & set(HEAVY), sorted(_imported(r.stderr) & set(HEAVY))


def test_closed_pipe_ends_quietly(tmp_path):
    """`inspect … | head -1`: the reader goes away; no BrokenPipeError traceback, exit like a SIGPIPE."""
    files = []
    for i in range(30):
        files.append(str(write_lora(tmp_path / f"l{i}.safetensors", algo="lora", rank=2)))
    p = subprocess.Popen([sys.executable, "-m", "lib_lora", "inspect", "--no-norms", "--no-hash", *files], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # as `head` does after its lines
    err = p.stderr.read().decode()
    p.wait(timeout=120)
    assert err == "" and p.returncode == 141
