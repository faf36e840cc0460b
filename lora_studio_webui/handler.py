"""Our `lora` extra network (+ alias `lyco`), and keeping it registered (docs/spec/webui_integration.md §3).

The built-in Lora registers `lora` in before_ui, which runs after ours (reverse order), and the registry is
a plain dict (last wins).  We therefore register again in on_app_started and check in Script.process.
"""

from __future__ import annotations

import os
import traceback

from modules import extra_networks

from . import env, infotext
from .engine import ENGINE, applied_line


class LoraStudioNetwork(extra_networks.ExtraNetwork):
    marker = "lora_studio"

    def __init__(self):
        super().__init__("lora")

    def activate(self, p, params_list):
        if env.is_forge():                  # Forge: per-block patch strengths through its own patcher
            from .forge_apply import APPLIER
            APPLIER.activate(p, list(params_list))       # never raises
            return
        # Nothing may escape: an exception here loses every LoRA of the prompt (docs/spec/prompt_syntax.md §5).
        try:
            act = ENGINE.activate(p, list(params_list))
        except Exception as e:
            traceback.print_exc()
            env.emit(p, f"internal error while applying LoRAs ({type(e).__name__}: {e}); weights were restored.")
            try:
                ENGINE.restore()
            except Exception:
                traceback.print_exc()
            return
        for w in act.warnings:
            env.emit(p, w)
        if act.entries:
            infotext.record(p, act)
            parts = [applied_line(a) for a in act.loras]
            rep = act.report
            stats = ""
            if rep is not None:
                stats = (f"; layers written {rep.layers_written}, kept {rep.layers_kept}, restored "
                         f"{rep.layers_restored}, from factors {rep.factored}, deltas computed "
                         f"{rep.deltas_computed}, cache hits {rep.cache_hits}")
            # A checksum of the patched weights costs a pass over them: only for verification runs.
            check = f"; patched-weights sum {ENGINE.patched_sum():.6e}" if os.environ.get("LORA_STUDIO_CHECKSUM") else ""
            print(f"[LoRA Studio] applied {', '.join(parts)}{stats}{check} in {act.seconds:.2f}s"
                  + (" (hires pass)" if getattr(p, "is_hr_pass", False) else ""))
        else:
            infotext.clear(p)

    def deactivate(self, p):
        # A1111 calls this only when the first prompt had tags; activate(p, []) is the reliable reset.
        pass


HANDLER = None


def handler() -> LoraStudioNetwork:
    global HANDLER
    if HANDLER is None:
        HANDLER = LoraStudioNetwork()
    return HANDLER


def is_ours(obj) -> bool:
    return getattr(obj, "marker", None) == LoraStudioNetwork.marker


def register(clear_builtin: bool = False) -> bool:
    """Put our handler under `lora` and `lyco`. Returns True when something had to change."""
    if not take_over():
        return False
    h = handler()
    changed = False
    if extra_networks.extra_network_registry.get("lora") is not h:
        extra_networks.register_extra_network(h)
        changed = True
    # `lyco` must resolve to us: a registry entry wins over the alias, so remove a foreign one.
    reg = extra_networks.extra_network_registry.get("lyco")
    if reg is not None and reg is not h:
        extra_networks.extra_network_registry.pop("lyco", None)
        changed = True
    if extra_networks.extra_network_aliases.get("lyco") is not h:
        extra_networks.register_extra_network_alias(h, "lyco")
        changed = True
    if clear_builtin or changed:
        nets = env.builtin_lora()
        if nets is not None:
            # The built-in can no longer be called with tags; whatever it still holds is stale.
            try:
                sd_model = env.loaded_model()
                if sd_model is not None:
                    ENGINE.flush_builtin(sd_model, clear_loaded=True)
                else:
                    nets.loaded_networks.clear()
            except Exception:
                traceback.print_exc()
    return changed


def take_over() -> bool:
    """Setting `lora_studio_take_over` (default on); without the built-in someone must handle `<lora>`."""
    return bool(env.opt(env.PREFIX + "take_over", True)) or (env.builtin_lora() is None
                                                              and _forge_builtin() is None)


def _forge_builtin():
    if not env.is_forge():
        return None
    from .forge import builtin_handler
    return builtin_handler()


def on_app_started(demo=None, app=None):
    register(clear_builtin=True)


def hand_back() -> bool:
    """Setting turned off at run time: give `lora`/`lyco` back to the built-in (it keeps its handler object)."""
    nets = env.builtin_lora()
    builtin = getattr(nets, "extra_network_lora", None) if nets is not None else _forge_builtin()
    if builtin is None or not is_ours(extra_networks.extra_network_registry.get("lora")):
        return False
    ENGINE.restore()                 # our weights out before the built-in takes its first backup
    extra_networks.register_extra_network(builtin)
    extra_networks.register_extra_network_alias(builtin, "lyco")
    print("[LoRA Studio] `lora` handed back to the built-in Lora (setting lora_studio_take_over is off).")
    return True


def verify(p=None) -> None:
    """Called from Script.process: re-register when another extension replaced us since start-up,
    or hand the tags back when the take-over setting was switched off."""
    if not take_over():
        hand_back()
    elif register():
        print("[LoRA Studio] `lora` was not LoRA Studio's handler (replaced by another extension or the setting "
              "was switched on); registered it again.")
