"""Forge (lllyasviel/stable-diffusion-webui-forge) detection and start-up.

Forge applies LoRAs through its own patcher (per-parameter patches on clones of the model objects), not through
torch.nn weights, so LoRA Studio's weight patcher cannot act there. When Forge's LoRA patching interface is
what we expect, `<lora>`/`<lyco>` go to our handler, which applies block weights as per-block patch strengths
(forge_apply.py). Otherwise we leave `<lora>` to Forge's built-in handler and say so once, at start-up.
"""

from __future__ import annotations

import inspect
import sys

from . import env

PATCH_KW = ("filename", "patches", "strength_patch", "strength_model", "online_mode")

MESSAGE = ("LoRA Studio: Forge detected. Forge applies LoRAs with its own patcher, so LoRA Studio leaves "
           "<lora:…> to Forge's built-in Lora and block weights (presets, weight lists, lbw=) are NOT applied "
           "on Forge; plain <lora:name:weight> tags work as usual. The LoRA Studio tabs are available.")
SUPPORTED = ("LoRA Studio: Forge detected. Block weights (presets, weight lists, lbw=) are applied through "
             "Forge's LoRA patcher; start=/stop= and dyn= are not supported on Forge.")
_said = False
_problem: list = []                      # cached result of startup_problem() (one element)


def active() -> bool:
    return env.is_forge()


def problem() -> str | None:
    """Why block weights cannot work on this Forge (None = they can). Checked once."""
    if not _problem:
        try:
            _problem.append(startup_problem())
        except Exception as e:
            _problem.append(f"{type(e).__name__}: {e}")
    return _problem[0]


def supported() -> bool:
    return active() and problem() is None


def announce() -> None:
    global _said
    if not _said:
        _said = True
        why = problem()
        print(SUPPORTED if why is None else f"{MESSAGE} (reason: {why})")


# -- feature tests: what this Forge offers ------------------------------------------------------------------
class Unsupported(Exception):
    """This Forge lacks a piece of the LoRA patching interface we rely on."""


# -- feature tests -----------------------------------------------------------------------------------------
def _takes(fn, names, n_positional: int = 0) -> bool:
    """`fn` accepts these keyword names (and at least n positional arguments)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    kw = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    pos = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    var_pos = any(p.kind == p.VAR_POSITIONAL for p in params)
    return set(names) <= kw and (len(pos) >= n_positional or var_pos)


def backend():
    """Forge's loader functions: (load_lora, model_lora_keys_unet, model_lora_keys_clip, load_torch_file)."""
    try:
        from backend.patcher import lora as bl
        from backend import utils as bu
    except Exception as e:
        raise Unsupported(f"backend.patcher.lora cannot be imported: {type(e).__name__}: {e}")
    fns = []
    for mod, name, kw, n in ((bl, "load_lora", (), 2), (bl, "model_lora_keys_unet", (), 2),
                             (bl, "model_lora_keys_clip", (), 2), (bu, "load_torch_file", ("safe_load",), 1)):
        fn = getattr(mod, name, None)
        if not callable(fn) or not _takes(fn, kw, n):
            raise Unsupported(f"{mod.__name__}.{name} is missing or has another signature")
        fns.append(fn)
    return tuple(fns)


def startup_problem() -> str | None:
    """None when this Forge offers what we need (checked without a model), else why not."""
    try:
        backend()
        from backend.patcher.base import ModelPatcher
    except Unsupported as e:
        return str(e)
    except Exception as e:
        return f"backend.patcher.base cannot be imported: {type(e).__name__}: {e}"
    if not _takes(getattr(ModelPatcher, "add_patches", None), PATCH_KW):
        return "ModelPatcher.add_patches has another signature"
    return None


def _patch_target(obj):
    """The add_patches whose signature tells the truth (Forge's CLIP forwards *args/**kwargs to its patcher)."""
    fn = getattr(obj, "add_patches", None)
    if fn is not None and not _takes(fn, PATCH_KW):
        inner = getattr(getattr(obj, "patcher", None), "add_patches", None)
        if inner is not None and _takes(inner, PATCH_KW):
            return fn
        return None
    return fn


def model_problem(sd_model) -> str | None:
    if sd_model is None:
        return "no model is loaded"
    for attr in ("forge_objects", "forge_objects_original"):
        if getattr(sd_model, attr, None) is None:
            return f"the model has no `{attr}`"
    if not callable(getattr(sd_model.forge_objects, "shallow_copy", None)):
        return "forge_objects.shallow_copy is missing"
    orig = sd_model.forge_objects_original
    for part, inner in (("unet", "model"), ("clip", "cond_stage_model")):
        obj = getattr(orig, part, None)
        if obj is None:
            continue                     # e.g. a model without a text encoder: nothing to patch there
        if not callable(getattr(obj, "clone", None)) or getattr(obj, inner, None) is None:
            return f"forge_objects_original.{part} has no clone()/{inner}"
        if _patch_target(obj) is None:
            return f"forge_objects_original.{part}.add_patches has another signature"
    return None


def model_arch(sd_model) -> str | None:
    """Forge keeps A1111's is_sd1/is_sd2/is_sdxl flags; anything else (Flux, SD3) has no block table."""
    for flag, arch in (("is_sdxl", "sdxl"), ("is_sd2", "sd2"), ("is_sd1", "sd1")):
        if getattr(sd_model, flag, False) is True:
            return arch
    return None


def builtin_handler():
    """Forge's built-in ExtraNetworkLora (module `networks` of extensions-builtin/sd_forge_lora), if loaded."""
    mod = sys.modules.get("networks")
    h = getattr(mod, "extra_network_lora", None) if mod is not None and hasattr(mod, "load_networks") else None
    return h if callable(getattr(h, "activate", None)) else None
