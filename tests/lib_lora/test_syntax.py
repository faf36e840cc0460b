"""syntax.py: every form, decision-table row and bad-input rule of docs/spec/prompt_syntax.md §2, §5, the
reference examples, block resolution, canonical formatting, start/stop; hypothesis fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lib_lora import blocks as B
from lib_lora.presets import PresetStore
from lib_lora.syntax import (LoraTag, edit_blocks, edit_key, edit_name, edit_weight, format_number, parse_items,
                             parse_params, parse_prompt, rewrite_prompt, short_tag, split_items, write_tag)
from lib_lora.tag_weights import resolve_blocks
from tests.paths import REPO

PRESETS = PresetStore()
L17 = ",".join(["1"] * 17)


def one(prompt: str) -> LoraTag:
    tags = parse_prompt(prompt)
    assert len(tags) == 1, tags
    return tags[0]


# ---- docs/spec/prompt_syntax.md §1 A1111 tag scanning -------------------------------------------------------

def test_scan_kinds_and_spans():
    text = "a <lora:a:0.5> b <lyco:b> <hypernet:h:1> <LORA:c> <lora:d:1:te=2>"
    tags = parse_prompt(text)
    assert [(t.kind, t.name) for t in tags] == [("lora", "a"), ("lyco", "b"), ("lora", "d")]
    assert text[tags[0].span[0]:tags[0].span[1]] == "<lora:a:0.5>" == tags[0].text
    assert tags[2].te == 2  # named te overrides positional 1


def test_split_items_a1111_rule():
    pos, named, dups = split_items(" n :0.5: te=0.7 :a=b=c:lbw= face ")
    assert pos == [" n ", "0.5", "a=b=c"]           # a=b=c has 3 parts → positional
    assert named == {"te": "0.7 ", "lbw": " face "}
    assert dups == []
    tag = parse_params(pos, named)
    assert tag.name == "n" and tag.te == 0.7 and tag.blocks == "face"
    # a=b=c landed in position 2 → read as a preset name (unknown later)
    assert tag.unet is None


def test_parse_items_matches_parse_prompt():
    items = ["n", "0.5", "te=0.7", "te=0.9", "face"]
    tag = parse_items(items)
    assert (tag.name, tag.te, tag.blocks) == ("n", 0.9, "face") and "te= given twice" in tag.warnings[0]
    assert not parse_items([]).ok


def test_items_are_stripped():
    tag = one("<lora: my lora : 0.5 : 0.25 >")
    assert (tag.name, tag.te, tag.unet) == ("my lora", 0.5, 0.25) and tag.ok


def test_argument_runs_to_first_gt():
    tags = parse_prompt("<lora:n:1:lbw=1,1>0>")
    assert tags[0].text == "<lora:n:1:lbw=1,1>"


# ---- docs/spec/prompt_syntax.md §2 accepted forms -----------------------------------------------------------

@pytest.mark.parametrize("prompt, te, unet, blocks, dyn", [
    ("<lora:name>", 1, 1, None, None),
    ("<lora:name:0.7>", 0.7, 0.7, None, None),
    ("<lora:name:0.7:0.2>", 0.7, 0.2, None, None),
    ("<lora:name:0.7:face>", 0.7, 0.7, "face", None),
    (f"<lora:name:0.7:{L17}>", 0.7, 0.7, L17, None),
    ("<lora:name:0.7:" + ",".join(["1"] * 12) + ">", 0.7, 0.7, ",".join(["1"] * 12), None),
    ("<lora:name:0.7:" + ",".join(["1"] * 20) + ">", 0.7, 0.7, ",".join(["1"] * 20), None),
    ("<lora:name:0.7:" + ",".join(["1"] * 26) + ">", 0.7, 0.7, ",".join(["1"] * 26), None),
    ("<lora:name:0.7:0.2:OUTALL>", 0.7, 0.2, "OUTALL", None),
    (f"<lora:name:0.7:0.2:{L17}>", 0.7, 0.2, L17, None),
    ("<lora:name:0.7:0.2:8>", 0.7, 0.2, None, 8),
    ("<lyco:name:0.7:0.2:8>", 0.7, 0.2, None, 8),
    ("<lora:name:-1.5:3>", -1.5, 3, None, None),  # nothing is clamped
])
def test_forms(prompt, te, unet, blocks, dyn):
    tag = one(prompt)
    assert tag.ok and tag.warnings == []
    assert (tag.name, tag.te, tag.unet_multiplier, tag.blocks, tag.dyn) == ("name", te, unet, blocks, dyn)


# decision table rows
def test_row_pos0_empty_name():
    for prompt in ("<lora::1>", "<lora: :1>"):
        tag = one(prompt)
        assert not tag.ok and "without a name" in tag.errors[0]
    assert not parse_params([], {}).ok


def test_first_item_with_equals_is_not_a_name():
    tag = one("<lora:a=b:1>")  # A1111 would look for a LoRA called "1"
    assert not tag.ok and "first item 'a=b' contains '='" in tag.errors[0]
    tag = parse_params(["1"], {"a": "b"})  # parse_params alone cannot see the order
    assert tag.name == "1"


def test_row_pos1_number_and_not():
    assert one("<lora:n:0.3>").te == 0.3
    tag = one("<lora:n:abc>")
    assert tag.errors == ["`n`: weight 'abc' is not a number"]
    tag = one(f"<lora:n:{L17}>")  # list where the weight belongs
    assert not tag.ok and "block weights go after the weight" in tag.errors[0]


def test_row_pos2():
    assert one("<lora:n:1:0.4>").unet == 0.4
    assert one(f"<lora:n:1:{L17}>").blocks == L17
    tag = one("<lora:n:1:paint>")
    assert tag.blocks == "paint" and tag.unet is None


def test_row_pos3_after_number():
    assert one("<lora:n:1:0.5:16>").dyn == 16
    assert one("<lora:n:1:0.5:face>").blocks == "face"
    assert one(f"<lora:n:1:0.5:{L17}>").blocks == L17
    tag = one("<lora:n:1:0.5:2.5>")
    assert tag.dyn is None and tag.ok and "dyn '2.5' is not a positive integer" in tag.warnings[0]


def test_row_pos3_after_blocks_is_x():
    tag = one("<lora:n:1:face:0.3>")
    assert tag.blocks == "face" and tag.x == 0.3 and tag.ok
    tag = one(f"<lora:n:1:{L17}:-2>")
    assert tag.x == -2


def test_row_pos3_other_and_pos4_warn():
    tag = one("<lora:n:1:face:abc>")  # LBW reads an elemental preset name at item 4
    assert tag.ok and tag.x == 1 and tag.elements == "abc" and tag.warnings == []
    tag = one("<lora:n:1:0.5:8:extra>")
    assert tag.ok and tag.dyn == 8 and tag.warnings == ["`n`: extra item 5 'extra' ignored"]


def test_empty_items_warn():
    tag = one("<lora:n::0.5>")
    assert tag.ok and tag.te == 1 and tag.unet == 0.5 and "empty item 1" in tag.warnings[0]


# named keys
def test_named_keys():
    tag = one("<lora:n:te=0.8:unet=0.6:dyn=4:lbw=face:x=0.5:start=3:stop=9>")
    assert (tag.te, tag.unet, tag.dyn, tag.blocks, tag.x, tag.start, tag.stop) == (0.8, 0.6, 4, "face", 0.5, 3, 9)
    assert tag.ok and tag.warnings == []
    tag = one("<lora:n:te=0.8>")
    assert tag.unet is None and tag.unet_multiplier == 0.8  # unet defaults to te
    assert one("<lora:n:1:w=paint>").blocks == "paint"      # w= is lbw=, not the weight
    assert one("<lora:n:1:w=paint>").te == 1


def test_named_overrides_positional():
    tag = one("<lora:n:0.5:0.4:face:te=0.9:unet=0.1:lbw=soft>")
    assert (tag.te, tag.unet, tag.blocks) == (0.9, 0.1, "soft")
    tag = one("<lora:n:abc:te=0.9>")  # a valid named te replaces the bad positional one
    assert tag.ok and tag.te == 0.9
    tag = one("<lora:n:1:1,2:lbw=face>")  # bad positional list overridden
    assert tag.ok and tag.blocks == "face"
    tag = one("<lora:n:1:0.5:8:dyn=2>")
    assert tag.dyn == 2
    tag = one("<lora:n:1:face:0.3:x=0.7>")
    assert tag.x == 0.7


def test_lbw_and_w_both():
    tag = one("<lora:n:1:lbw=face:w=paint>")
    assert tag.blocks == "face" and "both lbw= and w= given" in tag.warnings[0]


def test_step_forms():
    tag = one("<lora:n:1:step=5-20>")
    assert (tag.start, tag.stop) == (5, 20) and tag.warnings == []
    tag = one("<lora:n:1:start=4>")
    assert (tag.start, tag.stop) == (4, None)
    tag = one("<lora:n:1:stop=4>")
    assert (tag.start, tag.stop) == (None, 4)
    tag = one("<lora:n:1:step=5-20:start=7>")
    assert (tag.start, tag.stop) == (7, 20) and "start=/stop= used" in tag.warnings[0]


# examples (docs/spec/prompt_syntax.md §2.2)
def test_reference_examples():
    tag = one("<lora:hinaLora:0.75:1,1,1,1,1,1,1,1.5,1,1,1,1,1,1,1,1,1>")
    r = resolve_blocks(tag, PRESETS)
    assert tag.te == tag.unet_multiplier == 0.75 and r.count == 17
    assert r.vector[B.SLOT["M00"]] == 1.5 and r.source == "list"
    tag = one("<lora:name:0.8:face>")
    r = resolve_blocks(tag, PRESETS, arch="sd1")
    assert tag.te == tag.unet_multiplier == 0.8 and r.source == "preset face"
    tag = one("<lora:name:1:0.6:OUTALL>")
    r = resolve_blocks(tag, PRESETS, arch="sd1")
    assert (tag.te, tag.unet) == (1, 0.6) and r.values == [float(v) for v in PRESETS.get("OUTALL")]
    tag = one("<lora:name:1:lbw=X,1,1,1,1,1,1,1,X,X,X,1,1,1,1,1,1:x=0.3>")
    r = resolve_blocks(tag, PRESETS)
    assert r.values[0] == 0.3 and r.values[8:11] == [0.3] * 3 and r.values[1] == 1
    tag = one("<lora:name:0.8:w=face:step=5-20>")
    assert (tag.te, tag.blocks, tag.start, tag.stop) == (0.8, "face", 5, 20) and tag.ok


def test_worked_example_face_and_paint():
    """docs/spec/blocks.md §6: OUT05 (slot 19) under face → 0.8 × 1; under paint → off."""
    for preset, factor in (("face", 1.0), ("paint", 0.0)):
        tag = one(f"<lora:x:0.8:{preset}>")
        r = resolve_blocks(tag, PRESETS, arch="sd1")
        assert tag.unet_multiplier * r.vector[19] == pytest.approx(0.8 * factor)


# ---- docs/spec/prompt_syntax.md §5 bad input ----------------------------------------------------------------

@pytest.mark.parametrize("prompt, key", [
    ("<lora:n:te=abc>", "te='abc'"),
    ("<lora:n:1:unet=x1>", "unet='x1'"),
    ("<lora:n:1:face:x=oops>", "x='oops'"),
    ("<lora:n:1:te=nan>", "te='nan'"),
    ("<lora:n:inf>", "weight 'inf'"),
])
def test_bad_numbers_are_errors(prompt, key):
    tag = one(prompt)
    assert not tag.ok and key in tag.errors[0] and tag.errors[0].startswith("`n`:")


def test_wrong_count_error_exact():
    tag = one("<lora:foo:1:" + ",".join(["1"] * 15) + ">")
    assert tag.errors == ["`foo`: 15 block weights given; accepted counts are 12 (SDXL LoRA), 17 (SD1/SD2 LoRA), "
                          "20 (SDXL full), 26 (SD1/SD2 full)"]
    tag = one("<lora:foo:1:lbw=" + ",".join(["1"] * 61) + ">")
    assert not tag.ok and tag.errors[0].endswith("Flux is not supported")
    tag = one("<lora:foo:1:lbw=0.5>")  # a lone number is a 1-value list
    assert "1 block weights given" in tag.errors[0]


def test_non_numeric_entry_names_position_and_value():
    tag = one("<lora:foo:1:1,1,1,q,1,1,1,1,1,1,1,1,1,1,1,1,1>")
    assert tag.errors == ["`foo`: block weight 4 'q' is not a number nor R, U, X, X+n, X-n"]
    tag = one("<lora:foo:1:1,1,,1,1,1,1,1,1,1,1,1>")
    assert "block weight 3 empty value" in tag.errors[0]
    tag = one("<lora:foo:1:" + ",".join(["R", "U", "X", "X+0.2", "X-0.3"] + ["1"] * 12) + ">")
    assert tag.ok


def test_unknown_preset_is_an_error_like_a_wrong_count():
    """One rule for invalid block specs: the LoRA is skipped with one message naming the fix."""
    tag = one("<lora:foo:1:fcae>")
    assert tag.ok
    r = resolve_blocks(tag, PRESETS)
    assert r.vector is None and r.warnings == []
    assert r.errors == ["`foo`: unknown preset 'fcae' (close: face, Nface); use a preset name from the Presets "
                        "tab or a list of 12/17/20/26 weights"]
    r = resolve_blocks(one("<lora:foo:1:zzzzzz>"), PRESETS)
    assert r.errors and "unknown preset 'zzzzzz';" in r.errors[0] and r.warnings == []
    r = resolve_blocks(one("<lora:foo:1:face>"), None)  # no store at all
    assert r.vector is None and "unknown preset" in r.errors[0]
    r = resolve_blocks(one("<lora:foo:1:1,1,1>"), PRESETS)  # the wrong count: the same kind of outcome
    assert r.vector is None and r.errors and "3 block weights given" in r.errors[0]


@pytest.mark.parametrize("prompt", ["<lora:n:1:dyn=0>", "<lora:n:1:dyn=-3>", "<lora:n:1:dyn=2.5>",
                                    "<lora:n:1:dyn=abc>", "<lora:n:1:0.5:0>"])
def test_bad_dyn_warns(prompt):
    tag = one(prompt)
    assert tag.ok and tag.dyn is None and "not a positive integer; ignored" in tag.warnings[0]


@pytest.mark.parametrize("prompt, why", [
    ("<lora:n:1:start=abc>", "start=abc"), ("<lora:n:1:stop=-2>", "stop=-2"), ("<lora:n:1:start=0>", "start=0"),
    ("<lora:n:1:step=5>", "step=5"), ("<lora:n:1:step=a-b>", "step=a-b"), ("<lora:n:1:step=0-3>", "step=0-3"),
    ("<lora:n:1:start=9:stop=3>", "start 9 is not before stop 3"), ("<lora:n:1:step=7-7>", "start 7"),
])
def test_bad_schedule_warns(prompt, why):
    tag = one(prompt)
    assert tag.ok and tag.start is None and tag.stop is None
    assert why in " ".join(tag.warnings) and "ignored" in " ".join(tag.warnings)


def test_unknown_keys_warn():
    tag = one("<lora:n:1:lbwe=IN02:foo=1>")
    assert tag.ok and tag.elements == "IN02"
    assert tag.warnings == ["`n`: unknown key 'foo=' ignored"]


def test_x_without_blocks_warns():
    tag = one("<lora:n:1:x=0.5>")
    assert tag.ok and "x= has no effect" in tag.warnings[0]


def test_duplicate_key_and_duplicate_lora():
    tags = parse_prompt("<lora:a:te=1:te=0.5> <lora:b> <lora:a:0.3> <lora:a>")
    assert tags[0].te == 0.5 and "te= given twice" in tags[0].warnings[0]
    assert all(t.ok for t in tags)
    assert "appears more than once" in tags[2].warnings[0]
    assert not any("more than once" in w for w in tags[3].warnings)  # warned once
    assert len([t for t in tags if t.name == "a"]) == 3  # all occurrences kept


# ---- resolve_blocks -------------------------------------------------------------------------------

def test_resolve_random_is_seeded_and_reported():
    tag = one("<lora:n:1:lbw=R,U,R,U,R,U,1,1,1,1,1,1>")
    a = resolve_blocks(tag, PRESETS, seed=42)
    b = resolve_blocks(tag, PRESETS, seed=42)
    c = resolve_blocks(tag, PRESETS, seed=43)
    assert a.randomised and a.values == b.values and a.values != c.values
    for v in a.values[0:6:2]:
        assert 0 <= v < 1 and round(v, 3) == v
    for v in a.values[1:6:2]:
        assert -0.5 <= v <= 1.5 and round(v, 3) == v
    assert a.count == 12 and len(a.vector) == 26 and sum(a.listed) == 12


def test_resolve_random_range_statistics():
    tag = one("<lora:n:1:lbw=" + ",".join(["U"] * 26) + ">")
    vals = [v for s in range(40) for v in resolve_blocks(tag, PRESETS, seed=s).values]
    assert min(vals) < -0.3 and max(vals) > 1.3  # U spans -0.5..1.5, not 0..1 or -1.5..1.5
    assert min(vals) >= -0.5 and max(vals) <= 1.5


def test_resolve_x_offsets():
    tag = one("<lora:n:1:lbw=X,X+0.2,X-0.3,X+1,1,1,1,1,1,1,1,1:x=0.1>")
    r = resolve_blocks(tag, PRESETS)
    assert r.values[:4] == [0.1, 0.3, -0.2, 1.1] and not r.randomised


def test_resolve_arch_variant_and_case_note():
    tag = one("<lora:n:1:ALL>")
    r = resolve_blocks(tag, PRESETS, arch="sdxl")
    assert r.source == "preset ALL_XL" and r.count == 12 and r.vector[B.SLOT["OUT01"]] == 1
    r = resolve_blocks(tag, PRESETS, arch="sd1")
    assert r.source == "preset ALL" and r.count == 17 and r.vector[B.SLOT["OUT01"]] == 0
    r = resolve_blocks(one("<lora:n:1:Face>"), PRESETS)
    assert r.source == "preset face" and "case differs" in r.warnings[0]


def test_resolve_feeds_unlisted_warning():
    r = resolve_blocks(one("<lora:foo:1:ALL>"), PRESETS, arch=None)  # 17-value
    used = [B.SLOT["OUT00"], B.SLOT["OUT01"], B.SLOT["IN04"]]
    msg = B.unlisted_warning("foo", "sdxl", r.count, used, r.listed)
    assert msg.startswith("LoRA 'foo' (SDXL) has weights in OUT00, OUT01")


def test_resolve_none_and_error():
    assert resolve_blocks(one("<lora:n:1>"), PRESETS).vector is None
    r = resolve_blocks(one("<lora:n:1:1,1>"), PRESETS)
    assert r.vector is None and "2 block weights" in r.errors[0]


# ---- write_tag / rewrite -----------------------------------------------------------------------------

def test_format_tag_canonical():
    assert write_tag(one("<lora:n>")) == "<lora:n>"
    assert write_tag(one("<lora:n:0.8:0.6:face>")) == "<lora:n:te=0.8:unet=0.6:lbw=face>"
    assert write_tag(one("<lora:n:0.8:0.8>")) == "<lora:n:te=0.8>"
    assert write_tag(one("<lyco:n:1:0.5:4>")) == "<lyco:n:unet=0.5:dyn=4>"
    assert write_tag(one("<lora:n:1:face:0.3:step=2-9>")) == "<lora:n:lbw=face:x=0.3:start=2:stop=9>"
    tag = one("<lora:n:1:lbw=X, R ,1,1,1,1,1,1,1,1,1,1:x=0.5>")
    assert write_tag(tag) == "<lora:n:lbw=X,R,1,1,1,1,1,1,1,1,1,1:x=0.5>"
    r = resolve_blocks(tag, PRESETS, seed=1)
    frozen = write_tag(tag, r)
    assert frozen.startswith("<lora:n:lbw=0.5,") and "x=" not in frozen and "R" not in frozen
    again = one(frozen)
    assert resolve_blocks(again, PRESETS).vector == r.vector  # the infotext reproduces the draw
    # frozen preset: the pasted prompt no longer depends on the preset file
    t = one("<lora:n:0.7:face>")
    assert write_tag(t, resolve_blocks(t, PRESETS, arch="sd1")) == (
        "<lora:n:te=0.7:lbw=1,0,0,0,0,0,0,0,0.8,1,1,0.2,0,0,0,0,0>")
    # unknown preset stays as written
    t = one("<lora:n:1:nosuch>")
    assert write_tag(t, resolve_blocks(t, PRESETS)) == "<lora:n:lbw=nosuch>"


def test_rewrite_prompt():
    text = "a cat <lora:n:0.8:face>, <hypernet:h:1> <lora:m:1>"
    out = rewrite_prompt(text, lambda t: write_tag(t) if t.name == "n" else None)
    assert out == "a cat <lora:n:te=0.8:lbw=face>, <hypernet:h:1> <lora:m:1>"
    assert rewrite_prompt("no tags", lambda t: "x") == "no tags"


def test_rewrite_prompt_removes_with_empty_text_and_leaves_other_networks():
    text = "a <lora:x:1> b <lyco:y:2> <hypernet:z:1>"
    assert rewrite_prompt(text, lambda t: "") == "a  b  <hypernet:z:1>"
    # A1111's regex: a `<hypernet:…` argument runs to the first '>', so the lora inside it is not a tag
    assert rewrite_prompt("<hypernet:a<lora:b:1>", lambda t: "") == "<hypernet:a<lora:b:1>"


# ---- editing tags as written (X/Y/Z) ------------------------------------------------------------------

@pytest.mark.parametrize("text,w,expected", [
    ("<lora:foo>", 0.5, "<lora:foo:0.5>"),
    ("<lora:foo:1:0.5:face>", 2, "<lora:foo:2:2:face>"),
    ("<lora:foo:1:te=0.3:UNET=0.2>", 0.7, "<lora:foo:0.7:te=0.7:unet=0.7>"),
    ("<lyco:foo:1:face:0.3>", 0.25, "<lyco:foo:0.25:face:0.3>"),       # position 3 is x here, not unet
    ("<lora:foo:1:0.5:4>", 0.1234567, "<lora:foo:0.1234567:0.1234567:4>"),  # exact, not 6 digits
])
def test_edit_weight(text, w, expected):
    assert edit_weight(one(text), w) == expected
    back = one(expected)
    assert back.te == back.unet_multiplier == w


@pytest.mark.parametrize("text,value,expected", [
    # the positional x after positional blocks must not slide into the unet position
    ("<lora:foo:1:face:0.3>", "ALL", "<lora:foo:1:x=0.3:lbw=ALL>"),
    ("<lora:foo:1:face:0.3>", "1,1,1,1,1,1,1,1,1,1,1,1", "<lora:foo:1:lbw=1,1,1,1,1,1,1,1,1,1,1,1>"),
    ("<lora:foo:1:face:0.3>", "X,1,1,1,1,1,1,1,1,1,1,1", "<lora:foo:1:x=0.3:lbw=X,1,1,1,1,1,1,1,1,1,1,1>"),
    ("<lora:foo:1:0.5:face>", "ALL", "<lora:foo:1:0.5:lbw=ALL>"),
    ("<lora:foo:1:w=face:x=0.2>", "1,0,X", "<lora:foo:1:x=0.2:lbw=1,0,X>"),
    ("<lora:foo:1:w=face:x=0.2>", "1,0,1", "<lora:foo:1:lbw=1,0,1>"),
    ("<lora:foo:1:w=face:x=0.2>", "mine", "<lora:foo:1:x=0.2:lbw=mine>"),  # a preset may use X
    ("<lora:foo:1:lbw=a:w=b>", "c", "<lora:foo:1:lbw=c>"),
    ("<lora:foo:1:0.5:4>", "face", "<lora:foo:1:0.5:4:lbw=face>"),
])
def test_edit_blocks(text, value, expected):
    tag = one(text)
    out = edit_blocks(tag, value)
    assert out == expected
    back = one(out)
    assert (back.te, back.unet_multiplier, back.blocks, back.dyn) == (tag.te, tag.unet_multiplier, value, tag.dyn)


def test_edit_blocks_keeps_the_weights_of_a_positional_x_tag():
    """Old bug: `<lora:foo:1:face:0.3>` with the blocks axis became `<lora:foo:1:0.3:lbw=ALL>` (unet 0.3)."""
    back = one(edit_blocks(one("<lora:foo:1:face:0.3>"), "ALL"))
    assert back.unet_multiplier == 1 and back.warnings == []


def test_edit_key_and_name():
    tag = one("<lora:foo:1:lbw=X,1,1,1,1,1,1,1,1,1,1,1:X=0.1>")
    assert edit_key(tag, "x", "0.5") == "<lora:foo:1:lbw=X,1,1,1,1,1,1,1,1,1,1,1:x=0.5>"
    assert edit_name(one("<lora:foo:0.8:face>"), "foo-000004") == "<lora:foo-000004:0.8:face>"
    assert edit_name(one("<lora: foo :0.8>"), "bar") == "<lora:bar:0.8>"


# ---- the one number format -------------------------------------------------------------------------

def test_format_number_examples():
    assert [format_number(v) for v in (1.0, -2, 0.5, 0.1 + 0.2, 1e-7, 1e16, 0.1234567)] == [
        "1", "-2", "0.5", "0.30000000000000004", "1e-07", "1e+16", "0.1234567"]


@settings(max_examples=2000, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_format_number_round_trips_through_the_parser(v):
    """parse(format(x)) == x for every finite float: as a weight, a named key, and a block value."""
    s = format_number(v)
    tag = one(f"<lora:n:{s}:unet={s}:lbw={','.join([s] * 12)}:x={s}>")
    assert tag.ok, tag.errors
    assert tag.te == tag.unet == tag.x == v
    assert resolve_blocks(tag, PRESETS).values == [v] * 12


# ---- start / stop -------------------------------------------------------------------------------------

def test_start_stop_lbw_rule():
    from lib_lora.patcher import gated_off

    def unet_active(t, s):
        return not gated_off(t, s)

    t = one("<lora:n:1:step=5-20>")
    on = [s for s in range(30) if unet_active(t, s)]
    # 0-based steps 4..18 = 1-based steps 5..19 (active for A … B−1)
    assert on == list(range(4, 19))
    assert [s for s in range(5) if unet_active(one("<lora:n:1:start=1>"), s)] == [0, 1, 2, 3, 4]
    assert [s for s in range(5) if unet_active(one("<lora:n:1:start=2>"), s)] == [1, 2, 3, 4]
    assert [s for s in range(5) if unet_active(one("<lora:n:1:stop=3>"), s)] == [0, 1]
    assert all(unet_active(one("<lora:n>"), s) for s in range(50))

    class Active:  # the rule reads only .start/.stop
        start, stop = 3, None
    assert not unet_active(Active(), 1) and unet_active(Active(), 2)


# ---- hypothesis -------------------------------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_chars = st.sampled_from(list("<>:=,.-+ _#XRUxyzLOAloa0123456789\n\t") + ["lora", "lyco", "lbw", "te", "1e5",
                                                                          "nan", "inf", "step", "start"])


@FUZZ
@given(st.lists(_chars, max_size=60).map("".join))
def test_fuzz_parse_prompt_never_raises(text):
    for tag in parse_prompt("<lora:" + text + ">" + text):
        assert isinstance(tag.errors, list) and isinstance(tag.warnings, list)
        r = resolve_blocks(tag, PRESETS, arch="sdxl", seed=1)
        assert r.vector is None or len(r.vector) == 26
        write_tag(tag, r)


@FUZZ
@given(st.lists(st.text(max_size=12), max_size=8), st.dictionaries(st.text(max_size=6), st.text(max_size=12),
                                                                     max_size=5))
def test_fuzz_parse_params_never_raises(positional, named):
    tag = parse_params(positional, named)
    assert tag.ok == (not tag.errors)
    resolve_blocks(tag, PRESETS, seed=0)


_num = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
_token = st.one_of(_num.map(repr), st.sampled_from(["R", "U", "X", "X+0.2", "X-0.3", "0", "1", "-1.5"]))


@st.composite
def valid_tags(draw):
    name = draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC_-.0123456789 ", min_size=1, max_size=16)
                .map(str.strip).filter(bool))
    tag = LoraTag(name=name, te=draw(_num), kind=draw(st.sampled_from(["lora", "lyco"])))
    tag.unet = draw(st.one_of(st.none(), _num))
    tag.dyn = draw(st.one_of(st.none(), st.integers(1, 1024)))
    kind = draw(st.sampled_from(["none", "preset", "list"]))
    if kind == "preset":
        tag.blocks = draw(st.sampled_from(PRESETS.names()))
    elif kind == "list":
        n = draw(st.sampled_from([12, 17, 20, 26]))
        tag.blocks = ",".join(draw(st.lists(_token, min_size=n, max_size=n)))
    if tag.blocks is not None:
        tag.x = draw(_num)
    start = draw(st.one_of(st.none(), st.integers(1, 200)))
    stop = draw(st.one_of(st.none(), st.integers(1, 200)))
    if start is not None and stop is not None and start >= stop:
        start, stop = stop, start + stop
        if start == stop:
            stop += 1
    tag.start, tag.stop = start, stop
    return tag


@FUZZ
@given(valid_tags(), st.integers(0, 2**31))
def test_fuzz_format_round_trip(tag, seed):
    text = write_tag(tag)
    back = one(text)
    assert back.ok and back.warnings == [], (text, back.errors, back.warnings)
    assert (back.name, back.kind, back.te, back.unet_multiplier, back.dyn, back.blocks, back.x, back.start,
            back.stop) == (tag.name, tag.kind, tag.te, tag.unet_multiplier, tag.dyn, tag.blocks, tag.x,
                           tag.start, tag.stop)
    # frozen form reproduces the resolved vector exactly
    r = resolve_blocks(tag, PRESETS, arch="sdxl", seed=seed)
    frozen = one(write_tag(tag, r))
    assert frozen.ok
    r2 = resolve_blocks(frozen, PRESETS, arch="sdxl", seed=seed + 1)
    assert r2.vector == r.vector and not r2.randomised


def test_short_tag_reads_back():
    assert short_tag("n", 0.75, "face") == "<lora:n:0.75:face>"
    assert short_tag("n", 1.0, "") == short_tag("n", 1.0) == "<lora:n:1>"
    tag = one(short_tag("n", -0.1234567, "1,0,1,0,1,0,1,0,1,0,1,0"))
    assert (tag.te, tag.unet_multiplier, tag.errors) == (-0.1234567, -0.1234567, [])
    assert tag.blocks == "1,0,1,0,1,0,1,0,1,0,1,0"


def test_the_tag_grammar_has_one_home():
    """Item 5 of issue 8: the `<lora:…>` pattern and A1111's named-item rule are written in syntax.py only
    (lora_studio_webui/tags.py once restated both)."""
    import re
    from pathlib import Path
    root = REPO
    grammar = re.compile(r"\[\^>\]|split\(\s*['\"]=['\"]\s*,\s*2\s*\)")
    homes = sorted(str(p.relative_to(root)) for pkg in ("lib_lora", "lora_studio_webui", "scripts")
                   for p in (root / pkg).rglob("*.py") if grammar.search(p.read_text(encoding="utf-8")))
    assert homes == ["lib_lora/syntax.py"]
