"""Infotext round trip (generate → infotext → paste → same weights) and the X/Y/Z axes."""

from __future__ import annotations

import pytest
import torch

from tests.fake_webui.harness import LAYERS


WEBUI_LORAS = (("foo", 1), ("bar", 2), ("ep-000001", 3), ("ep-000002", 4), ("ep", 5))


def paste(infotext):
    from modules import script_callbacks
    from modules.infotext_utils import parse_generation_parameters
    params = parse_generation_parameters(infotext)
    script_callbacks.infotext_pasted_callback(infotext, params)
    return params


def test_round_trip_random_letters_and_presets(webui, tmp_path):
    vec = ["1"] * 17
    vec[1], vec[8], vec[16] = "R", "U", "X+0.25"
    prompt = f"x <lora:foo:0.9:{','.join(vec)}:x=0.5> <lora:bar:1:face>"
    p, res = webui.generate(prompt, seed=1234)
    first = webui.weights()
    params = paste(res.infotexts[0])
    pasted = params["Prompt"]
    assert "R" not in pasted.split("foo")[1].split(">")[0]
    assert "lbw=1,0,0,0,0,0,0,0,0.8,1,1,0.2,0,0,0,0,0" in pasted       # preset frozen
    # the preset file changes, the seed changes: the pasted prompt still reproduces the weights
    (tmp_path / "user_presets.txt").write_text("face:1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1\n")
    webui.generate("x")
    webui.generate(pasted, seed=99)
    assert all(torch.equal(first[k], webui.weight(k)) for k in LAYERS)


def test_plain_lists_are_not_recorded(webui):
    p, res = webui.generate("x <lora:foo:1:" + ",".join(["1"] * 17) + ">")
    assert "LoRA Studio blocks" not in res.infotexts[0]
    assert "Lora hashes" in res.infotexts[0]
    p, res = webui.generate("x")
    assert "Lora hashes" not in res.infotexts[0]


def test_hashes_match_builtin_format(webui):
    from lib_lora.fileio import model_hash
    p, res = webui.generate("x <lora:foo:1>")
    h = model_hash(webui.lora_dir / "foo.safetensors")[:12]
    assert f'Lora hashes: "foo: {h}"' in res.infotexts[0]


def axes():
    from modules import scripts
    xyz = [d.module for d in scripts.scripts_data if d.script_class.__module__ == "xyz_grid.py"][0]
    return xyz, {o.label: o for o in xyz.axis_options if o.label.startswith("[LoRA Studio]")}


def test_axes_registered_once_even_after_reloads(webui):
    xyz, ours = axes()
    assert sorted(ours) == ["[LoRA Studio] LoRA block ID", "[LoRA Studio] LoRA block weights",
                            "[LoRA Studio] LoRA epoch", "[LoRA Studio] LoRA original weights",
                            "[LoRA Studio] LoRA weight", "[LoRA Studio] LoRA x=",
                            "[LoRA Studio] Merge: alpha", "[LoRA Studio] Merge: block weights",
                            "[LoRA Studio] Merge: model B"]
    webui.reload_ui()
    webui.reload_ui()
    xyz, ours2 = axes()
    assert len([o for o in xyz.axis_options if o.label.startswith("[LoRA Studio]")]) == 9
    # a second import of our package into the same xyz module (A1111 keeps it when not reloaded) adds nothing
    import lora_studio_webui.xyz as ax
    assert ax.register() == 0


def test_epoch_axis_choices_and_cells(webui):
    xyz, ours = axes()
    opt = ours["[LoRA Studio] LoRA epoch"]
    assert opt.choices() == ["no LoRA", "ep-000001", "ep-000002", "ep"]
    base = webui.weights()
    p = webui.processing("cat <lora:ep:0.8> <lora:foo:1:" + ",".join(["0"] * 17) + ">")
    cells = xyz.run_axis(p, opt, ["no LoRA", "ep-000001", "ep"])
    assert p.prompt == "cat <lora:ep:0.8> <lora:foo:1:" + ",".join(["0"] * 17) + ">"   # shallow copy: original kept
    assert cells[0][1].prompt.startswith("cat  <lora:foo")
    assert cells[1][1].prompt.startswith("cat <lora:ep-000001:0.8>")
    # the "no LoRA" cell generated the base model (foo is at all-zero): compare by regenerating
    webui.generate(cells[0][1].prompt)
    assert all(torch.equal(base[k], webui.weight(k)) for k in LAYERS)
    webui.generate(cells[1][1].prompt)
    e1 = webui.weights()
    webui.generate("cat <lora:ep-000001:0.8>")
    assert all(torch.equal(e1[k], webui.weight(k)) for k in LAYERS)
    with pytest.raises(RuntimeError, match="not in the prompt"):
        xyz.run_axis(webui.processing("cat <lora:foo:1>"), opt, ["ep-000001"])


def test_weight_and_block_axes_rewrite_tags(webui):
    xyz, ours = axes()
    p = webui.processing("cat <lora:foo:1:0.5:face> <lora:bar:1>", hr_prompt="hr <lora:foo:1:0.5:face>")
    p.extra_generation_params = {"keep": "me"}
    cells = xyz.run_axis(p, ours["[LoRA Studio] LoRA weight"], [0.25, 1.5])
    assert cells[0][1].prompt == "cat <lora:foo:0.25:0.25:face> <lora:bar:1>"
    assert cells[1][1].hr_prompt == "hr <lora:foo:1.5:1.5:face>"
    assert p.extra_generation_params == {"keep": "me"}          # cells never mutate the shared dict
    cells = xyz.run_axis(p, ours["[LoRA Studio] LoRA block weights"], ["OUTALL", "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1"])
    assert cells[0][1].prompt == "cat <lora:foo:1:0.5:lbw=OUTALL> <lora:bar:1>"
    a = webui.weights()
    webui.generate(cells[1][1].prompt)
    assert all(torch.equal(a[k], webui.weight(k)) for k in LAYERS)   # OUTALL == the same list
    with pytest.raises(RuntimeError, match="unknown preset 'nope'"):
        xyz.run_axis(p, ours["[LoRA Studio] LoRA block weights"], ["nope"])
    cells = xyz.run_axis(webui.processing("c <lora:foo:1:lbw=X,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1>"),
                         ours["[LoRA Studio] LoRA x="], [0.0, 0.5])
    assert cells[1][1].prompt == "c <lora:foo:1:lbw=X,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1:x=0.5>"


def test_infotext_and_axes_keep_every_digit(webui, tmp_path):
    """One number format: the infotext, the axis tag text and the axis label write 0.1234567, not 0.123457."""
    fine = ",".join(["0.1234567"] * 17)
    (tmp_path / "user_presets.txt").write_text(f"fine:{fine}\n")
    p, res = webui.generate("x <lora:foo:1:fine>", seed=5)
    first = webui.weights()
    pasted = paste(res.infotexts[0])["Prompt"]
    assert f"lbw={fine}" in pasted
    (tmp_path / "user_presets.txt").write_text("fine:" + ",".join(["1"] * 17) + "\n")
    webui.generate("x")
    webui.generate(pasted)
    assert all(torch.equal(first[k], webui.weight(k)) for k in LAYERS)
    xyz, ours = axes()
    opt = ours["[LoRA Studio] LoRA weight"]
    cells = xyz.run_axis(webui.processing("cat <lora:foo:1>"), opt, [0.1234567])
    assert cells[0][1].prompt == "cat <lora:foo:0.1234567>"
    assert opt.format_value(None, opt, 0.1234567) == "LoRA weight: 0.1234567"
    assert opt.format_value(None, opt, 1.0) == "LoRA weight: 1"


def test_elemental_preset_round_trip(webui, tmp_path):
    """lbwe=NAME: the entries are recorded; pasting reproduces the weights after the preset file changed."""
    el = tmp_path / "user_elempresets.txt"
    el.write_text("MINE:IN00-OUT11:attn:0.25,BASE::0\n\nOFF:::0\n")
    webui.generate("x <lora:foo:0.9:lbwe=MINE>", seed=5)
    plain_p, plain = webui.generate("x <lora:foo:0.9>", seed=5)
    plain_w = webui.weights()
    p, res = webui.generate("x <lora:foo:0.9:lbwe=MINE>", seed=5)
    first = webui.weights()
    assert any(not torch.equal(first[k], plain_w[k]) for k in LAYERS)   # the elements changed something
    assert 'LoRA Studio elements: "foo=IN00-OUT11;attn;0.25,BASE;;0"' in res.infotexts[0]
    pasted = paste(res.infotexts[0])["Prompt"]
    assert "lbwe=IN00-OUT11;attn;0.25,BASE;;0" in pasted
    el.write_text("MINE:::1\n")
    webui.generate("x")
    webui.generate(pasted, seed=99)
    assert all(torch.equal(first[k], webui.weight(k)) for k in LAYERS)


def test_bad_elemental_entries_warn_and_apply_without(webui):
    p, res = webui.generate("x <lora:foo:0.9:lbwe=IN05;attn>")
    plain = webui.weights()
    msgs = [c for c in p.comments if "has 2 field(s)" in c]
    assert len(msgs) == 1 and "applied without elemental weights" in msgs[0]
    webui.generate("x")
    webui.generate("x <lora:foo:0.9>")
    assert all(torch.equal(plain[k], webui.weight(k)) for k in LAYERS)
