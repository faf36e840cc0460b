"""The option machinery. Options of every action are declared once: a dataclass whose fields carry their help,
choices, default, CLI flag and UI label. From that one declaration come the argparse options
(`add_arguments`, `from_args`), the Gradio controls (`lib_lora.ui.compat.option_controls`, values back with
`from_ui`), TOML files (`to_toml`, `from_toml`, `load_toml`) and validation (`problems`, `validate`: one line
per bad value).

    @dataclass
    class BakeOptions:
        dtype: str | None = option(None, help="store weights in this type", choices=("fp16", "bf16", "fp32"))

A class attribute `OPTION_FLAGS = "_"` keeps underscores in the generated flags (`--learning_rate`, as
kohya sd-scripts spells them); the default is `--learning-rate`. An optional `check()` method returns
cross-field problems (one line each). Choices may be named as "module:NAME" so the list keeps its one home in
the core module that uses it and is imported only when an option is built (`--help` stays light). Only the
standard library is imported here.
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
from typing import Any, Iterable

from lib_lora.errors import LoraStudioError
from lib_lora.tomlio import parse_toml, toml_value

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
            lines.append(f"# {o.name} =" if v is None else f"{o.name} = {toml_value(v)}")
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
