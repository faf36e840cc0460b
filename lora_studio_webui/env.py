"""Access to the host WebUI (AUTOMATIC1111 or Forge), in one place.

Everything here imports `modules.*` lazily, so the package can be imported (and unit-tested) without a WebUI.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("lora_studio")
PREFIX = "lora_studio_"              # every setting key we add
EXT_DIR = Path(__file__).resolve().parent.parent


def shared():
    from modules import shared as s
    return s


def opt(key: str, default=None):
    """A WebUI option, or `default` when the option does not exist (e.g. the built-in Lora is disabled)."""
    try:
        return getattr(shared().opts, key, default)
    except Exception:                       # opts not initialised yet (very early import)
        return default


def cmd_opt(key: str, default=None):
    try:
        return getattr(shared().cmd_opts, key, default)
    except Exception:
        return default


def data_path() -> Path:
    try:
        from modules import paths
        return Path(paths.data_path)
    except Exception:
        return Path.cwd()


def is_forge() -> bool:
    """Feature test (docs/spec/webui_integration.md §10): Forge ships `modules_forge`; its model has
    `forge_objects`."""
    if "modules_forge" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("modules_forge") is not None
    except (ImportError, ValueError):
        return False


def builtin_lora():
    """The built-in Lora extension's `networks` module when it is loaded and enabled, else None.

    Its module name is global (`networks`); we check for the attributes we rely on so that an unrelated
    module of the same name is never touched."""
    mod = sys.modules.get("networks")
    if mod is None or not hasattr(mod, "loaded_networks") or not hasattr(mod, "network_restore_weights_from_backup"):
        return None
    return mod


def builtin_lora_enabled() -> bool:
    """True when the built-in Lora extension is active (not listed in `disabled_extensions`)."""
    try:
        from modules import extensions
        for ext in extensions.extensions:
            if ext.is_builtin and ext.name == "Lora":
                return bool(ext.enabled)
    except Exception:
        pass
    return builtin_lora() is not None


FIELD_WARNINGS = "LoRA Studio warnings"  # infotext entry: what an API client reads in `info`
WARNINGS_SEPARATOR = " | "


def emit(p, message: str) -> None:
    """A warning for the user: console + the comment shown under the result (+ optional Gradio popup) + the
    generation parameters (`LoRA Studio warnings`), which an API client gets in `info`. Once per generation:
    the hires pass and every batch activate again with the same tags."""
    if p is not None:
        said = list(getattr(p, "_lora_studio_warnings", None) or [])
        if message in said:
            return
        said.append(message)
        try:
            # new list and dict (never mutated in place): X/Y/Z cells are shallow copies sharing both
            p._lora_studio_warnings = said
            params = dict(getattr(p, "extra_generation_params", None) or {})
            params[FIELD_WARNINGS] = WARNINGS_SEPARATOR.join(said)
            p.extra_generation_params = params
        except Exception:
            pass
    print(f"[LoRA Studio] {message}", file=sys.stderr)
    if p is not None and hasattr(p, "comment"):
        try:
            p.comment(f"LoRA Studio: {message}")
        except Exception:
            pass
    if opt(PREFIX + "ui_warnings", False):
        try:
            import gradio as gr
            gr.Warning(message)
        except Exception:
            pass


def lora_dirs() -> list[Path]:
    """--lora-dir, --lyco-dir-backcompat, then the extra folders from our setting (one per line or ';')."""
    dirs: list[Path] = []
    for key, fallback in (("lora_dir", "models/Lora"), ("lyco_dir_backcompat", "models/LyCORIS")):
        value = cmd_opt(key)
        if value is None:
            value = str(data_path() / fallback)
        dirs.append(Path(value))
    extra = str(opt(PREFIX + "extra_dirs", "") or "")
    for part in extra.replace(";", "\n").splitlines():
        part = part.strip()
        if part:
            dirs.append(Path(os.path.expanduser(part)))
    seen, out = set(), []
    for d in dirs:
        key = os.path.normcase(str(d.resolve()) if d.exists() else str(d))
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def loaded_model():
    """The loaded sd_model without triggering a load (`shared.sd_model` loads one on first access)."""
    try:
        from modules import sd_models
        return sd_models.model_data.sd_model
    except Exception:
        return None
