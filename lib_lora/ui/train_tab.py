"""Training tab: a kohya dataset folder (picked inside the configured folders) with its validation report,
the sd-scripts parameters in groups with the guides' defaults, Load/Save of the run as the sd-scripts TOML
`python -m lib_lora train --config` reads, presets (character / style / concept shipped, more saved by the
user), a queue of runs with progress, ETA, loss and a live loss plot, the per-epoch files of each run, and
"Compare epochs" (an epoch × weight grid with a negative prompt and CFG scale: standalone rendered with
lib_lora.sd; WebUI with its own txt2img on the run's base checkpoint, lora_studio_webui.train_grid).

Runs go through a host function `(run, cancel_event) -> None` (ctx.train_host): standalone the trainer runs
in this process in a worker thread (Cancel stops after the current step); the WebUI gives a subprocess host
(lora_studio_webui.train_host). Each run holds the WebUI's queue lock (ctx.wrap_gpu_call) while it trains.
Every callback is a plain function of (ctx, inputs), so it is tested without a browser; errors are one line.
"""
from __future__ import annotations

import html
import time

from lib_lora import options
from lib_lora.train.config import TrainConfig
from lib_lora.ui.files import checkpoint_choices
from lib_lora.ui.jobs import error_line
# The tab's functions live in sibling modules; these names stay importable from here (tests, train_host).
from lib_lora.ui.train_compare import (compare_epochs, compare_run, epoch_files, parse_weights,  # noqa: F401
                                       xyz_settings)
from lib_lora.ui.train_dataset import (PREPARE_MODES, prepare_plan, preview_prepare, run_prepare,  # noqa: F401
                                       tag_dataset, tagger_defaults)
from lib_lora.ui.train_params import (GROUPS, SHOWN, TAB_DEFAULTS, build_config, config_names,  # noqa: F401
                                      config_toml, control_value, dataset_path, dataset_roots, default_values,
                                      host_defaults,
                                      list_datasets,
                                      load_config_values, preset_names, preset_values, save_config, save_preset,
                                      train_folder, validate_run)
from lib_lora.ui.train_runs import (Run, TrainQueue, _Stopped, host_problem, local_host, loss_plot,  # noqa: F401
                                    snapshot, start_run)


# ---- layout ---------------------------------------------------------------------------------------------


def _elem(name: str) -> str:
    return f"lora_studio_train_{name}"


def build(ctx) -> None:
    import gradio as gr
    from lib_lora.ui import compat

    queue = TrainQueue(ctx)
    ckpts = list(checkpoint_choices(ctx)) if (ctx.checkpoint_list is not None or ctx.checkpoint_dirs) else []
    defaults = default_values()
    host_notes = host_defaults()[1]
    gr.Markdown("Train a LoRA from a kohya folder (`<repeats>_<concept>` sub-folders with images and captions): "
                "pick it, check the report, set the parameters (sd-scripts names), Start. Files go into "
                f"the LoRA folder ({html.escape(', '.join(str(d) for d in ctx.lora_dirs))}) as "
                "`<name>-000001.safetensors` … `<name>.safetensors`.")
    problem = host_problem(ctx)
    if problem:
        gr.Markdown(f"⚠ {html.escape(problem)}", elem_id=_elem("unavailable"))
    with gr.Accordion("Prepare a folder (tagged images → <repeats>_<concept>)", open=False):
        gr.Markdown("Copies or links a folder of tagged images into `<destination>/<repeats>_<concept>`, with the "
                    "repeats that reach the target steps at the epochs, batch size, accumulation, resolution and "
                    "buckets set below (each aspect-ratio bucket gives whole batches, as sd-scripts counts them); "
                    "then picks the destination as the dataset. Folders are typed inside: "
                    + html.escape(", ".join(str(r) for r in dataset_roots(ctx))) + ".")
        with gr.Row():
            prep_src = gr.Textbox(label="Source folder (tagged images)", scale=3, elem_id=_elem("prep_src"))
            prep_dest = gr.Textbox(label="Destination folder (the dataset)", scale=3, elem_id=_elem("prep_dest"))
            prep_concept = gr.Textbox(label="Concept (trigger word)", scale=2, elem_id=_elem("prep_concept"))
        with gr.Row():
            prep_steps = gr.Number(1500, precision=0, label="Target steps", elem_id=_elem("prep_steps"))
            prep_mode = gr.Radio(list(PREPARE_MODES), value="copy", label="Copy or link",
                                 info="link: hard links (a copy across drives); symlink: links to the originals",
                                 elem_id=_elem("prep_mode"))
            prep_show = gr.Button("Show what it does", elem_id=_elem("prep_preview"))
            prep_btn = gr.Button("Prepare", elem_id=_elem("prep_run"))
        prep_status = gr.Markdown(elem_id=_elem("prep_status"))
    with gr.Row():
        dataset = gr.Dropdown(choices=list_datasets(ctx), label="Dataset folder", scale=3, elem_id=_elem("dataset"))
        checkpoint = gr.Dropdown(choices=ckpts, label="Base checkpoint", scale=3, elem_id=_elem("checkpoint"))
        output_name = gr.Textbox(label="Output name", scale=2, elem_id=_elem("output_name"))
        refresh = gr.Button("Refresh", size="sm", scale=1, elem_id=_elem("refresh"))
    with gr.Row():
        validate_btn = gr.Button("Validate dataset", elem_id=_elem("validate"))
        tag_btn = gr.Button("Tag this folder (Tagger tab's settings)", elem_id=_elem("tag"))
    report = gr.Markdown(elem_id=_elem("report"))
    with gr.Row():
        preset = gr.Dropdown(choices=preset_names(ctx), label="Preset", scale=2, elem_id=_elem("preset"))
        preset_apply = gr.Button("Use preset", elem_id=_elem("preset_apply"))
        preset_name = gr.Textbox(label="Save the parameters as preset", scale=2, elem_id=_elem("preset_name"))
        preset_save = gr.Button("Save preset", elem_id=_elem("preset_save"))
    controls = {}
    for title, names in GROUPS:
        with gr.Accordion(title, open=title in ("Network", "Optimizer and learning rate", "Steps and saving")):
            with gr.Row():
                for n in names:
                    o = options.get(TrainConfig, n)
                    info = ". ".join(t.rstrip(".") for t in (o.spec.help, host_notes.get(n)) if t) or None
                    controls[n] = compat.option_control(TrainConfig, n, control_value(n, defaults[n]),
                                                        info=info, elem_id=_elem(n), min_width=160)
    values = [controls[n] for n in SHOWN]
    extra = gr.State({})
    with gr.Accordion("Run config (sd-scripts TOML)", open=False):
        with gr.Row():
            config_pick = gr.Dropdown(choices=config_names(ctx), label="Saved configs", scale=2,
                                      elem_id=_elem("config_pick"))
            load_btn = gr.Button("Load", elem_id=_elem("config_load"))
            config_name = gr.Textbox(label="Config name", scale=2, elem_id=_elem("config_name"))
            replace = gr.Checkbox(False, label="Replace", elem_id=_elem("config_replace"))
            save_btn = gr.Button("Save", elem_id=_elem("config_save"))
        toml_text = gr.Code(label="Config and commands (python -m lib_lora train / accelerate launch)",
                            elem_id=_elem("toml"))
    with gr.Row():
        start = gr.Button("Start (adds to the queue)", variant="primary", elem_id=_elem("start"))
        cancel = gr.Button("Cancel", elem_id=_elem("cancel"))
        watch = gr.Button("Show progress", elem_id=_elem("watch"))
    status = gr.Markdown(elem_id=_elem("status"))
    plot = gr.Image(value=loss_plot([]), label="Loss", type="pil", interactive=False, elem_id=_elem("plot"))
    files = gr.Markdown(elem_id=_elem("files"))
    with gr.Accordion("Compare epochs", open=False):
        with gr.Row():
            cmp_run = gr.Textbox(label="Run (output name)", elem_id=_elem("cmp_run"))
            cmp_weights = gr.Textbox("0.5, 0.75, 1", label="Weights", elem_id=_elem("cmp_weights"))
            cmp_seed = gr.Number(1, precision=0, label="Seed", elem_id=_elem("cmp_seed"))
        cmp_prompt = gr.Textbox(label="Prompt (with the trigger word)", elem_id=_elem("cmp_prompt"))
        cmp_negative = gr.Textbox(label="Negative prompt", info="the same for every cell, as in X/Y/Z plot",
                                  elem_id=_elem("cmp_negative"))
        with gr.Row():
            cmp_steps = gr.Slider(1, 50, value=20, step=1, label="Steps", elem_id=_elem("cmp_steps"))
            cmp_cfg = gr.Slider(1, 30, value=7, step=0.5, label="CFG scale", info="how strongly the prompt steers",
                                elem_id=_elem("cmp_cfg"))
            cmp_size = gr.Slider(64, 1024, value=512, step=64, label="Size", elem_id=_elem("cmp_size"))
            cmp_btn = gr.Button("Render the grid" if ctx.train_host is None or hasattr(ctx.train_host, "render_grid")
                                else "Show the X/Y/Z settings", elem_id=_elem("cmp_run_btn"))
        cmp_status = gr.Markdown(elem_id=_elem("cmp_status"))
        cmp_grid = gr.Image(type="pil", label="Epoch × weight grid", interactive=False, elem_id=_elem("cmp_grid"))

    def refreshed():
        return (compat.update(choices=list_datasets(ctx)),
                compat.update(choices=list(checkpoint_choices(ctx)) if (ctx.checkpoint_list is not None
                                                                        or ctx.checkpoint_dirs) else []),
                compat.update(choices=preset_names(ctx)), compat.update(choices=config_names(ctx)))

    refresh.click(refreshed, inputs=[], outputs=[dataset, checkpoint, preset, config_pick])
    compat.on_page_load(refreshed, outputs=[dataset, checkpoint, preset, config_pick])

    def do_validate(ds, ck, out, ex, *vals):
        return validate_run(ctx, ds, ck, out, list(vals), ex)[0]

    validate_btn.click(do_validate, inputs=[dataset, checkpoint, output_name, extra, *values], outputs=[report])

    prep_inputs = [prep_src, prep_dest, prep_concept, prep_steps, controls["max_train_epochs"],
                   controls["train_batch_size"], controls["gradient_accumulation_steps"], prep_mode,
                   controls["resolution"], controls["enable_bucket"], extra]
    prep_show.click(lambda *a: preview_prepare(ctx, *a), inputs=prep_inputs, outputs=[prep_status])

    def do_prepare(*a):
        line, name = run_prepare(ctx, *a)
        if name is None:
            return line, compat.update()
        return line, compat.update(choices=list_datasets(ctx), value=name)

    prep_btn.click(do_prepare, inputs=prep_inputs, outputs=[prep_status, dataset])

    # The tagger tab's components when it was built in this page (its current settings), else its defaults.
    tagger_inputs = ctx.tagger_settings or [gr.State(v) for v in tagger_defaults(ctx)]
    n_tag = len(tagger_inputs)

    def do_tag(ds, cap_ext, ck, out, ex, *rest):
        settings, vals = list(rest[:n_tag]), list(rest[n_tag:])
        yield from tag_dataset(ctx, ds, cap_ext, settings, (ck, out, vals, ex))

    tag_btn.click(do_tag, inputs=[dataset, controls["caption_extension"], checkpoint, output_name, extra,
                                  *tagger_inputs, *values], outputs=[report])

    def use_preset(name):
        try:
            return ("", *preset_values(ctx, name))
        except Exception as exc:  # noqa: BLE001
            return (error_line(exc), *[compat.update() for _ in values])

    preset_apply.click(use_preset, inputs=[preset], outputs=[report, *values])
    preset_save.click(lambda name, *vals: save_preset(ctx, name, list(vals)), inputs=[preset_name, *values],
                      outputs=[report]).then(refreshed, inputs=[], outputs=[dataset, checkpoint, preset, config_pick])

    def do_save(cname, ds, ck, out, rep, ex, *vals):
        line, text = save_config(ctx, cname, ds, ck, out, list(vals), ex, bool(rep))
        return line, text, False

    save_btn.click(do_save, inputs=[config_name, dataset, checkpoint, output_name, replace, extra, *values],
                   outputs=[report, toml_text, replace]).then(refreshed, inputs=[],
                                                             outputs=[dataset, checkpoint, preset, config_pick])

    def do_load(cname):
        try:
            line, ds, ck, out, vals, ex = load_config_values(ctx, cname)
        except Exception as exc:  # noqa: BLE001
            return (error_line(exc), *[compat.update() for _ in range(4)], *[compat.update() for _ in values])
        return (line, ds, ck, out, ex, *vals)

    load_btn.click(do_load, inputs=[config_pick], outputs=[report, dataset, checkpoint, output_name, extra, *values])

    def stream():
        while True:
            yield snapshot(queue)
            if not queue.busy():
                return
            time.sleep(1.0)

    def do_start(ds, ck, out, ex, *vals):
        line = start_run(ctx, queue, ds, ck, out, list(vals), ex)
        yield (line, *snapshot(queue))
        for snap in stream():
            yield (line, *snap)

    start.click(do_start, inputs=[dataset, checkpoint, output_name, extra, *values],
                outputs=[report, status, plot, files])
    cancel.click(lambda: queue.cancel(), inputs=[], outputs=[report], queue=False)
    watch.click(stream, inputs=[], outputs=[status, plot, files])

    def do_compare(run_name, ws, seed, prompt, negative, steps, cfg, size, ck, progress=None):
        rep = (lambda d, t: progress(d / t, desc=f"image {d}/{t}")) if progress is not None else None
        return compare_run(ctx, ck, run_name, ws, prompt, seed=seed, steps=steps, size=size, negative=negative,
                           cfg_scale=cfg, progress=rep)

    cmp_inputs = [cmp_run, cmp_weights, cmp_seed, cmp_prompt, cmp_negative, cmp_steps, cmp_cfg, cmp_size, checkpoint]
    cmp_btn.click(compat.with_progress(do_compare, len(cmp_inputs)), inputs=cmp_inputs, outputs=[cmp_status, cmp_grid])
