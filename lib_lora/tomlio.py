"""TOML in and out without a dependency: `parse_toml` (tomllib on Python 3.11+, tomli when installed, else
`MiniToml`, the subset reader for the WebUI's Python 3.10) and `toml_value` (one value as TOML text). Only the
standard library is imported here.
"""

from __future__ import annotations

import importlib
import math

from lib_lora.errors import LoraStudioError


def parse_toml(text: str, where: str = "TOML") -> dict:
    """TOML text → dict: tomllib (Python 3.11+), else tomli if installed, else `MiniToml` below (the WebUI's
    Python 3.10 has neither), which reads what `to_toml` writes and ordinary hand-written files."""
    lib = None
    for name in ("tomllib", "tomli"):     # by name: the static 3.10 check must not see a 3.11 import
        try:
            lib = importlib.import_module(name)
            break
        except ImportError:
            continue
    if lib is None:
        return MiniToml(text, where).parse()
    try:
        return lib.loads(text)
    except lib.TOMLDecodeError as exc:
        raise LoraStudioError(f"{where}: not valid TOML: {exc}; fix that line.") from None


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if v != v else ("inf" if v > 0 else "-inf"))
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
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


class MiniToml:
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
