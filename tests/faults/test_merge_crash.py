"""Checkpoint merge under real faults: SIGKILL and Ctrl-C in the middle of the streamed write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from lib_lora import fileio
from tests.faults.test_fileio_crash import tiny_disk  # noqa: F401  (the 1 MiB tmpfs fixture)
from tests.checkpoints import write_checkpoint
from tests.paths import REPO

# Blocks in the first progress call (data already being written), so the parent can kill or interrupt it.
MERGER = r"""
import signal, sys
# SIGINT as in a terminal: a shell's background job (nohup … &) starts with it ignored, and children inherit that
signal.signal(signal.SIGINT, signal.default_int_handler)
from lib_lora import fileio
from lib_lora.cli import progress
fileio.atomic.USE_O_TMPFILE = sys.argv[1] == "1"
said = []
def stop(self, phase, done, total):
    if not said and done < total:
        said.append(1)
        print("merging", flush=True)
        sys.stdin.readline()
progress.PhaseProgress.__call__ = stop
# forked writer processes (the CLI's way on Linux) are slowed down so that they still run when the parent is killed
import os, time
from lib_lora.fileio import forked
first, pwrite = os.getpid(), forked._pwrite_all
def slow(*a):
    if os.getpid() != first:
        time.sleep(0.2)
    return pwrite(*a)
forked._pwrite_all = slow
from lib_lora.__main__ import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mergecrash")
    write_checkpoint(tmp / "a.safetensors", seed=1)
    write_checkpoint(tmp / "b.safetensors", seed=2)
    return tmp


def _start(models, out, o_tmpfile: bool):
    args = ["merge", "--a", str(models / "a.safetensors"), "--b", str(models / "b.safetensors"), "--mode",
            "weighted", "--alpha", "0.5", "--out", str(out), "--overwrite"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.Popen([sys.executable, "-c", MERGER, "1" if o_tmpfile else "0", *args], cwd=REPO, env=env,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline().strip()
    if line != "merging":
        p.kill()
        pytest.fail(p.stderr.read())
    return p


def _no_process_left_writing(out) -> None:
    """The CLI's forked merge processes die with their parent (nothing computes on for nobody)."""
    import time

    def left():
        pids = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if str(out).encode() in f.read():
                        pids.append(pid)
            except OSError:
                pass
        return pids
    deadline = time.monotonic() + 10
    while left() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left() == []


@pytest.mark.parametrize("o_tmpfile", [True, False], ids=["o_tmpfile", "named_temp"])
def test_sigkill_mid_merge_leaves_no_file_at_the_output(models, tmp_path, o_tmpfile):
    if o_tmpfile and not fileio.atomic.USE_O_TMPFILE:
        pytest.skip("O_TMPFILE is not available here")
    fresh, old = tmp_path / "new.safetensors", tmp_path / "old.safetensors"
    old.write_bytes(b"the user's model")
    for out in (fresh, old):
        p = _start(models, out, o_tmpfile)
        try:
            p.kill()
            p.wait(timeout=30)
        finally:
            if p.poll() is None:
                p.kill()
        assert p.returncode == -9
        _no_process_left_writing(out)
    assert not fresh.exists() and old.read_bytes() == b"the user's model"
    fileio.atomic_write_text(tmp_path / "later.txt", "x")     # the next write removes a dead process' temporaries
    assert sorted(os.listdir(tmp_path)) == ["later.txt", "old.safetensors"]


def test_ctrl_c_mid_merge_says_cancelled_and_leaves_nothing(models, tmp_path):
    out = tmp_path / "m.safetensors"
    p = _start(models, out, fileio.atomic.USE_O_TMPFILE)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and err.strip().splitlines()[-1] == "cancelled", err
    assert os.listdir(tmp_path) == []


def test_disk_full_mid_merge_is_one_line_and_leaves_nothing(models, tiny_disk):
    from lib_lora.errors import LoraFileError
    from lib_lora.merge.checkpoint import merge_checkpoints

    out = tiny_disk / "m.safetensors"     # an 8 MB merge onto a 1 MiB filesystem
    with pytest.raises(LoraFileError) as exc:
        merge_checkpoints(models / "a.safetensors", models / "b.safetensors", out, alpha=0.5)
    msg = str(exc.value)
    assert "\n" not in msg and "No space left" in msg and "nothing was written" in msg
    assert os.listdir(tiny_disk) == []
