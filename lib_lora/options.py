"""Options of every action, declared once: a dataclass whose fields carry their help, choices, default, CLI
flag and UI label. From that one declaration come the argparse options (`add_arguments`, `from_args`), the
Gradio controls (`lib_lora.ui.compat.option_controls`, values back with `from_ui`), TOML files (`to_toml`,
`from_toml`, `load_toml`) and validation (`problems`, `validate`: one line per bad value).

    @dataclass
    class BakeOptions:
        dtype: str | None = option(None, help="store weights in this type", choices=("fp16", "bf16", "fp32"))

A class attribute `OPTION_FLAGS = "_"` keeps underscores in the generated flags (`--learning_rate`, as
kohya sd-scripts spells them); the default is `--learning-rate`. An optional `check()` method returns
cross-field problems (one line each). Choices may be named as "module:NAME" so the list keeps its one home in the core module that uses it and is
imported only when an option is built (`--help` stays light). Only the standard library is imported here.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import math
import typing
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from lib_lora.errors import LoraStudioError

_META = "lora_studio"


@dataclass(frozen=True)
class Spec:
    """What one option field says about itself (the field's metadata)."""
    help: str = ""
    choices: tuple | str | None = None   # values, or "module:NAME" of a tuple/dict (keys) in the core
    flag: str | None = None              # "--lora-dir"; None: "--" + name with '-'; "": positional
    aliases: tuple = ()                  # more flags for the same option ("--model")
    label: str | None = None             # UI label; None: from the help
    metavar: str | None = None
    group: str | None = None             # argparse group and TOML table
    low: float | None = None             # inclusive bounds, checked by `problems` and used by sliders
    high: float | None = None
    step: float | None = None            # slider step
    negate: bool = False                 # a bool whose flag turns it off (`--no-norms` → norms = False)
    nargs: str | None = None             # positional lists: "+"
    widget: str | None = None            # UI: "radio", "slider"; None: chosen from the type
    cli: bool = True                     # False: not on the command line (UI/TOML only)
    choice_help: str | None = None       # "module:NAME" of a dict choice → one line of help (absent: none)


def option(default: Any = MISSING, *, help: str = "", choices=None, flag: str | None = None, aliases=(),
           label: str | None = None, metavar: str | None = None, group: str | None = None, low=None, high=None,
           step=None, negate: bool = False, nargs: str | None = None, widget: str | None = None,
           cli: bool = True, choice_help: str | None = None):
    """A dataclass field with its Spec. A list default is copied for each instance; no default: required."""
    spec = Spec(help=help, choices=choices, flag=flag, aliases=tuple(aliases), label=label, metavar=metavar,
                group=group, low=low, high=high, step=step, negate=negate, nargs=nargs, widget=widget, cli=cli,
                choice_help=choice_help)
    meta = {_META: spec}
    if isinstance(default, (list, dict, set)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata=meta)
    return field(default=default, metadata=meta)


class OptionsError(LoraStudioError):
    """Bad option values: `problems` holds one line per bad value; the message is those lines."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


# ---- reading the declarations --------------------------------------------------------------------------


@dataclass(frozen=True)
class Opt:
    """One option as the generators see it."""
    name: str
    kind: type            # bool | int | float | str | Path | list
    optional: bool        # None is a valid value
    default: Any          # MISSING when required
    spec: Spec
    underscores: bool = False   # the class keeps '_' in its default flags (kohya's --learning_rate)

    @property
    def required(self) -> bool:
        return self.default is MISSING

    @property
    def flag(self) -> str:
        if self.spec.flag is not None:
            return self.spec.flag
        return "--" + (self.name if self.underscores else self.name.replace("_", "-"))

    @property
    def dest(self) -> str:
        """The argparse attribute: the field name, or for a negated bool its flag's (`--no-norms` → no_norms,
        True when given), as the command line reads."""
        return self.flag.lstrip("-").replace("-", "_") if self.spec.negate else self.name

    @property
    def label(self) -> str:
        if self.spec.label:
            return self.spec.label
        text = self.spec.help.split(" (")[0].split(";")[0]
        return (text[:1].upper() + text[1:]) if text else self.name.replace("_", " ")

    def choices(self) -> tuple | None:
        c = self.spec.choices
        if isinstance(c, str):
            module, _, attr = c.partition(":")
            c = getattr(importlib.import_module(module), attr)
        return None if c is None else tuple(c)

    def choice_help(self) -> dict:
        """{choice: one line} from the core module named by Spec.choice_help ({} when it has no such dict:
        the help then says only what Spec.help says)."""
        if not self.spec.choice_help:
            return {}
        module, _, attr = self.spec.choice_help.partition(":")
        found = getattr(importlib.import_module(module), attr, None)
        return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}

    def full_help(self) -> str:
        """Spec.help followed by each choice's own line, when the core has them."""
        per = self.choice_help()
        extra = "; ".join(f"{k}: {v}" for k, v in per.items())
        return f"{self.spec.help} ({extra})" if extra and self.spec.help else (extra or self.spec.help)

    def initial(self):
        return self.default


_KINDS = {bool: bool, int: int, float: float, str: str, Path: Path}


def fields(cls) -> list[Opt]:
    """The options of dataclass `cls` (or of an instance), in declaration order."""
    cls = cls if isinstance(cls, type) else type(cls)
    cached = cls.__dict__.get("_lora_studio_opts")
    if cached is not None:
        return cached
    hints = typing.get_type_hints(cls)
    underscores = getattr(cls, "OPTION_FLAGS", "-") == "_"
    out = []
    for f in dataclasses.fields(cls):
        spec = f.metadata.get(_META)
        if spec is None:
            continue
        tp, optional = hints[f.name], False
        args = typing.get_args(tp)
        if type(None) in args:
            optional = True
            rest = [a for a in args if a is not type(None)]
            tp = rest[0] if len(rest) == 1 else tp
        if typing.get_origin(tp) in (list, tuple):
            kind = list
        elif tp in _KINDS:
            kind = _KINDS[tp]
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: option type {tp!r} is not supported")
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            default = MISSING
        out.append(Opt(f.name, kind, optional, default, spec, underscores))
    cls._lora_studio_opts = out
    return out


def get(cls, name: str) -> Opt:
    for o in fields(cls):
        if o.name == name:
            return o
    raise KeyError(name)


# ---- validation ----------------------------------------------------------------------------------------


def _show(v) -> str:
    return repr(str(v)) if isinstance(v, (str, Path)) else repr(v)


def value_problem(o: Opt, value) -> str | None:
    """Why `value` is not valid for option `o` (None: it is)."""
    if value is None:
        return None if o.optional else "must be set"
    kind = o.kind
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:   # NaN/Inf: refused where bounds are declared (else the core's own check speaks)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and \
            (math.isfinite(value) or o.spec.low is None and o.spec.high is None)
    elif kind is list:
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, (str, Path)) for v in value)
    else:
        ok = isinstance(value, (str, Path))
    if not ok:
        want = {bool: "true or false", int: "a whole number", float: "a finite number", list: "a list of text",
                str: "text", Path: "a path"}[kind]
        return f"{_show(value)} must be {want}"
    choices = o.choices()
    if choices is not None:
        bad = [v for v in (value if kind is list else [value]) if v not in choices]
        if bad:
            return f"{_show(bad[0])} is not one of {', '.join(map(str, choices))}"
    if kind in (int, float):
        if o.spec.low is not None and value < o.spec.low or o.spec.high is not None and value > o.spec.high:
            lo = "" if o.spec.low is None else f"{o.spec.low:g}"
            hi = "" if o.spec.high is None else f"{o.spec.high:g}"
            rng = f"from {lo} to {hi}" if lo and hi else (f"at least {lo}" if lo else f"at most {hi}")
            return f"{_show(value)} is out of range; use a value {rng}"
    return None


def _name(o: Opt, naming: str) -> str:
    if naming == "flag":
        return o.flag if o.spec.flag != "" else (o.spec.metavar or o.name.upper())
    if naming == "label":
        return o.label
    return o.name


def problems(obj, naming: str = "key") -> list[str]:
    """One line per bad value of the options object `obj`; the option is named by its TOML key ("key"),
    CLI flag ("flag") or UI label ("label"). A `check()` method on the class adds cross-field lines."""
    out = []
    for o in fields(obj):
        why = value_problem(o, getattr(obj, o.name))
        if why:
            out.append(f"{_name(o, naming)}: {why}.")
    check = getattr(obj, "check", None)
    if callable(check) and not out:
        out.extend(check() or [])
    return out


def validate(obj, naming: str = "key"):
    """`obj` if every value is valid, else OptionsError with one line per bad value."""
    found = problems(obj, naming)
    if found:
        raise OptionsError(found)
    return obj


# ---- argparse --------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser, cls, groups: dict[str, str] | None = None) -> None:
    """The options of `cls` onto `parser` (argparse groups from Spec.group; `groups` maps a group name to its
    title). Choices are resolved here, for the chosen verb only."""
    made: dict[str, Any] = {}
    for o in fields(cls):
        if not o.spec.cli:
            continue
        target = parser
        if o.spec.group:
            if o.spec.group not in made:
                made[o.spec.group] = parser.add_argument_group((groups or {}).get(o.spec.group, o.spec.group))
            target = made[o.spec.group]
        kw: dict[str, Any] = {"help": o.full_help().replace("%", "%%") or None}   # help is text, not a %-format
        if o.spec.metavar:
            kw["metavar"] = o.spec.metavar
        if o.spec.flag == "":
            if o.spec.nargs:
                kw["nargs"] = o.spec.nargs
            target.add_argument(o.name, **kw)
            continue
        kw["dest"] = o.dest
        if o.kind is bool:
            kw["action"] = "store_true"
        else:
            if o.kind is list:
                kw["action"] = "append"     # repeatable; None when absent (from_args supplies the default)
                kw["default"] = None
            else:
                kw["type"] = {int: int, float: float}.get(o.kind, str)
                kw["default"] = None if o.required else o.default
            choices = o.choices()
            if choices is not None:
                kw["choices"] = choices
            if o.required:
                kw["required"] = True
        target.add_argument(o.flag, *o.spec.aliases, **kw)


def from_args(cls, ns: argparse.Namespace, naming: str = "flag"):
    """The parsed command line → a validated `cls` (options not on the command line keep their default)."""
    values = {}
    for o in fields(cls):
        if not o.spec.cli or not hasattr(ns, o.dest):
            continue
        v = getattr(ns, o.dest)
        if o.kind is list and v is None:
            continue
        if o.spec.negate:
            v = not v
        if o.kind is Path and isinstance(v, str):
            v = Path(v)
        values[o.name] = v
    return validate(cls(**values), naming)


# ---- UI values ----------------------------------------------------------------------------------------


def _split(text) -> list[str]:
    return [t.strip() for t in str(text or "").split(",") if t.strip()]


def from_ui(cls, names: Iterable[str], values: Iterable, base=None):
    """Gradio values of the controls `names` (as made by compat.option_controls) → a validated `cls`:
    Number floats become ints for int options, comma-separated text becomes a list, "" means None for an
    optional option. Options not named keep `base`'s values (or the defaults)."""
    raw = dict(zip(names, values))
    out = {o.name: getattr(base, o.name) for o in fields(cls)} if base is not None else {}
    for name, v in raw.items():
        o = get(cls, name)
        if o.kind is list:
            v = _split(v) if isinstance(v, str) else list(v or [])
        elif o.kind is int and isinstance(v, float) and v.is_integer():
            v = int(v)
        elif o.kind in (str, Path) and o.optional and (v is None or str(v).strip() == ""):
            v = None
        elif o.kind is Path and isinstance(v, str):
            v = Path(v)
        out[name] = v
    bad = [f"{o.label}: must be set." for o in fields(cls) if o.required and o.name not in out]
    if bad:                       # a required option that has no control
        raise OptionsError(bad)
    return validate(cls(**out), "label")


# ---- TOML ----------------------------------------------------------------------------------------------


def parse_toml(text: str, where: str = "TOML") -> dict:
    """TOML text → dict: tomllib (Python 3.11+), else tomli if installed, else the reader below (the WebUI's
    Python 3.10 has neither), which reads what `to_toml` writes and ordinary hand-written files."""
    lib = None
    for name in ("tomllib", "tomli"):     # by name: the static 3.10 check must not see a 3.11 import
        try:
            lib = importlib.import_module(name)
            break
        except ImportError:
            continue
    if lib is None:
        return _MiniToml(text, where).parse()
    try:
        return lib.loads(text)
    except lib.TOMLDecodeError as exc:
        raise LoraStudioError(f"{where}: not valid TOML: {exc}; fix that line.") from None


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if v != v else ("inf" if v > 0 else "-inf"))
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    s = str(v)
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def to_toml(obj, comments: bool = True) -> str:
    """`obj`'s options as TOML: ungrouped options first, then one [table] per group; each key preceded by its
    help as a comment; an unset (None) option is written as a commented-out line."""
    groups: dict[str | None, list[Opt]] = {}
    for o in fields(obj):
        groups.setdefault(o.spec.group, []).append(o)
    order = sorted(groups, key=lambda g: g is not None)   # stable: ungrouped first
    lines: list[str] = []
    for g in order:
        if g is not None:
            lines += (["" ] if lines else []) + [f"[{g}]"]
        for o in groups[g]:
            if comments and o.spec.help:
                lines.append("# " + " ".join(o.spec.help.split()))
            v = getattr(obj, o.name)
            lines.append(f"# {o.name} =" if v is None else f"{o.name} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"


def from_toml(cls, text: str, where: str = "TOML", base=None):
    """TOML text → a validated `cls`. Tables are read as groups (their keys belong to the options, whatever
    the table's name); unknown keys, wrong types and bad values each give one line (OptionsError)."""
    data = parse_toml(text, where)
    known = {o.name: o for o in fields(cls)}
    flat: dict[str, Any] = {}
    bad: list[str] = []

    def take(key, value, table=None):
        at = f"[{table}] {key}" if table else key
        o = known.get(key)
        if o is None:
            close = difflib.get_close_matches(key, known, n=1)
            bad.append(f"{where}: unknown option '{at}'" + (f"; did you mean '{close[0]}'?" if close else "."))
            return
        if key in flat:
            bad.append(f"{where}: '{key}' is given twice; keep one.")
            return
        if o.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif o.kind is Path and isinstance(value, str):
            value = Path(value)
        flat[key] = value

    for key, value in data.items():
        if isinstance(value, dict):
            for k, v in value.items():
                if isinstance(v, dict):
                    bad.append(f"{where}: table [{key}.{k}] is not an option group; options are one level deep.")
                else:
                    take(k, v, key)
        else:
            take(key, value)
    values = {o.name: getattr(base, o.name) for o in fields(cls)} if base is not None else {}
    values.update(flat)
    missing = [o.name for o in fields(cls) if o.required and o.name not in values]
    bad += [f"{where}: '{n}' is required; add `{n} = …`." for n in missing]
    if bad:
        raise OptionsError(bad)
    obj = cls(**values)
    found = [f"{where}: {p}" for p in problems(obj, "key")]
    if found:
        raise OptionsError(found)
    return obj


def load_toml(cls, path, base=None):
    """A TOML options file → a validated `cls` (read with fileio's size-bounded, regular-files-only reader)."""
    from lib_lora.fileio import read_small_text
    return from_toml(cls, read_small_text(path, "options file"), where=str(path), base=base)


class _MiniToml:
    """The TOML subset options files use: comments, [tables], `key = value` with bare or quoted keys, basic
    and literal strings, integers, floats (inf/nan), booleans, arrays (over several lines too). Anything
    else (inline tables, dates, multi-line strings, dotted keys) is reported with its line number."""

    def __init__(self, text: str, where: str):
        self.s, self.i, self.where = text, 0, where

    def fail(self, what: str):
        line = self.s.count("\n", 0, self.i) + 1
        raise LoraStudioError(f"{self.where}: line {line}: {what}; fix that line.")

    def ws(self, newlines: bool = False):
        while self.i < len(self.s):
            ch = self.s[self.i]
            if ch in " \t" or (newlines and ch in "\r\n"):
                self.i += 1
            elif ch == "#" and newlines:
                while self.i < len(self.s) and self.s[self.i] != "\n":
                    self.i += 1
            else:
                break

    def end_of_line(self):
        self.ws()
        if self.i < len(self.s) and self.s[self.i] == "#":
            while self.i < len(self.s) and self.s[self.i] != "\n":
                self.i += 1
        if self.i < len(self.s) and self.s[self.i] == "\r":
            self.i += 1
        if self.i < len(self.s) and self.s[self.i] != "\n":
            self.fail("unexpected text after the value")
        self.i += 1

    def key(self) -> str:
        ch = self.s[self.i:self.i + 1]
        if ch in ('"', "'"):
            return self.string()
        j = self.i
        while self.i < len(self.s) and (self.s[self.i].isalnum() and self.s[self.i].isascii() or self.s[self.i] in "_-"):
            self.i += 1
        if j == self.i:
            self.fail("expected a key")
        return self.s[j:self.i]

    def string(self) -> str:
        q = self.s[self.i]
        if self.s.startswith(q * 3, self.i):
            self.fail("multi-line strings are not supported here; write the text on one line")
        self.i += 1
        out = []
        while True:
            if self.i >= len(self.s) or self.s[self.i] == "\n":
                self.fail("a string is not closed")
            ch = self.s[self.i]
            self.i += 1
            if ch == q:
                return "".join(out)
            if ch == "\\" and q == '"':
                esc = self.s[self.i:self.i + 1]
                self.i += 1
                simple = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "b": "\b", "f": "\f"}
                if esc in simple:
                    out.append(simple[esc])
                elif esc in ("u", "U"):
                    n = 4 if esc == "u" else 8
                    digits = self.s[self.i:self.i + n]
                    try:
                        out.append(chr(int(digits, 16)))
                    except ValueError:
                        self.fail(f"bad escape \\{esc}{digits}")
                    self.i += n
                else:
                    self.fail(f"unknown escape \\{esc}")
            else:
                out.append(ch)

    def value(self):
        self.ws()
        ch = self.s[self.i:self.i + 1]
        if ch in ('"', "'"):
            return self.string()
        if ch == "[":
            self.i += 1
            items = []
            while True:
                self.ws(newlines=True)
                if self.s[self.i:self.i + 1] == "]":
                    self.i += 1
                    return items
                items.append(self.value())
                self.ws(newlines=True)
                nxt = self.s[self.i:self.i + 1]
                if nxt == ",":
                    self.i += 1
                elif nxt != "]":
                    self.fail("expected ',' or ']' in an array")
        if ch == "{":
            self.fail("inline tables are not supported here; use a [table]")
        j = self.i
        while self.i < len(self.s) and self.s[self.i] not in " \t\r\n,]#":
            self.i += 1
        word = self.s[j:self.i]
        if word in ("true", "false"):
            return word == "true"
        special = {"inf": math.inf, "+inf": math.inf, "-inf": -math.inf, "nan": math.nan, "+nan": math.nan,
                   "-nan": math.nan}
        if word in special:
            return special[word]
        text = word.replace("_", "")
        if word and "__" not in word and not word.startswith("_") and not word.endswith("_"):
            try:
                if text.lower().startswith(("0x", "0o", "0b")):
                    return int(text, 0)
                if any(c in text for c in ".eE"):
                    return float(text)
                digits = text.lstrip("+-")
                if len(digits) > 1 and digits.startswith("0"):
                    self.fail(f"'{word}': leading zeros are not allowed")
                return int(text)
            except ValueError:
                pass
        self.fail(f"'{word[:40]}' is not a value (text needs quotes)")

    def parse(self) -> dict:
        root: dict = {}
        table = root
        while True:
            self.ws(newlines=True)
            if self.i >= len(self.s):
                return root
            if self.s[self.i] == "[":
                if self.s.startswith("[[", self.i):
                    self.fail("arrays of tables are not supported here")
                self.i += 1
                self.ws()
                name = self.key()
                self.ws()
                if self.s[self.i:self.i + 1] != "]":
                    self.fail("expected ']' after the table name (dotted names are not supported here)")
                self.i += 1
                if name in root:
                    self.fail(f"table [{name}] is defined twice")
                table = root[name] = {}
                self.end_of_line()
                continue
            k = self.key()
            self.ws()
            if self.s[self.i:self.i + 1] != "=":
                self.fail(f"expected '=' after '{k}'" + (" (dotted keys are not supported here)"
                                                         if self.s[self.i:self.i + 1] == "." else ""))
            self.i += 1
            v = self.value()
            if k in table:
                self.fail(f"'{k}' is given twice")
            table[k] = v
            self.end_of_line()


# ---- the actions' options ------------------------------------------------------------------------------
# One dataclass per action; the CLI verb, the app and TOML files read these. Names follow the flags.

# bake --dtype: name → torch dtype attribute (text, so this module stays torch-free; lib_lora.merge.bake.DTYPES is
# built from it)
OUTPUT_DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
DEFAULT_TAGGER_MODELS_DIR = str(Path("models") / "TaggerModels")
DEFAULT_LORA_DIR = str(Path("models") / "Lora")
DEFAULT_CHECKPOINT_DIR = str(Path("models") / "Stable-diffusion")
DEFAULT_IMAGE_DIR = "datasets"

_PRESETS_HELP = ("user block-weight presets file (default: lora_studio_presets.txt in --lora-dir, "
                 "the file the app's Presets tab saves to)")
_SEED_HELP = "seed for R/U block-weight letters (default 0)"


@dataclass
class BakeOptions:
    """`bake`: merge every LoRA tag of a prompt into a checkpoint."""
    base: str = option(help="checkpoint (.safetensors) to start from", metavar="CKPT", label="Base checkpoint")
    prompt: str = option(help='text with LoRA tags, e.g. "<lora:style:0.8:face>"', label="Prompt")
    lora_dir: str = option(help="folder the LoRA names are looked up in", metavar="DIR", label="LoRA folder")
    out: str = option(help="output file, ending in .safetensors", label="Output file")
    dtype: str | None = option(None, choices=OUTPUT_DTYPES, label="Output weight type",
                               help="store weights in this type (default: as the base)")
    overwrite: bool = option(False, help="replace --out if it exists", label="Replace the output file")
    presets: str | None = option(None, help=_PRESETS_HELP, metavar="FILE", label="User presets file")
    seed: int = option(0, help=_SEED_HELP, label="Seed for R/U letters")
    allow_overflow: bool = option(False, label="Write even if weights overflow",
                                  help="write even if merged weights overflow to ±Inf/NaN (refused by default)")
    quiet: bool = option(False, help="no progress line")


@dataclass
class BakeLoraOptions:
    """`bake-lora`: a new LoRA with one tag's multiplier and block weights built in."""
    prompt: str = option(help='one LoRA tag, e.g. "<lora:style:0.8:face>"', label="LoRA tag")
    lora_dir: str = option(help="folder the LoRA name is looked up in", metavar="DIR", label="LoRA folder")
    out: str = option(help="output file, ending in .safetensors", label="Output file")
    overwrite: bool = option(False, help="replace --out if it exists", label="Replace the output file")
    presets: str | None = option(None, help=_PRESETS_HELP, metavar="FILE", label="User presets file")
    seed: int = option(0, help=_SEED_HELP, label="Seed for R/U letters")


@dataclass(kw_only=True)   # fields in the order of the command line, required or not
class MergeOptions:
    """`merge`: two or three checkpoints, A·(1−m)+B·m or A+(B−C)·m with m per block. The modes and their
    one-line descriptions live in lib_lora.merge.checkpoint (MODES, MODE_HELP)."""
    a: str = option(metavar="A", label="Model A",
                    help="primary model (.safetensors); the output has its keys and shapes (an inpainting model "
                         "must be A)")
    b: str = option(metavar="B", label="Model B", help="secondary model")
    c: str | None = option(None, metavar="C", label="Model C (add-diff)",
                           help="tertiary model, subtracted from B (--mode add-diff only)")
    mode: str = option(choices="lib_lora.merge.checkpoint:MODES", choice_help="lib_lora.merge.checkpoint:MODE_HELP",
                       label="Mode", help="how the models are combined")
    alpha: float = option(metavar="M", label="Alpha (m for every block)", help="m for every block")
    block_weights: str | None = option(None, metavar="LIST_OR_PRESET", label="Block weights",
                                       help="m per block instead of --alpha: 26 values for SD1/SD2 or 20 for SDXL "
                                            "(BASE first; 25/19 without BASE), separated by commas, or a preset "
                                            "name with such values")
    base_alpha: float | None = option(None, metavar="X", label="BASE alpha",
                                      help="m for BASE (text encoders and VAE); overrides BASE of --block-weights")
    dtype: str | None = option(None, choices=OUTPUT_DTYPES, label="Output weight type",
                               help="output weights in this type (default: as in A)")
    presets: str | None = option(None, metavar="FILE", label="User presets file",
                                 help="user presets file for --block-weights preset names (default: the shipped "
                                      "merge presets)")
    vae: str | None = option(None, metavar="FILE", label="VAE to bake in",
                             help="VAE file (ldm or diffusers keys) written into the output instead of the merged "
                                  "VAE (default: the VAE is merged with BASE)")
    allow_pickle: bool = option(False, help="accept .ckpt/.pt inputs (weights only; loaded whole into memory)")
    overwrite: bool = option(False, help="replace --out if it exists", label="Replace the output file")
    out: str = option(help="output file, ending in .safetensors", label="Output file")
    quiet: bool = option(False, help="no progress line")


@dataclass
class InspectOptions:
    """`inspect`: what LoRA files contain."""
    files: list[str] = option(flag="", nargs="+", metavar="FILE", help=".safetensors file(s) to inspect")
    json: bool = option(False, help="print a JSON report instead of a table")
    norms: bool = option(True, flag="--no-norms", negate=True, label="Per-block ΔW norms",
                         help="skip the per-block ΔW norms (faster)")
    hash: bool = option(True, flag="--no-hash", negate=True, label="Hash the file body",
                        help="skip hashing the file body")
    allow_pickle: bool = option(False, help="also read .pt/.ckpt/.bin files (weights-only unpickling)")


@dataclass
class TagFolderOptions:
    """`tag`: caption a folder of images with a WD14 tagger. Choice lists live in the tagger modules."""
    dir: str = option(flag="", metavar="DIR", help="folder of images (or one image)", label="Image folder")
    # model
    model: str = option(flag="--model-dir", aliases=("--model",), metavar="M", group="model", label="Model",
                        help="folder holding a tagger model: WD14 (model.onnx + selected_tags.csv), Z3D-E621 "
                             "(model.onnx + tags-selected.csv) or DeepDanbooru (deepdanbooru.onnx or model.onnx + "
                             "tags.txt); or a model name (e.g. wd-vit-tagger-v3) or Hugging Face repo id, looked up "
                             "in --models-root, then the HF cache, then downloaded")
    models_root: str = option(DEFAULT_TAGGER_MODELS_DIR, metavar="DIR", group="model",
                              help="where named models live and are downloaded to "
                                   f"(default: ./{DEFAULT_TAGGER_MODELS_DIR})")
    revision: str | None = option(None, group="model",
                                  help="Hugging Face revision to download (default: the pinned one)")
    offline: bool = option(False, group="model", help="never download; use local files only")
    provider: str = option("auto", choices="lib_lora.tagger.runtime:PROVIDER_CHOICES", group="model",
                           label="Provider", help="onnxruntime execution provider; an explicit GPU that cannot "
                                                  "run is an error (default: auto)")
    threads: int = option(0, group="model", low=0,
                          help="onnxruntime CPU threads (default 0: onnxruntime's choice)")
    # tags
    general_threshold: float = option(0.35, group="tags", label="General threshold (keep p >)",
                                      help="keep general tags with p > this (0.35)")
    character_threshold: float = option(0.85, group="tags", label="Character threshold (> 1 disables)",
                                        help="keep characters with p > this (0.85; > 1 disables)")
    general_mcut: bool = option(False, group="tags", label="MCut for general tags",
                                help="MCut threshold for general tags")
    character_mcut: bool = option(False, group="tags", label="MCut for characters",
                                  help="MCut threshold for characters (at least 0.15)")
    include_characters: bool = option(True, flag="--no-characters", negate=True, group="tags",
                                      label="Include characters", help="leave character tags out")
    characters_first: bool = option(False, group="tags", label="Characters first",
                                    help="character tags before general tags")
    sort: str = option("confidence", choices="lib_lora.tagger.postprocess:SORTS", group="tags", label="Order",
                       help="tag order (default: confidence)")
    replace_underscores: bool = option(True, flag="--keep-underscores", negate=True, group="tags",
                                       label="Underscores → spaces (not emoticons)",
                                       help="write long_hair instead of long hair")
    escape_brackets: bool = option(False, group="tags", label="Escape brackets \\( \\)",
                                   help=r"write \( \) as in prompts")
    rating: str = option("none", choices="lib_lora.tagger.postprocess:RATING_MODES", group="tags",
                         label="Write rating tag", help="write the rating tag first/last (default: none)")
    max_tags: int = option(0, group="tags", label="Max tags (0 = all)", help="at most N model tags (0 = no limit)")
    exclude: str = option("", group="tags", label="Exclude tags (comma-separated; any case, _ or space)",
                          help="comma-separated tags to leave out (underscore/space/case-insensitive)")
    exclude_regex: list[str] = option([], metavar="RE", group="tags",
                                      help="full-match regex to leave out; repeatable")
    replace: list[str] = option([], metavar="OLD=NEW", group="tags", help="rename a tag; repeatable")
    prepend: str = option("", group="tags", label="Prepend tags (e.g. trigger word)",
                          help="comma-separated tags written first (e.g. a trigger word)")
    append: str = option("", group="tags", label="Append tags", help="comma-separated tags written last")
    weights: bool = option(False, group="tags", help="write (tag:0.87) with confidences")
    # files
    existing: str = option("skip", choices="lib_lora.tagger.captions:EXISTING_MODES", group="files",
                           widget="radio", label="Existing caption files",
                           help="what to do with an existing caption (default: skip, the image is not even tagged)")
    caption_ext: str = option(".txt", group="files", label="Caption extension",
                              help="caption extension (default .txt): .txt, .caption or another plain one of "
                                   "lowercase letters and digits, at most 10; extensions of programs, scripts, "
                                   "configs, web pages, models and images are refused")
    output_dir: str | None = option(None, group="files", label="Output folder (empty = beside the images)",
                                    help="write captions here, mirroring sub-folders (default: beside the images)")
    recursive: bool = option(False, group="files", label="Include sub-folders", help="include sub-folders")
    ext: str = option("png,jpg,jpeg,webp,bmp", group="files",
                      help="image extensions (default: png,jpg,jpeg,webp,bmp)")
    json: bool = option(False, group="files", label="JSON with confidences",
                        help="also write <image>.json with all confidences and ratings")
    trailing_newline: bool = option(False, group="files", help="end caption files with a newline")
    frequency: int = option(30, metavar="N", group="files", help="print the N most frequent tags (0 = all)")
    frequency_file: str | None = option(None, metavar="FILE", group="files",
                                        help="write the full 'tag: count' summary to FILE")
    # speed
    batch_size: int = option(0, group="speed", label="Batch size (0 = auto: 8 on GPU, 1 per CPU stream)",
                             help="images per inference; 0 = auto: 8 on a GPU, 1 per concurrent stream on CPU "
                                  "(fixed-batch models always use their own)")
    streams: int = option(0, group="speed",
                          help="concurrent inference runs (default: 1 on a GPU, one per CPU core up to 4)")
    workers: int = option(0, group="speed", help="decoding threads (default: auto)")
    resize: str = option("bicubic", choices="lib_lora.tagger.preprocess:RESIZE_METHODS", group="speed",
                         help="resize filter (default: bicubic)")
    quiet: bool = option(False, group="speed", help="no progress bar")


@dataclass
class AppOptions:
    """`ui`: the standalone app."""
    lora_dir: list[str] = option([], metavar="DIR",
                                 help=f"LoRA/LyCORIS folder (must exist); repeat for several (default: "
                                      f"./{DEFAULT_LORA_DIR}, created if missing)")
    checkpoint_dir: list[str] = option([], metavar="DIR",
                                       help=f"checkpoint folder the Merge tab lists and writes into (must exist); "
                                            f"repeat for several (default: ./{DEFAULT_CHECKPOINT_DIR} when it exists)")
    image_dir: list[str] = option([], metavar="DIR",
                                  help="folder the Tagger tab may read images from and write captions into "
                                       "(must exist); repeat for several (default: ./" + DEFAULT_IMAGE_DIR +
                                       ", created if missing); paths outside are refused")
    tagger_models_dir: str | None = option(None, metavar="DIR",
                                           help=f"WD14 tagger models folder (must exist; default: "
                                                f"./{DEFAULT_TAGGER_MODELS_DIR}, created if missing)")
    presets_file: str | None = option(None, metavar="FILE",
                                      help="user block-weight presets file (default: lora_studio_presets.txt in the "
                                           "first LoRA folder; the CLI's bake verbs read the same file)")
    port: int = option(7870, help="port to serve on, 1-65535 (default: 7870)")
    listen: bool = option(False, help="bind 0.0.0.0 (reachable from the network); needs --auth or --auth-file, "
                                      "and file writes then need --allow-writes")
    auth: str | None = option(None, metavar="USER:PASSWORD", help="require this login (needed with --listen)")
    auth_file: str | None = option(None, metavar="FILE",
                                   help="require a login from this file: one USER:PASSWORD per line, '#' comments")
    allow_writes: bool = option(False, help="with --listen: allow actions that write files (saving presets, "
                                            "captions, downloads)")
    open_browser: bool = option(True, flag="--no-browser", negate=True,
                                help="do not open a browser tab (never opened when no display is available)")
