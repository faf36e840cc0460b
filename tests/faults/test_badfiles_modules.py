"""Damaged modules (NaN/Inf, rank 0, factors that disagree, alpha stored as a vector) are refused at load
time with one line naming the file, the module key and the problem; the rest of the file still loads.
inspect gives a verdict and a non-zero exit for damaged files and for files that are not LoRAs; bake and
bake-lora never write NaN. A valid file whose name is not UTF-8 loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from lib_lora.__main__ import main
from lib_lora.errors import LoraFileError
from lib_lora.network import load_network
from tests.engine_helpers import SD15_LAYERS
from tests.factory import ALGOS, make_lora, write_lora
from tests.models import build_model
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PICK = set(SD15_LAYERS)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    d = tmp_path_factory.mktemp("loras")
    path = write_lora(d / "good.safetensors", layers=lambda l: l in PICK, seed=1)
    sd = load_file(path)
    victim = sorted(k for k in sd if k.endswith(".lora_up.weight"))[0][: -len(".lora_up.weight")]
    return d, sd, victim


def variant(good, name, change):
    d, sd, victim = good
    s = {k: v.clone() for k, v in sd.items()}
    change(s, victim)
    path = d / f"{name}.safetensors"
    save_file(s, str(path))
    return str(path)


def _nan(s, m):
    s[m + ".lora_up.weight"][0, 0] = float("nan")


def _inf(s, m):
    s[m + ".lora_down.weight"][-1, -1] = float("inf")


def _zero_rank(s, m):
    s[m + ".lora_up.weight"] = torch.zeros(s[m + ".lora_up.weight"].shape[0], 0)
    s[m + ".lora_down.weight"] = torch.zeros(0, s[m + ".lora_down.weight"].shape[1])


def _mismatch(s, m):
    s[m + ".lora_up.weight"] = torch.randn(s[m + ".lora_up.weight"].shape[0], 3)


def _vector_alpha(s, m):
    s[m + ".alpha"] = torch.tensor([2.0, 2.0])


def _nan_alpha(s, m):
    s[m + ".alpha"] = torch.tensor(float("nan"))


CASES = [("nan", _nan, "NaN/Inf"), ("inf", _inf, "NaN/Inf"), ("zerorank", _zero_rank, "rank 0"),
         ("mismatch", _mismatch, "incompatible shapes"), ("vecalpha", _vector_alpha, "holds 2 values"),
         ("nanalpha", _nan_alpha, "alpha is nan")]


@pytest.mark.parametrize("name,change,words", CASES, ids=[c[0] for c in CASES])
def test_damaged_module_is_left_out_with_one_line(good, name, change, words):
    _, sd, victim = good
    n = len(load_network(str(good[0] / "good.safetensors")).modules)
    net = load_network(variant(good, name, change))
    assert victim not in net.modules and len(net.modules) == n - 1
    assert [k for k, _ in net.rejected] == [victim] and words in net.rejected[0][1]
    msg = net.damage_message
    assert f"'{name}'" in msg and victim in msg and words in msg and "\n" not in msg
    assert net.skipped[0][0].startswith(victim)                       # what the WebUI warning shows first
    assert all(k.startswith(victim) for k in net.damaged_keys)


def test_single_element_alpha_is_a_number(good):
    path = variant(good, "alpha1", lambda s, m: s.update({k: v.reshape(1) for k, v in s.items()
                                                          if k.endswith(".alpha")}))
    net, ref = load_network(path), load_network(str(good[0] / "good.safetensors"))
    assert not net.rejected and {k: m.alpha for k, m in net.modules.items()} == \
        {k: m.alpha for k, m in ref.modules.items()}


@pytest.mark.parametrize("algo", ALGOS)
def test_valid_files_of_every_algorithm_pass_the_checks(algo):
    for family in ("kohya", "lycoris"):
        if algo in ("oft",) and family == "lycoris" or algo == "dora" and family == "kohya":
            continue
        sd, md = make_lora("sd15", family=family, algo=algo, layers=8, seed=3)
        from lib_lora.keys import group_modules_with_arch
        rejected: list = []
        mods, _, _ = group_modules_with_arch(sd, md, rejected=rejected)
        assert mods and rejected == []


def test_loha_and_lokr_factor_mismatch(tmp_path):
    for algo, suffix in (("loha", "hada_w2_b"), ("lokr", "lokr_w2_b")):
        sd, md = make_lora("sd15", family="lycoris", algo=algo, layers=3, seed=4)
        key = sorted(k for k in sd if k.endswith(suffix))[0]
        sd[key] = torch.randn(sd[key].shape[0] + 1, sd[key].shape[1])
        p = tmp_path / f"{algo}.safetensors"
        save_file(sd, str(p), metadata=md)
        net = load_network(p)
        assert len(net.rejected) == 1 and "incompatible shapes" in net.rejected[0][1] and len(net.modules) == 2


def test_all_modules_damaged_refuses_the_file(good):
    path = variant(good, "allnan", lambda s, m: [v.fill_(float("nan")) for k, v in s.items()
                                                 if k.endswith("lora_up.weight")])
    with pytest.raises(LoraFileError) as e:
        load_network(path)
    assert "'allnan'" in str(e.value) and "damaged" in str(e.value) and "\n" not in str(e.value)


def test_inspect_verdicts_and_exit_status(good, tmp_path, capsys):
    nan = variant(good, "nan", _nan)
    assert main(["inspect", "--no-hash", nan]) == 1
    out, err = capsys.readouterr()
    assert "Verdict:     PARTIAL" in out and "NaN/Inf" in err and "Traceback" not in out + err
    mism = variant(good, "mismatch", _mismatch)
    assert main(["inspect", "--json", mism]) == 1
    r = json.loads(capsys.readouterr().out)
    assert r["verdict"] == "partial" and "incompatible shapes" in r["problem"]
    ckpt = tmp_path / "ckpt.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.randn(4, 4, 3, 3),
               "first_stage_model.decoder.conv_in.weight": torch.randn(4, 4)}, str(ckpt))
    rnd = tmp_path / "random.safetensors"
    save_file({"foo": torch.randn(3), "bar": torch.randn(2, 2)}, str(rnd))
    bad = tmp_path / "garbage.safetensors"
    bad.write_bytes(b"garbage")
    assert main(["inspect", str(ckpt), str(rnd), str(bad), str(good[0] / "good.safetensors")]) == 2
    out, err = capsys.readouterr()
    assert "this looks like a model checkpoint" in out and "unknown tensors" in out
    assert "garbage.safetensors" in err and "Arch:        SD1" in out        # the good file still reported
    assert main(["inspect", str(ckpt)]) == 1
    assert main(["inspect", str(good[0] / "good.safetensors")]) == 0


def test_bake_and_bake_lora_never_write_nan(good, tmp_path, capsys):
    variant(good, "nan", _nan)
    root = build_model("sd15", include=SD15_LAYERS, seed=5)
    base = tmp_path / "base.safetensors"
    save_file({k: v.detach().clone() for k, v in root.state_dict().items()}, str(base))
    out = tmp_path / "baked.safetensors"
    main(["bake", "--base", str(base), "--prompt", "<lora:nan:1>", "--lora-dir", str(good[0]), "--out", str(out)])
    text = capsys.readouterr()
    assert "partly damaged" in text.out + text.err and good[2] in text.out + text.err
    assert all(bool(torch.isfinite(t.float()).all()) for t in load_file(str(out)).values())
    out2 = tmp_path / "baked_lora.safetensors"
    main(["bake-lora", "--prompt", "<lora:nan:0.5>", "--lora-dir", str(good[0]), "--out", str(out2)])
    sd = load_file(str(out2))
    assert sd and all(bool(torch.isfinite(t.float()).all()) for t in sd.values())
    assert not any(k.startswith(good[2]) for k in sd)


def test_non_utf8_file_name_loads_and_inspects(good, tmp_path):
    src = good[0] / "good.safetensors"
    name = os.fsencode(str(tmp_path)) + b"/caf\xe9.safetensors"
    with open(src, "rb") as a, open(name, "wb") as b:
        b.write(a.read())
    net = load_network(os.fsdecode(name))
    assert len(net.modules) == len(load_network(str(src)).modules)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.run([sys.executable, "-m", "lib_lora", "inspect", os.fsdecode(name)], cwd=ROOT, env=env,
                          capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert "caf\ufffd.safetensors".encode() in proc.stdout and b"corrupt" not in proc.stderr


@pytest.mark.parametrize("name,change", [("mismatch", _mismatch), ("zerorank", _zero_rank), ("nan", _nan)])
def test_ui_inspect_tab_shows_the_verdict(good, name, change):
    """The standalone/WebUI LoRAs tab callback: a verdict row instead of an exception (an HTTP 500)."""
    from pathlib import Path

    from lib_lora.ui.context import UiContext
    from lib_lora.ui.lora_tab import show_lora
    variant(good, name, change)
    ctx = UiContext(lora_dirs=[Path(good[0])], checkpoint_dirs=[], tagger_models_dir=Path(good[0]))
    chart, summary, meta = show_lora(ctx, f"{name}.safetensors")
    assert "partial" in summary and good[2] in summary and chart
