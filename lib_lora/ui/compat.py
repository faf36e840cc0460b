"""Every difference between Gradio 3.41 (AUTOMATIC1111) and Gradio 4.x (Forge) lives here."""

from __future__ import annotations

import gradio as gr

GRADIO_MAJOR = int(gr.__version__.split(".")[0])
IS_GRADIO_4 = GRADIO_MAJOR >= 4


def update(**kwargs):
    """`gr.update` exists in both; Gradio 3 component-specific `.update` is gone in 4."""
    return gr.update(**kwargs)


def js_kwargs(js: str | None) -> dict:
    """Event listeners take `_js=` in Gradio 3 and `js=` in Gradio 4."""
    if not js:
        return {}
    return {"js": js} if IS_GRADIO_4 else {"_js": js}


def file_path(value) -> str | None:
    """A gr.File value: a tempfile wrapper (Gradio 3) or a path string (Gradio 4)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return getattr(value, "name", None) or getattr(value, "path", None)


def dataframe_rows(value) -> list[list]:
    """A gr.Dataframe value: pandas DataFrame or list of rows, depending on `type` and version."""
    if value is None:
        return []
    if hasattr(value, "values") and hasattr(value, "columns"):
        return [list(r) for r in value.values.tolist()]
    if isinstance(value, dict) and "data" in value:
        return [list(r) for r in value["data"]]
    return [list(r) for r in value]


def with_select_index(fn, n_inputs: int):
    """`fn(*inputs, index)` as a `.select` listener. Gradio injects the event by a `gr.SelectData`
    annotation, which must be a real class: string annotations (`from __future__`) are not resolved."""
    import inspect

    def select(*args):
        return fn(*args[:-1], getattr(args[-1], "index", None))

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter(f"arg{i}", kind) for i in range(n_inputs)]
    select.__signature__ = inspect.Signature(params + [inspect.Parameter("evt", kind, annotation=gr.SelectData)])
    select.__annotations__ = {"evt": gr.SelectData}
    return select


def on_page_load(fn, outputs) -> bool:
    """Run `fn` on every page load (values given at build time are frozen): registered on the root
    Blocks being built (the app, or the WebUI's tab Blocks, whose events it merges). False if none."""
    from gradio.context import Context

    root = Context.root_block
    if root is None:
        return False
    root.load(fn, inputs=None, outputs=outputs)
    return True


# ---- standalone server: queue, CORS, uploads ---------------------------------------------------------


def queue_kwargs(concurrency: int) -> dict:
    """Queue options letting `concurrency` events run at once (Gradio 3 defaults to ONE worker for every
    event, so one slow action froze every button), with the REST routes closed to direct calls."""
    if IS_GRADIO_4:
        return {"default_concurrency_limit": concurrency, "api_open": False}
    return {"concurrency_count": concurrency, "api_open": False}


def guarded_app_kwargs(middleware_cls, **options) -> dict:
    """`app_kwargs` for `launch`: the FastAPI app is built with `middleware_cls` in its stack, so it is
    active from the first request (Gradio builds the app inside launch())."""
    from starlette.middleware import Middleware
    return {"middleware": [Middleware(middleware_cls, **options)]}


def drop_cors(app) -> int:
    """Remove Gradio's CORS middleware (it answers every origin with `*`) and rebuild the stack; returns how
    many were removed. Both Gradio 3 (`CORSMiddleware`) and 4 (`CustomCORSMiddleware`) add one."""
    kept = [m for m in app.user_middleware if "CORS" not in getattr(m.cls, "__name__", "")]
    removed = len(app.user_middleware) - len(kept)
    if removed:
        app.user_middleware[:] = kept
        app.middleware_stack = app.build_middleware_stack()
    return removed


def upload_dir() -> str:
    """Where Gradio's /upload route stores uploaded files (also its own temp copies)."""
    import os
    import tempfile
    from pathlib import Path
    return os.environ.get("GRADIO_TEMP_DIR") or str(Path(tempfile.gettempdir()) / "gradio")


def raw_upload_path(value) -> tuple[str | None, bytes | None]:
    """A File input received with preprocess=False → (server path, None) for a file sent through /upload,
    or (None, bytes) for inline base64 data. Gradio's own preprocessing is bypassed on purpose: it copies
    any server path the client names (e.g. /etc/passwd) into its temp folder, which /file= then serves,
    and hashes a FIFO forever."""
    if value is None:
        return None, None
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            return None, None
        value = value[0]
    if isinstance(value, str):
        return value, None
    if not isinstance(value, dict):
        path = getattr(value, "path", None) or getattr(value, "name", None)
        return (str(path) if path else None), None
    if IS_GRADIO_4:
        return value.get("path"), None
    if value.get("is_file") or not value.get("data"):
        return value.get("name"), None
    import base64
    data = str(value["data"])
    data = data.split(",", 1)[1] if data.startswith("data:") and "," in data else data
    try:
        return None, base64.b64decode(data, validate=False)
    except ValueError:
        return None, b""


def on_page_load_js(js: str) -> bool:
    """Run browser-side `js` (no Python) on every page load of the root Blocks being built."""
    from gradio.context import Context

    root = Context.root_block
    if root is None:
        return False
    root.load(None, inputs=None, outputs=None, **js_kwargs(js))
    return True


# ---- controls from option dataclasses (lib_lora.options) ---------------------------------------------


def option_control(cls, name: str, value=None, **kwargs):
    """One Gradio control for option `name` of the options dataclass `cls`, labelled and limited as declared:
    bool → Checkbox, choices → Dropdown (Radio with widget="radio"), a number with both bounds → Slider,
    other numbers → Number (whole numbers for ints), lists → comma-separated Textbox, else Textbox.
    `value` defaults to the declared default; `kwargs` (elem_id, scale, …) go to the component."""
    from lib_lora import options
    o = options.get(cls, name)
    v = o.default if value is None and o.default is not options.MISSING else value
    override = kwargs.pop("choices", None)  # a narrower list known only at run time (e.g. installed providers)
    kw = {"label": o.label, **kwargs}
    choices = override if override is not None else o.choices()
    if o.kind is bool:
        return gr.Checkbox(value=bool(v), **kw)
    if choices is not None:
        widget = gr.Radio if o.spec.widget == "radio" else gr.Dropdown
        return widget(choices=list(choices), value=v, **kw)
    if o.kind in (int, float):
        if o.spec.low is not None and o.spec.high is not None:
            step = o.spec.step or (1 if o.kind is int else 0.01)
            return gr.Slider(o.spec.low, o.spec.high, value=v, step=step, **kw)
        return gr.Number(value=v, precision=0 if o.kind is int else None, **kw)
    if o.kind is list:
        return gr.Textbox(value=", ".join(map(str, v or [])), **kw)
    return gr.Textbox(value="" if v is None else str(v), **kw)


def option_controls(cls, names=None, values=None, **per_name) -> dict:
    """Controls for several options (all of `cls` shown in the UI when `names` is None), in declaration order
    unless `names` gives one; `values` an options object whose values they show; `per_name[name]` a dict of
    component kwargs. Read them back with `lib_lora.options.from_ui(cls, controls.keys(), values)`."""
    from lib_lora import options
    names = list(names) if names is not None else [o.name for o in options.fields(cls)]
    return {n: option_control(cls, n, None if values is None else getattr(values, n), **per_name.get(n, {}))
            for n in names}


def with_progress(fn, n_inputs: int):
    """`fn(*inputs, progress=…)` as a listener that gets a gr.Progress: Gradio finds it by the default of a
    POSITIONAL parameter (not after *args), so the signature is spelt out for `n_inputs` inputs."""
    import inspect

    def listener(*args):
        return fn(*args[:n_inputs], progress=args[n_inputs] if len(args) > n_inputs else None)

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter(f"arg{i}", kind) for i in range(n_inputs)]
    params.append(inspect.Parameter("progress", kind, default=gr.Progress()))
    listener.__signature__ = inspect.Signature(params)
    return listener
