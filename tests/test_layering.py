"""The core never imports the WebUI: nothing under lib_lora/ names a WebUI module, at import time or inside a
function (ARCHITECTURE.md: `lib_lora/` is torch, numpy, safetensors only; the standalone app and CLI run
without a WebUI, and the WebUI side is the only layer that may look at `modules.*`)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "lib_lora"

# Top-level names that only exist inside a WebUI process: AUTOMATIC1111 (`modules`, its repositories `ldm`, `sgm`,
# `k_diffusion`'s host scripts, `launch`, `webui`), Forge (`modules_forge`, `backend`), the built-in Lora extension's
# global module names, and this project's own WebUI layer and script folder.
WEBUI = frozenset({
    "modules", "modules_forge", "backend", "ldm", "sgm", "repositories", "launch", "webui", "extensions",
    "extensions_builtin", "networks", "network", "lora", "lora_patches", "lyco_helpers", "extra_networks_lora",
    "ui_extra_networks_lora", "lora_studio_webui", "scripts",
})
# Imported by the subprocess probe through a poisoned package of the same name (must stay importable names).
POISONED = ("modules", "modules_forge", "backend", "ldm", "sgm", "lora_studio_webui", "scripts", "networks",
            "launch", "webui")


def _core_files() -> list[Path]:
    return sorted(p for p in CORE.rglob("*.py") if "__pycache__" not in p.parts)


def _imported_names(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import statement and every importlib.import_module / __import__
    call with a literal name; relative imports (`from .network import …`) stay inside the package."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name in ("import_module", "__import__", "find_spec"):
                out.append((node.lineno, node.args[0].value))
    return sorted(out)


def webui_imports(files, root: Path = ROOT) -> list[str]:
    bad = []
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for line, name in _imported_names(tree):
            if name.split(".")[0] in WEBUI:
                bad.append(f"{path.relative_to(root)}:{line}: imports {name}")
    return bad


def test_no_core_file_names_a_webui_module():
    files = _core_files()
    assert len(files) > 30  # the scan sees the package
    assert webui_imports(files) == []


def test_the_scan_catches_every_import_form(tmp_path):
    src = tmp_path / "lib_lora" / "bad.py"
    src.parent.mkdir()
    src.write_text("import os\nfrom . import network\nfrom .network import load_network\n"
                   "def f():\n    from modules import shared\n    import ldm.models\n"
                   "    import importlib\n    importlib.import_module('modules_forge.x')\n"
                   "    __import__('lora_studio_webui')\n    from scripts.lora_studio import x\n")
    found = webui_imports([src], tmp_path)
    assert [b.split(": imports ")[1] for b in found] == [
        "modules", "ldm.models", "modules_forge.x", "lora_studio_webui", "scripts.lora_studio"]


PROBE = r"""
import importlib, json, os, pkgutil, sys, traceback
sys.path.insert(0, os.environ["POISON_DIR"])
import lib_lora
failed = []
names = ["lib_lora"] + [m.name for m in pkgutil.walk_packages(lib_lora.__path__, "lib_lora.")
                        if not m.name.endswith("__main__")]
for name in names:
    try:
        importlib.import_module(name)
    except BaseException as e:
        failed.append(f"{name}: {type(e).__name__}: {e}")
print(json.dumps({"imported": names, "failed": failed}))
"""


def test_every_core_module_imports_with_the_webui_poisoned(tmp_path):
    """Each poisoned package records that it was imported and then fails, so a guarded
    `try: import modules / except ImportError` in the core is caught too."""
    poison = tmp_path / "poison"
    log = tmp_path / "imported.txt"
    for name in POISONED:
        (poison / name).mkdir(parents=True)
        (poison / name / "__init__.py").write_text(
            "import os\n"
            f"open(os.environ['POISON_LOG'], 'a').write({name!r} + '\\n')\n"
            f"raise ImportError('lib_lora imported the WebUI module {name}')\n")
    env = dict(os.environ, POISON_DIR=str(poison), POISON_LOG=str(log), PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(out["imported"]) > 30 and "lib_lora.syntax" in out["imported"]
    assert out["failed"] == []
    assert not log.exists(), log.read_text()
