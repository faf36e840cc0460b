"""Train tab: a tagged folder → per-epoch LoRAs, configured with sd-scripts' own argument names.

The parameters are the options of `lib_lora.train.config.TrainConfig` (the keys `python -m lib_lora train
--config FILE.toml` reads, sd-scripts' names), shown in groups; Save/Load write and read that same TOML, so a
run made here can be repeated from the command line, under `accelerate launch`, or in sd-scripts.
The dataset folder is checked first (the validation report: images and repeats per concept, captions,
buckets, step count); problems block Start. Runs go into a queue and train one after another in a worker
thread of this process; Cancel stops the current run after its step (files already written stay whole).

Every callback is a plain function of (ctx, runner, inputs), tested without a browser; `build` only wires
them. Errors come back as one "⚠ …" line, never a traceback. The base checkpoint is picked from a list the
server made; the dataset folder resolves inside the configured image folders; LoRAs are written into the
first LoRA folder; every write calls ctx.check_writes() first.
"""

from __future__ import annotations

import html
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lib_lora import options
from lib_lora.errors import LoraStudioError

# The parameters shown, in groups (every other key of a loaded config is kept as it is).
GROUPS = {
    "Dataset": ["resolution", "enable_bucket", "train_batch_size", "caption_extension", "shuffle_caption",
                "keep_tokens", "caption_dropout_rate", "caption_tag_dropout_rate", "flip_aug", "cache_latents"],
    "Network": ["network_module", "network_dim", "network_alpha", "network_args", "network_dropout",
                "network_train_unet_only"],
    "Optimizer and schedule": ["optimizer_type", "learning_rate", "unet_lr", "text_encoder_lr", "lr_scheduler",
                               "lr_warmup_steps", "max_train_epochs", "max_train_steps",
                               "gradient_accumulation_steps", "mixed_precision", "seed"],
    "Noise and loss": ["noise_offset", "multires_noise_iterations", "min_snr_gamma", "clip_skip"],
    "Saving": ["output_name", "save_every_n_epochs", "save_precision", "save_state", "training_comment"],
}
SHOWN = [n for names in GROUPS.values() for n in names]
CONFIG_DIR = "lora_studio_train"     # inside the first LoRA folder: the saved run configs (TOML)
SUFFIX = ".safetensors"

# The guides' starting points (kohya_ss / the training guides this project follows): rank 16–32, alpha half
# the rank, AdamW at 1e-4 for the U-Net and 5e-5 for the text encoder, cosine, 10 epochs saved each epoch.
PRESETS = {
    "character": {"network_dim": 32, "network_alpha": 16, "learning_rate": 1e-4, "unet_lr": 1e-4,
                  "text_encoder_lr": 5e-5, "lr_scheduler": "cosine", "max_train_epochs": 10,
                  "save_every_n_epochs": 1, "shuffle_caption": True, "keep_tokens": 1, "enable_bucket": True,
                  "caption_extension": ".txt", "noise_offset": None, "min_snr_gamma": 5.0},
    "style": {"network_dim": 32, "network_alpha": 16, "learning_rate": 1e-4, "unet_lr": 1e-4,
              "text_encoder_lr": 2.5e-5, "lr_scheduler": "cosine", "max_train_epochs": 12,
              "save_every_n_epochs": 1, "shuffle_caption": True, "keep_tokens": 0, "enable_bucket": True,
              "caption_extension": ".txt", "noise_offset": 0.05, "min_snr_gamma": 5.0},
    "concept": {"network_dim": 16, "network_alpha": 8, "learning_rate": 1e-4, "unet_lr": 1e-4,
                "text_encoder_lr": 5e-5, "lr_scheduler": "cosine_with_restarts", "max_train_epochs": 10,
                "save_every_n_epochs": 1, "shuffle_caption": True, "keep_tokens": 1, "enable_bucket": True,
                "caption_extension": ".txt", "noise_offset": 0.05, "min_snr_gamma": 5.0},
}


def _error(exc: BaseException) -> str:
    if isinstance(exc, LoraStudioError):
        return "⚠ " + str(exc).splitlines()[0]
    import traceback
    traceback.print_exc()
    return f"⚠ {type(exc).__name__}: {exc}; details are on the console."


def _data_roots(ctx) -> list[Path]:
    return list(ctx.image_dirs or [*ctx.lora_dirs, *ctx.checkpoint_dirs])


def _output_dir(ctx) -> Path:
    if not ctx.lora_dirs:
        raise LoraStudioError("no LoRA folder is configured; start the app with --lora-dir DIR.")
    return Path(ctx.lora_dirs[0])


def checkpoints(ctx) -> dict:
    from lib_lora.ui.merge_tab import checkpoint_choices   # one list of checkpoints for every tab

    try:
        return checkpoint_choices(ctx)
    except LoraStudioError:
        return {}


def make_config(ctx, checkpoint: str, data_dir: str, values: dict, base=None):
    """The tab's fields → a validated TrainConfig (paths resolved inside the configured folders)."""
    from lib_lora.train.config import TrainConfig

    found = checkpoints(ctx)
    if not checkpoint or checkpoint not in found:
        raise LoraStudioError("pick a base checkpoint in the list (press Refresh if it is new).")
    if not (data_dir or "").strip():
        raise LoraStudioError("type the dataset folder: the folder holding <repeats>_<concept> sub-folders.")
    folder = ctx.resolve_inside(data_dir.strip(), _data_roots(ctx), "dataset folder")
    if not folder.is_dir():
        raise LoraStudioError(f"'{data_dir}' is a file; give the folder holding <repeats>_<concept> sub-folders.")
    names = ["pretrained_model_name_or_path", "train_data_dir", "output_dir", *values]
    vals = [str(found[checkpoint]), str(folder), str(_output_dir(ctx)), *values.values()]
    cfg = options.from_ui(TrainConfig, names, vals, base=base)
    problems = cfg.check()
    if problems:
        raise LoraStudioError(problems[0])
    return cfg


def validate(ctx, checkpoint, data_dir, values: dict) -> tuple[str, bool]:
    """(the validation report as text, whether Start may run)."""
    from lib_lora.train.dataset import validate as check_dataset

    try:
        cfg = make_config(ctx, checkpoint, data_dir, values)
        report = check_dataset(cfg)
    except Exception as exc:  # noqa: BLE001 — shown as one line
        return _error(exc), False
    head = "✓ ready to train" if report.ok else "⚠ fix these first:\n" + "\n".join(f"- {p}" for p in report.problems)
    return head + "\n\n" + report.format(), report.ok


# ---- configs (TOML) -----------------------------------------------------------------------------------


def config_names(ctx) -> list[str]:
    try:
        folder = _output_dir(ctx) / CONFIG_DIR
    except LoraStudioError:
        return []
    return sorted(p.stem for p in folder.glob("*.toml")) if folder.is_dir() else []


def _config_path(ctx, name: str) -> Path:
    import re

    name = (name or "").strip()
    if not name or not re.fullmatch(r"[\w.() -]{1,100}", name) or name.startswith("."):
        raise LoraStudioError("give the config a name of letters, digits, spaces, '-', '_' or '.'.")
    return _output_dir(ctx) / CONFIG_DIR / f"{name}.toml"


def save_config(ctx, name, checkpoint, data_dir, values: dict, overwrite: bool) -> str:
    from lib_lora import fileio
    from lib_lora.train.config import to_sd_scripts_toml

    try:
        ctx.check_writes()
        cfg = make_config(ctx, checkpoint, data_dir, values)
        path = _config_path(ctx, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fileio.atomic_write_text(path, to_sd_scripts_toml(cfg), overwrite=overwrite)
    except Exception as exc:  # noqa: BLE001
        return _error(exc)
    return (f"✓ saved {fileio.display_path(path)}: run it with `python -m lib_lora train --config \"{path}\"`, or "
            f"on several GPUs with `accelerate launch -m lib_lora train --config \"{path}\"`")


def load_config(ctx, name) -> tuple[str, str, dict, str]:
    """(checkpoint shown name, dataset folder, {option: value}, message) of a saved config."""
    from lib_lora.train.config import load_config as read

    try:
        cfg = read(_config_path(ctx, name))
    except Exception as exc:  # noqa: BLE001
        return "", "", {}, _error(exc)
    by_path = {str(Path(p)): k for k, p in checkpoints(ctx).items()}
    checkpoint = by_path.get(str(Path(cfg.pretrained_model_name_or_path)), "")
    note = "" if checkpoint else " (its base checkpoint is not in the list: pick one)"
    values = {n: _shown(getattr(cfg, n)) for n in SHOWN}
    return checkpoint, cfg.train_data_dir or "", values, f"✓ loaded {name}{note}"


def _shown(v):
    if isinstance(v, list):
        return ", ".join(str(x) for x in v)
    return v


def preset_values(name: str) -> dict:
    if name not in PRESETS:
        raise LoraStudioError(f"unknown preset '{name}'; use one of {', '.join(PRESETS)}.")
    return {k: _shown(v) for k, v in PRESETS[name].items()}


# ---- the run queue ------------------------------------------------------------------------------------


@dataclass
class Run:
    cfg: object
    label: str
    state: str = "queued"           # queued → running → done | cancelled | failed
    message: str = ""
    step: int = 0
    total: int = 0
    epoch: int = 0
    epochs: int = 0
    eta: float | None = None
    losses: list = field(default_factory=list)
    files: list = field(default_factory=list)
    cancel: threading.Event = field(default_factory=threading.Event)


class Runner:
    """Runs queued trainings one after another in one worker thread. `wrap(fn)` runs a training (the WebUI:
    under its queue lock, so no generation competes for the device); `trainer` builds the Trainer."""

    def __init__(self, wrap=None, trainer=None, on_done=None):
        self.runs: list[Run] = []
        self._on_done = on_done      # after each run that wrote files (the host lists the new LoRAs)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._wrap = wrap or (lambda fn: fn())
        self._trainer = trainer

    def add(self, cfg) -> Run:
        run = Run(cfg, cfg.name)
        with self._wake:
            self.runs.append(run)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="lora-studio-train", daemon=True)
                self._thread.start()
            self._wake.notify()
        return run

    def cancel(self) -> str:
        """Cancel the running run and drop the queued ones."""
        n = 0
        with self._lock:
            for run in self.runs:
                if run.state in ("queued", "running"):
                    run.cancel.set()
                    if run.state == "queued":
                        run.state, run.message = "cancelled", "cancelled before it started"
                    n += 1
        return f"✓ cancelling {n} run(s)" if n else "nothing is running"

    def busy(self) -> bool:
        with self._lock:
            return any(r.state in ("queued", "running") for r in self.runs)

    def wait(self, timeout: float = 60.0) -> bool:
        """For tests and the CLI: True once nothing is queued or running."""
        end = time.monotonic() + timeout
        while self.busy() and time.monotonic() < end:
            time.sleep(0.05)
        return not self.busy()

    def _next(self) -> Run | None:
        with self._lock:
            for run in self.runs:
                if run.state == "queued":
                    run.state = "running"
                    return run
        return None

    def _work(self) -> None:
        while True:
            run = self._next()
            if run is None:
                return
            try:
                files = self._wrap(lambda: self._train(run))
                state = "cancelled" if run.cancel.is_set() else "done"
                message = (f"stopped at step {run.step}/{run.total}" if state == "cancelled"
                           else f"finished: {len(files)} file(s)")
            except BaseException as exc:  # noqa: BLE001 — the run fails, the thread and the host go on
                files, state, message = [], "failed", _error(exc)
            if files and self._on_done is not None:
                try:
                    self._on_done()
                except Exception as exc:  # noqa: BLE001 — a failed refresh must not stop the queue
                    message += f" (the LoRA list was not refreshed: {exc})"
            with self._lock:          # one step: a status read sees the files with the final state
                run.files, run.state, run.message = files, state, message

    def _train(self, run: Run) -> list:
        def progress(p):
            run.step, run.total, run.epoch, run.epochs, run.eta = p.step, p.total, p.epoch, p.epochs, p.eta
            run.losses.append(float(p.loss))

        def log(msg: str) -> None:
            run.message = str(msg).splitlines()[0] if msg else run.message

        make = self._trainer or _default_trainer
        try:
            result = make(run.cfg, progress=progress, cancel=run.cancel.is_set, log=log).run()
        except ImportError as exc:
            pkg = (exc.name or str(exc)).split(".")[0]
            hint = ("lycoris-lora (3.x on torch < 2.3; the WebUI's installer adds it at its next start)"
                    if pkg == "lycoris" else pkg)
            raise LoraStudioError(f"training needs the Python package '{pkg}', which this Python lacks; install "
                                  f"{hint}.") from None
        return [str(f) for f in result.files]


def _default_trainer(cfg, **kw):
    from lib_lora.train.trainer import Trainer

    return Trainer(cfg, **kw)


def start(ctx, runner: Runner, checkpoint, data_dir, values: dict) -> str:
    """Validate, then queue the run. Problems of the dataset block it."""
    from lib_lora.train.dataset import validate as check_dataset

    try:
        ctx.check_writes()
        cfg = make_config(ctx, checkpoint, data_dir, values)
        report = check_dataset(cfg)
        if not report.ok:
            return "⚠ the dataset has problems; fix them first:\n" + "\n".join(f"- {p}" for p in report.problems)
    except Exception as exc:  # noqa: BLE001
        return _error(exc)
    ahead = sum(r.state in ("queued", "running") for r in runner.runs)
    runner.add(cfg)
    return f"✓ queued '{cfg.name}'" + (f" behind {ahead} run(s)" if ahead else "")


def _eta(seconds) -> str:
    if seconds is None:
        return "…"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def status_text(runner: Runner) -> str:
    if not runner.runs:
        return "No runs yet."
    lines = []
    for i, r in enumerate(runner.runs, 1):
        line = f"{i}. **{html.escape(r.label)}**: {r.state}"
        if r.state == "running":
            loss = f", loss {r.losses[-1]:.4f}" if r.losses else ""
            line += f", step {r.step}/{r.total or '…'}, epoch {r.epoch}/{r.epochs or '…'}{loss}, ETA {_eta(r.eta)}"
        elif r.message:
            line += f": {html.escape(r.message)}"
        lines.append(line)
        lines += [f"   - `{html.escape(f)}`" for f in r.files]
    return "\n".join(lines)


def loss_plot(runner: Runner, width: int = 480, height: int = 180):
    """The loss of the latest run with losses (raw and a moving average) as a PIL image, or None."""
    run = next((r for r in reversed(runner.runs) if r.losses), None)
    if run is None:
        return None
    from PIL import Image, ImageDraw

    ys = run.losses
    k = max(1, len(ys) // 20)
    avg = [sum(ys[max(0, i - k + 1):i + 1]) / len(ys[max(0, i - k + 1):i + 1]) for i in range(len(ys))]
    lo, hi = min(ys), max(ys)
    span = (hi - lo) or 1.0
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    pad = 24

    def pt(i, y):
        x = pad + (width - 2 * pad) * (i / max(1, len(ys) - 1))
        return x, height - pad - (height - 2 * pad) * ((y - lo) / span)

    d.rectangle([pad, pad, width - pad, height - pad], outline=(200, 200, 200))
    if len(ys) > 1:
        d.line([pt(i, y) for i, y in enumerate(ys)], fill=(170, 190, 230), width=1)
        d.line([pt(i, y) for i, y in enumerate(avg)], fill=(30, 80, 200), width=2)
    d.text((pad, 4), f"loss {run.label}: last {ys[-1]:.4f}  min {lo:.4f}  (step {run.step}/{run.total})",
           fill=(0, 0, 0))
    return img


def accelerate_command(ctx, name) -> str:
    try:
        path = _config_path(ctx, name)
    except LoraStudioError:
        path = Path("RUN.toml")
    return f"accelerate launch -m lib_lora train --config \"{path}\""


# ---- layout -------------------------------------------------------------------------------------------


def _elem(name: str) -> str:
    return f"lora_studio_train_{name}"


def build(ctx, runner: Runner | None = None) -> None:
    import gradio as gr
    from lib_lora.train.config import TrainConfig
    from lib_lora.ui import compat

    runner = runner or Runner(wrap=lambda fn: ctx.under_queue_lock(fn, "the training"), on_done=ctx.refresh_loras)
    gr.Markdown("Train a LoRA from a folder of `<repeats>_<concept>` sub-folders (captions beside the images: "
                "the Tagger tab writes them). The parameters are sd-scripts' own; **Save** writes them as a "
                "TOML that `python -m lib_lora train --config` and sd-scripts read. LoRAs are written into "
                f"{html.escape(str(ctx.lora_dirs[0]) if ctx.lora_dirs else 'the LoRA folder')}.")
    with gr.Row():
        checkpoint = gr.Dropdown(choices=list(checkpoints(ctx)), label="Base checkpoint", scale=3,
                                 elem_id=_elem("checkpoint"))
        data_dir = gr.Textbox(label="Dataset folder (holds <repeats>_<concept> folders)", scale=3,
                              elem_id=_elem("data_dir"))
        refresh = gr.Button("Refresh", size="sm", min_width=80, scale=1, elem_id=_elem("refresh"))
    with gr.Row():
        preset = gr.Dropdown(choices=list(PRESETS), label="Start from a preset", scale=2, elem_id=_elem("preset"))
        config = gr.Dropdown(choices=config_names(ctx), label="Saved config", allow_custom_value=True, scale=2,
                             elem_id=_elem("config"))
        load_btn = gr.Button("Load", elem_id=_elem("load"))
        save_btn = gr.Button("Save", elem_id=_elem("save"))
        overwrite = gr.Checkbox(False, label="Replace the saved config", elem_id=_elem("overwrite"))
    controls: dict = {}
    for group, names in GROUPS.items():
        with gr.Accordion(group, open=group in ("Network", "Optimizer and schedule")):
            with gr.Row():
                for name in names:
                    controls[name] = compat.option_control(TrainConfig, name, elem_id=_elem(name), min_width=160)
    names = list(controls)
    fields = list(controls.values())
    with gr.Row():
        validate_btn = gr.Button("Check the dataset", elem_id=_elem("validate"))
        start_btn = gr.Button("Start (queue)", variant="primary", elem_id=_elem("start"))
        cancel_btn = gr.Button("Cancel", elem_id=_elem("cancel"))
        status_btn = gr.Button("Refresh status", elem_id=_elem("status_refresh"))
    message = gr.Markdown(elem_id=_elem("message"))
    with gr.Row():
        status = gr.Markdown(status_text(runner), elem_id=_elem("status"))
        plot = gr.Image(value=None, label="Loss", type="pil", interactive=False, elem_id=_elem("loss"))
    command = gr.Textbox(accelerate_command(ctx, ""), label="Several GPUs or machines: save the config, then run",
                         interactive=False, elem_id=_elem("accelerate"))

    def values_of(args):
        return dict(zip(names, args))

    def on_validate(ck, d, *args):
        return validate(ctx, ck, d, values_of(args))[0]

    def on_start(ck, d, *args):
        return start(ctx, runner, ck, d, values_of(args)), status_text(runner)

    def on_status():
        return status_text(runner), loss_plot(runner)

    def on_preset(name):
        vals = preset_values(name) if name in PRESETS else {}
        return [gr.update(value=vals[n]) if n in vals else gr.update() for n in names]

    def on_load(name):
        ck, d, vals, msg = load_config(ctx, name)
        return [msg, gr.update(value=ck) if ck else gr.update(), gr.update(value=d) if d else gr.update(),
                *[gr.update(value=vals[n]) if n in vals else gr.update() for n in names]]

    def on_save(name, ck, d, ow, *args):
        msg = save_config(ctx, name, ck, d, values_of(args), bool(ow))
        return msg, gr.update(choices=config_names(ctx)), accelerate_command(ctx, name), False

    def on_refresh():
        return gr.update(choices=list(checkpoints(ctx))), gr.update(choices=config_names(ctx))

    validate_btn.click(on_validate, [checkpoint, data_dir, *fields], [message])
    start_btn.click(on_start, [checkpoint, data_dir, *fields], [message, status])
    cancel_btn.click(lambda: runner.cancel(), [], [message])
    status_btn.click(on_status, [], [status, plot])
    preset.change(on_preset, [preset], fields)
    load_btn.click(on_load, [config], [message, checkpoint, data_dir, *fields])
    save_btn.click(on_save, [config, checkpoint, data_dir, overwrite, *fields], [message, config, command, overwrite])
    refresh.click(on_refresh, [], [checkpoint, config])
    compat.poll(start_btn, on_status, [status, plot], seconds=2.0)   # from the first Start on

