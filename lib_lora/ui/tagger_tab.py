"""Tagger tab: WD14 tags for one image (confidence bars, ratings) or a whole folder (progress with
images/s and ETA, cancel, tag-frequency table), model load/unload with the running provider shown.

Callbacks are plain functions of (ctx, values) so they are tested without a browser; `build` wires them.
GPU work runs under ctx.wrap_gpu_call (the WebUI queue lock); CPU tagging never blocks generation.

Every path a handler reads or writes is checked here, server-side (a request can carry any value, not only
what the widgets offer): images and captions inside `image_roots(ctx)`, models inside the models folder.
"""

from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path

from lib_lora.errors import LoraStudioError

from lib_lora.options import TagFolderOptions   # the choice lists' one declaration (shared with `tag`)

_ACTIVE: dict[int, threading.Event] = {}       # running folder jobs → their cancel events
_ACTIVE_LOCK = threading.Lock()

# The option components, in order; `options_from` turns their values into TagOptions.
OPTION_FIELDS = ("general_threshold", "character_threshold", "general_mcut", "character_mcut",
                 "include_characters", "characters_first", "sort", "replace_underscores", "escape_brackets",
                 "rating", "max_tags", "exclude", "prepend", "append", "exclude_regex", "replace", "weights")


def image_roots(ctx) -> list[Path]:
    """Folders the tagger may read images from and write captions into: the configured image folders
    (`ctx.image_dirs`, set by the host: WebUI setting / app option), else the host's configured folders."""
    dirs = [Path(d) for d in ctx.image_dirs]
    return dirs or [*map(Path, ctx.lora_dirs), *map(Path, ctx.checkpoint_dirs)]


def _inside(path, roots, what: str) -> Path:
    from lib_lora.fileio import resolve_inside
    return resolve_inside(os.path.expanduser(str(path).strip()), roots, what)


def model_spec(ctx, name, folder="") -> tuple[str, bool]:
    """(spec for get_tagger, whether it is a path). A typed folder must lie inside the models folder; a
    name is only ever a name (looked up in the models folder, the HF cache, or downloaded there)."""
    folder = str(folder or "").strip()
    if folder:
        p = _inside(folder, [ctx.tagger_models_dir], "Tagger model folder")
        return str(p), True
    name = str(name or "").strip()
    if not name:
        raise LoraStudioError("Pick a model in the Model list, or type a model folder into the box beside it (a "
                              f"folder inside {ctx.tagger_models_dir} that holds model.onnx + selected_tags.csv).")
    return name, False


def _split(text) -> list[str]:
    return [t.strip() for t in str(text or "").split(",") if t.strip()]


def _whole(value, what: str) -> int:
    """A request may carry any value where the page sends a number: one line instead of a ValueError."""
    try:
        f = float(value or 0)
    except (TypeError, ValueError):
        raise LoraStudioError(f"{what} {str(value)[:40]!r} is not a number.") from None
    if not math.isfinite(f) or f != int(f):
        raise LoraStudioError(f"{what} {str(value)[:40]!r} is not a whole number.")
    return int(f)


def _lines(text) -> list[str]:
    """One entry per line: regexes and OLD=NEW rules may hold commas (`a{1,3}`), so they are not
    comma-separated as the tag lists are."""
    return [t.strip() for t in str(text or "").splitlines() if t.strip()]


def options_from(values) -> "TagOptions":  # noqa: F821
    from lib_lora.tagger.postprocess import TagOptions, parse_replace
    v = dict(zip(OPTION_FIELDS, values))
    for k in ("general_threshold", "character_threshold"):
        try:
            v[k] = float(v[k])
        except (TypeError, ValueError):
            raise LoraStudioError(f"{k.replace('_', ' ')} {str(v[k])[:40]!r} is not a number.") from None
    v["max_tags"] = _whole(v["max_tags"], "max tags")
    return TagOptions(
        general_threshold=v["general_threshold"], character_threshold=v["character_threshold"],
        general_mcut=bool(v["general_mcut"]), character_mcut=bool(v["character_mcut"]),
        include_characters=bool(v["include_characters"]), characters_first=bool(v["characters_first"]),
        sort=v["sort"], replace_underscores=bool(v["replace_underscores"]),
        escape_brackets=bool(v["escape_brackets"]), rating=v["rating"], max_tags=v["max_tags"],
        exclude=_split(v["exclude"]), prepend=_split(v["prepend"]), append=_split(v["append"]),
        exclude_patterns=_lines(v.get("exclude_regex")), replace=parse_replace(_lines(v.get("replace"))),
        weights=bool(v.get("weights"))).validate()


def provider_choices() -> list[str]:
    """auto, cpu and the providers this onnxruntime build offers: the list names no provider that is not
    installed here (picking one would only ever fail)."""
    from lib_lora.tagger import runtime
    try:
        available = set(runtime.import_ort().get_available_providers())
    except LoraStudioError:
        available = set()
    return ["auto", "cpu"] + [k for k, v in runtime.PROVIDERS.items() if k != "cpu" and v in available]


def model_choices(ctx) -> list[str]:
    from lib_lora.tagger.model import list_local_models
    return list_local_models(ctx.tagger_models_dir)


def default_choice(ctx, choices: list[str]) -> str:
    """A model the user placed in the folder, else the known model that suits this computer (on a CPU not
    the largest one, which would be downloaded first)."""
    from lib_lora.tagger.model import KNOWN_MODELS, default_model
    local = [c for c in choices if c not in KNOWN_MODELS]
    return local[0] if local else default_model()


def refresh_choices(ctx, shown):
    """On focus of the model list: new folders appear without "Refresh list"; nothing is sent when the
    list is unchanged (an update would close the list the user just opened)."""
    from lib_lora.ui import compat
    now = model_choices(ctx)
    if list(shown or []) == now:
        return compat.update(), shown
    return compat.update(choices=now), now


def threshold_hint(model: str) -> str:
    from lib_lora.tagger.model import KNOWN_MODELS
    k = KNOWN_MODELS.get(str(model or ""))
    if k and k.threshold_hint:
        return f"Model card P=R threshold for {model}: {k.threshold_hint:.4f} (the default stays 0.35)."
    return ""


def load(ctx, model: str, provider: str, allow_download: bool, log=print, folder: str = ""):
    from lib_lora.tagger.model import ModelNotFound, get_tagger
    spec, is_path = model_spec(ctx, model, folder)
    # Downloading writes files: only when writes are allowed.
    try:
        return get_tagger(spec, ctx.tagger_models_dir, provider or "auto",
                          allow_download=bool(allow_download) and ctx.writes_allowed, log=log, paths=is_path)
    except ModelNotFound as exc:
        if allow_download and not ctx.writes_allowed:   # the ticked box did nothing: say why
            raise ModelNotFound(f"{exc} ({ctx.writes_blocked_reason})") from None
        raise


def status_text(tagger) -> str:
    text = f"Loaded: {tagger.describe()}."
    if tagger.warning:
        text += f"\n\n**{tagger.warning}**"
    return text


def current_status() -> str:
    """What is loaded now, for a page that opens (or reloads) while a model is still in memory."""
    from lib_lora.tagger.model import loaded_taggers
    now = loaded_taggers()
    return status_text(now[-1]) if now else "No model loaded."


def gpu_section(ctx, tagger, fn):
    """Run `fn` under the WebUI queue lock when a GPU is used (a CPU tagger does not hold up generation)."""
    if not tagger.is_gpu:
        return fn()
    return ctx.under_queue_lock(fn, "the tagging job")


def tag_single(ctx, image, model, model_folder, provider, allow_download, *option_values):
    """→ (caption, general {tag: p}, characters {tag: p}, ratings {name: p}, status)."""
    from lib_lora.tagger.pipeline import tag_image
    try:
        if image is None:
            raise LoraStudioError("Drop an image first.")
        opts = options_from(option_values)
        tagger = load(ctx, model, provider, allow_download, folder=model_folder)
        r = gpu_section(ctx, tagger, lambda: tag_image(tagger, image, opts))
        return (r.caption(), dict(r.general), dict(r.characters), r.ratings, status_text(tagger))
    except LoraStudioError as exc:
        return ("", {}, {}, {}, f"**Error:** {exc}")


def unload() -> str:
    from lib_lora.tagger.model import unload_all
    n = unload_all()
    return f"Unloaded {n} model{'s' if n != 1 else ''}; memory released." if n else "No model was loaded."


def cancel_all() -> str:
    with _ACTIVE_LOCK:
        events = list(_ACTIVE.values())
    for e in events:
        e.set()
    return "Cancelling after the current batch…" if events else "Nothing is running."


def frequency_rows(counts, limit: int = 500) -> list[list]:
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [[t, n] for t, n in items[:limit]] or [["", 0]]


def progress_text(p) -> str:
    if p is None:
        return "Starting…"
    total = "?" if p.total is None else p.total
    eta = "–" if p.eta_s is None else time.strftime("%H:%M:%S", time.gmtime(p.eta_s))
    return (f"**{p.done} / {total}** images · {p.images_per_s:.2f} images/s · ETA {eta} · "
            f"written {p.written} · skipped {p.skipped} · unreadable {p.failed}")


def folder_job(ctx, folder, recursive, existing, caption_ext, output_dir, batch_size, json_sidecar, opts):
    """The tab's values → a checked FolderJob: every path inside the configured folders, extension and
    added text as in the core (nothing is created or loaded before all of it is fine)."""
    from lib_lora.tagger.pipeline import FolderJob, check_job
    roots = image_roots(ctx)
    if not str(folder or "").strip():
        raise LoraStudioError("Type the path of a folder of images (inside "
                              f"{', '.join(map(str, roots))}).")
    input_dir = _inside(folder, roots, "Image folder")
    out = _inside(output_dir, roots, "Output folder") if str(output_dir or "").strip() else None
    job = FolderJob(input_dir=input_dir, recursive=bool(recursive), existing=existing,
                    caption_ext=caption_ext or ".txt", batch_size=_whole(batch_size, "batch size"), output_dir=out,
                    json_sidecar=bool(json_sidecar), tag_options=opts)
    if not input_dir.exists():
        raise LoraStudioError(f"Image folder '{input_dir}' does not exist; type the path of a folder of images.")
    return check_job(job)


def run_folder_ui(ctx, model, model_folder, provider, allow_download, folder, recursive, existing, caption_ext,
                  output_dir, batch_size, json_sidecar, unload_after, *option_values):
    """Generator for Gradio: yields (progress markdown, frequency rows, log text, model status) while the
    job runs; the status is left as it is (an update with no value) until the end."""
    from lib_lora.tagger.pipeline import run_folder, summary_lines
    from lib_lora.ui import compat
    keep = compat.update()
    logs: list[str] = []
    try:
        ctx.check_writes()
        opts = options_from(option_values)
        job = folder_job(ctx, folder, recursive, existing, caption_ext, output_dir, batch_size, json_sidecar, opts)
        tagger = load(ctx, model, provider, allow_download, log=logs.append, folder=model_folder)
    except LoraStudioError as exc:
        yield f"**Error:** {exc}", frequency_rows({}), "\n".join(logs[-200:]), keep
        return
    cancel, state = threading.Event(), {"progress": None, "report": None, "error": None}

    def worker():
        try:
            state["report"] = gpu_section(ctx, tagger, lambda: run_folder(
                tagger, job, progress=lambda p: state.__setitem__("progress", p), cancel=cancel, log=logs.append))
        except BaseException as exc:  # noqa: BLE001 — shown in the tab
            state["error"] = exc

    with _ACTIVE_LOCK:
        _ACTIVE[id(cancel)] = cancel
    thread = threading.Thread(target=worker, name="tagger-folder", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.5)
            yield progress_text(state["progress"]), frequency_rows({}), "\n".join(logs[-200:]), keep
    finally:
        cancel.set()     # the browser went away: stop the job too
        with _ACTIVE_LOCK:
            _ACTIVE.pop(id(cancel), None)
    status = status_text(tagger)
    if unload_after:
        logs.append(unload())
        status = "No model loaded (unloaded after the run)."
    err, report = state["error"], state["report"]
    if err is not None:
        msg = str(err) if isinstance(err, LoraStudioError) else f"{type(err).__name__}: {err}"
        yield f"**Error:** {msg}", frequency_rows({}), "\n".join(logs[-200:]), status
        return
    head = summary_lines(report)[0]
    for path, reason in report.failed:
        logs.append(f"unreadable: {reason}")
    yield (f"**Done:** {head}.", frequency_rows(report.frequencies), "\n".join(logs[-200:]), status)


def build(ctx) -> None:
    import gradio as gr
    from lib_lora.tagger.captions import CAPTION_EXTS
    from lib_lora.ui import compat

    choices = model_choices(ctx)
    first = default_choice(ctx, choices)
    gr.Markdown(f"Image tagger (WD14, Z3D-E621, DeepDanbooru). Models: a folder in `{ctx.tagger_models_dir}` "
                "(listed by name) with `model.onnx` + `selected_tags.csv` (WD14), `model.onnx` + "
                "`tags-selected.csv` (Z3D-E621) or `deepdanbooru.onnx` + `tags.txt` (DeepDanbooru), or a known "
                "model (downloaded there when allowed).")
    with gr.Row():
        # A plain list: typing into a dropdown that has a value appends to that value, so folder paths get
        # their own box.
        model = gr.Dropdown(choices=choices, value=first, label="Model", elem_id="lora_studio_tagger_model",
                            scale=3)
        model_folder = gr.Textbox(label=f"…or a model folder inside {ctx.tagger_models_dir} (used when filled in)",
                                  elem_id="lora_studio_tagger_model_folder", scale=3)
        provider = compat.option_control(TagFolderOptions, "provider", choices=provider_choices(),
                                         elem_id="lora_studio_tagger_provider", scale=1)
        # Downloads write files: where writes are off the box is off too, rather than ticked and ignored.
        allow_dl = gr.Checkbox(value=ctx.writes_allowed, interactive=ctx.writes_allowed,
                               label="Download if missing" if ctx.writes_allowed else
                               "Download if missing (off: file writes are disabled)",
                               elem_id="lora_studio_tagger_download")
    with gr.Row():
        load_btn = gr.Button("Load model", elem_id="lora_studio_tagger_load")
        unload_btn = gr.Button("Unload model", elem_id="lora_studio_tagger_unload")
        refresh = gr.Button("Refresh list", elem_id="lora_studio_tagger_refresh")
    status = gr.Markdown(current_status(), elem_id="lora_studio_tagger_status")
    hint = gr.Markdown(threshold_hint(first), elem_id="lora_studio_tagger_hint")
    shown = gr.State(choices)
    with gr.Row():
        g_thr = gr.Slider(0, 1, value=0.35, step=0.01, label="General threshold (keep p >)",
                          elem_id="lora_studio_tagger_gthr")
        c_thr = gr.Slider(0, 1.01, value=0.85, step=0.01, label="Character threshold (> 1 disables)",
                          elem_id="lora_studio_tagger_cthr")
    with gr.Accordion("Tag options", open=False):
        with gr.Row():
            g_mcut = gr.Checkbox(False, label="MCut for general tags")
            c_mcut = gr.Checkbox(False, label="MCut for characters")
            inc_chars = gr.Checkbox(True, label="Include characters")
            chars_first = gr.Checkbox(False, label="Characters first")
        with gr.Row():
            sort = compat.option_control(TagFolderOptions, "sort")
            spaces = gr.Checkbox(True, label="Underscores → spaces (not emoticons)")
            escape = gr.Checkbox(False, label="Escape brackets \\( \\)")
            rating = compat.option_control(TagFolderOptions, "rating")
            max_tags = gr.Number(value=0, precision=0, label="Max tags (0 = all)")
        with gr.Row():
            exclude = gr.Textbox(label="Exclude tags (comma-separated; any case, _ or space)")
            prepend = gr.Textbox(label="Prepend tags (e.g. trigger word)")
            append = gr.Textbox(label="Append tags")
        with gr.Row():   # the `tag` command's --exclude-regex, --replace and --weights (same declarations)
            ex_regex = compat.option_control(TagFolderOptions, "exclude_regex", lines=2,
                                             label="Exclude regexes (one per line; full match, any case)",
                                             elem_id="lora_studio_tagger_exclude_regex")
            replace = compat.option_control(TagFolderOptions, "replace", lines=2,
                                            label="Replace tags (one OLD=NEW per line)",
                                            elem_id="lora_studio_tagger_replace")
            weights = compat.option_control(TagFolderOptions, "weights", elem_id="lora_studio_tagger_weights")
    opt_inputs = [g_thr, c_thr, g_mcut, c_mcut, inc_chars, chars_first, sort, spaces, escape, rating, max_tags,
                  exclude, prepend, append, ex_regex, replace, weights]
    with gr.Tabs():
        with gr.Tab("Single image") as single_tab:
            with gr.Row():
                image = gr.Image(type="pil", label="Image", elem_id="lora_studio_tagger_image")
                with gr.Column():
                    tag_btn = gr.Button("Tag image", variant="primary", elem_id="lora_studio_tagger_tag")
                    caption = gr.Textbox(label="Caption", lines=4, elem_id="lora_studio_tagger_caption")
                    ratings = gr.Label(label="Rating", elem_id="lora_studio_tagger_ratings")
            with gr.Row():
                chars = gr.Label(label="Characters", num_top_classes=20, elem_id="lora_studio_tagger_chars")
                general = gr.Label(label="General tags", num_top_classes=200, elem_id="lora_studio_tagger_general")
        with gr.Tab("Folder") as folder_tab:
            gr.Markdown("Image and output folders must be inside: "
                        + ", ".join(f"`{r}`" for r in image_roots(ctx)), elem_id="lora_studio_tagger_roots")
            with gr.Row():
                folder = gr.Textbox(label="Image folder", elem_id="lora_studio_tagger_folder", scale=4)
                recursive = gr.Checkbox(False, label="Include sub-folders")
            with gr.Row():
                existing = compat.option_control(TagFolderOptions, "existing")
                cap_ext = gr.Dropdown(list(CAPTION_EXTS), value=".txt", label="Caption extension")
                out_dir = gr.Textbox(label="Output folder (empty = beside the images)",
                                     elem_id="lora_studio_tagger_outdir")
            with gr.Row():
                batch = gr.Number(value=0, precision=0, label="Batch size (0 = auto: 8 on GPU, 1 per CPU stream)")
                sidecar = gr.Checkbox(False, label="JSON with confidences")
                unload_after = gr.Checkbox(False, label="Unload model after the run")
            with gr.Row():
                start = gr.Button("Tag folder", variant="primary", elem_id="lora_studio_tagger_start")
                stop = gr.Button("Cancel", elem_id="lora_studio_tagger_cancel")
            progress = gr.Markdown(elem_id="lora_studio_tagger_progress")
            table = gr.Dataframe(headers=["tag", "count"], datatype=["str", "number"], value=[["", 0]],
                                 label="Tag frequencies", interactive=False, elem_id="lora_studio_tagger_table")
            log = gr.Textbox(label="Log", lines=6, max_lines=12, elem_id="lora_studio_tagger_log")
        with gr.Tab("Captions"):          # the caption browser: edit what the tagger (or anyone) wrote
            from lib_lora.ui import captions_tab
            captions_tab.build(ctx)

    ctx.tagger_settings = [model, model_folder, provider, allow_dl, existing, batch, *opt_inputs]

    def do_load(m, f, p, dl):
        try:
            return status_text(load(ctx, m, p, dl, folder=f))
        except LoraStudioError as exc:
            return f"**Error:** {exc}"

    def do_refresh():
        now = model_choices(ctx)
        return compat.update(choices=now), now

    load_btn.click(do_load, inputs=[model, model_folder, provider, allow_dl], outputs=[status])
    unload_btn.click(unload, inputs=[], outputs=[status])
    refresh.click(do_refresh, inputs=[], outputs=[model, shown])
    # Gradio shows new choices the next time the list opens: refresh when it is focused, when a sub-tab is
    # picked and on page load, so a model folder added after start is there without "Refresh list".
    for event in (model.focus, single_tab.select, folder_tab.select):
        event(lambda cur: refresh_choices(ctx, cur), inputs=[shown], outputs=[model, shown], queue=False,
              show_progress="hidden")
    compat.on_page_load(lambda: (*do_refresh(), current_status()), outputs=[model, shown, status])
    model.change(threshold_hint, inputs=[model], outputs=[hint])
    tag_btn.click(lambda *a: tag_single(ctx, *a), inputs=[image, model, model_folder, provider, allow_dl] + opt_inputs,
                  outputs=[caption, general, chars, ratings, status])

    def folder_gen(*a):
        yield from run_folder_ui(ctx, *a)

    start.click(folder_gen, inputs=[model, model_folder, provider, allow_dl, folder, recursive, existing, cap_ext,
                                    out_dir, batch, sidecar, unload_after] + opt_inputs,
                outputs=[progress, table, log, status])
    # Cancel must get through while the folder run streams: it skips the queue.
    stop.click(cancel_all, inputs=[], outputs=[progress], queue=False)
