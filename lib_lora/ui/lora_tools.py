"""The Merge tab's LoRA tools (resize, merge-loras, extract, bake, bake-lora) with the options of their CLI
verbs: each tool's declaration, its Run callback and its sub-panel.

Each tool: its options class (declared once, with the CLI verb), the options the tab shows as generic
controls, and a function (ctx, options, reporter) → summary line. File options are pickers or names
resolved inside the configured folders, filled in by `tool_options`."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from lib_lora import options
from lib_lora.errors import LoraStudioError
from lib_lora.ui import lora_tab
from lib_lora.ui.files import (AS_INPUT, DTYPE_CHOICES, checkpoint_names, checkpoint_path, output_path,
                               refresh_note)
from lib_lora.ui.jobs import Jobs, Reporter, error_line


class Tool:
    def __init__(self, key, label, cls, shown, run, out_kind, pickers=None, text=None):
        self.key, self.label, self.cls_name = key, label, cls
        self.shown = list(shown)            # generic controls (option names)
        self.run = run
        self.out_kind = out_kind            # "lora" / "checkpoint": the folders the output goes into
        self.pickers = dict(pickers or {})  # option → "lora" / "checkpoint" / "lora_dir"
        self.text = dict(text or {})        # option → textbox label (prompt, tags)

    @property
    def cls(self):
        module, _, attr = self.cls_name.partition(":")
        return getattr(importlib.import_module(module), attr)


def _lora_file(ctx, name) -> str:
    return str(lora_tab.lora_path(ctx, name))


def _lora_dir(ctx, name) -> str:
    for d in ctx.lora_dirs:
        if str(d) == str(name):
            return str(d)
    if not name and ctx.lora_dirs:
        return str(ctx.lora_dirs[0])
    raise LoraStudioError(f"LoRA folder '{name}' is not a configured LoRA folder; pick one from the list.")


def _run_resize(ctx, o, rep) -> str:
    from lib_lora.merge.resize import fidelity_summary, resize_lora
    res = resize_lora(o.src, o.out, o.rank, o.conv_rank, o.method, o.param, overwrite=o.overwrite, progress=rep)
    return (f"wrote {res.out} (ss_network_dim {res.metadata['ss_network_dim']}, ss_network_alpha "
            f"{res.metadata['ss_network_alpha']}); {fidelity_summary(res)}")


def _run_merge_loras(ctx, o, rep) -> str:
    from lib_lora.merge.lora_merge import merge_loras
    res = merge_loras(o.tags, o.lora_dir, o.out, mode=o.mode, rank=o.rank, conv_rank=o.conv_rank,
                      overwrite=o.overwrite, presets_path=o.presets, seed=o.seed, clamp_quantile=o.clamp_quantile,
                      progress=rep)
    ranks = sorted(set(res.ranks.values())) or [0]
    warn = f"; {len(res.messages)} warning(s): {res.messages[0]}" if res.messages else ""
    return (f"wrote {res.out} ({len(res.inputs)} LoRAs, {res.modules} modules, rank {ranks[0]}"
            + (f"–{ranks[-1]}" if len(ranks) > 1 else "") + f"){warn}")


def _run_extract(ctx, o, rep) -> str:
    from lib_lora.merge.extract import extract_lora
    res = extract_lora(o.base, o.tuned, o.out, o.rank, o.conv_rank, overwrite=o.overwrite,
                       clamp_quantile=o.clamp_quantile, min_diff=o.min_diff, progress=rep)
    warn = f"; {len(res.messages)} warning(s): {res.messages[0]}" if res.messages else ""
    return f"wrote {res.out} ({len(res.modules)} modules){warn}"


def _run_bake(ctx, o, rep) -> str:
    from lib_lora.merge.bake import bake_checkpoint
    res = bake_checkpoint(o.base, o.prompt, o.lora_dir, o.out, dtype=o.dtype, overwrite=o.overwrite,
                          presets_path=o.presets, seed=o.seed, allow_overflow=o.allow_overflow, progress=rep)
    warn = f"; {len(res.messages)} warning(s): {res.messages[0]}" if res.messages else ""
    return f"wrote {res.out} ({len(res.report.loras)} LoRAs, {res.report.layers_written} layers changed){warn}"


def _run_bake_lora(ctx, o, rep) -> str:
    from lib_lora.merge.bake_lora import bake_lora
    rep.check()
    out, stats, messages = bake_lora(o.prompt, o.lora_dir, o.out, overwrite=o.overwrite, presets_path=o.presets,
                                     seed=o.seed)
    warn = f"; {len(messages)} warning(s): {messages[0]}" if messages else ""
    return (f"wrote {out} ({stats['name']}: {stats['modules']} modules, {stats['scaled']} rescaled, "
            f"{stats['dropped']} dropped){warn}")


TOOLS = [
    Tool("resize", "Resize", "lib_lora.options:ResizeOptions", ["rank", "conv_rank", "method", "param"],
         _run_resize, "lora", pickers={"src": "lora"}),
    Tool("merge_loras", "Merge LoRAs", "lib_lora.options:MergeLorasOptions",
         ["mode", "rank", "conv_rank", "clamp_quantile", "seed"], _run_merge_loras, "lora",
         pickers={"lora_dir": "lora_dir"}, text={"tags": 'LoRA tags, e.g. <lora:a:0.5> <lora:b:0.7:face>'}),
    Tool("extract", "Extract", "lib_lora.options:ExtractOptions",
         ["rank", "conv_rank", "clamp_quantile", "min_diff"], _run_extract, "lora",
         pickers={"base": "checkpoint", "tuned": "checkpoint"}),
    Tool("bake", "Bake into checkpoint", "lib_lora.options:BakeOptions", ["dtype", "seed", "allow_overflow"],
         _run_bake, "checkpoint", pickers={"base": "checkpoint", "lora_dir": "lora_dir"},
         text={"prompt": 'Prompt with LoRA tags, e.g. <lora:style:0.8:face>'}),
    Tool("bake_lora", "Bake LoRA", "lib_lora.options:BakeLoraOptions", ["seed"], _run_bake_lora, "lora",
         pickers={"lora_dir": "lora_dir"}, text={"prompt": "One LoRA tag, e.g. <lora:style:0.8:face>"}),
]
TOOLS_BY_KEY = {t.key: t for t in TOOLS}
_TAG_RE = re.compile(r"<[^<>]+>")


UNSET_HINT = "0: not set (the default)"


def unset_as_zero(cls, name: str) -> bool:
    """An optional number of a tool (default None): Gradio 3 shows None in a Number or Slider as 0 and sends 0
    back. 0 is no usable value of any of them (ranks are at least 1, the quantile and the parameter above 0),
    so the tools read 0 as not set."""
    o = options.get(cls, name)
    return o.kind in (int, float) and o.optional and o.default is None


def tool_options(ctx, tool: Tool, picks: dict, texts: dict, shown_values: list, out_name, overwrite):
    """The tab's values of one tool → its validated options object (paths resolved on the server)."""
    cls = tool.cls
    values: dict = {}
    for name, kind in tool.pickers.items():
        label = options.get(cls, name).label
        v = picks.get(name)
        if kind == "lora_dir":
            values[name] = _lora_dir(ctx, v)
        elif not v:
            raise LoraStudioError(f"Pick the {label.lower()} first.")
        elif kind == "lora":
            values[name] = _lora_file(ctx, v)
        else:
            values[name] = checkpoint_path(ctx, v, label)
    for name in tool.text:
        text = str(texts.get(name) or "").strip()
        if not text:
            raise LoraStudioError(f"Type the {options.get(cls, name).label.lower()} first.")
        if options.get(cls, name).kind is list:
            tags = _TAG_RE.findall(text)
            if not tags:
                raise LoraStudioError("Type LoRA tags such as <lora:a:0.5> <lora:b:0.7:face>.")
            values[name] = tags
        else:
            values[name] = text
    roots = ctx.checkpoint_dirs if tool.out_kind == "checkpoint" else ctx.lora_dirs
    values["out"] = output_path(ctx, out_name, roots, tool.out_kind if tool.out_kind == "checkpoint" else "LoRA",
                                bool(overwrite))
    values["overwrite"] = bool(overwrite)
    names = {o.name for o in options.fields(cls)}
    if "presets" in names and ctx.presets_path is not None and Path(ctx.presets_path).is_file():
        values["presets"] = str(ctx.presets_path)    # the user file the Presets tab saves to
    if "quiet" in names:
        values["quiet"] = True
    shown = dict(zip(tool.shown, shown_values))
    for name, v in shown.items():
        if unset_as_zero(cls, name) and isinstance(v, (int, float)) and v == 0:
            shown[name] = None
    if "dtype" in shown and shown["dtype"] == AS_INPUT:
        shown["dtype"] = None
    return options.from_ui(cls, [*values, *shown], [*values.values(), *shown.values()])


def run_tool(ctx, jobs: Jobs, key: str, picks: dict, texts: dict, shown_values: list, out_name, overwrite,
             progress=None) -> str:
    """A LoRA tool's Run button → its summary line (or one ⚠ line)."""
    tool = TOOLS_BY_KEY[key]
    try:
        ctx.check_writes()
        o = tool_options(ctx, tool, picks, texts, shown_values, out_name, overwrite)
        with jobs.job() as cancel:
            rep = Reporter(progress, cancel, {"read": "bytes", "write": "bytes", "merge": "layers"})
            line = tool.run(ctx, o, rep)
    except Exception as exc:  # noqa: BLE001 — shown as one line (error_line)
        return error_line(exc)
    refresh = ctx.refresh_checkpoints if tool.out_kind == "checkpoint" else ctx.refresh_loras
    return "✓ " + line + refresh_note(refresh, "checkpoint" if tool.out_kind == "checkpoint" else "LoRA")


def untick() -> bool:
    """The value a "Replace the output file" box gets back after each run."""
    return False


def build_tool(ctx, jobs: Jobs, tool: Tool, elem, ckpt_pickers: list, lora_pickers: list):
    """One tool's sub-panel (element ids from the hosting tab's `elem`); its pickers are added to
    `ckpt_pickers` / `lora_pickers`, which the tab's Refresh updates."""
    import gradio as gr
    from lib_lora.ui import compat

    cls = tool.cls
    pick_controls, text_controls = {}, {}
    with gr.Row():
        for name, kind in tool.pickers.items():
            label = options.get(cls, name).label
            eid = elem(f"{tool.key}_{name}")
            if kind == "lora_dir":
                dirs = [str(d) for d in ctx.lora_dirs]
                pick_controls[name] = gr.Dropdown(choices=dirs, value=dirs[0] if dirs else None, label=label,
                                                  elem_id=eid)
            elif kind == "lora":
                pick_controls[name] = gr.Dropdown(choices=lora_tab.list_loras(ctx), label=label, elem_id=eid)
                lora_pickers.append(pick_controls[name])
            else:
                pick_controls[name] = gr.Dropdown(choices=checkpoint_names(ctx), label=label, elem_id=eid)
                ckpt_pickers.append(pick_controls[name])
    for name, label in tool.text.items():
        text_controls[name] = gr.Textbox(label=label, lines=2, elem_id=elem(f"{tool.key}_{name}"))
    per = {n: {"elem_id": elem(f"{tool.key}_{n}"), **({"info": UNSET_HINT} if unset_as_zero(cls, n) else {})}
           for n in tool.shown}
    if "dtype" in per:
        per["dtype"]["choices"] = DTYPE_CHOICES
    with gr.Row():
        shown = {n: compat.option_control(cls, n, AS_INPUT if n == "dtype" else None, **per[n]) for n in tool.shown}
    where = "checkpoint" if tool.out_kind == "checkpoint" else "LoRA"
    with gr.Row():
        out = gr.Textbox(label=f"Output name (written into the first {where} folder)", scale=3,
                         elem_id=elem(f"{tool.key}_out"))
        overwrite = compat.option_control(cls, "overwrite", elem_id=elem(f"{tool.key}_overwrite"))
        run = gr.Button("Run", variant="primary", elem_id=elem(f"{tool.key}_run"), scale=1)
        cancel = gr.Button("Cancel", elem_id=elem(f"{tool.key}_cancel"), scale=1)
    status = gr.Markdown(elem_id=elem(f"{tool.key}_status"))
    picks, texts, shown_list = list(pick_controls.values()), list(text_controls.values()), list(shown.values())
    n_p, n_t = len(picks), len(texts)

    def go(*args, progress=None):
        p = dict(zip(pick_controls, args[:n_p]))
        t = dict(zip(text_controls, args[n_p:n_p + n_t]))
        rest = args[n_p + n_t:]
        return run_tool(ctx, jobs, tool.key, p, t, list(rest[:-2]), rest[-2], rest[-1], progress=progress)

    inputs = [*picks, *texts, *shown_list, out, overwrite]
    # the progress bar goes to the outputs: the status line only; "Replace" is cleared by the next step
    run.click(compat.with_progress(go, len(inputs)), inputs=inputs, outputs=[status]) \
        .then(untick, inputs=[], outputs=[overwrite], queue=False, show_progress="hidden")
    cancel.click(jobs.cancel_all, inputs=[], outputs=[status], queue=False)
