"""The Training tab's "Compare epochs" grid in the WebUI: each cell is one txt2img of the WebUI (its sampler and
LoRA handling), with one fixed seed. The prompt carries the run's final file as a `<lora:…>` tag and each cell
sets it with LoRA Studio's own X/Y/Z axes (the epoch axis swaps the file or, for "no LoRA", drops the tag; the
weight axis sets the multiplier), so the grid is exactly what X/Y/Z plot would draw.
The model is the run's base checkpoint (the files' `ss_sd_model_name`, else the tab's pick): when another one is
loaded, each cell overrides `sd_model_checkpoint` as the API does (`override_settings`, restored afterwards; the
WebUI loads its own model again at its next job); a recorded model missing from the WebUI's list falls back to
the tab's pick, else the loaded model, and the note under the grid says so.
Called under the WebUI's queue lock (lib_lora.ui.train_compare.compare_run); Interrupt stops between cells.
"""

from __future__ import annotations

from pathlib import Path

from lib_lora.errors import LoraStudioError


def render_grid(files, weights, prompt, negative="", seed=1, steps=20, size=512, cfg_scale=7.0, checkpoint=None,
                progress=None):
    """(grid image, note) for the epoch files × weights, with a no-LoRA column."""
    from modules import processing, shared
    from PIL import Image

    from lib_lora.ui.train_compare import grid_image
    from . import xyz
    from .engine import ENGINE

    if getattr(shared, "sd_model", None) is None:
        raise LoraStudioError("No checkpoint is loaded in the WebUI; load one in its checkpoint list first.")
    ENGINE.library.scan()     # files written since the last scan (a run that just finished)
    base, note_model = run_checkpoint(files, checkpoint)
    override = {"sd_model_checkpoint": base.title} if base is not None else {}
    stems = [Path(f).stem for f in files]
    epochs = [xyz.NO_LORA, *stems]
    head = f"{prompt} <lora:{stems[-1]}:1>"
    total, done = 1 + len(stems) * len(weights), 0

    def cell(stem, weight):
        nonlocal done
        if shared.state.interrupted:
            raise LoraStudioError("Interrupted; the grid was not finished.")
        p = processing.StableDiffusionProcessingTxt2Img(
            sd_model=shared.sd_model, prompt=head, negative_prompt=negative, seed=int(seed), steps=int(steps),
            width=int(size), height=int(size), cfg_scale=float(cfg_scale), batch_size=1, n_iter=1,
            do_not_save_samples=True, do_not_save_grid=True, override_settings=dict(override),
            override_settings_restore_afterwards=True)
        xyz.confirm_epoch(p, epochs)         # the axes' own checks: the files are in the LoRA library
        xyz.apply_epoch(p, stem, epochs)
        if weight is not None:
            xyz.apply_weight(p, weight, weights)
        try:
            res = processing.process_images(p)
        finally:
            p.close()
        done += 1
        if progress is not None:
            progress(done, total)
        if not res.images:
            raise LoraStudioError(f"The WebUI returned no image for {stem} (see its console).")
        return res.images[0]

    failed: list[str] = []

    def safe_cell(stem, weight):
        """One cell; a cell the WebUI fails on (NaNs, …) is a grey square named in the note, not a lost grid."""
        try:
            return cell(stem, weight)
        except LoraStudioError:
            raise
        except Exception as exc:  # noqa: BLE001 — listed in the note
            failed.append(f"{stem}{'' if weight is None else f' at {weight:g}'}: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:160] if str(exc) else ''}")
            return Image.new("RGB", (int(size), int(size)), (128, 128, 128))

    first = safe_cell(xyz.NO_LORA, None)
    rows = [(stem, [safe_cell(stem, w) for w in weights]) for stem in stems]
    note = ""
    if failed:
        note = f"{len(failed)} cell(s) failed (grey): " + "; ".join(failed[:3]) + (" …" if len(failed) > 3 else "")
    return grid_image(first, rows, list(weights), int(size)), f"{note_model} {note}".strip()


def run_checkpoint(files, picked=None):
    """(the WebUI CheckpointInfo to override with, or None to keep the loaded model; the note naming the model),
    by the Training tab's one rule (`train_compare.choose_base`: the model the run records, else the tab's pick,
    said in the note); no model named at all: the loaded one."""
    import os

    from modules import sd_models, shared

    from lib_lora.ui.train_compare import choose_base
    # A job without a checkpoint override loads the model of the WebUI's setting, whatever is loaded now (an
    # earlier grid's model stays loaded until then): that setting's model is the one to compare with and name.
    selected = sd_models.checkpoint_aliases.get(getattr(shared.opts, "sd_model_checkpoint", None))
    if selected is None:
        selected = getattr(shared.sd_model, "sd_checkpoint_info", None)
    selected_name = getattr(selected, "name", None) or "the loaded model"
    infos = {str(getattr(i, "name", "")): i for i in (getattr(sd_models, "checkpoints_list", None) or {}).values()}
    name, note = choose_base(files, picked, {n: i.filename for n, i in infos.items()})
    info = infos.get(name) if name is not None else None
    if info is None:
        if name is not None:
            note = f"'{name}' is not in the WebUI's checkpoint list."
        return None, f"{note} Rendered with the WebUI's model '{selected_name}'."
    if selected is not None and os.path.abspath(str(selected.filename)) == os.path.abspath(str(info.filename)):
        return None, f"{note} It is the WebUI's model."
    return info, f"{note} Loaded for the grid instead of '{selected_name}', which the WebUI loads again at its next job."
