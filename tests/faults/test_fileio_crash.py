"""fileio under real faults: SIGKILL in the middle of a write, a full disk, a file-size limit."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
import uuid

import pytest
import torch

from lib_lora import fileio
from lib_lora.errors import LoraFileError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Writes ~64 MB; after the first 16 MB chunk it says so and waits, so the parent kills it mid-write.
WRITER = r"""
import sys, torch
from lib_lora import fileio
fileio.atomic.USE_O_TMPFILE = sys.argv[2] == "1"
said = []
def progress(done, total):
    if not said and done < total:
        said.append(1)
        print("writing", flush=True)
        sys.stdin.readline()
fileio.atomic_save_safetensors({"w": torch.ones(16 << 20)}, sys.argv[1], {"k": "v"}, overwrite=True,
                               progress=progress)
print("done", flush=True)
"""


def _kill_mid_write(target, o_tmpfile: bool):
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(target), "1" if o_tmpfile else "0"], cwd=ROOT,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "writing", p.stderr.read()
        p.kill()  # SIGKILL: no handler, no finally, no atexit
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == -9
    return p.pid


@pytest.mark.parametrize("o_tmpfile", [True, False], ids=["o_tmpfile", "named_temp"])
def test_sigkill_mid_write_leaves_nothing_a_later_write_does_not_remove(tmp_path, o_tmpfile):
    if o_tmpfile and not fileio.atomic.USE_O_TMPFILE:
        pytest.skip("O_TMPFILE is not available here")
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"the user's old file")
    _kill_mid_write(target, o_tmpfile)
    assert target.read_bytes() == b"the user's old file"          # never partial, never replaced
    left = sorted(os.listdir(tmp_path))
    if o_tmpfile:
        assert left == ["model.safetensors"]                       # an unnamed file dies with its process
    else:
        assert len(left) == 2 and left[0].endswith(fileio.TMP_SUFFIX) and left[0].startswith(".model.safetensors.")
    # Any later write in that folder removes what the dead process left.
    fileio.atomic_write_text(tmp_path / "notes.txt", "x")
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors", "notes.txt"]


def test_cleanup_keeps_temporaries_of_live_processes_and_other_hosts(tmp_path):
    host = fileio.atomic._host_tag()
    live = tmp_path / f".a.txt.{host}.{os.getpid()}.abcd{fileio.TMP_SUFFIX}"        # a write in progress
    other = tmp_path / f".b.txt.00000000.999999999.abcd{fileio.TMP_SUFFIX}"       # another machine's
    mine = tmp_path / "x.lorastudio-tmp"                                           # not our pattern
    for p in (live, other, mine):
        p.write_bytes(b"1")
    assert fileio.remove_dead_temps(tmp_path) == 0
    assert all(p.exists() for p in (live, other, mine))


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 1 MiB tmpfs (root only): writes beyond it fail with ENOSPC from the kernel."""
    mnt = tmp_path / f"tiny-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or 'not root'})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("o_tmpfile", [True, False], ids=["o_tmpfile", "named_temp"])
def test_disk_full_is_one_line_target_untouched_no_temporary(tiny_disk, monkeypatch, o_tmpfile):
    monkeypatch.setattr(fileio.atomic, "USE_O_TMPFILE", o_tmpfile and fileio.atomic.USE_O_TMPFILE)
    target = tiny_disk / "out.safetensors"
    target.write_bytes(b"old")
    with pytest.raises(LoraFileError) as exc:
        fileio.atomic_save_safetensors({"w": torch.ones(1 << 20)}, target, overwrite=True)  # 4 MiB > 1 MiB
    msg = str(exc.value)
    assert "\n" not in msg and str(target) in msg and "No space left" in msg and "nothing was written" in msg
    assert os.listdir(tiny_disk) == ["out.safetensors"] and target.read_bytes() == b"old"


FSIZE = r"""
import sys, torch
from lib_lora import fileio
from lib_lora.errors import LoraStudioError
try:
    fileio.atomic_save_safetensors({"w": torch.ones(1 << 20)}, sys.argv[1], overwrite=True)
except LoraStudioError as exc:
    print(exc)
    sys.exit(2)
"""


def test_file_size_limit_is_one_line(tmp_path):
    """RLIMIT_FSIZE: the kernel refuses to grow the file (EFBIG), as a quota or a FAT32 4 GiB limit would."""
    target = tmp_path / "out.safetensors"
    target.write_bytes(b"old")

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    r = subprocess.run([sys.executable, "-c", FSIZE, str(target)], cwd=ROOT, capture_output=True, text=True,
                       preexec_fn=limit, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr == "" and r.stdout.count("\n") == 1 and "File too large" in r.stdout
    assert os.listdir(tmp_path) == ["out.safetensors"] and target.read_bytes() == b"old"


def test_leftovers_of_versions_without_pid_go_once_a_day_old(tmp_path):
    old = tmp_path / f".model.safetensors.ab12cd34{fileio.TMP_SUFFIX}"   # what a killed earlier version left
    new = tmp_path / f".other.safetensors.zz99yy88{fileio.TMP_SUFFIX}"
    for p in (old, new):
        p.write_bytes(b"x" * 1000)
    day_ago = time.time() - 25 * 3600
    os.utime(old, (day_ago, day_ago))
    assert fileio.remove_dead_temps(tmp_path) == 1
    assert not old.exists() and new.exists()
