"""The standalone LoRA Studio app: every tab in one Gradio page, outside the WebUI.

Tabs are imported lazily, one by one: a tab whose module (or optional dependency) fails shows a
placeholder with the reason instead of taking the whole app down.

User presets file: `--presets-file`, else `lora_studio_presets.txt` in the first LoRA folder, so pointing
`--lora-dir` at a WebUI's models/Lora shares the presets with it. Binds 127.0.0.1; `--listen` binds
0.0.0.0 and then every file write needs `--allow-writes` (UiContext.writes_allowed, as in the WebUI).
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import traceback
from pathlib import Path

from lib_lora.errors import LoraStudioError
from lib_lora.ui.context import UiContext

# (tab label, module, elem_id); each module exposes build(ctx).
TABS = [
    ("Presets", "lib_lora.ui.presets_tab", "lora_studio_tab_presets"),
    ("LoRAs", "lib_lora.ui.lora_tab", "lora_studio_tab_loras"),
    ("Tagger", "lib_lora.ui.tagger_tab", "lora_studio_tab_tagger"),
]

STANDALONE_WRITES_BLOCKED = (
    "Writing files is disabled because the app listens on the network (--listen); "
    "restart with --allow-writes to allow saving."
)
PRESETS_FILE_NAME = "lora_studio_presets.txt"
BUILTIN_PRESETS = Path(__file__).resolve().parent.parent / "data" / "presets.txt"


def _folder(path, what: str, create: bool) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        if not create:
            raise LoraStudioError(f"{what} folder '{p}' does not exist; create it or fix the option.")
        p.mkdir(parents=True, exist_ok=True)
    elif not p.is_dir():
        raise LoraStudioError(f"{what} folder '{p}' is a file; give a folder.")
    return p.resolve()


def load_presets(user_path: Path):
    """PresetStore over the shipped presets + the user file; None (with the reason) if unavailable."""
    try:
        from lib_lora.presets import PresetStore
    except ImportError as exc:
        return None, f"presets module unavailable: {exc}"
    try:
        return PresetStore(BUILTIN_PRESETS, user_path), None
    except LoraStudioError as exc:
        return None, str(exc)


def build_context(lora_dirs, checkpoint_dirs, tagger_models_dir, presets_file=None,
                  listen: bool = False, allow_writes: bool = False, create_missing: bool = True) -> UiContext:
    """Folders → UiContext. Missing folders are created (the defaults must just work on a fresh machine)."""
    loras = [_folder(d, "LoRA", create_missing) for d in lora_dirs]
    ckpts = [_folder(d, "Checkpoint", create_missing) for d in checkpoint_dirs]
    tagger = _folder(tagger_models_dir, "Tagger models", create_missing)
    user_presets = Path(presets_file).expanduser().resolve() if presets_file else loras[0] / PRESETS_FILE_NAME
    ctx = UiContext(lora_dirs=loras, checkpoint_dirs=ckpts, tagger_models_dir=tagger,
                    writes_allowed=(not listen) or allow_writes,
                    writes_blocked_reason=STANDALONE_WRITES_BLOCKED)
    ctx.presets, problem = load_presets(user_presets)
    # Not UiContext fields: extra facts the tabs may show (getattr with a default there).
    ctx.presets_path = user_presets
    ctx.presets_problem = problem
    return ctx


def describe(ctx: UiContext, listen: bool) -> str:
    lines = ["LoRA Studio",
             "  LoRA folders:       " + ", ".join(map(str, ctx.lora_dirs)),
             "  checkpoint folders: " + ", ".join(map(str, ctx.checkpoint_dirs)),
             f"  tagger models:      {ctx.tagger_models_dir}",
             f"  user presets file:  {getattr(ctx, 'presets_path', '?')}"]
    if getattr(ctx, "presets_problem", None):
        lines.append(f"  presets: {ctx.presets_problem}")
    if listen:
        lines.append("  listening on all interfaces; file writes "
                     + ("allowed (--allow-writes)" if ctx.writes_allowed else "disabled (add --allow-writes)"))
    return "\n".join(lines)


def _theme():
    import gradio as gr
    # System fonts only: the default theme fetches Google Fonts, which a local/offline tool should not need.
    sans = ["ui-sans-serif", "system-ui", "sans-serif"]
    mono = ["ui-monospace", "Consolas", "monospace"]
    return gr.themes.Default(font=sans, font_mono=mono)


def _placeholder(label: str, exc: BaseException) -> None:
    import gradio as gr
    reason = str(exc) or type(exc).__name__
    gr.Markdown(f"**The {label} tab is unavailable:** {reason}", elem_classes=["lora-studio-unavailable"])


def create_app(ctx: UiContext, tabs=TABS):
    import gradio as gr

    with gr.Blocks(title="LoRA Studio", analytics_enabled=False, theme=_theme()) as demo:
        gr.Markdown("## LoRA Studio")
        if not ctx.writes_allowed:
            gr.Markdown(f"*{ctx.writes_blocked_reason}*", elem_id="lora_studio_writes_notice")
        for label, module, elem_id in tabs:
            with gr.Tab(label, elem_id=elem_id):
                try:
                    importlib.import_module(module).build(ctx)
                except ImportError as exc:   # an optional part (or its dependency) is missing
                    print(f"LoRA Studio: the {label} tab is unavailable: {exc}", file=sys.stderr)
                    _placeholder(label, exc)
                except Exception as exc:  # one broken tab must not take the others down
                    traceback.print_exc()
                    _placeholder(label, exc)
    return demo


def served_nowhere(ctx: UiContext) -> list[str]:
    """Folders Gradio must never serve: Gradio 3 serves every file under the working directory at
    /file=..., which would expose ./models (and anything else there) to any client."""
    roots = [*map(str, ctx.lora_dirs), *map(str, ctx.checkpoint_dirs), str(ctx.tagger_models_dir)]
    import tempfile
    gradio_tmp = Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio").resolve()
    cwd = Path.cwd().resolve()
    if cwd == gradio_tmp or cwd in gradio_tmp.parents:
        # Blocking the working directory would also block Gradio's own uploads/downloads.
        print(f"LoRA Studio: started inside Gradio's temp folder {gradio_tmp}; files in {cwd} other than the "
              "model folders may be downloadable. Start the app from another folder.", file=sys.stderr)
    else:
        roots.insert(0, str(cwd))
    presets = getattr(ctx, "presets_path", None)
    if presets:
        roots.append(str(presets))
    return roots


def _warm_up() -> None:
    try:
        importlib.import_module("lib_lora.inspect")
    except Exception:  # reported when the user actually inspects
        pass


def launch(ctx: UiContext, port: int = 7870, listen: bool = False, open_browser: bool = True,
           block: bool = True):
    demo = create_app(ctx)
    demo.queue()
    # Import the torch-side modules while the server starts, so the first "inspect" click is quick.
    threading.Thread(target=_warm_up, name="lora-studio-warm-up", daemon=True).start()
    # Headless machine (no display): never try to open a browser.
    has_display = os.name == "nt" or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) \
        or os.uname().sysname == "Darwin"
    try:
        demo.launch(server_name="0.0.0.0" if listen else "127.0.0.1", server_port=port,
                    inbrowser=open_browser and has_display, show_api=False,
                    prevent_thread_lock=not block, blocked_paths=served_nowhere(ctx))
    except OSError as exc:
        raise LoraStudioError(f"cannot serve on port {port} ({exc.strerror or exc}); "
                              "choose another one with --port.") from exc
    return demo
