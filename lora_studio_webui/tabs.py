"""on_ui_tabs: one "LoRA Studio" tab holding every lib_lora.ui tab, built over a UiContext from the WebUI's
options and command line (file writes follow --disable-extension-access, GPU actions take the queue lock)."""

from __future__ import annotations

import importlib
import os
import traceback
from pathlib import Path

from . import env

WEBUI_WRITES_BLOCKED = (
    "Writing files is disabled because the WebUI listens on the network (--listen/--share/--server-name); "
    "start it with --enable-insecure-extension-access to allow saving from LoRA Studio."
)


def build_context():
    from lib_lora.ui.context import UiContext
    from .engine import ENGINE
    ckpt = env.cmd_opt("ckpt_dir") or str(env.data_path() / "models" / "Stable-diffusion")
    try:
        from modules import call_queue
        wrap = call_queue.wrap_gradio_gpu_call
    except Exception:
        wrap = lambda fn: fn  # noqa: E731
    ctx = UiContext(
        lora_dirs=[Path(d) for d in env.lora_dirs()],
        checkpoint_dirs=[Path(ckpt)],
        tagger_models_dir=env.data_path() / "models" / "lora_studio_tagger",
        writes_allowed=not bool(env.cmd_opt("disable_extension_access", False)),
        writes_blocked_reason=WEBUI_WRITES_BLOCKED,
        wrap_gpu_call=wrap,
        checkpoint_list=webui_checkpoints,
        vae_list=webui_vaes,
        refresh_checkpoints=refresh_webui_checkpoints,
        refresh_loras=ENGINE.library.scan,
        live_merge=_live_merge_provider(),
        train_host=_train_host(),
    )
    # The tagger tab's image roots (empty: tagger_tab.image_roots falls back to the model folders).
    ctx.image_dirs = [Path(os.path.expanduser(p.strip())) for p in
                      str(env.opt(env.PREFIX + "tagger_image_dirs", "") or "").replace(";", "\n").splitlines()
                      if p.strip()]
    try:
        ctx.presets = ENGINE.presets()      # the same store generation uses: edits apply without restart
        ctx.presets_path = ENGINE.presets().user_path
    except Exception as e:
        ctx.presets_problem = str(e)
    return ctx


def webui_checkpoints() -> dict:
    """The WebUI's checkpoint list (modules.sd_models, what its own dropdown shows) as {name: file}."""
    from modules import sd_models
    listed = getattr(sd_models, "checkpoints_list", None) or {}
    return {info.name: info.filename for info in list(listed.values())
            if getattr(info, "name", None) and getattr(info, "filename", None)}


def webui_vaes() -> dict:
    """The WebUI's VAE list (modules.sd_vae, rescanned: what its own VAE dropdown shows after Refresh) as
    {name: file}."""
    try:
        from modules import sd_vae
    except ImportError:   # a host without A1111's VAE module: only the merged VAE is offered
        return {}
    refresh = getattr(sd_vae, "refresh_vae_list", None)
    if refresh is not None:
        refresh()
    return dict(getattr(sd_vae, "vae_dict", None) or {})


def _live_merge_provider():
    from .live_merge import provider   # the loaded model's LiveMerge

    return provider


def _train_host():
    from .train_host import SubprocessHost   # runs train in a child process of the WebUI's Python

    return SubprocessHost()


def refresh_webui_checkpoints() -> None:
    """Re-read the checkpoint folders so a merged model is in the WebUI's list without a restart."""
    from modules import sd_models
    sd_models.list_models()


FAILED: dict = {}      # tab label → reason, for the last build (shown in the tab, kept for tests/logs)


def on_ui_tabs():
    import gradio as gr

    from lib_lora.ui.app import TABS
    ctx = build_context()
    FAILED.clear()
    with gr.Blocks(analytics_enabled=False) as block:
        with gr.Tabs(elem_id="lora_studio_tabs"):
            for label, module, elem_id in TABS:
                with gr.Tab(label, elem_id=elem_id):
                    try:
                        importlib.import_module(module).build(ctx)
                    except Exception as e:
                        traceback.print_exc()
                        FAILED[label] = f"{type(e).__name__}: {e}"
                        gr.Markdown(f"**{label} is unavailable:** {type(e).__name__}: {e}")
    shared_config_keys(block)
    return [(block, "LoRA Studio", "lora_studio")]


def _config_key(x):
    """What A1111's ui-config.json (modules.ui_loadsave) files a component of our tab under: its label, or a
    button's text; None for what it does not track."""
    import gradio as gr

    if getattr(x, "label", None) is not None:
        return x.label
    if isinstance(x, gr.Button) and getattr(x, "value", None) is not None:
        return x.value
    return None


def shared_config_keys(block) -> list:
    """A1111 keys ui-config.json by the tab and a component's label only: the first component with a label stores
    its default there and every later one with that label gets that value (the LoRA tools' optional "Rank" showed
    the Training tab's 32). Components whose label another one of ours also has are left out of ui-config
    (`do_not_save_to_config`); the others keep A1111's saved defaults. Returns the shared labels."""
    by_key: dict = {}

    def walk(x):
        children = getattr(x, "children", None)
        if children is not None:
            for c in children:
                walk(c)
            return
        key = _config_key(x)
        if key is not None:
            by_key.setdefault(key, []).append(x)

    walk(block)
    shared = sorted(str(k) for k, xs in by_key.items() if len(xs) > 1)
    for k in shared:
        for x in by_key[k]:
            x.do_not_save_to_config = True
    return shared
