"""Forge (lllyasviel/stable-diffusion-webui-forge) detection and start-up.

Forge applies LoRAs through its own patcher (per-parameter patches on clones of the model objects), not through
torch.nn weights, so LoRA Studio's weight patcher cannot act there. When Forge's LoRA patching interface is
what we expect, `<lora>`/`<lyco>` go to our handler, which applies block weights as per-block patch strengths
(forge_apply.py). Otherwise we leave `<lora>` to Forge's built-in handler and say so once, at start-up.
"""

from __future__ import annotations

from . import env

MESSAGE = ("LoRA Studio: Forge detected. Forge applies LoRAs with its own patcher, so LoRA Studio leaves "
           "<lora:…> to Forge's built-in Lora and block weights (presets, weight lists, lbw=) are NOT applied "
           "on Forge; plain <lora:name:weight> tags work as usual. The LoRA Studio tabs are available.")
SUPPORTED = ("LoRA Studio: Forge detected. Block weights (presets, weight lists, lbw=) are applied through "
             "Forge's LoRA patcher; start=/stop= and dyn= are not supported on Forge.")
_said = False
_problem: list = []                      # cached result of forge_apply.startup_problem() (one element)


def active() -> bool:
    return env.is_forge()


def problem() -> str | None:
    """Why block weights cannot work on this Forge (None = they can). Checked once."""
    if not _problem:
        try:
            from . import forge_apply
            _problem.append(forge_apply.startup_problem())
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

