"""LBW's X/Y/Z markers as block weights: `XYZ` (the varied tag) and `ZYX` (its complement on a second LoRA)."""

from __future__ import annotations

from lib_lora import syntax, tag_weights
from lib_lora.presets import PresetStore


def store(tmp_path):
    user = tmp_path / "p.txt"
    user.write_text("INS:1,1,1,0,0,0,0,0,0,0,0,0\nHALF:" + ",".join(["0.3"] * 17) + "\n")
    return PresetStore(user_path=user)


def resolved(prompt, presets, arch=None):
    return [tag_weights.resolve_blocks(t, presets, arch) for t in syntax.parse_prompt(prompt)]


def test_zyx_is_one_minus_the_first_tags_list_letters_kept(tmp_path):
    a, b = resolved("<lora:a:1:1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,R,0.7> <lora:b:1:ZYX>", store(tmp_path))
    assert b.errors == [] and b.source == "ZYX of a"
    assert b.values[:15] == [0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1]   # README's example
    assert 0 <= b.values[15] <= 1 and b.values[16] == 0.3 and b.randomised  # R kept, drawn for b itself
    assert a.vector != b.vector


def test_zyx_follows_a_preset_the_xyz_marker_and_arch_variants(tmp_path):
    ps = store(tmp_path)
    b = resolved("<lora:a:1:HALF> <lora:b:1:ZYX>", ps)[1]
    assert b.values == [0.7] * 17
    # the tag written XYZ is the one complemented, wherever it is
    r = resolved("<lora:c:1:INS> <lora:b:1:ZYX> <lora:a:1:XYZ>", ps)
    assert r[2].vector is None and r[2].source == "XYZ (all 1)" and r[2].errors == []
    assert r[1].values == [0.0] * 17                     # XYZ with no preset: all 1 → all 0
    # the other tag without block weights: 0 everywhere, in the family's format
    assert resolved("<lora:a:1> <lora:b:1:ZYX>", ps, "sdxl")[1].values == [0.0] * 12
    assert resolved("<lora:a:1:INS> <lora:b:1:ZYX>", ps, "sdxl")[1].values == [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1]


def test_zyx_alone_or_against_an_unknown_preset_is_one_clear_error(tmp_path):
    ps = store(tmp_path)
    alone = resolved("<lora:b:1:ZYX>", ps)[0]
    assert alone.vector is None and len(alone.errors) == 1 and "complements another LoRA tag" in alone.errors[0]
    bad = resolved("<lora:a:1:NOPE> <lora:b:1:ZYX>", ps)[1]
    assert bad.vector is None and "complements `a`, whose preset 'NOPE' is unknown" in bad.errors[0]


def test_webui_item_lists_are_linked_like_a_prompt(tmp_path):
    tags = syntax.parse_item_lists([["a", "1", "INS"], ["b", "0.5", "ZYX"]])
    assert tags[1].complement_of == ("a", "INS")
    assert tag_weights.resolve_blocks(tags[1], store(tmp_path)).values[:3] == [0, 0, 0]


def test_xyz_complement_write_number_noise_away():
    assert tag_weights.complement_tokens(["0.7", "0.1", "X", "1", "-0.5"]) == ["0.3", "0.9", "X", "0", "1.5"]
