"""LoRAs tab: list the LoRA files of the configured folders, inspect one (per-block bar chart + metadata).

Also holds the helpers the Presets tab shares: file listing, inspect adapter, the SVG bar chart.
The chart is plain SVG in an gr.HTML: no plotting dependency, identical in Gradio 3 and 4.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from lib_lora.blocks import ARCH_FORMATS, BLOCK_NAMES, FORMATS
from lib_lora.errors import LoraStudioError
from lib_lora.syntax import format_number

LORA_SUFFIXES = (".safetensors",)   # pickle files are never loaded from the UI


def _files(ctx) -> list:
    """The LoRA files of the configured folders, walked as the WebUI walks them (lib_lora.library: linked
    folders followed, link loops and depth bounded); one per name below its folder, the first folder wins."""
    from lib_lora.library import Library

    lib = Library(lambda: ctx.lora_dirs, LORA_SUFFIXES, "LoRA", headers=False)
    lib.scan()
    first: dict = {}
    for f in lib.files:
        first.setdefault(f.relative, f)
    return sorted(first.values(), key=lambda f: f.relative.lower())


def list_loras(ctx) -> list[str]:
    """Names (relative to their folder, '/'-separated) of every LoRA file."""
    return [f.relative for f in _files(ctx)]


def lora_rows(ctx) -> list[list]:
    """[name, size in MB, folder] for the file table."""
    rows = []
    for f in _files(ctx):
        try:
            rows.append([f.relative, round(f.path.stat().st_size / 2**20, 2), str(f.root)])
        except OSError:        # removed or a dangling link since the walk
            continue
    return rows


def lora_path(ctx, name: str) -> Path:
    """A picked LoRA name → its file, checked on the server side (a request may name any path): inside a
    LoRA folder by fileio.resolve_inside, so a link the user put in the folder works as it does when
    generating, while '..' and outside paths are refused."""
    if not name:
        raise LoraStudioError("Pick a LoRA file first.")
    path = ctx.resolve_inside(name, list(ctx.lora_dirs), what="LoRA")
    if path.suffix.lower() not in LORA_SUFFIXES:
        raise LoraStudioError(f"'{name}' is not a .safetensors file.")
    return path


def chart_slots(arch: str | None) -> list[int]:
    """The block slots a LoRA of `arch` has: SDXL has IN00-IN08 and OUT00-OUT08 only (its full format);
    SD1/SD2 and unknown: all 26."""
    full = ARCH_FORMATS.get((arch or "").lower(), (None, 26))[1]
    return list(FORMATS[full])


def inspect_lora(ctx, name: str, with_hash: bool = False) -> dict:
    from lib_lora.lora_info import inspect_file   # lazy: torch import only when a LoRA is inspected
    return inspect_file(str(lora_path(ctx, name)), with_hash=with_hash)


def block_norms(report: dict) -> list[float | None]:
    """The 26-slot weight-norm vector of an inspect report (None where a slot has no module)."""
    norms = report["block_norms"]
    return [norms.get(name) for name in BLOCK_NAMES]


def render_bars(norms, weights=None, title: str = "", arch: str | None = None) -> str:
    """SVG bar chart of the 26 block norms, scaled to the largest.

    With `weights` (26 floats, None = random/X letter): the raw norm is drawn light, norm × |weight| dark
    on top (what the preset keeps), and each block's weight is written above its column.
    Blocks without any module get a thin grey stub. Columns are the blocks of `arch` (chart_slots).
    """
    w, h, left, bottom = 780, 250, 44, 46
    top = 44 if weights is not None else 24
    slots = chart_slots(arch)
    step = (w - left - 8) / len(slots)
    vals = [v for v in (norms or []) if v is not None and math.isfinite(v)]
    vmax = max(vals) if vals and max(vals) > 0 else 1.0
    plot_h = h - top - bottom
    base = top + plot_h
    raw_fill = "#b8cbee" if weights is not None else "#4a7bd0"
    parts = [f'<svg class="lora-studio-bars" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" '
             f'width="100%" style="max-width:{w}px;font:11px sans-serif">']
    if title:
        parts.append(f'<text x="{left}" y="14" font-weight="bold">{html.escape(title)}</text>')
    parts.append(f'<line x1="{left}" y1="{base}" x2="{w - 8}" y2="{base}" stroke="#888"/>')
    parts.append(f'<text x="{left - 4}" y="{top + 8}" text-anchor="end" fill="#666">{vmax:.3g}</text>')
    parts.append(f'<text x="{left - 4}" y="{base}" text-anchor="end" fill="#666">0</text>')
    for col, i in enumerate(slots):
        name = BLOCK_NAMES[i]
        x = left + col * step
        v = None if not norms or i >= len(norms) else norms[i]
        wt = None if weights is None or i >= len(weights) else weights[i]
        if v is None or not math.isfinite(v):
            parts.append(f'<rect class="bar-empty" data-block="{name}" x="{x + 2:.1f}" y="{base - 2}" '
                         f'width="{step - 4:.1f}" height="2" fill="#ccc"/>')
        else:
            bh = max(1.0, plot_h * v / vmax) if v > 0 else 0.0
            parts.append(f'<rect class="bar" data-block="{name}" data-norm="{v:.6g}" x="{x + 2:.1f}" '
                         f'y="{base - bh:.1f}" width="{step - 4:.1f}" height="{bh:.1f}" fill="{raw_fill}">'
                         f'<title>{name}: {v:.4g}</title></rect>')
            if wt is not None:
                ev = v * abs(wt)
                eh = min(plot_h, plot_h * ev / vmax)
                parts.append(f'<rect class="kept" data-block="{name}" data-kept="{ev:.6g}" x="{x + 5:.1f}" '
                             f'y="{base - eh:.1f}" width="{max(1.0, step - 10):.1f}" height="{eh:.1f}" '
                             f'fill="#2b59b0"><title>{name}: {v:.4g} × {format_number(wt)}</title></rect>')
        if weights is not None:
            label = "?" if wt is None else format_number(wt)
            colour = "#e0603a" if wt not in (None, 0.0) else "#aaa"
            parts.append(f'<text class="weight" data-block="{name}" data-weight="{label}" x="{x + step / 2:.1f}" '
                         f'y="{top - 6}" text-anchor="middle" font-size="10" fill="{colour}">{label}</text>')
        lx, ly = x + step / 2, base + 8
        parts.append(f'<text x="{lx:.1f}" y="{ly}" transform="rotate(60 {lx:.1f} {ly})" fill="#444">{name}</text>')
    if weights is not None:
        parts.append(f'<text x="{w - 8}" y="14" text-anchor="end" fill="#666">light: norm · dark: norm × '
                     f'|preset weight| · <tspan fill="#e0603a">weight</tspan></text>')
    parts.append("</svg>")
    return "".join(parts)


def _counts(v: dict) -> str:
    """{"4": 10, "8": 2} → "4 (×10), 8 (×2)"."""
    return ", ".join(f"{k} (×{n})" for k, n in v.items())


def summary_markdown(name: str, report: dict) -> str:
    """Headline facts of an inspect report (empty ones are left out; the hash only when it was computed)."""
    rows = [("file", name)]
    if report["problem"]:
        rows.append(("⚠ " + report["verdict"], report["problem"]))
    rows.append(("architecture", report["arch_label"]))
    for key, label in (("algorithms", "algorithm"), ("ranks", "rank"), ("alphas", "alpha")):
        if report[key]:
            rows.append((label, _counts(report[key])))
        if key == "algorithms":
            rows.append(("modules", report["module_count"]))
    if report.get("hash_short"):
        rows.append(("hash", report["hash_short"]))
    other = report["block_norms"]["other"]
    if other:
        rows.append(("outside the block table", f"norm {other:.4g} (time embedding, conv_in/out...)"))
    for note in report["notes"]:
        rows.append(("note", note))
    return "\n".join(f"- **{k}**: {html.escape(str(v))}" for k, v in rows)


def show_lora(ctx, name: str):
    """Callback: (chart html, summary markdown, metadata json text)."""
    try:
        report = inspect_lora(ctx, name, with_hash=True)
    except LoraStudioError as exc:
        return "", f"⚠ {exc}", ""
    chart = render_bars(block_norms(report), title=f"{Path(name).stem}: weight norm per block",
                        arch=report["arch"])
    meta = report["metadata"]
    return chart, summary_markdown(name, report), json.dumps(meta, indent=1, ensure_ascii=False, default=str)


def show_card(ctx, name: str):
    """Callback: (training html, the 5 sidecar fields, status line) of a LoRA (header only, no tensors read)."""
    from lib_lora import fileio
    if not name:
        return ("",) + EMPTY_FIELDS + ("",)
    try:
        meta = fileio.read_metadata(str(lora_path(ctx, name)))
    except LoraStudioError as exc:
        return ("",) + EMPTY_FIELDS + (f"⚠ {exc}",)
    try:
        fields, status = sidecar_values(ctx, name), ""
    except LoraStudioError as exc:   # a broken sidecar: shown, and saving refuses rather than replaces it
        fields, status = EMPTY_FIELDS, f"⚠ {exc}"
    return (training_html(meta),) + tuple(fields) + (status,)


EMPTY_FIELDS = ("", "", 0.0, "", "")


def build(ctx) -> None:
    import gradio as gr
    from lib_lora.ui import compat

    folders = ", ".join(str(d) for d in ctx.lora_dirs)
    gr.Markdown(f"LoRA files in {html.escape(folders)}.")
    with gr.Row():
        pick = gr.Dropdown(choices=list_loras(ctx), value=None, label="LoRA", elem_id="lora_studio_inspect_pick",
                           scale=4)
        refresh = gr.Button("Refresh list", elem_id="lora_studio_inspect_refresh", scale=1, size="sm",
                            min_width=80)
    chart = gr.HTML(elem_id="lora_studio_inspect_chart")
    summary = gr.Markdown(elem_id="lora_studio_inspect_summary")
    with gr.Accordion("Training (from the file's metadata)", open=True):
        training = gr.HTML(elem_id="lora_studio_inspect_training")
    with gr.Accordion("Card: description, activation text, preferred weight (the WebUI's .json beside the file)",
                      open=True):
        desc = gr.Textbox(label="Description", lines=2, elem_id="lora_studio_card_description")
        activation = gr.Textbox(label="Activation text", elem_id="lora_studio_card_activation")
        with gr.Row():
            weight = gr.Number(label="Preferred weight (0 = the default)", value=0.0,
                               elem_id="lora_studio_card_weight")
            preset = gr.Dropdown(choices=[""] + (ctx.presets.names() if ctx.presets is not None else []),
                                 value="", label="Preferred block-weight preset", elem_id="lora_studio_card_preset")
        notes = gr.Textbox(label="Notes", lines=2, elem_id="lora_studio_card_notes")
        save = gr.Button("Save card", elem_id="lora_studio_card_save", size="sm")
        status = gr.Markdown(elem_id="lora_studio_card_status")
    with gr.Accordion("Metadata", open=False):
        meta = gr.Code(language="json", label="metadata", elem_id="lora_studio_inspect_meta")
    with gr.Accordion("All files", open=False):
        files = gr.Dataframe(value=lora_rows(ctx), headers=["file", "MB", "folder"], datatype=["str", "number", "str"],
                             type="array", interactive=False, elem_id="lora_studio_inspect_files")

    def refreshed():
        return compat.update(choices=list_loras(ctx)), lora_rows(ctx)

    refresh.click(refreshed, inputs=[], outputs=[pick, files])
    compat.on_page_load(refreshed, outputs=[pick, files])
    def row_name(rows, index):
        rows = compat.dataframe_rows(rows)
        return rows[index[0]][0] if index and 0 <= index[0] < len(rows) else compat.update()

    files.select(compat.with_select_index(row_name, 1), inputs=[files], outputs=[pick])
    fields = [desc, activation, weight, preset, notes]
    pick.change(lambda n: show_lora(ctx, n) if n else ("", "", ""), inputs=[pick], outputs=[chart, summary, meta])
    pick.change(lambda n: show_card(ctx, n), inputs=[pick], outputs=[training, *fields, status])
    save.click(lambda n, *v: save_sidecar(ctx, n, *v), inputs=[pick, *fields], outputs=[status])


# --- training metadata and the user-metadata sidecar (shared with the WebUI's card editor) -------------------

def training_html(meta: dict, add_to_prompt: bool = False, max_tags: int = 200) -> str:
    """The training facts of a LoRA's ss_* header as HTML: a facts table, the dataset folders, the network
    arguments and the training tags by frequency. With `add_to_prompt`, each tag is a button
    (class lora-studio-tag, data-tag) that javascript/lora_studio_cards.js adds to the prompt."""
    from lib_lora.sidecar import training_view

    view = training_view(meta)
    esc = html.escape
    parts = ['<div class="lora-studio-training">']
    rows = list(view["facts"])
    if view["network_args"]:
        rows.append(("network args", ", ".join(f"{k}={v}" for k, v in view["network_args"].items())))
    if rows:
        parts.append('<table class="lora-studio-facts">' + "".join(
            f'<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>' for k, v in rows) + "</table>")
    if view["datasets"]:
        parts.append('<div class="lora-studio-datasets"><b>Dataset</b><ul>' + "".join(
            f'<li>{esc(d["dir"])}: {esc(str(d["images"] if d["images"] is not None else "?"))} images'
            + (f' × {esc(str(d["repeats"]))} repeats' if d["repeats"] is not None else "") + "</li>"
            for d in view["datasets"]) + "</ul></div>")
    tags = view["tags"]
    if tags:
        shown = tags[:max_tags]
        more = f" (first {len(shown)} of {len(tags)})" if len(tags) > len(shown) else ""
        head = "Training tags by frequency" + more + (": click to add to the prompt" if add_to_prompt else "")
        items = []
        for tag, n in shown:
            if add_to_prompt:
                items.append(f'<button type="button" class="lora-studio-tag" data-tag="{esc(tag)}">'
                             f'{esc(tag)} <span class="lora-studio-tag-count">{n}</span></button>')
            else:
                items.append(f'<span class="lora-studio-tag" data-tag="{esc(tag)}">{esc(tag)} '
                             f'<span class="lora-studio-tag-count">{n}</span></span>')
        parts.append(f'<div class="lora-studio-tags"><b>{esc(head)}</b><div>{" ".join(items)}</div></div>')
    if not rows and not view["datasets"] and not tags:
        parts.append("<p>No training metadata in this file.</p>")
    for p in view["problems"]:
        parts.append(f'<p class="lora-studio-problem">⚠ {esc(p)}</p>')
    parts.append("</div>")
    return "".join(parts)


def sidecar_values(ctx, name: str) -> tuple:
    """(description, activation text, preferred weight, preferred preset, notes) of a LoRA's sidecar."""
    from lib_lora import sidecar
    data = sidecar.read_sidecar(lora_path(ctx, name))
    try:
        weight = float(data.get(sidecar.WEIGHT) or 0.0)
    except (TypeError, ValueError):
        weight = 0.0
    return (str(data.get(sidecar.DESCRIPTION, "")), str(data.get(sidecar.ACTIVATION, "")), weight,
            str(data.get(sidecar.PRESET, "")), str(data.get(sidecar.NOTES, "")))


def save_sidecar(ctx, name: str, description, activation, weight, preset, notes) -> str:
    """Callback: write the user fields into the LoRA's sidecar; returns a status line."""
    from lib_lora import sidecar
    try:
        ctx.check_writes()
        path = lora_path(ctx, name)
        preset = (preset or "").strip()
        if preset and ctx.presets is not None and ctx.presets.get(preset) is None:
            raise LoraStudioError(f"preset '{preset}' is not known; pick one from the Presets tab or leave it empty")
        sidecar.update_sidecar(path, {sidecar.DESCRIPTION: description, sidecar.ACTIVATION: activation,
                                      sidecar.WEIGHT: weight, sidecar.PRESET: preset, sidecar.NOTES: notes})
    except LoraStudioError as exc:
        return f"⚠ {exc}"
    return f"Saved {Path(sidecar.sidecar_path(path)).name}."
