"""lib_lora.options: one dataclass declaration → argparse options, TOML (tomllib and the Python 3.10 reader),
UI values and Gradio controls, with one line per bad value."""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from lib_lora import options as O
from lib_lora.errors import LoraStudioError
from lib_lora.options import OptionsError, option
from tests.paths import REPO

ROOT = REPO


@dataclass
class Demo:
    name: str = option(help="what to call it", label="Name")
    rate: float = option(1e-4, help="learning rate", low=0.0, high=1.0, group="optimizer")
    steps: int = option(100, help="how many steps", low=1, group="optimizer")
    kind: str = option("lora", choices=("lora", "loha", "lokr"), help="network type", widget="radio")
    cache: bool = option(True, flag="--no-cache", negate=True, help="do not cache latents")
    tags: list[str] = option([], metavar="TAG", help="a tag; repeatable")
    out: Path | None = option(None, help="output folder")


def parser_for(cls):
    p = argparse.ArgumentParser(prog="t", exit_on_error=False)
    O.add_arguments(p, cls)
    return p


def test_argparse_from_the_declaration():
    p = parser_for(Demo)
    ns = p.parse_args(["--name", "x", "--rate", "0.5", "--no-cache", "--tags", "a", "--tags", "b", "--kind", "lokr"])
    assert ns.no_cache is True                       # the namespace speaks the flag, the object the meaning
    o = O.from_args(Demo, ns)
    assert o == Demo(name="x", rate=0.5, steps=100, kind="lokr", cache=False, tags=["a", "b"], out=None)
    assert O.from_args(Demo, p.parse_args(["--name", "y"])).tags == []        # a fresh list, not a shared one
    assert Demo(name="a").tags is not Demo(name="b").tags
    with pytest.raises(argparse.ArgumentError, match="invalid choice"):
        p.parse_args(["--name", "x", "--kind", "dora"])
    with pytest.raises(OptionsError, match=r"^--rate: 2\.0 is out of range; use a value from 0 to 1\.$"):
        O.from_args(Demo, p.parse_args(["--name", "x", "--rate", "2"]))
    help_text = p.format_help()
    assert "optimizer:" in help_text and "--no-cache" in help_text and "TAG" in help_text


def test_one_line_per_bad_value_named_for_each_source():
    bad = Demo(name="x", rate=math.nan, steps=0, kind="dora", cache="yes", tags=["a", 3])
    lines = O.problems(bad)
    assert len(lines) == 5 and all("\n" not in line for line in lines)
    assert lines[0].startswith("rate: nan must be a finite number")
    assert lines[1] == "steps: 0 is out of range; use a value at least 1."
    assert lines[2] == "kind: 'dora' is not one of lora, loha, lokr."
    assert O.problems(bad, "flag")[3].startswith("--no-cache:")
    assert O.problems(bad, "label")[0].startswith("Learning rate:")
    with pytest.raises(OptionsError) as e:
        O.validate(bad)
    assert isinstance(e.value, LoraStudioError) and str(e.value).count("\n") == 4


TOML_TEXT = '''
# a hand-written file
name = "it's \\"quoted\\" \\u00e9"   # trailing comment
kind = 'loha'
tags = [
  "one",   # first
  'two',
]
cache = false

[optimizer]
rate = 3e-4
steps = 1_000
'''


@pytest.mark.parametrize("reader", ["standard", "fallback"])
def test_toml_reads_hand_written_files_with_either_reader(reader, monkeypatch):
    if reader == "fallback":       # what the WebUI's Python 3.10 (no tomllib, no tomli) runs
        monkeypatch.setitem(sys.modules, "tomllib", None)
        monkeypatch.setitem(sys.modules, "tomli", None)
    else:
        pytest.importorskip("tomllib")
    o = O.from_toml(Demo, TOML_TEXT, "demo.toml")
    assert o == Demo(name='it\'s "quoted" é', rate=3e-4, steps=1000, kind="loha", cache=False, tags=["one", "two"])


@pytest.mark.parametrize("reader", ["standard", "fallback"])
def test_toml_round_trip(reader, monkeypatch):
    if reader == "fallback":
        monkeypatch.setitem(sys.modules, "tomllib", None)
        monkeypatch.setitem(sys.modules, "tomli", None)
    o = Demo(name='tab\there "q" \\ back\nline', rate=0.25, steps=7, kind="lokr", cache=False, tags=["a b", "ü"],
             out=Path("/data/out"))
    text = O.to_toml(o)
    assert "[optimizer]" in text and "# learning rate" in text
    assert O.from_toml(Demo, text) == o
    tf = O.from_toml(O.TagFolderOptions, O.to_toml(O.TagFolderOptions(dir="imgs", model="m")))
    assert tf == O.TagFolderOptions(dir="imgs", model="m")
    assert "# output_dir =" in O.to_toml(tf)      # unset: a commented line, TOML has no null


def test_the_fallback_reader_agrees_with_tomllib_on_what_to_toml_writes():
    tomllib = pytest.importorskip("tomllib")
    for obj in (Demo(name="x\x01y", rate=1e-30, steps=5, tags=[]), O.BakeOptions("b", "<lora:a:1>", "d", "o"),
                O.AppOptions(lora_dir=["a", "b"], port=1)):
        text = O.to_toml(obj)
        assert O._MiniToml(text, "t").parse() == tomllib.loads(text)


def test_toml_problems_one_line_each():
    text = 'nmae = "x"\nkind = "dora"\nsteps = "ten"\n[optimizer]\nrate = 2\n[deep.er]\nx = 1\n'
    with pytest.raises(OptionsError) as e:
        O.from_toml(Demo, text, "cfg.toml")
    lines = e.value.problems
    assert lines == ["cfg.toml: unknown option 'nmae'; did you mean 'name'?",
                     "cfg.toml: table [deep.er] is not an option group; options are one level deep.",
                     "cfg.toml: 'name' is required; add `name = …`."]
    with pytest.raises(OptionsError) as e:
        O.from_toml(Demo, 'name = "x"\nkind = "dora"\nsteps = "ten"\n[optimizer]\nrate = 2\n', "cfg.toml")
    assert e.value.problems == ["cfg.toml: rate: 2.0 is out of range; use a value from 0 to 1.",
                                "cfg.toml: steps: 'ten' must be a whole number.",
                                "cfg.toml: kind: 'dora' is not one of lora, loha, lokr."]


@pytest.mark.parametrize("text,where", [
    ('a = """x"""\n', "line 1: multi-line strings"),
    ('name = "x"\nb = {c = 1}\n', "line 2: inline tables"),
    ('name = x\n', "line 1: 'x' is not a value"),
    ('name = "x\n', "line 1: a string is not closed"),
    ('[t]\n[t]\n', "line 2: table [t] is defined twice"),
    ('a.b = 1\n', "line 1: expected '=' after 'a' (dotted keys"),
    ('a = 1 2\n', "line 1: unexpected text"),
    ('a = 007\n', "leading zeros"),
])
def test_fallback_reader_refuses_what_it_does_not_read_with_the_line(text, where):
    with pytest.raises(LoraStudioError) as e:
        O._MiniToml(text, "f.toml").parse()
    assert str(e.value).startswith("f.toml: ") and where in str(e.value) and "\n" not in str(e.value)


def test_load_toml_reads_a_file(tmp_path):
    f = tmp_path / "o.toml"
    f.write_text(O.to_toml(O.BakeLoraOptions("<lora:a:0.5>", "loras", "out.safetensors", seed=3)))
    assert O.load_toml(O.BakeLoraOptions, f).seed == 3
    with pytest.raises(LoraStudioError):
        O.load_toml(O.BakeLoraOptions, tmp_path)          # a folder: one line, no traceback


def test_ui_values_back_to_options():
    o = O.from_ui(Demo, ["name", "steps", "tags", "out"], ["n", 5.0, " a, b ,", ""])
    assert o.steps == 5 and isinstance(o.steps, int) and o.tags == ["a", "b"] and o.out is None
    base = Demo(name="keep", kind="loha")
    assert O.from_ui(Demo, ["steps"], [3], base=base).kind == "loha"
    with pytest.raises(OptionsError, match="^Name: must be set.$"):
        O.from_ui(Demo, ["steps"], [2])
    with pytest.raises(OptionsError, match=r"^How many steps: 2\.5 must be a whole number\.$"):
        O.from_ui(Demo, ["name", "steps"], ["n", 2.5])


def test_verbs_take_their_choice_lists_from_the_core():
    from lib_lora.tagger.captions import EXISTING_MODES
    from lib_lora.tagger.postprocess import RATING_MODES, SORTS
    from lib_lora.tagger.preprocess import RESIZE_METHODS
    from lib_lora.tagger.runtime import PROVIDER_CHOICES
    tf = O.TagFolderOptions
    assert O.get(tf, "existing").choices() == EXISTING_MODES and O.get(tf, "sort").choices() == SORTS
    assert O.get(tf, "rating").choices() == RATING_MODES and O.get(tf, "provider").choices() == PROVIDER_CHOICES
    assert O.get(tf, "resize").choices() == RESIZE_METHODS
    import torch
    from lib_lora.merge.bake import DTYPES                       # built from O.OUTPUT_DTYPES: one declaration
    assert O.get(O.BakeOptions, "dtype").choices() == tuple(DTYPES) == ("fp16", "bf16", "fp32")
    assert all(isinstance(t, torch.dtype) and t.is_floating_point for t in DTYPES.values())


def test_every_action_declaration_is_valid_at_its_defaults():
    for cls, required in ((O.BakeOptions, dict(base="b", prompt="p", lora_dir="d", out="o")),
                          (O.BakeLoraOptions, dict(prompt="p", lora_dir="d", out="o")),
                          (O.InspectOptions, dict(files=["f"])), (O.TagFolderOptions, dict(dir="d", model="m")),
                          (O.AppOptions, {})):
        assert O.problems(cls(**required)) == [], cls
        for o in O.fields(cls):
            assert o.spec.help, (cls, o.name)


def test_options_import_stays_light():
    r = subprocess.run([sys.executable, "-c", "import sys, lib_lora.options as o; "
                        "print(sorted(m for m in ('torch', 'numpy', 'gradio', 'tomllib') if m in sys.modules))"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr


def test_gradio_controls_from_the_declaration():
    gr = pytest.importorskip("gradio")
    from lib_lora.ui import compat
    with gr.Blocks():
        c = compat.option_controls(Demo, values=Demo(name="n", steps=3, tags=["a", "b"]),
                                   name={"elem_id": "demo_name"})
    assert isinstance(c["name"], gr.Textbox) and c["name"].label == "Name" and c["name"].elem_id == "demo_name"
    assert isinstance(c["rate"], gr.Slider) and (c["rate"].minimum, c["rate"].maximum) == (0.0, 1.0)
    assert isinstance(c["steps"], gr.Number) and c["steps"].precision == 0 and c["steps"].value == 3
    assert isinstance(c["kind"], gr.Radio) and [O_choice(x) for x in c["kind"].choices] == ["lora", "loha", "lokr"]
    assert isinstance(c["cache"], gr.Checkbox) and c["cache"].value is True
    assert c["tags"].value == "a, b" and c["out"].value == ""
    values = ["n", 0.5, 3.0, "loha", False, "a, b", ""]
    assert O.from_ui(Demo, c.keys(), values) == Demo(name="n", rate=0.5, steps=3, kind="loha", cache=False,
                                                      tags=["a", "b"])


def O_choice(x):
    """Gradio 4 keeps choices as (label, value) pairs; Gradio 3 as values."""
    return x[1] if isinstance(x, (list, tuple)) else x


def test_underscore_flags_for_kohya_style_classes():
    @dataclass
    class Kohya:
        OPTION_FLAGS = "_"
        learning_rate: float = option(1e-4, help="learning rate", low=0)
        network_dim: int = option(4, help="rank", low=1)

        def check(self):
            return ["network_dim: must be at most 1/lr here."] if self.network_dim * self.learning_rate > 1 else []

    p = parser_for(Kohya)
    o = O.from_args(Kohya, p.parse_args(["--learning_rate", "0.01", "--network_dim", "8"]))
    assert (o.learning_rate, o.network_dim) == (0.01, 8)
    with pytest.raises(OptionsError, match="^network_dim: must be at most"):
        O.from_args(Kohya, p.parse_args(["--learning_rate", "1", "--network_dim", "8"]))


def test_help_is_plain_text_and_required_values_must_be_set():
    @dataclass
    class Pct:
        ratio: float = option(0.5, help="share of steps (50% = half)")
        name: str = option("x", help="a name")

    assert "50% = half" in parser_for(Pct).format_help()
    assert O.problems(Pct(name=None)) == ["name: must be set."]


# ---- MergeOptions and per-choice help ------------------------------------------------------------------


def test_merge_options_carry_the_issue_flags_and_modes_from_the_core():
    import argparse

    from lib_lora.merge import checkpoint
    from lib_lora.options import MergeOptions, add_arguments, from_args

    p = argparse.ArgumentParser()
    add_arguments(p, MergeOptions)
    flags = {s for a in p._actions for s in a.option_strings}
    assert {"--a", "--b", "--c", "--mode", "--alpha", "--block-weights", "--base-alpha", "--dtype", "--overwrite",
            "--out"} <= flags
    mode = next(a for a in p._actions if "--mode" in a.option_strings)
    assert tuple(mode.choices) == tuple(checkpoint.MODES)
    o = from_args(MergeOptions, p.parse_args(["--a", "A", "--b", "B", "--mode", "weighted", "--alpha", "0.3",
                                              "--out", "o.safetensors"]))
    assert (o.a, o.b, o.c, o.alpha, o.block_weights, o.base_alpha, o.dtype, o.overwrite) == \
        ("A", "B", None, 0.3, None, None, None, False)


def test_choice_help_comes_from_the_core_when_it_has_one(monkeypatch):
    from lib_lora.merge import checkpoint
    from lib_lora.options import MergeOptions, get

    o = get(MergeOptions, "mode")
    monkeypatch.delattr(checkpoint, "MODE_HELP", raising=False)
    assert o.full_help() == o.spec.help                  # no dict in the core: the declared help alone
    monkeypatch.setattr(checkpoint, "MODE_HELP", {"weighted": "A·(1−m)+B·m", "add-diff": "A+(B−C)·m"},
                        raising=False)
    assert o.full_help() == f"{o.spec.help} (weighted: A·(1−m)+B·m; add-diff: A+(B−C)·m)"
