"""Issue 11 in the WebUI: warnings an API client can read, one rule for invalid block specs, X/Y/Z axes refuse
empty value lists, the status route keeps paths out, the cache budget setting, and the Forge specifics
(status route registered, Forge's own `Lora hashes`, one message per generation under hires fix)."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from tests.fake_webui.harness import LAYERS, write_lora

FIELD = "LoRA Studio warnings"


WEBUI_LORAS = (("foo", 1), ("ep-000001", 3), ("ep", 5))


def _axes():
    from modules import scripts
    xyz = [d.module for d in scripts.scripts_data if d.script_class.__module__ == "xyz_grid.py"][0]
    return xyz, {o.label: o for o in xyz.axis_options if o.label.startswith("[LoRA Studio]")}


# -- warnings reach the generation parameters (API `info`), once per generation --------------------------
def test_warnings_are_in_the_infotext_once_and_the_image_path_is_unchanged(webui, capsys):
    p, res = webui.generate("x <lora:fooo:1> <lora:foo:0.5>", enable_hr=True, n_iter=2)
    info = res.infotexts[0]
    assert FIELD in info and "'fooo' not found" in info
    assert p.extra_generation_params[FIELD].count("'fooo' not found") == 1
    err = capsys.readouterr().err
    assert err.count("'fooo' not found") == 1            # 2 batches × (first + hires pass): said once
    # the rest of the generation is as without the bad tag
    after = webui.weights()
    webui.generate("x")
    webui.generate("x <lora:foo:0.5>")
    assert all(torch.equal(after[k], webui.weight(k)) for k in LAYERS)
    p, res = webui.generate("x <lora:foo:0.5>")
    assert FIELD not in res.infotexts[0] and FIELD not in p.extra_generation_params


def test_xyz_cells_do_not_share_their_warnings(webui):
    xyz, ours = _axes()
    p = webui.processing("cat <lora:foo:1> <lora:fooo:1>")
    p.extra_generation_params = {"keep": "me"}
    cells = xyz.run_axis(p, ours["[LoRA Studio] LoRA weight"], [0.5, 1.0])
    for _, cell, res in cells:           # each cell says it once, in its own copy of the parameters
        assert cell.extra_generation_params[FIELD].count("'fooo' not found") == 1
        assert "'fooo' not found" in res.infotexts[0]
    assert p.extra_generation_params == {"keep": "me"} and not getattr(p, "_lora_studio_warnings", None)


# -- one rule for invalid block specs: skip the LoRA with one warning naming the fix ---------------------
@pytest.mark.parametrize("spec,says", [("nosuchpreset", "unknown preset 'nosuchpreset'; use a preset name"),
                                       ("1,1,1", "3 block weights given; accepted counts are")])
def test_invalid_block_spec_skips_the_lora_with_one_warning(webui, spec, says):
    base = webui.weights()
    p, res = webui.generate(f"x <lora:foo:1:{spec}>")
    assert all(torch.equal(base[k], webui.weight(k)) for k in LAYERS)     # not applied, not even at all-1
    ws = [c for c in p.comments if "foo" in c]
    assert len(ws) == 1 and says in ws[0] and ws[0].endswith("(skipped)"), ws


# -- X/Y/Z: empty value lists are refused like the WebUI's own axes refuse bad values ---------------------
@pytest.mark.parametrize("label,choices", [("[LoRA Studio] LoRA block weights", True),
                                           ("[LoRA Studio] LoRA epoch", True),
                                           ("[LoRA Studio] LoRA weight", False),
                                           ("[LoRA Studio] LoRA x=", False)])
def test_axis_without_values_is_refused_not_an_empty_grid(webui, label, choices):
    xyz, ours = _axes()
    p = webui.processing("cat <lora:ep:1:lbw=X,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1>")
    with pytest.raises(RuntimeError, match="no values given") as e:
        xyz.run_axis(p, ours[label], [])
    assert ("dropdown" in str(e.value)) == choices
    if choices:
        with pytest.raises(RuntimeError, match="empty value"):
            xyz.run_axis(p, ours[label], ["", "ep"])


# -- status route: no paths --------------------------------------------------------------------------------
def _route(app):
    from lora_studio_webui import api
    return next(type(r).endpoint for r in app.routes if r.path == api.ROUTE)


class _Req:
    headers: dict = {}


def test_status_route_keeps_server_paths_out(webui, tmp_path):
    webui.generate("x <lora:fooo:1> <lora:foo:1>")
    out = json.dumps(_route(webui.app)(_Req(), checksum=False))
    assert "fooo" in out and "not found" in out
    assert str(tmp_path) not in out and str(webui.lora_dir) not in out and "/" + "tmp" not in out
    assert "<Lora>" in out                                      # the folder is named, not located


def test_without_paths_covers_quoted_windows_and_home_paths():
    from lora_studio_webui.api import without_paths
    assert without_paths("file not found: '/srv/a b/x.safetensors'") == "file not found: '<path>'"
    assert without_paths(r"cannot read C:\Users\me\x.pt now") == "cannot read <path> now"
    assert without_paths("in ~/loras/x, then") == "in <path>, then"
    assert without_paths("weights 1/2; te=0.5 x/y") == "weights 1/2; te=0.5 x/y"


# -- cache budget setting ------------------------------------------------------------------------------------
def test_cache_setting_defaults_to_automatic_and_follows_changes(webui):
    from modules import shared

    from lora_studio_webui.engine import ENGINE
    webui.generate("x <lora:foo:1>")
    assert ENGINE.patcher.cache.auto
    shared.opts.data["lora_studio_cache_mb"] = 0
    webui.generate("x <lora:foo:0.5>")
    assert not ENGINE.patcher.cache.auto and ENGINE.patcher.cache.max_bytes == 0
    shared.opts.data["lora_studio_cache_mb"] = -1
    webui.generate("x <lora:foo:0.7>")
    assert ENGINE.patcher.cache.auto


# -- Forge ---------------------------------------------------------------------------------------------------
@pytest.fixture
def forge(tmp_path):
    from tests.fake_webui.forge_harness import FakeForge
    w = FakeForge(tmp_path)
    write_lora(w, "foo", seed=1, sshs_model_hash="")
    w.start()
    yield w
    w.close()


def test_forge_registers_the_status_route(forge):
    forge.generate("x <lora:foo:1:face>")
    out = _route(forge.app)(_Req(), checksum=False)
    assert [a["name"] for a in out["applied"]] == ["foo"]


def test_forge_lora_hashes_are_what_forge_writes(forge):
    path = forge.lora_dir / "foo.safetensors"
    whole = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    p, res = forge.generate("x <lora:foo:1>")
    assert f'Lora hashes: "foo: {whole}"' in res.infotexts[0]
    # a trainer's sshs_model_hash wins, as in Forge's NetworkOnDisk
    write_lora(forge, "bar", seed=2, sshs_model_hash="abcdef0123456789")
    p, res = forge.generate("x <lora:bar:1>")
    assert 'Lora hashes: "bar: abcdef012345"' in res.infotexts[0]


def test_forge_hires_fix_says_things_once_per_image(tmp_path, capsys):
    from tests.fake_webui.forge_harness import FORGE_LAYERS, FakeForge
    out00 = "model.diffusion_model.output_blocks.0.0.skip_connection"   # OUT00: not in the 17-value format
    w = FakeForge(tmp_path, layers=FORGE_LAYERS + (out00,))
    try:
        write_lora(w, "foo", seed=1)
        w.start()
        capsys.readouterr()
        w.generate("x <lora:foo:1:face>", enable_hr=True, n_iter=2)
        cap = capsys.readouterr()
        assert cap.out.count("[LoRA Studio] applied on Forge") == 1, cap.out
        unlisted = [line for line in cap.err.splitlines() if "OUT00" in line]
        assert len(unlisted) == 1, cap.err
    finally:
        w.close()
