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
