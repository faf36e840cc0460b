"""bake / bake-lora as a user drives them: outputs checked first, honest exit codes, shared tag rules,
the UI's user presets, progress on a terminal, Ctrl-C."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from lib_lora.__main__ import main
from tests.engine_helpers import SD15_LAYERS
from tests.factory import write_lora
from tests.models import build_model
from tests.paths import REPO

ROOT = str(REPO)
LIST12 = "1,1,1,1,1,1,1,1,1,1,1,1"  # the SDXL 12-value format: leaves SD1 blocks unlisted

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli_bake")
    root = build_model("sd15", include=SD15_LAYERS, seed=5)
    sd = {k: v.detach().clone() for k, v in root.state_dict().items()}
    ckpt = tmp / "base.safetensors"
    save_file(sd, str(ckpt))
    loras = tmp / "loras"
    loras.mkdir()
    pick = set(SD15_LAYERS)
    write_lora(loras / "style.safetensors", algo="lora", rank=8, layers=lambda l: l in pick, seed=1)
    write_lora(loras / "elsewhere.safetensors", algo="lora", rank=4, layers=lambda l: l not in pick, seed=2)
    return {"tmp": tmp, "ckpt": str(ckpt), "loras": str(loras), "sd": sd}


def _bake(env, prompt, out, *extra, base=None):
    return main(["bake", "--base", base or env["ckpt"], "--prompt", prompt, "--lora-dir", env["loras"],
                 "--out", str(out), *extra])


def _one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("out,extra,match", [
    ("folder", [], "is a folder"), ("folder", ["--overwrite"], "is a folder"),
    ("x.ckpt", [], "does not end in .safetensors"), ("no/x.safetensors", [], "does not exist"),
    ("old.safetensors", [], "--overwrite")])
def test_output_is_checked_before_anything_is_loaded(env, capsys, tmp_path, out, extra, match):
    (tmp_path / "folder").mkdir()
    (tmp_path / "old.safetensors").write_bytes(b"old")
    bad_base = tmp_path / "corrupt.safetensors"
    bad_base.write_bytes(b"<html>not a model</html>")  # reading it first would report this instead
    assert _bake(env, "<lora:style:1>", tmp_path / out, *extra, base=str(bad_base)) == 2
    assert match in _one_line(capsys.readouterr().err)
    assert sorted(os.listdir(tmp_path)) == ["corrupt.safetensors", "folder", "old.safetensors"]
    assert (tmp_path / "old.safetensors").read_bytes() == b"old"


def test_lora_dir_that_is_a_file(env, capsys, tmp_path):
    assert main(["bake-lora", "--prompt", "<lora:style:1>", "--lora-dir", env["ckpt"],
                 "--out", str(tmp_path / "o.safetensors")]) == 2
    assert "is a file, not a folder" in _one_line(capsys.readouterr().err)


def test_lora_that_cannot_be_applied_fails_and_writes_nothing(env, capsys, tmp_path):
    out = tmp_path / "o.safetensors"
    assert _bake(env, "<lora:style:1> <lora:elsewhere:1>", out) == 2
    err = _one_line(capsys.readouterr().err)
    assert "LoRA 'elsewhere' could not be applied" in err and "not in the model" in err
    assert not out.exists() and os.listdir(tmp_path) == []


def test_nothing_changed_is_not_reported_as_a_bake(env, capsys, tmp_path):
    out = tmp_path / "o.safetensors"
    assert _bake(env, "<lora:style:0>", out) == 2
    captured = capsys.readouterr()
    assert "no layer would change" in _one_line(captured.err) and "layers changed" not in captured.out
    assert not out.exists()


def test_fp16_overflow_is_refused_unless_allowed(env, capsys, tmp_path):
    out = tmp_path / "o.safetensors"
    tag = "<lora:style:1e7>"
    assert _bake(env, tag, out, "--dtype", "fp16") == 2
    err = _one_line(capsys.readouterr().err)
    assert tag in err and "infinite" in err and "float16" in err and "--allow-overflow" in err
    n_values, n_layers = [int(w) for w in err.split("made ", 1)[1].split()[0:4:3]]
    assert n_values > 0 and n_layers > 0
    assert os.listdir(tmp_path) == []
    assert _bake(env, tag, out, "--dtype", "fp16", "--allow-overflow") == 0
    assert "written anyway" in capsys.readouterr().err
    baked = load_file(str(out))
    assert sum(int((~torch.isfinite(v)).sum()) for v in baked.values() if v.is_floating_point()) == n_values
    assert _bake(env, "<lora:style:1e7>", tmp_path / "f32.safetensors") == 0  # fp32 holds it: no complaint


@pytest.mark.parametrize("verb", ["bake", "bake-lora"])
def test_unknown_preset_is_refused_by_both_verbs(env, capsys, tmp_path, verb):
    out = tmp_path / "o.safetensors"
    args = ["--prompt", "<lora:style:0.8:fcae>", "--lora-dir", env["loras"], "--out", str(out)]
    assert main([verb, *(["--base", env["ckpt"]] if verb == "bake" else []), *args]) == 2
    err = _one_line(capsys.readouterr().err)
    assert "unknown block-weight preset 'fcae' (close: FACE" in err.replace("face", "FACE") and "nothing was written" in err
    assert not out.exists()


def test_unlisted_blocks_warning_is_the_same_for_both_verbs(env, capsys, tmp_path):
    tag = f"<lora:style:1:{LIST12}>"
    assert main(["bake-lora", "--prompt", tag, "--lora-dir", env["loras"], "--out", str(tmp_path / "l.safetensors")]) == 0
    lora_err = capsys.readouterr().err
    assert _bake(env, tag, tmp_path / "c.safetensors") == 0
    bake_err = capsys.readouterr().err
    warn = [ln for ln in lora_err.splitlines() if "modules dropped" in ln]
    assert len(warn) == 1 and "does not list" in warn[0] and warn[0] in bake_err.splitlines()


def test_user_preset_saved_by_the_ui_store_bakes_through_the_cli(env, tmp_path):
    """Save a preset with the store the app's Presets tab uses, then bake with it in a fresh process."""
    from lib_lora.ui.app import build_context

    loras = tmp_path / "loras"
    loras.mkdir()
    (loras / "style.safetensors").write_bytes(open(os.path.join(env["loras"], "style.safetensors"), "rb").read())
    ctx = build_context([loras], [tmp_path / "ckpt"], tmp_path / "tagger")
    values = "1,0,0.5,0,1,0.25,0,1,0,1,0.5,0,1,0,2,1,0"
    ctx.presets.set("mineonly", values)
    ctx.presets.save()
    outs = {}
    for name, tag in (("preset", "<lora:style:0.8:mineonly>"), ("list", f"<lora:style:0.8:{values}>")):
        for verb in ("bake", "bake-lora"):
            out = tmp_path / f"{verb}-{name}.safetensors"
            r = subprocess.run([sys.executable, "-m", "lib_lora", verb, *(["--base", env["ckpt"]] if verb == "bake" else []),
                                "--prompt", tag, "--lora-dir", str(loras), "--out", str(out)],
                               cwd=ROOT, capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, r.stderr
            outs[verb, name] = load_file(str(out))
    for verb in ("bake", "bake-lora"):
        a, b = outs[verb, "preset"], outs[verb, "list"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(outs["bake", "list"][k], env["sd"][k]) for k in env["sd"])


def _read_pty(fd, proc, until=None, timeout=120.0) -> str:
    buf, end = b"", time.monotonic() + timeout
    while time.monotonic() < end:
        r, _, _ = select.select([fd], [], [], 0.05)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            buf += chunk
            if until and until.encode() in buf:
                break
        elif proc.poll() is not None:
            break
    return buf.decode(errors="replace")


def test_progress_on_a_terminal_and_one_summary_line_otherwise(env, tmp_path):
    cmd = [sys.executable, "-m", "lib_lora", "bake", "--base", env["ckpt"], "--prompt", "<lora:style:1>",
           "--lora-dir", env["loras"]]
    plain = subprocess.run(cmd + ["--out", str(tmp_path / "a.safetensors")], cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
    assert plain.returncode == 0 and plain.stderr == "" and "\r" not in plain.stdout
    assert [ln for ln in plain.stdout.splitlines() if ln.startswith("wrote ")][0].endswith("s)")
    master, slave = pty.openpty()
    p = subprocess.Popen(cmd + ["--out", str(tmp_path / "b.safetensors")], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=slave, text=True)
    os.close(slave)
    try:
        shown = _read_pty(master, p)
        p.wait(timeout=300)
    finally:
        os.close(master)
    assert p.returncode == 0
    for phase in ("merge", "write"):   # the base is memory-mapped: no read phase
        assert f"\r{phase}" in shown
    assert "layers" in shown and "100%" in shown


def test_ctrl_c_cancels_and_leaves_nothing(env, tmp_path):
    """SIGINT while the output is being written: one line 'cancelled', exit 130, no file, no temporary."""
    big = dict(load_file(env["ckpt"]))
    for i in range(12):
        big[f"first_stage_model.pad{i}.weight"] = torch.ones(8 << 20)  # 32 MB each: the write takes a while
    base = tmp_path / "big.safetensors"
    save_file(big, str(base))
    outdir = tmp_path / "out"
    outdir.mkdir()
    master, slave = pty.openpty()
    # the kernel copies 400 MB in well under a second: each copy and piece is slowed down, so that on a busy machine
    # the signal still arrives while the output is being written
    # SIGINT as in a terminal: a shell's background job (nohup … &) starts with it ignored, and children inherit that
    slow = ("import signal, sys, time\n"
            "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
            "from lib_lora.fileio import writer\n"
            "copy, pwrite = writer.FilePiece.copy_to, writer._pwrite_all\n"
            "def slow(self, *a, **k):\n"
            "    time.sleep(0.5)\n"
            "    return copy(self, *a, **k)\n"
            "def slow_pwrite(*a):\n"   # the prefilled path (a copy of the base made ahead) writes pieces so
            "    time.sleep(0.2)\n"    # the write phase starts at 100 %: its pieces are slowed too
            "    return pwrite(*a)\n"
            "writer.FilePiece.copy_to = slow\n"
            "writer._pwrite_all = slow_pwrite\n"
            "from lib_lora.__main__ import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    p = subprocess.Popen([sys.executable, "-c", slow, "bake", "--base", str(base), "--prompt", "<lora:style:1>",
                          "--lora-dir", env["loras"], "--out", str(outdir / "o.safetensors")],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    try:
        shown = _read_pty(master, p, until="\rwrite")
        assert "\rwrite" in shown, shown
        p.send_signal(signal.SIGINT)
        shown += _read_pty(master, p)
        p.wait(timeout=120)
    finally:
        os.close(master)
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, shown
    assert shown.rstrip().splitlines()[-1].strip() == "cancelled" and "Traceback" not in shown
    assert os.listdir(outdir) == []


def test_lora_lines_follow_each_report_to_its_lora(env, tmp_path):
    """The per-LoRA summary reads each report's own ActiveLora: reports in another order than the prompt's
    tags (the patcher owes no order) still print each LoRA's name beside its own counts and multipliers."""
    from lib_lora.merge.bake import bake_checkpoint
    from lib_lora.cli.bake import lora_lines

    loras = tmp_path / "loras"
    loras.mkdir()
    write_lora(loras / "big.safetensors", algo="lora", rank=4, layers=lambda l: l in SD15_LAYERS, seed=3)
    few = set(list(SD15_LAYERS)[:2])
    write_lora(loras / "small.safetensors", algo="lora", rank=4, layers=lambda l: l in few, seed=4)
    res = bake_checkpoint(env["ckpt"], "<lora:big:0.5> <lora:small:0.25>", str(loras), tmp_path / "o.safetensors")
    lines = lora_lines(res.report)
    assert lines[0].startswith("big: te 0.5, unet 0.5, ") and lines[1].startswith("small: te 0.25, unet 0.25, ")
    assert lines[0] != lines[1].replace("small: te 0.25, unet 0.25", "big: te 0.5, unet 0.5")   # counts differ
    res.report.loras.reverse()
    assert lora_lines(res.report) == lines[::-1]
