"""inspect: report contents, cheap ΔW norms checked against the full delta, CLI (in-process and subprocess)."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from lib_lora.algos import compute_delta
from lib_lora.algos import norm_of as delta_norm
from lib_lora.lora_info import format_report, inspect_file
from lib_lora.keys import LoraModule, group_modules
from tests.factory import fixture_layers, make_lora, write_lora
from tests.paths import REPO

ROOT = str(REPO)


def _base_shape(model, m):
    shape = fixture_layers(model)[m.layer]
    if m.qkv is not None:
        shape = (shape[0] // 3,) + tuple(shape[1:])
    return shape


@pytest.mark.parametrize("model", ["sd15", "sdxl"])
@pytest.mark.parametrize("algo", ["lora", "locon", "loha", "lokr", "full", "norm"])
def test_delta_norm_equals_norm_of_full_delta(model, algo):
    sd, md = make_lora(model, family="lycoris", algo=algo, rank=6, alpha=3.0, seed=7)
    modules, _ = group_modules(sd, md)
    assert modules
    for m in modules.values():
        full = compute_delta(m, torch.zeros(_base_shape(model, m))).weight
        assert delta_norm(m) == pytest.approx(float(torch.linalg.vector_norm(full.double())), rel=1e-4), m.key


def _module(algo, tensors, alpha=2.0):
    return LoraModule(key="lora_unet_x", layer="model.diffusion_model.input_blocks.4.0.in_layers.2", qkv=None,
                      algo=algo, tensors=tensors, alpha=alpha, slot=5)


def test_delta_norm_tucker_variants():
    g = torch.Generator().manual_seed(0)
    r, out, inn = 4, 640, 320

    def rnd(*s):
        return torch.randn(*s, generator=g)

    cases = [
        _module("lora", {"lora_down.weight": rnd(r, inn, 1, 1), "lora_mid.weight": rnd(r, r, 3, 3),
                         "lora_up.weight": rnd(out, r, 1, 1)}),
        _module("loha", {"hada_t1": rnd(r, r, 3, 3), "hada_w1_a": rnd(r, out), "hada_w1_b": rnd(r, inn),
                         "hada_t2": rnd(r, r, 3, 3), "hada_w2_a": rnd(r, out), "hada_w2_b": rnd(r, inn)}),
        _module("lokr", {"lokr_w1": rnd(20, 16), "lokr_t2": rnd(r, r, 3, 3), "lokr_w2_a": rnd(r, 32),
                         "lokr_w2_b": rnd(r, 20)}),
        _module("lokr", {"lokr_w1": rnd(20, 16), "lokr_w2": rnd(32, 20, 3, 3)}, alpha=7.0),  # both full: scale 1
    ]
    for m in cases:
        full = compute_delta(m, torch.zeros(out, inn, 3, 3)).weight
        assert delta_norm(m) == pytest.approx(float(torch.linalg.vector_norm(full.double())), rel=1e-4), m.algo


def test_report_contents_and_block_norms(tmp_path):
    p = write_lora(tmp_path / "face.safetensors", model="sd15", rank=8, alpha=4.0)
    r = inspect_file(p)
    assert r["arch"] == "sd1" and r["name"] == "face" and r["alias"] == "test_sd15_lora"
    assert r["algorithms"] == {"lora": 7} and r["module_count"] == 7
    assert r["te_modules"] == 2 and r["unet_modules"] == 5
    assert r["ranks"] == {"8": 7} and r["alphas"] == {"4": 7}
    assert r["skipped"] == [] and r["notes"] == []
    assert r["metadata"]["ss_network_dim"] == "8"
    assert len(r["block_norms"]) == 27 and "other" in r["block_norms"]
    # block norms: sqrt of the sum of squared module norms, computed here from explicit products
    modules, _ = group_modules(*make_lora("sd15", rank=8, alpha=4.0))
    from lib_lora.blocks import BLOCK_NAMES

    want = {}
    for m in modules.values():
        d = m.tensors["lora_up.weight"].flatten(1) @ m.tensors["lora_down.weight"].flatten(1) * (4.0 / 8)
        want[BLOCK_NAMES[m.slot]] = want.get(BLOCK_NAMES[m.slot], 0.0) + float(d.square().sum())
    for block, sq in want.items():
        assert r["block_norms"][block] == pytest.approx(math.sqrt(sq), rel=1e-4)
    assert all(v is None for k, v in r["block_norms"].items() if k not in want)
    assert r["hash"] and r["hash_short"] == r["hash"][:12]
    json.dumps(r)  # serialisable


def test_weight_dependent_algorithms_are_noted(tmp_path):
    p = write_lora(tmp_path / "o.safetensors", model="sdxl", family="lycoris", algo="oft")
    r = inspect_file(p)
    assert r["algorithms"] == {"oft": r["module_count"]}
    assert all(v is None for v in r["block_norms"].values())
    assert r["notes"] and "oft" in r["notes"][0]
    assert r["ranks"] == {"none": r["module_count"]}
    p = write_lora(tmp_path / "d.safetensors", model="sd15", family="peft", algo="dora")
    r = inspect_file(p)
    assert r["dora_modules"] == r["module_count"] and "dora" in r["notes"][0]


def test_report_lists_skipped_keys(tmp_path):
    sd, md = make_lora("sd15")
    sd["lora_unet_not_a_layer.lora_down.weight"] = torch.zeros(4, 8)
    p = tmp_path / "s.safetensors"
    save_file(sd, str(p), metadata=md)
    r = inspect_file(p)
    assert r["skipped"] == [["lora_unet_not_a_layer.lora_down.weight", "no matching SD1 layer"]]
    assert "lora_unet_not_a_layer.lora_down.weight" in format_report(r)


def test_cli_in_process(tmp_path, capsys):
    from lib_lora.__main__ import main

    p = write_lora(tmp_path / "x.safetensors", model="sdxl", algo="loha", family="lycoris")
    assert main(["inspect", p]) == 0
    out = capsys.readouterr().out
    assert "Arch:        SDXL" in out and "loha ×" in out and "BASE" in out
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "bad.safetensors" in err and "\n" not in err


def test_cli_subprocess_json(tmp_path):
    a = write_lora(tmp_path / "a.safetensors", model="sd15", algo="lokr", family="lycoris")
    b = write_lora(tmp_path / "b.safetensors", model="sdxl", family="peft")
    proc = subprocess.run([sys.executable, "-m", "lib_lora", "inspect", a, b, "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    reports = json.loads(proc.stdout)
    assert [r["arch"] for r in reports] == ["sd1", "sdxl"]
    assert reports[0]["algorithms"] == {"lokr": 7}
    assert reports[1]["algorithms"] == {"lora": 11} and reports[1]["alphas"] == {"2": 11}
