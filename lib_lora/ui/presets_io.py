"""The Presets tab's LoRA Block Weight presets file import (an upload, merged into the user presets file) and
export (every preset, for download)."""

from __future__ import annotations

import os
import tempfile

from lib_lora.errors import LoraStudioError
from lib_lora.ui.presets_table import _need_store

MAX_IMPORT_BYTES = 1 << 20


def _uploaded_text(file_value) -> tuple[str, str]:
    """(text, file name) of a presets file the user uploaded; anything else is refused with one line.

    The value arrives unprocessed (preprocess=False): a server path is accepted only inside Gradio's upload
    folder (where /upload puts real uploads), never e.g. /etc/passwd named by a crafted request; a FIFO is
    refused at once (read_small_text)."""
    from lib_lora.fileio import read_small_text, resolve_inside
    from lib_lora.ui.compat import raw_upload_path, upload_dir
    path, data = raw_upload_path(file_value)
    if data is not None:
        if len(data) > MAX_IMPORT_BYTES:
            raise LoraStudioError("That file is over 1 MB; a presets file is a small text file.")
        try:
            return data.decode("utf-8-sig"), "upload"
        except UnicodeDecodeError:
            raise LoraStudioError("That file is not UTF-8 text; save it as UTF-8 and import again.") from None
    if not path:
        raise LoraStudioError("Choose a presets file (lbwpresets.txt) to import first.")
    try:
        inside = resolve_inside(path, [upload_dir()], "presets file")
    except LoraStudioError:
        raise LoraStudioError("Only a file uploaded with the Import box can be imported; choose the file "
                              "there.") from None
    return read_small_text(inside, "presets file", MAX_IMPORT_BYTES), inside.name


def import_file(ctx, file_value) -> str:
    """Merge an uploaded LBW presets file into the user presets and save. Messages name line numbers,
    never the file's content."""
    try:
        ctx.check_writes()
        store = _need_store(ctx)
        text, name = _uploaded_text(file_value)
        skipped: list[int] = []
        try:
            names, _warnings = store.import_text(text, source=name, skipped=skipped)
            if not names:
                raise LoraStudioError("No preset found in that file (expected lines NAME:w1,...,wN with "
                                      "12/17/20/26 values); nothing imported.")
            store.save()
        finally:
            store.reload()
    except LoraStudioError as exc:
        return f"⚠ {exc}"
    shown = ", ".join(names[:20]) + (" …" if len(names) > 20 else "")
    msg = f"Imported {len(names)} presets ({shown}) into {store.user_path}."
    if skipped:
        lines = ", ".join(map(str, sorted(set(skipped))[:10])) + (" …" if len(set(skipped)) > 10 else "")
        msg += (f" Skipped {len(set(skipped))} line(s) that are not valid presets (line {lines}); "
                "a name used twice keeps the later line.")
    return msg


_EXPORT_DIR: str | None = None


def export_file(ctx):
    """Write the LBW-format text of every preset to a temp file for download: (path, status)."""
    try:
        text = _need_store(ctx).export_text()
    except LoraStudioError as exc:
        return None, f"⚠ {exc}"
    global _EXPORT_DIR
    if _EXPORT_DIR is None or not os.path.isdir(_EXPORT_DIR):
        _EXPORT_DIR = tempfile.mkdtemp(prefix="lora_studio_export_")   # one per process, reused
    fd, tmp = tempfile.mkstemp(dir=_EXPORT_DIR, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    path = os.path.join(_EXPORT_DIR, "lbwpresets.txt")
    os.replace(tmp, path)
    n = len([ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")])
    return path, f"Exported {n} presets (LoRA Block Weight format)."
