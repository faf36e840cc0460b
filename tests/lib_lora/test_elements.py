"""Elemental weights (`lbwe=`): grammar, per-module weights, presets file, bake-lora (docs/spec/prompt_syntax.md §7)."""

from __future__ import annotations

import pytest
import torch

from lib_lora.blocks import SLOT, element_weight, element_weights, slot_of_layer
from lib_lora.presets import PresetStore
from lib_lora.syntax import parse_prompt, write_tag
from lib_lora.tag_weights import parse_element_entries, resolve_blocks

U = "model.diffusion_model."


def entries(text, sep=":"):
    es, _, problem = parse_element_entries(text, sep)
    assert problem is None, problem
    return es


def test_range_crosses_m00_either_order_and_mid_synonym():
    (e,) = entries("OUT01-IN10:attn:0.5")
    assert e.blocks == {SLOT[n] for n in ("IN10", "IN11", "M00", "OUT00", "OUT01")}
    assert entries("MID::1")[0].blocks == {SLOT["M00"]}
    assert entries("BASE IN02-IN03 OUT11::1")[0].blocks == {0, 3, 4, 25}
    assert entries("::1")[0].blocks is None and entries("::1")[0].elements == ()


def test_not_on_either_side_and_later_entries_override():
    es = entries("NOT BASE:NOT attn:0, IN01-OUT11:attn2:0.5, OUT03:attn2.to_out:0.25")
    q = U + "output_blocks.3.1.transformer_blocks.0.attn2.to_q"
    o = U + "output_blocks.3.1.transformer_blocks.0.attn2.to_out.0"
    ff = U + "output_blocks.3.1.transformer_blocks.0.ff.net.2"
    te = "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1"
    assert element_weight(es, q, slot_of_layer(q)) == 0.5       # 2nd entry
    assert element_weight(es, o, slot_of_layer(o)) == 0.25      # 3rd overrides 2nd
    assert element_weight(es, ff, slot_of_layer(ff)) == 0       # 1st: not BASE, not attn
    assert element_weight(es, te, 0) is None                    # BASE excluded: keeps its block weight


@pytest.mark.parametrize("text,why", [
    ("IN05-OUT05;attn", "has 2 field(s)"), ("IN5;attn;1", "block 'IN5' is not a block ID"),
    ("IN05;attn;abc", "ratio 'abc' is not a number"), ("IN05-OUT99;;1", "not a block ID"),
    ("IN01;;1,,OUT01;x", "entry 2 'OUT01;x' has 2 field(s)"), (";;nan", "is not a finite number")])
def test_bad_entries_one_warning_lora_still_applies(text, why):
    tag = parse_prompt(f"<lora:n:0.8:lbwe={text}>")[0]
    res = resolve_blocks(tag, None)
    assert tag.ok and not res.errors
    assert res.elements.entries is None and len(res.warnings) == 1
    assert why in res.warnings[0] and "applied without elemental weights" in res.warnings[0]


def test_unknown_preset_and_positional_item4():
    tag = parse_prompt("<lora:n:1:ALL:ATTNDEEPOF>")[0]     # LBW reads item 4 after the blocks as lbwe
    assert tag.elements == "ATTNDEEPOF"
    res = resolve_blocks(tag, PresetStore())
    assert res.vector is not None and res.elements.entries is None
    assert "unknown elemental preset 'ATTNDEEPOF' (close: ATTNDEEPOFF" in res.warnings[0]


# hand-computed: entries "IN04-M00:attn:0.5, NOT IN00-OUT11:NOT self_attn:2, OUT00-OUT02:in_layers proj_in:0"
SD1_TABLE = [
    (U + "input_blocks.4.1.transformer_blocks.0.attn1.to_q", 0.5),
    (U + "input_blocks.4.1.proj_in", None),
    (U + "input_blocks.4.0.in_layers.2", None),
    (U + "middle_block.1.transformer_blocks.0.attn2.to_k", 0.5),
    (U + "output_blocks.0.0.in_layers.2", 0),
    (U + "output_blocks.1.0.emb_layers.1", None),
    (U + "output_blocks.3.1.proj_in", None),
    (U + "time_embed.0", 2),                                            # outside every block: NOT side matches
    ("cond_stage_model.transformer.text_model.encoder.layers.3.mlp.fc1", 2),
    ("cond_stage_model.transformer.text_model.encoder.layers.3.self_attn.q_proj", None),
]
SDXL_TABLE = [
    (U + "input_blocks.7.1.transformer_blocks.9.attn2.to_out.0", 0.5),
    (U + "output_blocks.1.1.transformer_blocks.3.attn1.to_v", None),
    (U + "output_blocks.2.1.proj_in", 0),
    (U + "output_blocks.2.0.in_layers.2", 0),
    (U + "label_emb.0.0", 2),
    ("conditioner.embedders.1.model.transformer.resblocks.3.mlp.c_fc", 2),
    ("conditioner.embedders.0.transformer.text_model.encoder.layers.1.self_attn.k_proj", None),
]


@pytest.mark.parametrize("table", [SD1_TABLE, SDXL_TABLE], ids=["sd1", "sdxl"])
def test_per_module_weights_against_hand_table(table):
    es = entries("IN04-M00:attn:0.5, NOT IN00-OUT11:NOT self_attn:2, OUT00-OUT02:in_layers proj_in:0")
    for layer, want in table:
        assert element_weight(es, layer, slot_of_layer(layer)) == want, layer
    mods = [type("M", (), {"layer": l, "slot": slot_of_layer(l)}) for l, _ in table]
    assert element_weights(es, mods) == {l: w for l, w in table if w is not None}


def test_elements_match_below_the_model_root():
    (e,) = entries(":ff:0")     # "ff" is inside "diffusion_model"; only the feed-forward layers match
    assert e.matches(U + "output_blocks.3.1.transformer_blocks.0.ff.net.2", 17)
    assert not e.matches(U + "output_blocks.3.1.transformer_blocks.0.attn2.to_q", 17)
    assert not entries(":stage:0")[0].matches("cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1", 0)


def test_kohya_style_element_names_match():
    (e,) = entries(":attn2_to_out:0")
    assert e.matches(U + "output_blocks.3.1.transformer_blocks.0.attn2.to_out.0", 17)


def test_write_tag_freezes_preset_entries_inline():
    tag = parse_prompt("<lora:n:0.8:lbwe=ATTNDEEPOFF>")[0]
    res = resolve_blocks(tag, PresetStore())
    assert res.elements.source == "preset ATTNDEEPOFF"
    text = write_tag(tag, res)
    assert text == "<lora:n:te=0.8:lbwe=IN05-OUT05;attn;0>"
    again = resolve_blocks(parse_prompt(text)[0], None)
    assert again.elements.entries == res.elements.entries and not again.warnings


def test_elemental_presets_file_lbw_format_and_user_file(tmp_path):
    user = tmp_path / "lora_studio_presets.txt"
    (tmp_path / "lora_studio_elempresets.txt").write_text(
        "# mine\nA:IN05-OUT05:attn:1,IN05-OUT05:attn2:0.5\nBASE::0\n\nBAD:IN05:attn\n\nA:OUT03::2\n")
    store = PresetStore(user_path=user)
    el = store.elemental
    assert el.get("A") == ["OUT03::2"]                                  # later duplicate wins
    assert any("BAD" in w and "elempresets.txt:5:" in w and "preset skipped" in w for w in el.warnings)
    assert "ATTNDEEPON" in el.names() and store.get("ATTNDEEPON") is None   # separate namespaces
    el.set("B", "IN01-IN02:proj:0.5\nNOT BASE::1")
    el.save()
    again = PresetStore(user_path=user).elemental
    assert again.get("B") == ["IN01-IN02:proj:0.5", "NOT BASE::1"] and again.get("A") == ["OUT03::2"]
    with pytest.raises(Exception, match="has 4 field"):
        el.set("C", "IN01:a:b:1")
    with pytest.raises(Exception, match="contains ';'"):
        el.set("C;D", "::1")


def test_bake_lora_equals_multiplier_times_element_weight_times_delta(tmp_path):
    """bake-lora output per module = unet (or te) × (element weight if an entry matches, else block weight)
    × ΔW, in float64 against hand rules (not through effective_multiplier)."""
    from lib_lora.__main__ import main
    from lib_lora.algos import compute_delta
    from lib_lora.network import load_network
    from tests.factory import write_lora

    pick = ("input_blocks.4.1.transformer_blocks.0.attn2.to_k", "input_blocks.5.1.transformer_blocks.0.attn1.to_q",
            "middle_block.1.transformer_blocks.0.attn2.to_v", "output_blocks.4.1.transformer_blocks.0.attn2.to_q",
            "output_blocks.5.1.transformer_blocks.0.attn2.to_q", "output_blocks.3.1.transformer_blocks.0.ff.net.2",
            "input_blocks.1.0.in_layers.2", "time_embed.0", "layers.0.mlp.fc1", "layers.0.self_attn.q_proj")
    lora = write_lora(tmp_path / "st.safetensors", algo="locon", family="lycoris", rank=4, seed=3,
                      layers=lambda l: l.endswith(pick))
    lbw = "1,0.5,0,1,1,1,1,0.5,1,1,1,1,1,1,2,1,0"
    ent = "IN04-OUT04;attn2;0.25,NOT BASE;ff;0,BASE;mlp;3"
    out = tmp_path / "out.safetensors"
    tag = f"<lora:st:te=0.5:unet=0.7:lbw={lbw}:lbwe={ent}>"
    assert main(["bake-lora", "--prompt", tag, "--lora-dir", str(tmp_path), "--out", str(out)]) == 0
    from lib_lora.blocks import expand
    vec, _ = expand([float(v) for v in lbw.split(",")])
    src, baked = load_network(lora), load_network(out)
    checked, rules = 0, set()
    for k, s in src.modules.items():
        layer, slot = s.layer.replace(U, ""), s.slot   # elements match below the root
        w = vec[slot] if slot is not None else 1.0
        if slot is not None and 5 <= slot <= 18 and "attn2" in layer:
            w, _ = 0.25, rules.add("range")
        if slot != 0 and "ff" in layer:
            w, _ = 0.0, rules.add("not")
        if slot == 0 and "mlp" in layer:
            w, _ = 3.0, rules.add("base")
        m = (0.5 if s.is_te else 0.7) * w
        if m == 0:
            assert k not in baked.modules
            continue
        shape = s.tensors["lora_up.weight"].shape[0], *s.tensors["lora_down.weight"].shape[1:]
        base = torch.ones(shape, dtype=torch.float64)
        want = m * compute_delta(s, base).weight.double()
        got = compute_delta(baked.modules[k], base).weight.double()
        # the baked factors are stored in the file's float32: compare against the delta's own scale
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6 * float(want.abs().max()))
        checked += 1
    assert len(src.modules) == 10 and checked == 9 and rules == {"range", "not", "base"}


def test_elemental_export_has_its_own_header_and_imports_back(tmp_path):
    el = PresetStore(user_path=tmp_path / "lora_studio_presets.txt").elemental
    el.set("MINE", "IN05-OUT05:attn:1\nOUT03::0.5")
    text = el.export_text(user_only=True)
    assert text == "# LoRA Studio elemental presets\n\nMINE:IN05-OUT05:attn:1,OUT03::0.5\n\n"
    assert PresetStore().export_text(names=["ALL"]).startswith("# LoRA Studio presets (LBW format NAME:w1,...,wN)\n")
    fresh = PresetStore(user_path=tmp_path / "other_presets.txt").elemental
    names, warnings = fresh.import_text(text)
    assert names == ["MINE"] and warnings == [] and fresh.get("MINE") == el.get("MINE")
