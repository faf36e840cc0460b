"""Docs that resolve: every `docs/….md §N` citation in the repository names a file that exists and a numbered
heading in it, every `§` belongs to such a citation, and every `.md` file a comment or docstring mentions exists.
(Earlier sources cited `blocks.md §…`-style pages that were never part of the repository.)"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SUFFIXES = {".py", ".md", ".js", ".css", ".txt", ".toml", ".ini", ".sh", ".cfg"}
SKIP_DIRS = {".git", ".venv", "__pycache__", "node_modules", "fixtures", ".pytest_cache"}
# Tokenizer vocabulary shipped as data: its byte-pair lines are not prose and can hold a stray "§".
VENDORED_DATA = {"lib_lora/data/clip_merges.txt", "lib_lora/data/clip_vocab.json"}

_NUM = r"\d+(?:\.\d+)*"
CITATION = re.compile(rf"(?P<doc>[\w./-]+\.md)(?P<secs>(?:[ \t]*\n?[ \t]*(?:#\s*)?,?[ \t]*§[ \t]?{_NUM}"
                      rf"(?:[ \t]*[–-][ \t]*{_NUM})?)+)")
SECTION = re.compile(rf"§[ \t]?({_NUM})(?:[ \t]*[–-][ \t]*({_NUM}))?")
MD_MENTION = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w.-]+\.md)\b")


def source_files(root: Path = ROOT):
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and path.suffix in SUFFIXES and not SKIP_DIRS.intersection(rel.parts[:-1]) \
                and rel.as_posix() not in VENDORED_DATA and path.resolve() != Path(__file__).resolve():
            yield path


def headings(md: Path) -> set[str]:
    """Section numbers of a page: the first word of each `#` heading, without a trailing dot."""
    out = set()
    for line in md.read_text(encoding="utf-8").splitlines():
        m = re.match(r"#{1,6}\s+(\S+)", line)
        if m:
            out.add(m.group(1).rstrip("."))
    return out


def citation_problems(path: Path, text: str, root: Path = ROOT) -> list[str]:
    problems = []
    covered: set[int] = set()
    for m in CITATION.finditer(text):
        covered.update(range(m.start(), m.end()))
        line = text.count("\n", 0, m.start()) + 1
        doc = m.group("doc")
        where = f"{path.relative_to(root)}:{line}"
        target = root / doc
        if not doc.startswith("docs/") or not target.is_file():
            problems.append(f"{where}: cites {doc}, which is not a page under docs/ in this repository")
            continue
        have = headings(target)
        for s in SECTION.finditer(m.group("secs")):
            for num in filter(None, s.groups()):
                if num not in have:
                    problems.append(f"{where}: {doc} has no section {num}")
    own = headings(path) if path.suffix == ".md" and path.is_file() else None
    for m in SECTION.finditer(text):
        if m.start() in covered:
            continue
        where = f"{path.relative_to(root)}:{text.count(chr(10), 0, m.start()) + 1}"
        if own is None:
            problems.append(f"{where}: '§' without the docs/….md page it refers to")
        else:  # inside a page, a bare §N is one of its own sections
            problems += [f"{where}: no section {num} on this page" for num in filter(None, m.groups())
                         if num not in own]
    problems += [f"{path.relative_to(root)}: '§' without a section number" for _ in
                 range(text.count("§") - len(SECTION.findall(text)))]
    return problems


def prose_of_python(text: str) -> str:
    """Comments and docstrings of a Python file (string literals are data: `notes.md` in a test is a file name)."""
    parts = [tok.string for tok in tokenize.generate_tokens(io.StringIO(text).readline)
             if tok.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                parts.append(doc)
    return "\n".join(parts)


def mention_problems(path: Path, text: str, root: Path = ROOT) -> list[str]:
    """A `.md` file named in prose exists, relative to the repository root (or, in a .md page, to its folder)."""
    problems = []
    prose = prose_of_python(text) if path.suffix == ".py" else text
    for m in MD_MENTION.finditer(prose):
        name = m.group(1)
        bases = [root] + ([path.parent] if path.suffix == ".md" else [])
        if not any((b / name).is_file() for b in bases):
            problems.append(f"{path.relative_to(root)}: mentions {name}, which is not in the repository")
    return problems


def test_every_citation_resolves():
    problems = []
    for path in source_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        problems += citation_problems(path, text)
        if path.suffix in (".py", ".md"):
            problems += mention_problems(path, text)
    assert problems == []


def test_the_spec_pages_exist_and_are_numbered():
    for page in ("blocks", "prompt_syntax", "formats", "webui_integration"):
        have = headings(ROOT / "docs" / "spec" / f"{page}.md")
        assert {"1", "2"} <= have, page


@pytest.mark.parametrize("line,bad", [
    ("# see docs/spec/blocks.md §2.5 and docs/spec/prompt_syntax.md §2.3, §5", None),
    ("# formats: docs/spec/formats.md §2.8–2.9", None),
    ("# blocks.md §2.5", "not a page under docs/"),
    ("# docs/spec/nosuch.md §1", "not a page under docs/"),
    ("# docs/spec/blocks.md §9", "has no section 9"),
    ("# docs/spec/formats.md §2.8–2.99", "has no section 2.99"),
    ("# a1111_integration §9", "'§' without"),
    ("# https://github.com/o/r/blob/main/README.md §1", "not a page under docs/"),
])
def test_the_checker_catches_bad_citations(line, bad):
    found = citation_problems(ROOT / "x.py", line + "\n")
    assert (found == []) if bad is None else (len(found) == 1 and bad in found[0]), found


def test_the_checker_reads_python_prose_only(tmp_path):
    src = tmp_path / "m.py"
    text = '"""Module doc citing gone.md."""\n# and ARCHITECTURE.md\nNAME = "notes.md"\n'
    src.write_text(text)
    (tmp_path / "ARCHITECTURE.md").write_text("# Architecture\n")
    found = mention_problems(src, text, tmp_path)
    assert [f.split("mentions ")[1].split(",")[0] for f in found] == ["gone.md"]
