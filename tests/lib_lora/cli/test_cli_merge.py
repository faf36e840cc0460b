"""`python -m lib_lora merge` as a user runs it: the exact flags, one-line errors with a non-zero exit and
nothing written, fast --help, the summary line, presets by name."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from lib_lora import fileio
from lib_lora.__main__ import main
from tests.checkpoints import write_checkpoint
from tests.lib_lora.cli.test_cli_main import HEAVY, _cli, _imported

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("climerge")
    for name, seed in (("a", 1), ("b", 2), ("c", 3)):
        write_checkpoint(tmp / f"{name}.safetensors", seed=seed)
    write_checkpoint(tmp / "xl.safetensors", "sdxl", scale=32, seed=4)
    return tmp


def _merge(env, out, *extra, a="a", b="b"):
    return main(["merge", "--a", str(env / f"{a}.safetensors"), "--b", str(env / f"{b}.safetensors"),
                 "--out", str(out), *extra])


def _one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_help_imports_no_heavy_module():
    r = _cli("merge", "--help")
    assert r.returncode == 0 and "--block-weights" in r.stdout and "--base-alpha" in r.stdout
    assert not _imported(r.stderr) & set(HEAVY)


def test_add_diff_with_every_flag(env, tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    w26 = ",".join(["0.5"] * 13 + ["1"] * 13)
    rc = _merge(env, out, "--c", str(env / "c.safetensors"), "--mode", "add-diff", "--alpha", "0.8",
                "--block-weights", w26, "--base-alpha", "0", "--dtype", "fp32")
    assert rc == 0
    o = capsys.readouterr().out
    assert o.startswith(f"wrote {out} (sd1, ") and "tensors merged" in o
    recipe = json.loads(fileio.read_metadata(out)["lora_studio_merge"])
    assert recipe["mode"] == "add-diff" and recipe["block_weights"]["BASE"] == 0 and recipe["dtype"] == "fp32"
    got, a = load_file(str(out)), load_file(str(env / "a.safetensors"))
    te = "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight"
    assert got[te].dtype == torch.float32 and torch.equal(got[te], a[te].float())   # BASE 0: A's weights


@pytest.mark.parametrize("extra,kw,match", [
    (["--mode", "weighted", "--alpha", "0.5"], {"b": "xl"}, "is SD1 but model B"),
    (["--mode", "weighted", "--alpha", "0.5", "--block-weights", "1,2,3"], {}, "has 3 values"),
    (["--mode", "weighted", "--alpha", "0.5", "--block-weights", "nosuchpreset"], {}, "neither a list"),
    (["--mode", "add-diff", "--alpha", "0.5"], {}, "needs a third model"),
    (["--mode", "weighted", "--alpha", "nan"], {}, "finite"),
    (["--mode", "weighted", "--alpha", "0.5"], {"b": "missing"}, "not found"),
    (["--mode", "weighted", "--alpha", "0.5", "--discard", "model_ema("], {}, "not a regular expression"),
    (["--mode", "weighted", "--alpha", "0.5", "--discard", "."], {}, "matches every key of model A"),
])
def test_bad_input_is_one_line_nonzero_and_writes_nothing(env, tmp_path, capsys, extra, kw, match):
    out = tmp_path / "m.safetensors"
    assert _merge(env, out, *extra, **kw) == 2
    assert match in _one_line(capsys.readouterr().err)
    assert not out.exists()


def test_corrupt_input_is_one_line(env, tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((env / "b.safetensors").read_bytes()[:5000])
    rc = main(["merge", "--a", str(env / "a.safetensors"), "--b", str(bad), "--mode", "weighted", "--alpha", "1",
               "--out", str(tmp_path / "o.safetensors")])
    assert rc == 2 and "truncated" in _one_line(capsys.readouterr().err)


def test_output_checked_first_and_overwrite(env, tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"keep")
    # the inputs do not even exist: the output is refused before they are looked at
    rc = main(["merge", "--a", "nope.safetensors", "--b", "nope2.safetensors", "--mode", "weighted", "--alpha", "1",
               "--out", str(out)])
    assert rc == 2 and "--overwrite" in _one_line(capsys.readouterr().err) and out.read_bytes() == b"keep"
    assert _merge(env, tmp_path / "x.ckpt", "--mode", "weighted", "--alpha", "1") == 2
    assert ".safetensors" in _one_line(capsys.readouterr().err)
    assert _merge(env, out, "--mode", "weighted", "--alpha", "1", "--overwrite") == 0
    assert torch.equal(load_file(str(out))["model.diffusion_model.out.2.weight"],
                       load_file(str(env / "b.safetensors"))["model.diffusion_model.out.2.weight"])


def test_preset_name_with_26_values(env, tmp_path, capsys):
    presets = tmp_path / "presets.txt"
    presets.write_text("HALF:" + ",".join(["0.5"] * 26) + "\n", encoding="utf-8")
    out = tmp_path / "m.safetensors"
    assert _merge(env, out, "--mode", "weighted", "--alpha", "1", "--block-weights", "half",
                  "--presets", str(presets)) == 0
    recipe = json.loads(fileio.read_metadata(out)["lora_studio_merge"])
    assert set(recipe["block_weights"].values()) == {0.5}
    # a shipped 17-value LoRA preset is not a merge preset: refused with the count
    assert _merge(env, tmp_path / "f.safetensors", "--mode", "weighted", "--alpha", "1",
                  "--block-weights", "face") == 2
    assert "has 17 values" in _one_line(capsys.readouterr().err)


def test_vae_flag_bakes_a_vae_file_and_names_it(env, tmp_path, capsys):
    c = load_file(str(env / "c.safetensors"))
    vae = {k[len("first_stage_model."):]: t for k, t in c.items() if k.startswith("first_stage_model.")}
    save_file(vae, str(tmp_path / "my_vae.safetensors"))
    out = tmp_path / "m.safetensors"
    assert _merge(env, out, "--mode", "weighted", "--alpha", "0.5", "--vae", str(tmp_path / "my_vae.safetensors")) == 0
    assert "VAE from my_vae.safetensors (" in capsys.readouterr().out
    got = load_file(str(out))
    for k, t in vae.items():
        assert torch.equal(got["first_stage_model." + k], t.to(got["first_stage_model." + k].dtype)), k
    assert _merge(env, tmp_path / "n.safetensors", "--mode", "weighted", "--alpha", "0.5", "--vae", str(tmp_path / "none.safetensors")) != 0
    assert "none.safetensors" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "n.safetensors").exists()


def test_the_cli_merges_in_forked_processes_and_writes_what_the_library_writes(env, tmp_path, monkeypatch, capsys):
    import os

    from lib_lora.fileio import forked
    from lib_lora.merge.checkpoint import merge_checkpoints

    if not forked.fork_processes():
        pytest.skip("one core or not Linux: the CLI merges with threads")
    forks, real = [], os.fork

    def counting():
        pid = real()
        if pid:
            forks.append(pid)
        return pid
    monkeypatch.setattr(os, "fork", counting)
    assert _merge(env, tmp_path / "cli.safetensors", "--mode", "weighted", "--alpha", "0.3") == 0
    assert len(forks) == forked.fork_processes()
    monkeypatch.setattr(os, "fork", real)
    merge_checkpoints(env / "a.safetensors", env / "b.safetensors", tmp_path / "lib.safetensors", alpha=0.3)
    assert (tmp_path / "cli.safetensors").read_bytes() == (tmp_path / "lib.safetensors").read_bytes()


def test_input_hashes_start_before_torch_is_imported(env, tmp_path):
    """A fresh `merge` process hashes its inputs (for the recipe) on one core while it imports torch on the other:
    the first hash starts before torch is in sys.modules."""
    import os
    import subprocess
    import sys

    from tests.paths import REPO

    code = (
        "import sys, json\n"
        "from lib_lora.fileio import hashing\n"
        "seen = []\n"
        "real = hashing.file_sha256\n"
        "def spy(path, *a, **k):\n"
        "    seen.append('torch' in sys.modules)\n"
        "    return real(path, *a, **k)\n"
        "hashing.file_sha256 = spy\n"
        "from lib_lora.__main__ import main\n"
        "rc = main(sys.argv[1:])\n"
        "print(json.dumps({'rc': rc, 'torch_loaded_at_hash': seen}))\n")
    out = tmp_path / "m.safetensors"
    args = ["merge", "--a", str(env / "a.safetensors"), "--b", str(env / "b.safetensors"), "--mode", "weighted",
            "--alpha", "0.5", "--out", str(out), "--quiet"]
    r = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, LORA_STUDIO_HASH_CACHE="off"))
    assert r.stdout.strip(), r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["rc"] == 0 and out.exists(), r.stderr
    assert len(res["torch_loaded_at_hash"]) == 2 and res["torch_loaded_at_hash"][0] is False, res
    recipe = json.loads(fileio.read_metadata(out)["lora_studio_merge"])
    assert recipe["inputs"]["A"]["sha256"] == fileio.file_sha256(env / "a.safetensors")   # the WebUI's checkpoint hash
