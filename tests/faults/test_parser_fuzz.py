"""Hostile tag text: numbers with thousands of digits, 1e309, nan. The parser never raises; a bad tag gets
one warning or error line, and every other tag of the prompt still parses. Fuzzed with hypothesis."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lib_lora.presets import PresetStore
from lib_lora.syntax import MAX_NUMBER_CHARS, parse_prompt, write_tag
from lib_lora.tag_weights import resolve_blocks

HUGE = "1" * 5000
BLOCKS12 = ",".join(["1"] * 12)


@pytest.mark.parametrize("tag,words", [
    (f"<lora:bad:1:1:{HUGE}>", "dyn"),
    (f"<lora:bad:1:dyn={HUGE}>", "dyn"),
    (f"<lora:bad:1:step={HUGE}-{HUGE}2>", "step="),
    (f"<lora:bad:1:start={HUGE}>", "start="),
    (f"<lora:bad:1:stop=2{HUGE}>", "stop="),
    (f"<lora:bad:{HUGE}>", "too long"),
    (f"<lora:bad:1:unet={HUGE}>", "too long"),
    ("<lora:bad:1e309>", "finite"),
    ("<lora:bad:nan>", "finite"),
    ("<lora:bad:1:te=-inf>", "finite"),
    ("<lora:bad:1:x=1e400:lbw=X,1,1,1,1,1,1,1,1,1,1,1>", "finite"),
    ("<lora:bad:1:X+1e400,1,1,1,1,1,1,1,1,1,1,1>", "finite"),
    (f"<lora:bad:1:{HUGE}>", "too long"),
    (f"<lora:bad:1:lbw=0.{HUGE},1,1,1,1,1,1,1,1,1,1,1>", "too long"),
])
def test_one_bad_number_one_line_other_tags_apply(tag, words):
    tags = parse_prompt(f"a <lora:good:0.5> {tag} <lora:other:1:{BLOCKS12}>")
    assert [t.name for t in tags] == ["good", "bad", "other"]
    good, bad, other = tags
    assert good.ok and good.te == 0.5 and not good.warnings
    assert other.ok and resolve_blocks(other, None).vector is not None
    lines = bad.errors + bad.warnings + resolve_blocks(bad, None).errors
    assert any(words in line for line in lines), lines
    assert all(len(line) < 300 and "\n" not in line for line in lines)   # the 5000 digits are not echoed
    assert math.isfinite(bad.te) and math.isfinite(bad.unet_multiplier) and math.isfinite(bad.x)
    assert bad.dyn is None and bad.start is None and bad.stop is None


def test_limit_keeps_ordinary_numbers():
    t = parse_prompt("<lora:n:0.123456789012345678:dyn=12345:start=3:stop=20>")[0]
    assert t.ok and t.dyn == 12345 and (t.start, t.stop) == (3, 20) and t.te == pytest.approx(0.1234567890123)
    assert len("0.123456789012345678") <= MAX_NUMBER_CHARS


_NUMBERS = ["1", "0.5", "-1", "1e309", "-1e309", "nan", "inf", "1e-400", "0" * 31, "9" * 4400, "1" * 5000, "+", "-",
            "", " ", "2-3", "3-", "é", "\u0000"]
_BLOCK_TOKENS = st.sampled_from(_NUMBERS + ["X", "X+0.5", "X-1e400", "X+" + "1" * 400, "R", "U", "face"])
_KEYS = ["te", "unet", "dyn", "lbw", "w", "x", "start", "stop", "step", "lbwe", "", "TE"]
_ITEM = st.one_of(
    st.sampled_from(_NUMBERS + ["face", "ALL", "=", "=="]),
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(_KEYS), st.sampled_from(_NUMBERS)),
    st.builds(lambda a, b: f"step={a}-{b}", st.sampled_from(_NUMBERS), st.sampled_from(_NUMBERS)),
    st.lists(_BLOCK_TOKENS, min_size=1, max_size=27).map(",".join),
    st.builds(lambda v: f"lbw={v}", st.lists(_BLOCK_TOKENS, min_size=1, max_size=27).map(",".join)),
    st.text(alphabet="0123456789.,+-eEXRUnaif=: <>", max_size=40),
)
_TAG = st.builds(lambda kind, items: f"<{kind}:" + ":".join(items) + ">",
                 st.sampled_from(["lora", "lyco", "hypernet"]),
                 st.tuples(st.sampled_from(["n", "", "te=1"]), st.lists(_ITEM, max_size=6)).map(lambda t: [t[0], *t[1]]))
_PROMPT = st.lists(st.one_of(_TAG, st.text(max_size=20)), max_size=6).map(" ".join)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_PROMPT, st.sampled_from([None, "sd1", "sdxl"]), st.integers(0, 2**32))
def test_parse_prompt_never_raises(text, arch, seed):
    presets = PresetStore()
    for tag in parse_prompt(text):
        assert isinstance(tag.errors, list) and isinstance(tag.warnings, list)
        assert all(isinstance(m, str) and "\n" not in m for m in tag.errors + tag.warnings)
        assert math.isfinite(tag.te) and math.isfinite(tag.unet_multiplier) and math.isfinite(tag.x)
        assert tag.dyn is None or (isinstance(tag.dyn, int) and tag.dyn > 0)
        res = resolve_blocks(tag, presets, arch, seed)
        if res.vector is not None:
            assert len(res.vector) == 26 and all(math.isfinite(v) for v in res.vector)
        write_tag(tag, res)
