"""Merge tab: checkpoint merge (models A/B/C, mode, alpha, 26/20 block sliders with presets and a block
diagram, output name/type/replace, progress with ETA and Cancel), the loaded model's live merge (the WebUI's
model; standalone: model A loaded here, with a preview image: merge_live.py), and the LoRA tools (resize, merge-loras, extract, bake, bake-lora) with the options of their CLI verbs.

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
import importlib
import re
import threading
import time
from pathlib import Path

from lib_lora import options
from lib_lora.blocks import BLOCK_NAMES, FORMATS
from lib_lora.errors import LoraStudioError
from lib_lora.options import OUTPUT_DTYPES, MergeOptions
from lib_lora.syntax import format_number
from lib_lora.ui import lora_tab

SUFFIX = ".safetensors"      # the UI never loads pickles
AS_INPUT = "as input"        # the dtype choice that keeps the input's types (dtype None)
DTYPE_CHOICES = [AS_INPUT, *OUTPUT_DTYPES]
SLIDER_LOW, SLIDER_HIGH = -1.0, 2.0
NO_CHECKPOINT_DIR = "No checkpoint folder is configured; start the app with --checkpoint-dir DIR."    # m outside 0..1 extrapolates, as supermerger allows


class Cancelled(LoraStudioError):
    pass


# ---- running jobs and their progress ----------------------------------------------------------------


class Jobs:
    """Cancel events of the runs in progress: Cancel stops every run this tab started (a local tool: one
    user; runs that change the loaded model wait for the WebUI queue anyway)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._events: set = set()

    @contextlib.contextmanager
    def job(self):
        ev = threading.Event()
        with self._lock:
            self._events.add(ev)
        try:
            yield ev
        finally:
            with self._lock:
                self._events.discard(ev)

    def cancel_all(self) -> str:
        with self._lock:
            events = list(self._events)
        for ev in events:
            ev.set()
        return "Cancelling…" if events else "Nothing is running."


class Reporter:
    """`(phase, done, total)` of the core → a gr.Progress (or any callable taking (fraction, desc=…)) with
    an ETA in its text; raises Cancelled at the next call once `cancel` is set (the core then writes nothing
    and leaves any existing file as it was)."""

    def __init__(self, progress, cancel: threading.Event, units: dict | None = None):
        self.progress, self.cancel, self.units = progress, cancel, units or {}
        self.phase, self.t0, self.last = None, 0.0, 0.0

    def check(self) -> None:
        if self.cancel.is_set():
            raise Cancelled("Cancelled; nothing was written and existing files are unchanged.")

    def cancelled(self) -> bool:
        return self.cancel.is_set()

    def __call__(self, phase: str, done: int, total: int) -> None:
        self.check()
        if self.progress is None:
            return
        from lib_lora.cli.progress import fmt_bytes, fmt_eta
        now = time.monotonic()
        if phase != self.phase:
            self.phase, self.t0, self.last = phase, now, 0.0
        if now - self.last < 0.2 and not (total and done >= total):
            return
        self.last = now
        frac = min(1.0, done / total) if total else 0.0
        elapsed = now - self.t0
        eta = elapsed * (1 - frac) / frac if frac > 0 and elapsed > 0.5 else None
        amount = (f"{fmt_bytes(done)}/{fmt_bytes(total)}" if self.units.get(phase) == "bytes"
                  else f"{done}/{total} {self.units.get(phase, '')}".rstrip())
        self.progress(frac, desc=f"{phase}: {amount} · ETA {fmt_eta(eta)}")

    def bytes(self, phase: str):
        """A `(done, total)` callback for cores that report one phase."""
        return lambda done, total: self(phase, done, total)


def error_line(exc: BaseException) -> str:
    """One line for the tab: a LoraStudioError verbatim; anything else (a bug) named, its traceback on the
    console, so the user still gets a line and not Gradio's bare "Error"."""
    if isinstance(exc, LoraStudioError):
        return f"⚠ {exc}"
    import sys
    import traceback
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    text = " ".join(str(exc).split())[:300]
    return f"⚠ unexpected error {type(exc).__name__}: {text}; details are on the console."


# ---- files: models in, outputs out --------------------------------------------------------------------


def checkpoint_choices(ctx) -> dict[str, Path]:
    """{shown name: path} of the .safetensors checkpoints: the WebUI's own list when it gives one
    (ctx.checkpoint_list), else the files found in ctx.checkpoint_dirs (names relative to their folder)."""
    if ctx.checkpoint_list is not None:
        listed = ctx.checkpoint_list() or {}
        return {str(k): Path(v) for k, v in listed.items() if str(v).lower().endswith(SUFFIX)}
    from lib_lora.library import Library

    lib = Library(lambda: ctx.checkpoint_dirs, (SUFFIX,), "checkpoint", headers=False)
    lib.scan()
    found: dict = {}
    for f in lib.files:
        found.setdefault(f.relative, f.path)
    return dict(sorted(found.items(), key=lambda kv: kv[0].lower()))


def checkpoint_path(ctx, name, role: str) -> str:
    """A picked model name → its file; only names of the current list are accepted."""
    if ctx.checkpoint_list is None and not ctx.checkpoint_dirs:
        raise LoraStudioError(NO_CHECKPOINT_DIR)
    if not name:
        raise LoraStudioError(f"Pick model {role} first.")
    found = checkpoint_choices(ctx).get(str(name))
    if found is None:
        raise LoraStudioError(f"Model {role} '{name}' is not in the checkpoint list (only .safetensors files are "
                              f"offered); press Refresh and pick it again.")
    return str(found)


def output_path(ctx, name, roots, what: str, overwrite: bool) -> str:
    """An output name → a path inside `roots` ('.safetensors' added); an existing file only with `overwrite`."""
    from lib_lora.fileio import resolve_inside

    text = str(name or "").strip()
    if not text:
        raise LoraStudioError(f"Type a name for the output {what} first.")
    if not roots:
        raise LoraStudioError(NO_CHECKPOINT_DIR if what == "checkpoint" else f"No {what} folder is configured.")
    if not text.lower().endswith(SUFFIX):
        text += SUFFIX
    path = resolve_inside(text, roots, f"output {what}")
    if path.is_dir():
        raise LoraStudioError(f"Output '{text}' is a folder; type a file name.")
    if path.exists() and not overwrite:
        raise LoraStudioError(f"Output '{text}' already exists; tick 'Replace the output file' to overwrite it, "
                              f"or choose another name.")
    if not path.parent.is_dir():
        raise LoraStudioError(f"Folder '{path.parent}' does not exist; create it first or type a name without it.")
    return str(path)


def _refresh(fn, what: str) -> str:
    """Let the host list a new file; a failure there is a note, the file is written."""
    if fn is None:
        return ""
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 — the file exists; only the host's list is stale
        return f" (the {what} list could not be refreshed: {exc}; press its refresh button)"
    return ""


# ---- architecture, block weights, presets -------------------------------------------------------------


def model_arch(path: str) -> str:
    """"sd1" / "sd2" / "sdxl" / "unknown" of a checkpoint, from its header."""
    from lib_lora import fileio
    from lib_lora.merge.checkpoint import model_arch as arch_of

    with fileio.MappedTensors(path) as reader:
        return arch_of(reader)


def full_count(arch: str | None) -> int:
    return 20 if arch == "sdxl" else 26


def arch_of_a(ctx, a_name) -> tuple[str | None, str]:
    """(arch or None, one line about model A for the tab)."""
    from lib_lora.arch import label
    if not a_name:
        return None, "Pick model A: its architecture sets the block sliders (26 for SD1/SD2, 20 for SDXL)."
    try:
        arch = model_arch(checkpoint_path(ctx, a_name, "A"))
    except Exception as exc:  # noqa: BLE001 — a damaged header is one line here too
        return None, error_line(exc)
    if arch == "unknown":
        return None, f"⚠ Model A '{a_name}' is not an SD1/SD2/SDXL checkpoint; pick a Stable Diffusion model."
    n = full_count(arch)
    return arch, f"Model A is {label(arch)}: {n} block weights (BASE first)."


def slider_visibility(arch: str | None) -> list[bool]:
    shown = set(FORMATS[full_count(arch)])
    return [i in shown for i in range(26)]


def merge_store(ctx):
    """The checkpoint-merge presets: presets.default_merge_store (shipped merge presets + the user file beside
    the LoRA presets file) where the core has it, else the block presets; built once per context."""
    if ctx.merge_presets is None:
        from lib_lora import presets as store_module
        factory = getattr(store_module, "default_merge_store", None)
        if factory is None:
            ctx.merge_presets = ctx.presets
        else:
            name = getattr(store_module, "MERGE_USER_FILE_NAME", None)
            user = Path(ctx.presets_path).with_name(name) if ctx.presets_path and name else None
            try:
                ctx.merge_presets = factory(user_path=user)
            except LoraStudioError:     # an unreadable user file: the shipped merge presets still work
                ctx.merge_presets = factory()
    return ctx.merge_presets


def merge_presets(ctx, arch: str | None) -> list[str]:
    """Presets a merge can take for `arch`: numbers only, the full count (26 / 20) or one less (no BASE).
    A NAME_XL variant is shown as NAME, which means it for SDXL models."""
    from lib_lora.merge.checkpoint import _numbers
    store = merge_store(ctx)
    if store is None:
        return []
    full = full_count(arch)
    out = []
    for name in store.names():
        vals = store.get(name, arch if arch in ("sd1", "sd2", "sdxl") else None)
        if vals and len(vals) in (full, full - 1) and _numbers(",".join(vals)) is not None:
            out.append(name)
    listed = set(out)
    return [n for n in out if not (n.upper().endswith("_XL") and n[:-3] in listed)]


def preset_vector(ctx, preset, arch: str | None, alpha) -> list[float]:
    """The 26 slot values a preset gives for `arch` (BASE from `alpha` when the preset has none)."""
    from lib_lora.merge.checkpoint import resolve_weights
    if not preset:
        raise LoraStudioError("Pick a merge preset first.")
    store = merge_store(ctx)
    if store is None:
        raise LoraStudioError(f"Presets are unavailable: {ctx.presets_problem or 'no presets store'}.")
    return resolve_weights(arch or "sd1", float(alpha), str(preset), None, store)


def block_text(arch: str | None, values) -> str:
    """The sliders (26, slot order) → the --block-weights list of `arch`'s full format (BASE first)."""
    return ",".join(format_number(round(float(values[s]), 6)) for s in FORMATS[full_count(arch)])


def weights_vector(arch, alpha, per_block, values) -> list[float]:
    """m per slot as the merge will use it (for the diagram)."""
    if per_block:
        return [float(v) for v in values]
    return [float(alpha)] * 26


def diagram(arch, alpha, per_block, *values) -> str:
    """Bar diagram of m per block (0 keeps A, 1 takes B), columns as model A's architecture has them."""
    vec = weights_vector(arch, alpha, per_block, values)
    return lora_tab.render_bars([abs(v) for v in vec], None, "m per block: 0 = model A, 1 = model B "
                                + ("(per block)" if per_block else "(alpha everywhere)"), arch=arch or "sd1")


# ---- checkpoint merge ----------------------------------------------------------------------------------


def merge_options(ctx, a, b, c, mode, alpha, per_block, dtype, out_name, overwrite, values) -> MergeOptions:
    """The tab's values → MergeOptions (the same declaration and core call as `python -m lib_lora merge`)."""
    if not b:
        raise LoraStudioError("Pick model B (the model merged into A).")
    c_path = checkpoint_path(ctx, c, "C") if c else None
    a_path, b_path = checkpoint_path(ctx, a, "A"), checkpoint_path(ctx, b, "B")
    arch = model_arch(a_path) if per_block else None
    o = MergeOptions(a=a_path, b=b_path, c=c_path, mode=mode, alpha=float(alpha),
                     block_weights=block_text(arch, values) if per_block else None,
                     dtype=None if dtype in (None, "", AS_INPUT) else dtype,
                     out=output_path(ctx, out_name, ctx.checkpoint_dirs, "checkpoint", bool(overwrite)),
                     overwrite=bool(overwrite), quiet=True)
    return options.validate(o, "label")


def run_merge(ctx, jobs: Jobs, a, b, c, mode, alpha, per_block, dtype, out_name, overwrite, *values,
              progress=None) -> str:
    """Merge button → the summary line (or one ⚠ line)."""
    from lib_lora.cli import merge as cli_merge
    try:
        ctx.check_writes()
        o = merge_options(ctx, a, b, c, mode, alpha, per_block, dtype, out_name, overwrite, values)
        with jobs.job() as cancel:
            rep = Reporter(progress, cancel, {"merge": "bytes"})
            t = time.perf_counter()
            res = cli_merge.merge(o, progress=rep.bytes("merge"), presets=merge_store(ctx))
        line = cli_merge.summary(res, o, time.perf_counter() - t)
    except Exception as exc:  # noqa: BLE001 — shown as one line (error_line)
        return error_line(exc)
    return "✓ " + line + _refresh(ctx.refresh_checkpoints, "checkpoint")


# ---- live merge of the loaded model (the WebUI's, or the one the standalone app loads: merge_live) --------

LIVE_UNAVAILABLE = ("Apply to loaded model is unavailable here: this host has no loaded model to merge into; use "
                    "the Merge button to write the merge to a file instead.")


def _live(ctx):
    if ctx.live_merge is None:
        raise LoraStudioError(LIVE_UNAVAILABLE)
    return ctx.live_merge()


def live_apply(ctx, jobs: Jobs, b, c, mode, alpha, per_block, a, *values, progress=None) -> str:
    try:
        if not b:
            raise LoraStudioError("Pick model B (the model merged into the loaded one).")
        b_path = checkpoint_path(ctx, b, "B")
        c_path = checkpoint_path(ctx, c, "C") if c else None
        _live(ctx)                                 # no loaded model: say so before waiting for the queue

        def run():
            live = _live(ctx)    # under the queue lock: a model loaded meanwhile is the one merged into
            arch = None
            if per_block:
                arch = getattr(live, "arch", None)     # the loaded model is A here
                if not isinstance(arch, str):
                    arch = model_arch(checkpoint_path(ctx, a, "A")) if a else None
            return live.apply(b=b_path, c=c_path, mode=mode, alpha=float(alpha),
                              block_weights=block_text(arch, values) if per_block else None, base_alpha=None,
                              presets=merge_store(ctx), progress=rep.bytes("apply"), cancel=rep.cancelled)

        with jobs.job() as cancel:
            rep = Reporter(progress, cancel, {"apply": "tensors"})
            return "✓ " + ctx.under_queue_lock(run)
    except Exception as exc:  # noqa: BLE001 — shown as one line (error_line)
        return error_line(exc)


def live_restore(ctx) -> str:
    try:
        _live(ctx)
        return "✓ " + ctx.under_queue_lock(lambda: _live(ctx).restore())
    except Exception as exc:  # noqa: BLE001 — shown as one line (error_line)
        return error_line(exc)


def live_save(ctx, jobs: Jobs, dtype, out_name, overwrite, progress=None) -> str:
    try:
        ctx.check_writes()
        out = output_path(ctx, out_name, ctx.checkpoint_dirs, "checkpoint", bool(overwrite))
        _live(ctx)
        with jobs.job() as cancel:
            rep = Reporter(progress, cancel, {"save": "bytes"})
            line = ctx.under_queue_lock(lambda: _live(ctx).save(out, dtype=None if dtype in (None, "", AS_INPUT) else dtype,
                                                           overwrite=bool(overwrite), progress=rep.bytes("save")))
    except Exception as exc:  # noqa: BLE001 — shown as one line (error_line)
        return error_line(exc)
    return "✓ " + line + _refresh(ctx.refresh_checkpoints, "checkpoint")


# ---- LoRA tools ---------------------------------------------------------------------------------------
# Each tool: its options class (declared once, with the CLI verb), the options the tab shows as generic
# controls, and a function (ctx, options, reporter) → summary line. File options are pickers or names
# resolved inside the configured folders, filled in by `tool_options`.


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
    return "✓ " + line + _refresh(refresh, "checkpoint" if tool.out_kind == "checkpoint" else "LoRA")


# ---- layout -------------------------------------------------------------------------------------------


def _choices(ctx) -> list[str]:
    try:
        return list(checkpoint_choices(ctx))
    except LoraStudioError:
        return []


def _elem(name: str) -> str:
    return f"lora_studio_merge_{name}"


def _build_tool(ctx, jobs: Jobs, tool: Tool, ckpt_pickers: list, lora_pickers: list):
    import gradio as gr
    from lib_lora.ui import compat

    cls = tool.cls
    pick_controls, text_controls = {}, {}
    with gr.Row():
        for name, kind in tool.pickers.items():
            label = options.get(cls, name).label
            eid = _elem(f"{tool.key}_{name}")
            if kind == "lora_dir":
                dirs = [str(d) for d in ctx.lora_dirs]
                pick_controls[name] = gr.Dropdown(choices=dirs, value=dirs[0] if dirs else None, label=label,
                                                  elem_id=eid)
            elif kind == "lora":
                pick_controls[name] = gr.Dropdown(choices=lora_tab.list_loras(ctx), label=label, elem_id=eid)
                lora_pickers.append(pick_controls[name])
            else:
                pick_controls[name] = gr.Dropdown(choices=_choices(ctx), label=label, elem_id=eid)
                ckpt_pickers.append(pick_controls[name])
    for name, label in tool.text.items():
        text_controls[name] = gr.Textbox(label=label, lines=2, elem_id=_elem(f"{tool.key}_{name}"))
    per = {n: {"elem_id": _elem(f"{tool.key}_{n}")} for n in tool.shown}
    if "dtype" in per:
        per["dtype"]["choices"] = DTYPE_CHOICES
    with gr.Row():
        shown = {n: compat.option_control(cls, n, AS_INPUT if n == "dtype" else None, **per[n]) for n in tool.shown}
    where = "checkpoint" if tool.out_kind == "checkpoint" else "LoRA"
    with gr.Row():
        out = gr.Textbox(label=f"Output name (written into the first {where} folder)", scale=3,
                         elem_id=_elem(f"{tool.key}_out"))
        overwrite = compat.option_control(cls, "overwrite", elem_id=_elem(f"{tool.key}_overwrite"))
        run = gr.Button("Run", variant="primary", elem_id=_elem(f"{tool.key}_run"), scale=1)
        cancel = gr.Button("Cancel", elem_id=_elem(f"{tool.key}_cancel"), scale=1)
    status = gr.Markdown(elem_id=_elem(f"{tool.key}_status"))
    picks, texts, shown_list = list(pick_controls.values()), list(text_controls.values()), list(shown.values())
    n_p, n_t = len(picks), len(texts)

    def go(*args, progress=None):
        p = dict(zip(pick_controls, args[:n_p]))
        t = dict(zip(text_controls, args[n_p:n_p + n_t]))
        rest = args[n_p + n_t:]
        return run_tool(ctx, jobs, tool.key, p, t, list(rest[:-2]), rest[-2], rest[-1], progress=progress), False

    inputs = [*picks, *texts, *shown_list, out, overwrite]
    run.click(compat.with_progress(go, len(inputs)), inputs=inputs, outputs=[status, overwrite])
    cancel.click(jobs.cancel_all, inputs=[], outputs=[status], queue=False)


def build(ctx) -> None:
    import gradio as gr
    from lib_lora.ui import compat

    jobs = Jobs()
    choices = _choices(ctx)
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
                        _build_tool(ctx, jobs, tool, ckpt_pickers, lora_pickers)

    arch = gr.State(None)
    model_pickers = [a, b, c]

    def refreshed():
        store = merge_store(ctx)
        if store is not None and store is not ctx.presets:   # the block store reloads with its own tab
            with contextlib.suppress(LoraStudioError):
                store.reload()
        names = _choices(ctx)
        loras = lora_tab.list_loras(ctx)
        return (compat.update(choices=names), compat.update(choices=names), compat.update(choices=[""] + names),
                *[compat.update(choices=names) for _ in ckpt_pickers],
                *[compat.update(choices=loras) for _ in lora_pickers])

    refresh_outputs = [*model_pickers, *ckpt_pickers, *lora_pickers]
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

    def do_merge(a_v, b_v, c_v, mode_v, alpha_v, per, dtype_v, out_v, over_v, *vals, progress=None):
        line = run_merge(ctx, jobs, a_v, b_v, c_v, mode_v, alpha_v, per, dtype_v, out_v, over_v, *vals,
                         progress=progress)
        return line, False

    merge_inputs = [a, b, c, mode, alpha, per_block, dtype, out_name, overwrite, *sliders]
    merge_btn.click(compat.with_progress(do_merge, len(merge_inputs)), inputs=merge_inputs,
                    outputs=[status, overwrite]).then(refreshed, inputs=[], outputs=refresh_outputs)
    cancel_btn.click(jobs.cancel_all, inputs=[], outputs=[status], queue=False)

    if ctx.live_merge is not None:
        def do_apply(b_v, c_v, mode_v, alpha_v, per, a_v, *vals, progress=None):
            return live_apply(ctx, jobs, b_v, c_v, mode_v, alpha_v, per, a_v, *vals, progress=progress)

        def do_save(dtype_v, out_v, over_v, progress=None):
            return live_save(ctx, jobs, dtype_v, out_v, over_v, progress=progress), False

        apply_inputs = [b, c, mode, alpha, per_block, a, *sliders]
        applied = live_apply_btn.click(compat.with_progress(do_apply, len(apply_inputs)), inputs=apply_inputs,
                                       outputs=[live_status])
        restored = live_restore_btn.click(lambda: live_restore(ctx), inputs=[], outputs=[live_status])
        live_save_btn.click(compat.with_progress(do_save, 3), inputs=[dtype, out_name, overwrite],
                            outputs=[live_status, overwrite]) \
            .then(refreshed, inputs=[], outputs=refresh_outputs)
        live_cancel_btn.click(jobs.cancel_all, inputs=[], outputs=[live_status], queue=False)
        if loaded is not None:
            from lib_lora.ui import merge_live

            for ev in (applied, restored):
                ev.then(loaded.describe, inputs=[], outputs=[loaded_line])
            live_load_btn.click(lambda a_v: merge_live.load_a(ctx, a_v), inputs=[a], outputs=[live_status]) \
                .then(loaded.describe, inputs=[], outputs=[loaded_line])

            def do_preview(p_v, n_v, seed_v, steps_v, size_v, progress=None):
                return merge_live.preview(ctx, jobs, p_v, n_v, seed_v, steps_v, size_v, progress=progress)

            pv_inputs = [pv_prompt, pv_negative, pv_seed, pv_steps, pv_size]
            pv_btn.click(compat.with_progress(do_preview, len(pv_inputs)), inputs=pv_inputs,
                         outputs=[pv_status, pv_image])
