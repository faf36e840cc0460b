"""The plain-Python CLIP tokenizer gives transformers' CLIPTokenizer ids (the same vocabulary files)."""

import os
import random

import pytest

from lib_lora.sd.tokenizer import CLIPTokenizer, default_tokenizer
from tests.paths import FIXTURES, REPO

FIXTURE = os.path.join(FIXTURES, "clip-l-offline")

FIXED = [
    "", " ", "a photo of a cat", "masterpiece, best quality, 1girl, solo, (long hair:1.2), [blue eyes]",
    "(((red dress))), {green|blue} sky, <lora:myLora:0.8>, <lyco:x:1:0.5>", "BREAK AND break", "don't it's we're I'M",
    "you'll they've he'd 'quoted' \"double\"", "3.14159 and 1,000,000 and 2024-01-01", "x1.5 4k 8K uhd",
    "naïve café résumé Ångström", "Ärger über Öl", "日本語のテキスト 中文字符 한국어", "emoji 😀👍🏽 🇯🇵", "tab\tand\nnewline\r\n",
    "zero\u200bwidth\u00adsoft hyphen", "control\x00\x07chars\ufffd", "fullwidth ＡＢＣ１２３", "ﬁ ligature ﬀ", "Ελληνικά κείμενο",
    "русский текст, кириллица", "عربي نص", "हिन्दी", "mixed123abc456", "under_score snake_case_name", "a--b__c..d!!e??",
    "<|startoftext|>inside<|endoftext|>", "UPPER lower MiXeD", "e\u0301 combining accent", "ｶﾀｶﾅ halfwidth",
    "score_9, score_8_up, rating_safe", "@user #hashtag $100 %50 ^caret &amp; *star", "a" * 300,
    "very " * 100 + "long prompt", "  leading and trailing  ", "(word:1.5) (word: 0.5) [[word]]", "\\(escaped\\)",
]


def _random_strings(n=300, seed=0):
    rng = random.Random(seed)
    pool = ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ,.:;()[]{}<>|'\"!?-_=+*/\\@#$%^&~`"
            "éüßøåçñ日本中文한국😀ＡΩж\t\n\u200b\u00a0")
    words = ["masterpiece", "best", "quality", "1girl", "solo", "looking_at_viewer", "(smile:1.1)", "<lora:a:1>",
             "photorealistic", "cinematic lighting", "BREAK", "don't", "8k", "ultra-detailed", "highres"]
    out = []
    for _ in range(n):
        if rng.random() < 0.5:
            out.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 60))))
        else:
            out.append(", ".join(rng.choice(words) for _ in range(rng.randint(1, 20))))
    return out


def test_ids_equal_transformers_clip_tokenizer():
    transformers = pytest.importorskip("transformers")
    ref = transformers.CLIPTokenizer(os.path.join(FIXTURE, "vocab.json"), os.path.join(FIXTURE, "merges.txt"))
    ours = default_tokenizer()
    mismatches = []
    for text in FIXED + _random_strings():
        want = ref(text, padding="max_length", truncation=True, max_length=77)["input_ids"]
        got = ours(text, 77)
        if want != got:
            mismatches.append((text, want[:20], got[:20]))
    assert not mismatches, mismatches[:3]


def test_without_ftfy_ids_equal_transformers_basic_tokenizer_fallback():
    """The other cleaning (no ftfy installed): transformers' CLIPTokenizer then splits with its BasicTokenizer."""
    transformers = pytest.importorskip("transformers")
    from transformers.models.bert.tokenization_bert import BasicTokenizer
    import inspect
    if "do_split_on_punc" not in inspect.signature(BasicTokenizer).parameters:
        pytest.skip("this transformers' fallback is an older BasicTokenizer")
    ref = transformers.CLIPTokenizer(os.path.join(FIXTURE, "vocab.json"), os.path.join(FIXTURE, "merges.txt"))
    ref.fix_text, ref.nlp = None, BasicTokenizer(strip_accents=False, do_split_on_punc=False)
    ours = CLIPTokenizer(fix_text=None)
    texts = FIXED + _random_strings()
    bad = [t for t in texts if ref(t, padding="max_length", truncation=True, max_length=77)["input_ids"] != ours(t, 77)]
    assert not bad, bad[:3]


def test_ftfy_cleaning_when_installed():
    """With ftfy (A1111's and sd-scripts' environments) curly quotes, full-width forms and CJK runs are cleaned as
    the WebUI's tokenizer cleans them; plain ASCII captions give the same ids either way."""
    pytest.importorskip("ftfy")
    with_ftfy, without = CLIPTokenizer(), CLIPTokenizer(fix_text=None)
    assert with_ftfy("don\u2019t") == with_ftfy("don't") != without("don\u2019t")
    assert with_ftfy("ＡＢＣ") == with_ftfy("abc")
    ascii_caption = "masterpiece, best quality, 1girl, solo, (long hair:1.2), [blue eyes], don't"
    assert with_ftfy(ascii_caption) == without(ascii_caption)


def test_shipped_files_are_the_fixture_files():
    data = os.path.join(REPO, "lib_lora", "data")
    for ours, theirs in (("clip_vocab.json", "vocab.json"), ("clip_merges.txt", "merges.txt")):
        with open(os.path.join(data, ours), "rb") as a, open(os.path.join(FIXTURE, theirs), "rb") as b:
            assert a.read() == b.read()


def test_truncation_keeps_end_token_and_pads_with_it():
    tok = CLIPTokenizer()
    ids = tok("cat " * 100, 77)
    assert len(ids) == 77 and ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    short = tok("cat", 77)
    assert short[:3] == [tok.bos_id, tok.encoder["cat</w>"], tok.eos_id] and set(short[3:]) == {tok.eos_id}
    assert tok("cat", 77, pad_id=0)[3:] == [0] * 74
