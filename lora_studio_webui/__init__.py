"""AUTOMATIC1111/Forge integration of LoRA Studio (the only package that imports WebUI modules).

`scripts/lora_studio.py` imports this package and calls `register()` on every import (start-up and each
Reload UI, which clears every callback list). Nothing here may raise into the WebUI.
"""

from __future__ import annotations

import traceback


def register() -> None:
    from modules import script_callbacks

    from . import env, forge, infotext, settings, xyz, xyz_merge
    from .engine import ENGINE

    # Options exist from import on: ui_settings callbacks only run when the Gradio UI is built (not --nowebui).
    _safe(settings.on_ui_settings)()
    script_callbacks.on_ui_settings(settings.on_ui_settings)
    script_callbacks.on_ui_tabs(_safe(_ui_tabs))
    try:
        xyz.register(extra=(xyz_merge.axes,))   # before xyz_grid builds its UI (docs/spec/webui_integration.md §9)
    except Exception:
        traceback.print_exc()
    if forge.active():
        from . import api, handler
        script_callbacks.on_app_started(_safe(lambda *_: forge.announce()))   # say once what works
        if forge.supported():                # take over `lora`/`lyco`: block weights can be applied
            script_callbacks.on_app_started(_safe(handler.on_app_started))
            script_callbacks.on_infotext_pasted(_safe(infotext.on_infotext_pasted))
        script_callbacks.on_app_started(_safe(api.on_app_started))     # the status route serves Forge too
        return
    from . import api, cards, handler, live_merge
    ENGINE.after_write = live_merge.HOST.restamp
    script_callbacks.on_app_started(_safe(handler.on_app_started))
    script_callbacks.on_app_started(_safe(api.on_app_started))
    script_callbacks.on_before_ui(_safe(cards.on_before_ui))
    script_callbacks.on_model_loaded(_safe(ENGINE.on_model_loaded))
    script_callbacks.on_model_loaded(_safe(live_merge.HOST.on_model_loaded))
    script_callbacks.on_infotext_pasted(_safe(infotext.on_infotext_pasted))
    script_callbacks.on_cfg_denoiser(_safe(lambda params: ENGINE.set_step(int(params.sampling_step))))
    script_callbacks.on_script_unloaded(_safe(_unloaded))
    env.log.debug("LoRA Studio callbacks registered")


def _ui_tabs():
    from . import tabs
    return tabs.on_ui_tabs()


def _unloaded():
    """Before Reload UI re-imports scripts: put the model's weights back and drop the layer map."""
    from .engine import ENGINE
    from .live_merge import HOST
    try:
        HOST.unload()                    # the loaded weights without the live merge (its backups go with us)
    finally:
        ENGINE.restore()
        ENGINE.forget()


def _safe(fn):
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception:
            traceback.print_exc()
            return None
    wrapper.__name__ = getattr(fn, "__name__", "lora_studio_callback")
    wrapper.__wrapped__ = fn
    return wrapper
