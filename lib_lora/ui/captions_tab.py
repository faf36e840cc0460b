"""Captions section (a sub-tab of the Tagger tab): a folder's images as paged thumbnails with their
captions, one caption edited, tags searched across the folder, a tag replaced / removed / moved to the
front / excluded by regex in every caption (preview first, then apply, then Undo), a per-tag frequency.

Handlers are plain functions of (ctx, values), tested without a browser; `build` wires them. The folder is
re-read on every action (the files are the truth, also when edited elsewhere), and each path is checked
server-side against the tagger's image folders. The core is `lib_lora.tagger.caption_ops`.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from pathlib import Path

from lib_lora.errors import LoraStudioError

PAGE_SIZE = 24
THUMB = 192
_UNDO: dict[tuple, object] = {}          # (folder, caption ext) → the Journal of its last bulk change
_PLANS: dict[tuple, str] = {}            # (folder, caption ext) → digest of the plan last previewed
_LOCK = threading.Lock()
_THUMBS: OrderedDict = OrderedDict()     # (path, mtime, size) → thumbnail, bounded
_THUMBS_MAX = 512


def _open(ctx, folder, recursive, caption_ext):
    from lib_lora.tagger import caption_ops
    from lib_lora.ui.tagger_tab import _inside, image_roots
    roots = image_roots(ctx)
    if not str(folder or "").strip():
        raise LoraStudioError("Type the path of a folder of images (inside "
                              f"{', '.join(map(str, roots))}).")
    root = _inside(folder, roots, "Image folder")
    return caption_ops.open_folder(root, bool(recursive), caption_ext or ".txt")


def _key(f) -> tuple:
    return (str(f.root), f.caption_ext)


def digest(raw: bytes | None) -> str:
    return "" if raw is None else hashlib.sha256(raw).hexdigest()


def thumbnail(path: Path):
    """A small RGB copy for the gallery (the originals may be huge and lie in folders never served)."""
    from PIL import Image
    try:
        st = path.stat()
        key = (str(path), st.st_mtime_ns, st.st_size)
    except OSError:
        key = None
    with _LOCK:
        if key in _THUMBS:
            _THUMBS.move_to_end(key)
            return _THUMBS[key]
    try:
        with Image.open(path) as img:
            img.draft("RGB", (THUMB, THUMB))
            img.thumbnail((THUMB, THUMB))
            from lib_lora.tagger.preprocess import to_rgb_on_white
            thumb = to_rgb_on_white(img)
            thumb.load()
    except Exception:  # noqa: BLE001 — any undecodable image gets a grey tile, its caption still shows
        thumb = Image.new("RGB", (THUMB, THUMB), (128, 128, 128))
    if key is not None:
        with _LOCK:
            _THUMBS[key] = thumb
            while len(_THUMBS) > _THUMBS_MAX:
                _THUMBS.popitem(last=False)
    return thumb


def _label(f, e) -> str:
    text = e.text if not e.problem else f"({e.problem}) {e.text}"
    text = text if e.raw is not None or e.problem else "(no caption)"
    text = text if len(text) <= 160 else text[:157] + "…"
    return f"{f.rel(e)}: {text}"


def frequency_rows(counts, limit: int = 1000) -> list[list]:
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0].lower()))
    return [[t, n] for t, n in items[:limit]] or [["", 0]]


def _page_count(n: int) -> int:
    return max(1, -(-n // PAGE_SIZE))


def page_of(entries: list, page) -> tuple[list, int]:
    try:
        p = int(float(page or 1))
    except (TypeError, ValueError):
        p = 1
    p = min(max(1, p), _page_count(len(entries)))
    return entries[(p - 1) * PAGE_SIZE:p * PAGE_SIZE], p


def browse(ctx, folder, recursive, caption_ext, query, page):
    """→ (status, gallery [(thumb, label)], file names on the page, page number, frequency rows)."""
    from lib_lora.tagger import caption_ops
    f = _open(ctx, folder, recursive, caption_ext)
    found = caption_ops.search(f, query)
    shown, p = page_of(found, page)
    with_caption = sum(1 for e in f.entries if e.raw is not None)
    status = f"{len(f.entries)} images, {with_caption} with a caption file"
    if str(query or "").strip():
        status += f"; {len(found)} match '{str(query).strip()}'"
    status += f" · page {p} of {_page_count(len(found))}."
    bad = f.untouched_line()
    if bad:
        status += f"\n\n{bad}"
    gallery = [(thumbnail(e.image), _label(f, e)) for e in shown]
    return status, gallery, [f.rel(e) for e in shown], p, frequency_rows(caption_ops.frequencies(f))


def browse_ui(ctx, folder, recursive, caption_ext, query, page, current=None):
    """Gradio outputs: status, gallery, file list update, page, frequency table, editor text, shown digest.
    The image picked before stays picked when it is still on the page."""
    from lib_lora.ui import compat
    try:
        status, gallery, names, p, rows = browse(ctx, folder, recursive, caption_ext, query, page)
    except LoraStudioError as exc:
        return (f"**Error:** {exc}", [], compat.update(choices=[], value=None), 1, frequency_rows({}), "", "")
    first = current if current in names else (names[0] if names else None)
    text, shown = select(ctx, folder, recursive, caption_ext, first) if first else ("", "")
    return status, gallery, compat.update(choices=names, value=first), p, rows, text, shown


def select(ctx, folder, recursive, caption_ext, rel):
    """One image picked → (its caption for the editor, digest of the file as shown)."""
    if not rel:
        return "", ""
    try:
        e = _open(ctx, folder, recursive, caption_ext).find(str(rel))
    except LoraStudioError as exc:
        return f"(error: {exc})", ""
    return e.text, digest(e.raw)


def select_index(ctx, folder, recursive, caption_ext, query, page, index):
    """A gallery click: the index on the current page → (file name, caption, digest)."""
    from lib_lora.tagger import caption_ops
    try:
        f = _open(ctx, folder, recursive, caption_ext)
        shown, _ = page_of(caption_ops.search(f, query), page)
        e = shown[int(index)]
    except (LoraStudioError, TypeError, ValueError, IndexError):
        return None, "", ""
    return f.rel(e), e.text, digest(e.raw)


def save(ctx, folder, recursive, caption_ext, rel, text, shown) -> str:
    """Save the editor's text as the caption of `rel`, unless the file changed since it was shown."""
    from lib_lora.tagger import caption_ops
    try:
        ctx.check_writes()
        if not rel:
            raise LoraStudioError("Pick an image first (click a thumbnail or choose it in the list).")
        f = _open(ctx, folder, recursive, caption_ext)
        e = f.find(str(rel))
        if digest(e.raw) != (shown or ""):
            raise LoraStudioError(f"{e.caption.name} changed since it was shown: kept; pick the image again to "
                                  "see its current caption.")
        j = caption_ops.edit(f, str(rel), str(text or ""))
        return f"Saved {e.caption.name}." if j.writes else f"{e.caption.name} is unchanged."
    except LoraStudioError as exc:
        return f"**Error:** {exc}"


def preview(ctx, folder, recursive, caption_ext, action, tag, replacement) -> str:
    from lib_lora.tagger import caption_ops
    try:
        f = _open(ctx, folder, recursive, caption_ext)
        plan = caption_ops.plan_change(f, action, tag, replacement)
    except LoraStudioError as exc:
        return f"**Error:** {exc}"
    with _LOCK:
        _PLANS[_key(f)] = plan.digest
    lines = plan.preview_lines()
    body = "\n".join(f"- `{ln}`" for ln in lines[1:])
    tail = "\n\nPress **Apply to all captions** to write exactly this." if plan.changes else ""
    return f"**Preview:** {lines[0]}\n\n{body}{tail}"


def apply_ui(ctx, folder, recursive, caption_ext, action, tag, replacement) -> str:
    """Apply the change previewed last, only if planning it again gives the very same files and bytes."""
    from lib_lora.tagger import caption_ops
    try:
        ctx.check_writes()
        f = _open(ctx, folder, recursive, caption_ext)
        plan = caption_ops.plan_change(f, action, tag, replacement)
        with _LOCK:
            previewed = _PLANS.get(_key(f))
        if previewed != plan.digest:
            raise LoraStudioError("the change differs from the last preview (other settings, or captions edited "
                                  "since): press Preview, check it, then Apply.")
        if not plan.changes:
            return "Nothing to change."
        journal = caption_ops.apply(plan)
        with _LOCK:
            _PLANS.pop(_key(f), None)
            if journal.writes:
                _UNDO[_key(f)] = journal
        return journal.summary() + (" Undo puts the files back." if journal.writes else "")
    except LoraStudioError as exc:
        return f"**Error:** {exc}"


def undo_ui(ctx, folder, recursive, caption_ext) -> str:
    from lib_lora.tagger import caption_ops
    try:
        ctx.check_writes()
        f = _open(ctx, folder, recursive, caption_ext)
        with _LOCK:
            journal = _UNDO.pop(_key(f), None)
        if journal is None:
            return "Nothing to undo for this folder."
        return caption_ops.undo(journal).summary()
    except LoraStudioError as exc:
        return f"**Error:** {exc}"


def build(ctx) -> None:
    import gradio as gr
    from lib_lora.tagger.caption_ops import ACTIONS
    from lib_lora.tagger.captions import CAPTION_EXTS
    from lib_lora.ui import compat
    from lib_lora.ui.tagger_tab import image_roots

    gr.Markdown("Browse and edit the captions of a folder inside: "
                + ", ".join(f"`{r}`" for r in image_roots(ctx)) + ". Bulk changes show a preview first; "
                "Undo puts the last one back.")
    with gr.Row():
        folder = gr.Textbox(label="Image folder", elem_id="lora_studio_captions_folder", scale=4)
        recursive = gr.Checkbox(False, label="Include sub-folders", elem_id="lora_studio_captions_recursive")
        ext = gr.Dropdown(list(CAPTION_EXTS), value=".txt", label="Caption extension",
                          elem_id="lora_studio_captions_ext")
        open_btn = gr.Button("Open folder", variant="primary", elem_id="lora_studio_captions_open")
    with gr.Row():
        query = gr.Textbox(label="Search tags (part of a tag; \"quoted\" = whole tag)",
                           elem_id="lora_studio_captions_query", scale=3)
        page = gr.Number(value=1, precision=0, label="Page", elem_id="lora_studio_captions_page", scale=1)
        prev_btn = gr.Button("◀ Previous", elem_id="lora_studio_captions_prev")
        next_btn = gr.Button("Next ▶", elem_id="lora_studio_captions_next")
    status = gr.Markdown(elem_id="lora_studio_captions_status")
    gallery = gr.Gallery(label="Images", columns=6, height="auto", elem_id="lora_studio_captions_gallery")
    with gr.Row():
        with gr.Column(scale=3):
            name = gr.Dropdown(choices=[], label="Image", elem_id="lora_studio_captions_file")
            editor = gr.Textbox(label="Caption (comma-separated tags, one line)", lines=3,
                                elem_id="lora_studio_captions_editor")
            shown = gr.Textbox(visible=False, elem_id="lora_studio_captions_shown")
            save_btn = gr.Button("Save caption", elem_id="lora_studio_captions_save")
            with gr.Group():
                with gr.Row():
                    action = gr.Dropdown(list(ACTIONS), value="replace", label="Change in every caption",
                                         elem_id="lora_studio_captions_action")
                    tag = gr.Textbox(label="Tag (or regex for exclude)", elem_id="lora_studio_captions_tag")
                    repl = gr.Textbox(label="Replace with (empty = remove)", elem_id="lora_studio_captions_repl")
                with gr.Row():
                    prev_change = gr.Button("Preview", elem_id="lora_studio_captions_preview")
                    apply_btn = gr.Button("Apply to all captions", variant="primary",
                                          elem_id="lora_studio_captions_apply")
                    undo_btn = gr.Button("Undo last change", elem_id="lora_studio_captions_undo")
            result = gr.Markdown(elem_id="lora_studio_captions_result")
        table = gr.Dataframe(headers=["tag", "files"], datatype=["str", "number"], value=[["", 0]],
                             label="Tag frequency", interactive=False, elem_id="lora_studio_captions_freq")

    where = [folder, recursive, ext]
    view = where + [query, page]
    view_out = [status, gallery, name, page, table, editor, shown]

    def refresh(*a):            # after a write: same page, same picked image
        return browse_ui(ctx, *a)

    def turn(step):
        def go(*a):
            try:
                p = int(float(a[4] or 1)) + step
            except (TypeError, ValueError):
                p = 1
            return browse_ui(ctx, *a[:4], p if step else 1)
        return go

    for event in (open_btn.click, folder.submit, query.submit):
        event(turn(0), inputs=view, outputs=view_out)
    prev_btn.click(turn(-1), inputs=view, outputs=view_out)
    next_btn.click(turn(1), inputs=view, outputs=view_out)
    name.select(lambda *a: select(ctx, *a), inputs=where + [name], outputs=[editor, shown])
    gallery.select(compat.with_select_index(lambda *a: select_index(ctx, *a), len(view)), inputs=view,
                   outputs=[name, editor, shown])
    save_btn.click(lambda *a: save(ctx, *a), inputs=where + [name, editor, shown], outputs=[result]) \
        .then(refresh, inputs=view + [name], outputs=view_out)
    prev_change.click(lambda *a: preview(ctx, *a), inputs=where + [action, tag, repl], outputs=[result])
    apply_btn.click(lambda *a: apply_ui(ctx, *a), inputs=where + [action, tag, repl], outputs=[result]) \
        .then(refresh, inputs=view + [name], outputs=view_out)
    undo_btn.click(lambda *a: undo_ui(ctx, *a), inputs=where, outputs=[result]) \
        .then(refresh, inputs=view + [name], outputs=view_out)
