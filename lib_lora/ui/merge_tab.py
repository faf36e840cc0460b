"""Merge tab: the layout and wiring of the checkpoint merge (models A/B/C, mode, alpha, 26/20 block sliders with
presets and a block diagram, output name/type/replace, progress with ETA and Cancel), the loaded model's live
merge (the WebUI's model; standalone: model A loaded here, with a preview image: merge_live.py), and the LoRA
tools. Their functions live in siblings: `merge_blocks.py` (block sliders, presets, diagram), `merge_run.py`
(the merge and live-merge runs), `lora_tools.py` (the LoRA tools), `files.py` (picked models, output names),
`jobs.py` (Cancel, progress, the one error line).

Every callback is a plain function of (ctx, inputs) returning what the components show, so it is tested
without a browser; `build` only wires them. Errors come back as one "⚠ …" line, never a traceback.
Models are picked from a list the server made (ctx.checkpoint_list in the WebUI, else the files of
ctx.checkpoint_dirs), so a request cannot name another file; output names resolve inside the configured
folders; every write calls ctx.check_writes() first and an existing output is replaced only when "Replace the
output file" is ticked (it is cleared again after each run).
"""

from __future__ import annotations

import contextlib
import html

from lib_lora import options
from lib_lora.blocks import BLOCK_NAMES
from lib_lora.errors import LoraStudioError
from lib_lora.options import MergeOptions
from lib_lora.ui import lora_tab
# The tab's functions, importable from here as before (merge_live, train_compare, tests).
from lib_lora.ui.files import (AS_INPUT, DTYPE_CHOICES, NO_CHECKPOINT_DIR, SUFFIX, checkpoint_choices,  # noqa: F401
                               MERGED_VAE, checkpoint_names, checkpoint_path, model_arch, output_path, vae_names)
from lib_lora.ui.jobs import Cancelled, Jobs, Reporter, error_line  # noqa: F401
from lib_lora.ui.lora_tools import TOOLS, TOOLS_BY_KEY, Tool, build_tool, run_tool, tool_options, untick  # noqa: F401
from lib_lora.ui.merge_blocks import (arch_of_a, block_text, diagram, full_count, merge_presets,  # noqa: F401
                                      merge_store, preset_vector, slider_visibility, weights_vector)
from lib_lora.ui.merge_run import (LIVE_UNAVAILABLE, live_apply, live_restore, live_save, merge_options,  # noqa: F401
                                   run_merge)

SLIDER_LOW, SLIDER_HIGH = -1.0, 2.0    # m outside 0..1 extrapolates, as supermerger allows


def _elem(name: str) -> str:
    return f"lora_studio_merge_{name}"


def build(ctx) -> None:
    import gradio as gr
    from lib_lora.ui import compat

    jobs = Jobs()
    choices = checkpoint_names(ctx)
    store = ctx.presets
    mode_opt = options.get(MergeOptions, "mode")
    with gr.Tabs(elem_id=_elem("tabs")):
        with gr.Tab("Checkpoint merge", elem_id=_elem("tab_checkpoint")):
            where = ", ".join(str(d) for d in ctx.checkpoint_dirs)
            gr.Markdown("Merge model B (and C) into model A with a factor m per block: 0 keeps A, 1 takes B. "
                        + (f"The result is written into the checkpoint folder ({html.escape(where)}); "
                           if where or ctx.checkpoint_list is not None else NO_CHECKPOINT_DIR + " ")
                        + "nothing is replaced without ticking *Replace the output file*.")
            with gr.Row():
                a = gr.Dropdown(choices=choices, label="Model A (primary: the output has its keys)", scale=3,
                                elem_id=_elem("a"))
                b = gr.Dropdown(choices=choices, label="Model B", scale=3, elem_id=_elem("b"))
                c = gr.Dropdown(choices=[""] + choices, value="", label="Model C (difference modes: B − C)",
                                scale=3, elem_id=_elem("c"))
                refresh = gr.Button("Refresh", size="sm", min_width=80, scale=1, elem_id=_elem("refresh"))
            arch_line = gr.Markdown(arch_of_a(ctx, None)[1], elem_id=_elem("arch"))
            with gr.Row():
                mode = gr.Radio(choices=list(mode_opt.choices()), value=mode_opt.choices()[0], label=mode_opt.label,
                                info="; ".join(f"{k}: {v}" for k, v in mode_opt.choice_help().items()) or None,
                                elem_id=_elem("mode"))
                alpha = gr.Slider(SLIDER_LOW, SLIDER_HIGH, value=0.5, step=0.01,
                                  label=options.get(MergeOptions, "alpha").label, elem_id=_elem("alpha"))
            with gr.Accordion("Block weights", open=True):
                with gr.Row():
                    per_block = gr.Checkbox(False, label="Merge per block (the sliders below instead of alpha)",
                                            elem_id=_elem("per_block"))
                    preset = gr.Dropdown(choices=merge_presets(ctx, None), label="Merge preset", scale=2,
                                         elem_id=_elem("preset"))
                    to_sliders = gr.Button("Write weights into the sliders", elem_id=_elem("preset_apply"))
                sliders = [None] * 26

                def slider(i):
                    sliders[i] = gr.Slider(SLIDER_LOW, SLIDER_HIGH, value=0.5, step=0.01, label=BLOCK_NAMES[i],
                                           min_width=120, elem_id=_elem(f"w_{BLOCK_NAMES[i]}"))
                with gr.Row():
                    slider(0)
                    slider(13)
                with gr.Row():
                    with gr.Column():
                        for i in range(1, 13):
                            slider(i)
                    with gr.Column():
                        for i in range(14, 26):
                            slider(i)
                chart = gr.HTML(diagram(None, 0.5, False, *[0.5] * 26), elem_id=_elem("diagram"))
            with gr.Row():
                out_name = gr.Textbox(label="Output name (.safetensors is added)", scale=3, elem_id=_elem("out"))
                dtype = gr.Dropdown(choices=DTYPE_CHOICES, value=AS_INPUT,
                                    label=options.get(MergeOptions, "dtype").label, scale=1, elem_id=_elem("dtype"))
                overwrite = compat.option_control(MergeOptions, "overwrite", elem_id=_elem("overwrite"))
                discard = gr.Textbox(label=options.get(MergeOptions, "discard").label, placeholder="e.g. model_ema",
                                     scale=2, elem_id=_elem("discard"))
                vae = gr.Dropdown(choices=vae_names(ctx), value=MERGED_VAE, scale=2, elem_id=_elem("vae"),
                                  label=options.get(MergeOptions, "vae").label + " (instead of the merged one)")
            with gr.Row():
                merge_btn = gr.Button("Merge", variant="primary", elem_id=_elem("run"))
                cancel_btn = gr.Button("Cancel", elem_id=_elem("cancel"))
            status = gr.Markdown(elem_id=_elem("status"))
            loaded = ctx.loaded_model
            with gr.Accordion("Loaded model (live merge)", open=ctx.live_merge is not None):
                if ctx.live_merge is None:
                    gr.Markdown(LIVE_UNAVAILABLE, elem_id=_elem("live_unavailable"))
                else:
                    if loaded is not None:
                        gr.Markdown("**Load model A** (the pick above), then merge B (and C) into it without "
                                    "writing a file and **Generate preview** to see it; change a block weight and "
                                    "apply again (only the changed blocks are rewritten). **Restore** puts back "
                                    "A's weights bit for bit; **Save what is applied** writes them under the output "
                                    "name above.")
                        with gr.Row():
                            live_load_btn = gr.Button("Load model A", elem_id=_elem("live_load"), scale=1)
                            loaded_line = gr.Markdown(loaded.describe(), elem_id=_elem("live_loaded"))
                    else:
                        gr.Markdown("Merge B (and C) into the model loaded in the WebUI without writing a file; "
                                    "**Restore** puts back its weights bit for bit; **Save what is applied** writes "
                                    "it under the output name above.")
                    with gr.Row():
                        live_apply_btn = gr.Button("Apply to loaded model", elem_id=_elem("live_apply"))
                        live_restore_btn = gr.Button("Restore", elem_id=_elem("live_restore"))
                        live_save_btn = gr.Button("Save what is applied", elem_id=_elem("live_save"))
                        live_cancel_btn = gr.Button("Cancel", elem_id=_elem("live_cancel"))
                    live_status = gr.Markdown(elem_id=_elem("live_status"))
                    if loaded is not None:
                        with gr.Row():
                            pv_prompt = gr.Textbox(label="Preview prompt (LoRA tags allowed)", lines=2, scale=3,
                                                   elem_id=_elem("pv_prompt"))
                            pv_negative = gr.Textbox(label="Negative prompt", lines=2, scale=2,
                                                     elem_id=_elem("pv_negative"))
                        with gr.Row():
                            pv_seed = gr.Number(value=1, precision=0, label="Seed", elem_id=_elem("pv_seed"))
                            pv_steps = gr.Slider(1, 150, value=20, step=1, label="Steps", elem_id=_elem("pv_steps"))
                            pv_size = gr.Slider(64, 2048, value=512, step=64, label="Size",
                                                elem_id=_elem("pv_size"))
                            pv_btn = gr.Button("Generate preview", variant="primary", elem_id=_elem("pv_run"))
                        pv_status = gr.Markdown(elem_id=_elem("pv_status"))
                        pv_image = gr.Image(label="Preview", type="pil", interactive=False,
                                            elem_id=_elem("pv_image"))
        with gr.Tab("LoRA tools", elem_id=_elem("tab_lora_tools")):
            folders = ", ".join(str(d) for d in ctx.lora_dirs)
            gr.Markdown(f"LoRA outputs go into the LoRA folder ({html.escape(folders)}); baked checkpoints into the "
                        "checkpoint folder. The options are those of the command-line verbs.")
            ckpt_pickers, lora_pickers = [], []
            with gr.Tabs():
                for tool in TOOLS:
                    with gr.Tab(tool.label, elem_id=_elem(f"tool_{tool.key}")):
                        build_tool(ctx, jobs, tool, _elem, ckpt_pickers, lora_pickers)

    arch = gr.State(None)
    model_pickers = [a, b, c]

    def refreshed():
        store = merge_store(ctx)
        if store is not None and store is not ctx.presets:   # the block store reloads with its own tab
            with contextlib.suppress(LoraStudioError):
                store.reload()
        names = checkpoint_names(ctx)
        loras = lora_tab.list_loras(ctx)
        return (compat.update(choices=names), compat.update(choices=names), compat.update(choices=[""] + names),
                compat.update(choices=vae_names(ctx)),
                *[compat.update(choices=names) for _ in ckpt_pickers],
                *[compat.update(choices=loras) for _ in lora_pickers])

    refresh_outputs = [*model_pickers, vae, *ckpt_pickers, *lora_pickers]
    refresh.click(refreshed, inputs=[], outputs=refresh_outputs)
    compat.on_page_load(refreshed, outputs=refresh_outputs)

    def a_changed(name, alpha_v, per, *vals):
        found, line = arch_of_a(ctx, name)
        shown = slider_visibility(found)
        return (found, line, compat.update(choices=merge_presets(ctx, found), value=None),
                diagram(found, alpha_v, per, *vals), *[compat.update(visible=v) for v in shown])

    a.change(a_changed, inputs=[a, alpha, per_block, *sliders], outputs=[arch, arch_line, preset, chart, *sliders])

    def redraw(found, alpha_v, per, *vals):
        return diagram(found, alpha_v, per, *vals)

    for ev in (alpha.release, per_block.change):
        ev(redraw, inputs=[arch, alpha, per_block, *sliders], outputs=[chart])

    def slider_moved(found, alpha_v, _per, *vals):
        # moving a block slider means "merge per block": tick it, or the merge would silently use Alpha
        return diagram(found, alpha_v, True, *vals), True

    for s in sliders:
        s.release(slider_moved, inputs=[arch, alpha, per_block, *sliders], outputs=[chart, per_block])

    def write_preset(found, name, alpha_v):
        try:
            vec = preset_vector(ctx, name, found, alpha_v)
        except LoraStudioError as exc:
            return (error_line(exc), compat.update(), compat.update(), *[compat.update() for _ in sliders])
        return (f"Preset '{name}' written into the sliders.", True, diagram(found, alpha_v, True, *vec),
                *[round(v, 6) for v in vec])

    to_sliders.click(write_preset, inputs=[arch, preset, alpha], outputs=[status, per_block, chart, *sliders])

    def do_merge(a_v, b_v, c_v, mode_v, alpha_v, per, dtype_v, out_v, over_v, discard_v, vae_v, *vals,
                 progress=None):
        return run_merge(ctx, jobs, a_v, b_v, c_v, mode_v, alpha_v, per, dtype_v, out_v, over_v, *vals,
                         progress=progress, discard=discard_v, vae=vae_v)

    merge_inputs = [a, b, c, mode, alpha, per_block, dtype, out_name, overwrite, discard, vae, *sliders]
    # the progress bar goes to the outputs: the status line only; "Replace" is cleared by the next step
    merge_btn.click(compat.with_progress(do_merge, len(merge_inputs)), inputs=merge_inputs, outputs=[status]) \
        .then(untick, inputs=[], outputs=[overwrite], queue=False, show_progress="hidden") \
        .then(refreshed, inputs=[], outputs=refresh_outputs)
    cancel_btn.click(jobs.cancel_all, inputs=[], outputs=[status], queue=False)

    if ctx.live_merge is not None:
        def do_apply(b_v, c_v, mode_v, alpha_v, per, a_v, *vals, progress=None):
            return live_apply(ctx, jobs, b_v, c_v, mode_v, alpha_v, per, a_v, *vals, progress=progress)

        def do_save(dtype_v, out_v, over_v, progress=None):
            return live_save(ctx, jobs, dtype_v, out_v, over_v, progress=progress)

        apply_inputs = [b, c, mode, alpha, per_block, a, *sliders]
        applied = live_apply_btn.click(compat.with_progress(do_apply, len(apply_inputs)), inputs=apply_inputs,
                                       outputs=[live_status])
        restored = live_restore_btn.click(compat.with_progress(lambda progress=None: live_restore(ctx, progress), 0),
                                          inputs=[], outputs=[live_status])
        live_save_btn.click(compat.with_progress(do_save, 3), inputs=[dtype, out_name, overwrite],
                            outputs=[live_status]) \
            .then(untick, inputs=[], outputs=[overwrite], queue=False, show_progress="hidden") \
            .then(refreshed, inputs=[], outputs=refresh_outputs)
        live_cancel_btn.click(jobs.cancel_all, inputs=[], outputs=[live_status], queue=False)
        if loaded is not None:
            from lib_lora.ui import merge_live

            for ev in (applied, restored):
                ev.then(loaded.describe, inputs=[], outputs=[loaded_line])
            live_load_btn.click(compat.with_progress(lambda a_v, progress=None: merge_live.load_a(ctx, a_v, progress),
                                                     1), inputs=[a], outputs=[live_status]) \
                .then(loaded.describe, inputs=[], outputs=[loaded_line])

            def do_preview(p_v, n_v, seed_v, steps_v, size_v, progress=None):
                return merge_live.preview(ctx, jobs, p_v, n_v, seed_v, steps_v, size_v, progress=progress)

            pv_inputs = [pv_prompt, pv_negative, pv_seed, pv_steps, pv_size]
            pv_btn.click(compat.with_progress(do_preview, len(pv_inputs)), inputs=pv_inputs,
                         outputs=[pv_status, pv_image])
