"""Forge (lllyasviel/stable-diffusion-webui-forge) detection.

Forge applies LoRAs through its own patcher (per-parameter patches on clones of the model objects), not through
torch.nn weights, so LoRA Studio's weight patcher cannot act there. On Forge we leave `<lora>` to Forge's
built-in handler and say once, at start-up, that block weights are not applied; the tabs still work.
"""

from __future__ import annotations

from . import env

MESSAGE = ("LoRA Studio: Forge detected. Forge applies LoRAs with its own patcher, so LoRA Studio leaves "
           "<lora:…> to Forge's built-in Lora and block weights (presets, weight lists, lbw=) are NOT applied "
           "on Forge; plain <lora:name:weight> tags work as usual. The LoRA Studio tabs are available.")
_said = False


def active() -> bool:
    return env.is_forge()


def announce() -> None:
    global _said
    if not _said:
        _said = True
        print(MESSAGE)
