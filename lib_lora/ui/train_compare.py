"""Training tab, compare epochs: an epoch × weight grid of one run's files with one seed and a no-LoRA
column. Standalone it is rendered with lib_lora.sd through the core patcher; in the WebUI the host renders
it with the WebUI's own txt2img and LoRA Studio's X/Y/Z axes (lora_studio_webui.train_grid)."""

from __future__ import annotations

import contextlib
import html
import os
from pathlib import Path

from lib_lora.errors import LoraStudioError
from lib_lora.ui.merge_tab import checkpoint_choices, checkpoint_path, error_line
from lib_lora.ui.train_params import _plain_name

# ---- compare epochs ---------------------------------------------------------------------------------------


def epoch_files(ctx, run_name) -> list[Path]:
    """`<name>-000001.safetensors` … and `<name>.safetensors` in the first LoRA folder, in epoch order."""
    import re
    name = _plain_name(run_name, "run")
    folder = Path(ctx.lora_dirs[0]) if ctx.lora_dirs else None
    if folder is None or not folder.is_dir():
        raise LoraStudioError("No LoRA folder is configured.")
    pat = re.compile(re.escape(name) + r"-(\d{6})\.safetensors$")
    found = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := pat.match(p.name)))
    files = [p for _, p in found]
    final = folder / f"{name}.safetensors"
    if final.is_file():
        files.append(final)
    if not files:
        raise LoraStudioError(f"No files of run '{name}' in {folder}; train it first or check the name.")
    return files


def parse_weights(text) -> list[float]:
    try:
        out = [float(t) for t in str(text or "").replace(";", ",").split(",") if t.strip()]
    except ValueError:
        raise LoraStudioError(f"Weights '{text}' are not numbers; write e.g. 0.5, 0.75, 1.") from None
    if not out or len(out) > 8:
        raise LoraStudioError("Give 1 to 8 weights, e.g. 0.5, 0.75, 1.")
    return out


def recorded_base(files) -> str:
    """The file name of the checkpoint a run was trained on, as its last file records it (`ss_sd_model_name`;
    sd-scripts may record a Hugging Face model id: its last part), or ''."""
    from lib_lora import fileio
    try:
        name = (fileio.read_metadata(str(files[-1])) or {}).get("ss_sd_model_name") or ""
    except Exception:  # noqa: BLE001 — an unreadable header records nothing
        return ""
    return os.path.basename(name.replace("\\", "/").rstrip("/")) if name not in ("", "None") else ""


def choose_base(files, picked, names: dict):
    """The grid's model, one rule for both hosts: (key of `names` ({shown name: file path}) or None for "no
    choice"; the note that says which model drew the grid). The model the run records wins (the tab's pick
    first among files of that name); a recorded model that is not in the list falls back to the pick, said in
    the note, so a run trained elsewhere (another folder, a Hugging Face id) can still be compared."""
    recorded = recorded_base(files)
    picked = str(picked) if picked else None
    if recorded:
        found = sorted((n for n, p in names.items() if os.path.basename(str(p)) == recorded), key=lambda n: n != picked)
        if found:
            return found[0], f"Rendered with the run's base model '{found[0]}'."
        if picked:
            return picked, (f"The run was trained on '{recorded}', which is not in the checkpoint list: rendered "
                            f"with '{picked}'.")
        return None, f"The run was trained on '{recorded}', which is not in the checkpoint list."
    if picked:
        return picked, f"Rendered with '{picked}' (the run does not name its base model)."
    return None, "The run does not name its base model."


def compare_epochs(ctx, checkpoint, run_name, weights, prompt, negative="", seed=1, steps=20, size=512,
                   cfg_scale=7.0, model=None, progress=None):
    """Standalone: an epoch × weight grid (rows: epochs, columns: a no-LoRA image then each weight) with one
    seed, rendered with lib_lora.sd; each LoRA goes on through the core patcher and is taken off exactly.
    `model`: render on it (a host's own model); else the run's base checkpoint (`choose_base`), which is the
    Merge tab's loaded model A when that is the same file without a live merge (`LoadedModel.lend`), so the
    app does not hold two copies of one checkpoint; another checkpoint is loaded for this grid only."""
    files = epoch_files(ctx, run_name)
    ws = parse_weights(weights)
    if not str(prompt or "").strip():
        raise LoraStudioError("Type a prompt for the grid (with the trigger word).")
    args = (files, ws, str(prompt), str(negative or ""), int(seed), int(steps), int(size), float(cfg_scale), progress)
    if model is not None:
        return _render_grid(model, *args), ""
    names = checkpoint_choices(ctx) if (ctx.checkpoint_list is not None or ctx.checkpoint_dirs) else {}
    name, note = choose_base(files, checkpoint, names)
    if name is None:
        raise LoraStudioError(f"{note} Pick the base checkpoint above.")
    path = checkpoint_path(ctx, name, "base")
    shared = ctx.loaded_model
    # A live merge on model A: the grid loads its own copy, as it always did. It must show the plain base, and
    # refusing would make the user throw away the merge being tried to get a grid (a button failing where it
    # worked); the note says how to avoid the second copy. Merge-tab actions wait while the model is lent (and say so).
    lent = shared.lend(path, "the Training tab's epoch grid") if shared is not None else None
    with (lent or contextlib.nullcontext((None, ""))) as (model, why):
        if model is not None:
            return _render_grid(model, *args), f"{note} Reused model A loaded in the Merge tab."
    from lib_lora.sd import load_model
    model = load_model(path)
    return _render_grid(model, *args), f"{note} {why}".rstrip()


def _render_grid(model, files, ws, prompt, negative, seed, steps, size, cfg_scale, progress):
    import torch

    from lib_lora.network import load_network
    from lib_lora.patcher import ActiveLora, Patcher
    from lib_lora.sd.sample import generate
    from lib_lora.train.trainer import model_host

    patcher = Patcher(model_host(model))
    total = 1 + len(files) * len(ws)
    done = 0

    def render():
        nonlocal done
        with torch.no_grad():
            img = generate(model, prompt, negative, seed=seed, steps=steps, cfg=cfg_scale, width=size, height=size)
        done += 1
        if progress is not None:
            progress(done, total)
        return img

    base = render()
    rows = []
    for f in files:
        net = load_network(str(f))
        row = []
        for w in ws:
            try:    # apply inside: a LoRA that fails half-way is taken off too (the model may be the Merge tab's)
                patcher.apply([ActiveLora(net, te=w, unet=w)])
                row.append(render())
            finally:
                patcher.restore()
        rows.append((f.stem, row))
    return grid_image(base, rows, ws, size)


def grid_image(base, rows, weights, size: int):
    """The grid: a header row (no LoRA, then each weight), one row per epoch file with its name, the no-LoRA
    image repeated in the first column of every row."""
    from PIL import Image, ImageDraw
    label_w, head_h = 150, 24
    grid = Image.new("RGB", (label_w + size * (1 + len(weights)), head_h + size * len(rows)), "white")
    d = ImageDraw.Draw(grid)
    for j, title in enumerate(["no LoRA", *[f"weight {w:g}" for w in weights]]):
        d.text((label_w + j * size + 4, 6), title, fill=(0, 0, 0))
    for i, (stem, row) in enumerate(rows):
        y = head_h + i * size
        d.text((4, y + size // 2), stem[-24:], fill=(0, 0, 0))
        grid.paste(base.resize((size, size)), (label_w, y))
        for j, img in enumerate(row):
            grid.paste(img.resize((size, size)), (label_w + (j + 1) * size, y))
    return grid


def xyz_settings(run_name, files, weights) -> str:
    """WebUI: the X/Y/Z plot settings that draw the same grid with the WebUI's own sampler (the LoRA epoch
    axis of lora_studio_webui.xyz swaps the file, its "no LoRA" value drops the tag)."""
    epochs = ", ".join(["no LoRA", *[Path(f).stem for f in files]])
    ws = ", ".join(f"{w:g}" for w in parse_weights(weights))
    return ("In txt2img put the LoRA and its trigger word in the prompt, e.g. `<lora:" + html.escape(str(run_name))
            + ":1>`, set a fixed seed (not -1), then Script → **X/Y/Z plot** with:\n\n"
            f"- X type **[LoRA Studio] LoRA epoch**, X values `{html.escape(epochs)}`\n"
            f"- Y type **[LoRA Studio] LoRA weight**, Y values `{ws}`\n\n"
            "Rows are weights, columns epochs; the \"no LoRA\" column is the base model with the same seed.")


def compare_run(ctx, checkpoint, run_name, weights, prompt, seed=1, steps=20, size=512, negative="", cfg_scale=7.0,
                progress=None):
    """The "Render the grid" button → (status line, grid image or None). In the WebUI the host's
    `render_grid` draws it with the WebUI's own txt2img under its queue lock; standalone `compare_epochs`."""
    try:
        render = getattr(ctx.train_host, "render_grid", None)
        if render is not None:
            files = epoch_files(ctx, run_name)
            ws = parse_weights(weights)
            if not str(prompt or "").strip():
                raise LoraStudioError("Type a prompt for the grid (with the trigger word).")
            grid, note = ctx.under_queue_lock(lambda: render(
                files, ws, str(prompt), negative=str(negative or ""), seed=int(seed), steps=int(steps),
                size=int(size), cfg_scale=float(cfg_scale), checkpoint=checkpoint, progress=progress),
                "the epoch grid")
        elif ctx.train_host is not None:    # a host that cannot render: the X/Y/Z settings to do it by hand
            return xyz_settings(run_name, epoch_files(ctx, run_name), weights), None
        else:
            grid, note = compare_epochs(ctx, checkpoint, run_name, weights, prompt, negative=negative, seed=seed,
                                        steps=steps, size=size, cfg_scale=cfg_scale, progress=progress)
    except Exception as exc:  # noqa: BLE001 — shown as one line
        return error_line(exc), None
    return "✓ Rows: epochs; columns: no LoRA, then each weight (one seed)." + (f" {note}" if note else ""), grid
