"""docs/guide.md and README.md against the code: the options, verbs and presets they name exist (a renamed or
dropped option must take its sentence in the guide with it)."""

from __future__ import annotations

import re
from pathlib import Path

from lib_lora.__main__ import build_parser
from lib_lora.presets import DEFAULT_BUILTIN, XL_SUFFIX, PresetStore

ROOT = Path(__file__).resolve().parents[2]
GUIDE = (ROOT / "docs" / "guide.md").read_text(encoding="utf-8")
README = (ROOT / "README.md").read_text(encoding="utf-8")
# AUTOMATIC1111's own command-line options the guide talks about (not ours to define)
WEBUI_FLAGS = {"--listen", "--share", "--server-name", "--enable-insecure-extension-access", "--api-auth",
               "--lora-dir", "--lyco-dir-backcompat", "--no-half"}


def _verbs() -> dict[str, set[str]]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return {name: set(p._option_string_actions) for name, p in sub.choices.items()}


def _spans(text: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", text)


def test_every_option_the_docs_name_exists():
    verbs = _verbs()
    ours = set().union(*verbs.values()) | {"--help", "--version"}
    for doc in (GUIDE, README):
        named = {f for span in _spans(doc) for f in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", span)}
        assert named - ours - WEBUI_FLAGS == set()


def test_options_shown_with_a_verb_belong_to_that_verb():
    verbs = _verbs()
    checked = 0
    for span in _spans(GUIDE) + _spans(README):
        words = span.replace("python -m lib_lora ", "").split()
        if words and words[0] in verbs:
            flags = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", span))
            assert flags - verbs[words[0]] == set(), span
            checked += bool(flags)
    assert checked >= 5           # the verb table and the examples were found


def test_every_verb_is_documented():
    for verb in _verbs():
        assert f"`{verb} " in GUIDE or f"`{verb}`" in GUIDE, verb


def test_the_shipped_presets_the_guide_lists_are_the_shipped_ones():
    shipped = {n for n in PresetStore(DEFAULT_BUILTIN, None).names() if not n.endswith(XL_SUFFIX)}
    para = GUIDE[GUIDE.index("The shipped presets"):GUIDE.index("`NAME_XL`")]
    listed = {w.rstrip(".") for w in re.findall(r"[A-Za-z][A-Za-z0-9.]*", para.split("hold", 1)[1])} - {
        "LoRA", "Block", "Weight", "s", "defaults", "and", "the", "community", "presets"}
    assert listed == shipped


def test_readme_names_what_the_browser_tests_need_and_the_skip_reason_matches():
    from tests import browser
    assert "chromium" in README and "chromium-driver" in README and "skipped" in README
    old = browser.CHROMIUM
    try:
        browser.CHROMIUM = str(ROOT / "no-such-chromium")
        reason = browser.chromium_missing()
    finally:
        browser.CHROMIUM = old
    assert reason and "apt-get install chromium chromium-driver" in reason
