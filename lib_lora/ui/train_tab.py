"""Training tab: a kohya dataset folder (picked inside the configured folders) with its validation report,
the sd-scripts parameters in groups with the guides' defaults, Load/Save of the run as the sd-scripts TOML
`python -m lib_lora train --config` reads, presets (character / style / concept shipped, more saved by the
user), a queue of runs with progress, ETA, loss and a live loss plot, the per-epoch files of each run, and
"Compare epochs" (standalone: an epoch × weight grid rendered with lib_lora.sd; WebUI: the X/Y/Z settings).

Runs go through a host function `(run, cancel_event) -> None` (ctx.train_host): standalone the trainer runs
in this process in a worker thread (Cancel stops after the current step); the WebUI gives a subprocess host
(lora_studio_webui.train_host). Each run holds the WebUI's queue lock (ctx.wrap_gpu_call) while it trains.
Every callback is a plain function of (ctx, inputs), so it is tested without a browser; errors are one line.
"""

from __future__ import annotations

import collections
import dataclasses
import html
import itertools
import os
import threading
import time
from pathlib import Path

from lib_lora import options
from lib_lora.errors import LoraStudioError
from lib_lora.train.config import TrainConfig
from lib_lora.ui.merge_tab import error_line, checkpoint_choices, checkpoint_path

# The groups the tab shows, in order (sd-scripts key names; every other key keeps its value from a loaded
# config, or its sd-scripts default).
GROUPS = [
    ("Network", ["network_module", "network_dim", "network_alpha", "network_dropout", "network_args",
                 "network_train_unet_only"]),
    ("Optimizer and learning rate", ["optimizer_type", "learning_rate", "unet_lr", "text_encoder_lr",
                                     "lr_scheduler", "lr_warmup_steps", "lr_scheduler_num_cycles",
                                     "optimizer_args"]),
    ("Dataset and captions", ["resolution", "train_batch_size", "enable_bucket", "caption_extension",
                              "shuffle_caption", "keep_tokens", "caption_dropout_rate", "caption_tag_dropout_rate",
                              "flip_aug", "cache_latents"]),
    ("Steps and saving", ["max_train_epochs", "max_train_steps", "save_every_n_epochs", "save_precision", "seed"]),
    ("Advanced", ["mixed_precision", "gradient_accumulation_steps", "gradient_checkpointing", "noise_offset",
                  "multires_noise_iterations", "min_snr_gamma", "clip_skip", "max_token_length",
                  "v_parameterization", "max_grad_norm"]),
]
SHOWN = [n for _, names in GROUPS for n in names]

# The guides' recommended defaults where they differ from sd-scripts' built-ins (a new run starts here).
TAB_DEFAULTS = {
    "network_dim": 32, "network_alpha": 16.0, "optimizer_type": "AdamW", "learning_rate": 1e-4, "unet_lr": 1e-4,
    "text_encoder_lr": 5e-5, "lr_scheduler": "cosine", "lr_warmup_steps": 0.05, "train_batch_size": 2,
    "enable_bucket": True, "caption_extension": ".txt", "shuffle_caption": True, "keep_tokens": 1,
    "cache_latents": True, "max_train_epochs": 10, "save_every_n_epochs": 1, "save_precision": "fp16",
    "seed": 42, "mixed_precision": "fp16", "min_snr_gamma": 5.0, "max_token_length": 225,
}
# Keys the tab fills itself (pickers and the output name): not taken from a preset.
PATH_KEYS = ("pretrained_model_name_or_path", "train_data_dir", "output_dir", "output_name", "dataset_config",
             "reg_data_dir", "logging_dir", "resume", "network_weights")
SHIPPED_PRESETS = ("character", "style", "concept")


def _placeholder() -> TrainConfig:
    """A config whose paths are placeholders: presets carry parameters only."""
    return TrainConfig(pretrained_model_name_or_path="-", train_data_dir="-", output_dir="-")
CONFIG_SUFFIX = ".toml"


# ---- folders ------------------------------------------------------------------------------------------


def dataset_roots(ctx) -> list[Path]:
    """Folders datasets are picked from: the tagger's image folders (so a tagged folder trains as it is)."""
    from lib_lora.ui.tagger_tab import image_roots
    return image_roots(ctx)


def train_folder(ctx) -> Path:
    """Where run configs, user presets and logs live: ctx.train_dir, else `lora_studio_train` beside the
    first LoRA folder (WebUI: models/lora_studio_train)."""
    if ctx.train_dir is not None:
        return Path(ctx.train_dir)
    if not ctx.lora_dirs:
        raise LoraStudioError("No LoRA folder is configured; the trained files need one.")
    return Path(ctx.lora_dirs[0]).parent / "lora_studio_train"


def _is_kohya_root(folder: Path) -> bool:
    from lib_lora.train.dataset import parse_folder_name
    try:
        return any(p.is_dir() and parse_folder_name(p.name) for p in folder.iterdir())
    except OSError:
        return False


def list_datasets(ctx, depth: int = 3) -> list[str]:
    """Folders holding `<repeats>_<concept>` sub-folders, under the dataset roots, as "root-relative" names
    (the root itself is "."). Hidden folders are skipped."""
    out: list[str] = []
    for root in dataset_roots(ctx):
        root = Path(root)
        stack = [(root, 0)]
        while stack:
            folder, level = stack.pop()
            if _is_kohya_root(folder):
                rel = os.path.relpath(folder, root)
                name = rel if len(dataset_roots(ctx)) == 1 else str(Path(root.name) / rel)
                out.append(name.replace(os.sep, "/"))
                continue
            if level >= depth:
                continue
            try:
                subs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
            except OSError:
                continue
            stack.extend((p, level + 1) for p in reversed(subs))
    return sorted(dict.fromkeys(out), key=str.lower)


def dataset_path(ctx, name) -> Path:
    """A picked dataset name → its folder, only inside the dataset roots."""
    from lib_lora.fileio import resolve_inside
    text = str(name or "").strip()
    if not text:
        raise LoraStudioError("Pick a dataset folder first (a folder of <repeats>_<concept> sub-folders inside "
                              + ", ".join(str(r) for r in dataset_roots(ctx)) + ").")
    roots = dataset_roots(ctx)
    if len(roots) > 1:     # names carry their root's folder name first
        head, _, rest = text.partition("/")
        roots = [r for r in roots if Path(r).name == head] or roots
        text = rest or "."
    path = resolve_inside(text, roots, "dataset folder")
    if not path.is_dir():
        raise LoraStudioError(f"Dataset folder '{name}' was not found; press Refresh and pick it again.")
    return path


def _dataset_name(ctx, folder) -> str | None:
    if not folder:
        return None
    folder = os.path.abspath(folder)
    for name in list_datasets(ctx):
        try:
            if os.path.abspath(dataset_path(ctx, name)) == folder:
                return name
        except LoraStudioError:
            continue
    return None


# ---- parameters ↔ TrainConfig -------------------------------------------------------------------------


def default_values() -> dict:
    """The shown keys' starting values: sd-scripts defaults with the guides' recommendations over them."""
    base = {o.name: o.default for o in options.fields(TrainConfig) if o.name in SHOWN}
    base.update(TAB_DEFAULTS)
    return base


def control_value(name: str, value):
    """A config value as its control shows it (lists as comma-separated text, None as empty/None)."""
    o = options.get(TrainConfig, name)
    if o.kind is list:
        return value if isinstance(value, str) else ", ".join(map(str, value or []))
    if o.kind is str and value is None:
        return ""
    return value


def build_config(ctx, dataset, checkpoint, output_name, values: list, extra: dict | None = None) -> TrainConfig:
    """The tab's values → a validated TrainConfig (paths resolved on the server: the dataset inside the
    dataset roots, the checkpoint from the list, the output into the first LoRA folder)."""
    data = dataset_path(ctx, dataset)
    ckpt = checkpoint_path(ctx, checkpoint, "base")
    name = str(output_name or "").strip()
    if not name:
        raise LoraStudioError("Type an output name (the LoRA files are <name>-000001.safetensors … <name>."
                              "safetensors).")
    if any(c in name for c in "/\\:") or name.startswith("."):
        raise LoraStudioError(f"Output name '{name}' must be a plain file name without folders.")
    if not ctx.lora_dirs:
        raise LoraStudioError("No LoRA folder is configured; the trained files need one.")
    base = dict(extra or {})
    base.update(pretrained_model_name_or_path=ckpt, train_data_dir=str(data), output_dir=str(ctx.lora_dirs[0]),
                output_name=name)
    from lib_lora.train.config import config_from_dict
    base_cfg = config_from_dict(base, "run")
    cfg = options.from_ui(TrainConfig, SHOWN, list(values), base=base_cfg)
    bad = cfg.check()
    if bad:
        raise LoraStudioError(" ".join(bad))
    return cfg


def extras_of(cfg: TrainConfig) -> dict:
    """Keys of a loaded config that the tab does not show and that differ from the defaults (kept as they are,
    so Load → Save writes the same run)."""
    out = {}
    for o in options.fields(TrainConfig):
        if o.name in SHOWN or o.name in ("pretrained_model_name_or_path", "train_data_dir", "output_dir",
                                         "output_name"):
            continue
        v = getattr(cfg, o.name)
        if v != o.default:
            out[o.name] = v
    return out


def config_toml(cfg: TrainConfig) -> str:
    from lib_lora.train.config import to_sd_scripts_toml
    return to_sd_scripts_toml(cfg)


def accelerate_command(toml_path) -> str:
    """The multi-GPU command for the saved config (accelerate's DDP, one process per GPU)."""
    return f'accelerate launch --num_processes 2 -m lib_lora train --config "{toml_path}"'


# ---- validation ---------------------------------------------------------------------------------------


def validate_run(ctx, dataset, checkpoint, output_name, values: list, extra: dict | None = None):
    """Validate button → (report markdown, ok). Problems are listed and block Start."""
    from lib_lora.train.dataset import validate
    try:
        cfg = build_config(ctx, dataset, checkpoint, output_name, values, extra)
        report = validate(cfg, check_model=True)
    except Exception as exc:  # noqa: BLE001 — shown as one line
        return error_line(exc), False
    return report_markdown(report), report.ok


def report_markdown(report) -> str:
    head = ("✓ The dataset is ready to train." if report.ok else
            f"⚠ {len(report.problems)} problem{'s' if len(report.problems) > 1 else ''} must be fixed before "
            "training starts:")
    lines = [head]
    lines += [f"- **{html.escape(p, quote=False)}**" for p in report.problems]
    body = "\n".join(line for line in report.format().splitlines() if not line.startswith("problem: "))
    return "\n".join(lines) + "\n\n```\n" + body + "\n```"


# ---- presets and saved configs --------------------------------------------------------------------------


def _presets_dir(ctx) -> Path:
    return train_folder(ctx) / "presets"


def _configs_dir(ctx) -> Path:
    return train_folder(ctx) / "configs"


def _shipped_preset(name: str) -> Path:
    return Path(__file__).resolve().parent.parent / "data" / f"train_preset_{name}.toml"


def preset_names(ctx) -> list[str]:
    user = []
    try:
        folder = _presets_dir(ctx)
        if folder.is_dir():
            user = sorted(p.stem for p in folder.glob("*" + CONFIG_SUFFIX) if p.stem not in SHIPPED_PRESETS)
    except LoraStudioError:
        pass
    return [*SHIPPED_PRESETS, *user]


def config_names(ctx) -> list[str]:
    try:
        folder = _configs_dir(ctx)
    except LoraStudioError:
        return []
    return sorted(p.stem for p in folder.glob("*" + CONFIG_SUFFIX)) if folder.is_dir() else []


def _plain_name(text, what: str) -> str:
    name = str(text or "").strip()
    if name.lower().endswith(CONFIG_SUFFIX):
        name = name[:-len(CONFIG_SUFFIX)]
    if not name or any(c in name for c in "/\\:") or name.startswith("."):
        raise LoraStudioError(f"Type a {what} name (letters, digits, - and _; no folders).")
    return name


def preset_values(ctx, name) -> list:
    """A preset → the values of the shown controls (the tab defaults with the preset's keys over them)."""
    from lib_lora.train.config import read_toml_file
    name = _plain_name(name, "preset")
    path = _shipped_preset(name) if name in SHIPPED_PRESETS else _presets_dir(ctx) / (name + CONFIG_SUFFIX)
    if not path.is_file():
        raise LoraStudioError(f"Preset '{name}' was not found; press Refresh and pick it again.")
    data = read_toml_file(path, "training preset")
    unknown = [k for k in data if k not in SHOWN]
    if unknown:
        raise LoraStudioError(f"Preset '{name}' sets {', '.join(unknown)}, which the tab does not show; remove "
                              "them from the preset file.")
    vals = default_values()
    vals.update(data)
    cfg = options.from_ui(TrainConfig, SHOWN, [control_value(n, vals[n]) for n in SHOWN],
                          base=_placeholder())
    return [control_value(n, getattr(cfg, n)) for n in SHOWN]


def save_preset(ctx, name, values: list) -> str:
    """The shown parameters (no paths) as a user preset TOML; an existing preset is not replaced."""
    from lib_lora.fileio import atomic_write_text
    from lib_lora.options import _toml_value
    try:
        ctx.check_writes()
        name = _plain_name(name, "preset")
        if name in SHIPPED_PRESETS:
            raise LoraStudioError(f"'{name}' is a shipped preset; choose another name.")
        cfg = options.from_ui(TrainConfig, SHOWN, list(values), base=_placeholder())
        lines = [f"# LoRA Studio training preset '{name}' (sd-scripts keys)"]
        lines += [f"{n} = {_toml_value(getattr(cfg, n))}" for n in SHOWN if getattr(cfg, n) is not None]
        path = _presets_dir(ctx) / (name + CONFIG_SUFFIX)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(str(path), "\n".join(lines) + "\n", overwrite=False)
    except Exception as exc:  # noqa: BLE001 — shown as one line
        return error_line(exc)
    return f"✓ Saved preset '{name}' to {path}."


def save_config(ctx, config_name, dataset, checkpoint, output_name, values: list, extra=None,
                overwrite: bool = False) -> tuple[str, str]:
    """Save button → (status line, the TOML text + multi-GPU command). The file is the one the CLI reads."""
    from lib_lora.fileio import atomic_write_text
    try:
        ctx.check_writes()
        name = _plain_name(config_name or output_name, "config")
        cfg = build_config(ctx, dataset, checkpoint, output_name, values, extra)
        path = _configs_dir(ctx) / (name + CONFIG_SUFFIX)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and not overwrite:
            raise LoraStudioError(f"Config '{name}' exists; tick 'Replace' to overwrite it, or choose another name.")
        text = config_toml(cfg)
        atomic_write_text(str(path), text, overwrite=True)
    except Exception as exc:  # noqa: BLE001 — shown as one line
        return error_line(exc), ""
    return f"✓ Saved {path}.", command_text(path, text)


def command_text(path, text: str) -> str:
    return (f"# {path}\n{text}\n# run it from a shell (one GPU):\n#   python -m lib_lora train --config \"{path}\"\n"
            f"# several GPUs (accelerate's data-parallel):\n#   {accelerate_command(path)}\n")


def load_config_values(ctx, config_name):
    """Load → (status, dataset name, checkpoint name, output name, values of the shown controls, extras).
    Paths outside the configured folders are refused (the tab only picks inside them)."""
    from lib_lora.train.config import load_config
    name = _plain_name(config_name, "config")
    path = _configs_dir(ctx) / (name + CONFIG_SUFFIX)
    if not path.is_file():
        raise LoraStudioError(f"Config '{name}' was not found in {path.parent}; press Refresh.")
    cfg = load_config(path)
    notes = []
    ds = _dataset_name(ctx, cfg.train_data_dir)
    if cfg.train_data_dir and ds is None:
        notes.append(f"its dataset folder {cfg.train_data_dir} is not inside the dataset folders; pick one")
    ck = None
    wanted = os.path.abspath(cfg.pretrained_model_name_or_path or "")
    for shown, p in checkpoint_choices(ctx).items():
        if os.path.abspath(p) == wanted:
            ck = shown
    if ck is None:
        notes.append(f"its checkpoint {cfg.pretrained_model_name_or_path} is not in the list; pick one")
    status = f"✓ Loaded {path}." + (" Note: " + "; ".join(notes) + "." if notes else "")
    return status, ds, ck, cfg.output_name or "", [control_value(n, getattr(cfg, n)) for n in SHOWN], \
        extras_of(cfg)


# ---- runs and their queue -------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    id: int
    name: str
    cfg: TrainConfig
    toml_path: str | None = None
    state: str = "queued"            # queued / running / done / cancelled / failed
    step: int = 0
    total: int = 0
    epoch: int = 0
    epochs: int = 0
    loss: float | None = None
    eta: float | None = None
    losses: list = dataclasses.field(default_factory=list)      # (step, loss)
    files: list = dataclasses.field(default_factory=list)
    message: str = ""
    log: collections.deque = dataclasses.field(default_factory=lambda: collections.deque(maxlen=50))

    def on_progress(self, step, total, epoch, epochs, loss, eta) -> None:
        self.step, self.total, self.epoch, self.epochs, self.loss, self.eta = step, total, epoch, epochs, loss, eta
        if loss is not None:
            self.losses.append((step, float(loss)))

    def say(self, line: str) -> None:
        self.log.append(str(line))


def local_host(run: Run, cancel: threading.Event) -> None:
    """Standalone: the CLI trainer in this process (the worker thread); Cancel stops after the current step."""
    from lib_lora.train.trainer import Trainer

    def progress(p):
        run.on_progress(p.step, p.total, p.epoch, p.epochs, p.loss, p.eta)

    result = Trainer(run.cfg, progress=progress, cancel=cancel.is_set, log=run.say).run()
    run.files = [str(f) for f in result.files]
    if result.cancelled:
        raise _Stopped()


class _Stopped(Exception):
    """A run the user cancelled (its finished epoch files stay)."""


class TrainQueue:
    """Runs one after another in a worker thread. `host(run, cancel)` trains (see the module docstring) and
    runs under the WebUI queue lock; Cancel stops the running one (after its current step) and drops the
    queued ones."""

    def __init__(self, ctx, host=None):
        self.ctx = ctx
        self.host = host or getattr(ctx, "train_host", None) or local_host
        self.lock = threading.Lock()
        self.pending: collections.deque = collections.deque()
        self.current: Run | None = None
        self.finished: list[Run] = []
        self.cancel_event = threading.Event()
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None

    def submit(self, name: str, cfg: TrainConfig, toml_path: str | None = None) -> Run:
        run = Run(next(self._ids), name, cfg, toml_path)
        with self.lock:
            clash = [r for r in [self.current, *self.pending] if r is not None and
                     (r.cfg.output_dir, r.cfg.output_name) == (cfg.output_dir, cfg.output_name)]
            if clash:
                raise LoraStudioError(f"A queued run already writes '{cfg.output_name}'; choose another output name.")
            self.pending.append(run)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="lora-studio-train", daemon=True)
                self._thread.start()
        return run

    def busy(self) -> bool:
        with self.lock:
            return self.current is not None or bool(self.pending)

    def cancel(self) -> str:
        with self.lock:
            dropped = list(self.pending)
            self.pending.clear()
            running = self.current
        for r in dropped:
            r.state, r.message = "cancelled", "removed from the queue"
            self.finished.append(r)
        if running is not None:
            self.cancel_event.set()
        if running is None and not dropped:
            return "Nothing is running."
        return "Cancelling: the run stops after its current step" + (
            f"; {len(dropped)} queued run(s) removed." if dropped else ".")

    def wait(self, timeout: float | None = None) -> bool:
        end = None if timeout is None else time.monotonic() + timeout
        while self.busy():
            if end is not None and time.monotonic() > end:
                return False
            time.sleep(0.05)
        return True

    def _work(self) -> None:
        while True:
            with self.lock:
                if not self.pending:
                    self.current = None
                    return
                run = self.current = self.pending.popleft()
                self.cancel_event.clear()
            run.state = "running"
            try:
                self.ctx.under_queue_lock(lambda: self.host(run, self.cancel_event), "the training")
                run.state = "done"
                run.message = f"finished: {len(run.files)} file(s)"
            except _Stopped:
                run.state, run.message = "cancelled", "stopped by Cancel; the files saved so far are complete"
            except Exception as exc:  # noqa: BLE001 — a failed run is one line; the queue goes on
                run.state, run.message = "failed", error_line(exc)[2:]
            finally:
                refresh = self.ctx.refresh_loras
                if refresh is not None and run.files:
                    try:
                        refresh()
                    except Exception:  # noqa: BLE001 — the files exist; only the list is stale
                        pass
                with self.lock:
                    self.finished.append(run)
                    self.current = None


# ---- what the tab shows about the runs -------------------------------------------------------------------


def _fmt_eta(seconds) -> str:
    from lib_lora.cli.progress import fmt_eta
    return fmt_eta(seconds)


def status_markdown(queue: TrainQueue) -> str:
    with queue.lock:
        cur, pending, finished = queue.current, list(queue.pending), list(queue.finished)
    lines = []
    if cur is not None:
        if cur.total:
            pct = 100.0 * cur.step / cur.total
            loss = "–" if cur.loss is None else f"{cur.loss:.4f}"
            lines.append(f"**Training '{html.escape(cur.name)}'**: step {cur.step}/{cur.total} ({pct:.0f}%), "
                         f"epoch {cur.epoch}/{cur.epochs}, loss {loss}, ETA {_fmt_eta(cur.eta)}")
        else:
            last = cur.log[-1] if cur.log else "starting…"
            lines.append(f"**Training '{html.escape(cur.name)}'**: {html.escape(last)}")
    elif not finished:
        lines.append("Nothing is running.")
    if pending:
        lines.append("Queued: " + ", ".join(html.escape(r.name) for r in pending))
    for r in reversed(finished[-5:]):
        mark = {"done": "✓", "cancelled": "■", "failed": "⚠"}.get(r.state, "")
        lines.append(f"{mark} '{html.escape(r.name)}' {r.state}: {html.escape(r.message)}")
    return "\n\n".join(lines)


def files_markdown(queue: TrainQueue) -> str:
    with queue.lock:
        runs = [r for r in [*queue.finished, queue.current] if r is not None and r.files]
    if not runs:
        return ""
    out = []
    for r in reversed(runs):
        out.append(f"**{html.escape(r.name)}**")
        out += [f"- `{html.escape(os.path.basename(f))}`" for f in r.files]
    return "\n".join(out)


def latest_run(queue: TrainQueue) -> Run | None:
    with queue.lock:
        if queue.current is not None:
            return queue.current
        return queue.finished[-1] if queue.finished else None


def loss_plot(losses, width: int = 560, height: int = 220):
    """Loss per step as a small PIL chart (raw points and a moving average); works on every Gradio."""
    from PIL import Image, ImageDraw
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    left, right, top, bottom = 48, width - 10, 10, height - 22
    d.rectangle([left, top, right, bottom], outline=(180, 180, 180))
    if not losses:
        d.text((left + 10, top + 10), "loss appears here while a run trains", fill=(120, 120, 120))
        return img
    steps = [s for s, _ in losses]
    vals = [v for _, v in losses]
    lo, hi = min(vals), max(vals)
    if hi - lo < 1e-12:
        hi = lo + 1e-6
    s0, s1 = steps[0], max(steps[-1], steps[0] + 1)

    def xy(s, v):
        return (left + (s - s0) / (s1 - s0) * (right - left), bottom - (v - lo) / (hi - lo) * (bottom - top))

    if len(losses) > 1:
        d.line([xy(s, v) for s, v in losses], fill=(170, 190, 230), width=1)
        k = max(1, len(vals) // 20)
        avg = [sum(vals[max(0, i - k + 1):i + 1]) / len(vals[max(0, i - k + 1):i + 1]) for i in range(len(vals))]
        d.line([xy(s, v) for s, v in zip(steps, avg)], fill=(30, 80, 200), width=2)
    else:
        x, y = xy(*losses[0])
        d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(30, 80, 200))
    d.text((4, top), f"{hi:.3g}", fill=(60, 60, 60))
    d.text((4, bottom - 10), f"{lo:.3g}", fill=(60, 60, 60))
    d.text((left, bottom + 6), f"step {s0}", fill=(60, 60, 60))
    d.text((right - 70, bottom + 6), f"step {steps[-1]}", fill=(60, 60, 60))
    return img


def snapshot(queue: TrainQueue):
    """(status, loss plot, files) for the tab."""
    run = latest_run(queue)
    return status_markdown(queue), loss_plot(list(run.losses) if run else []), files_markdown(queue)


def start_run(ctx, queue: TrainQueue, dataset, checkpoint, output_name, values: list, extra=None) -> str:
    """Start → validate (problems block it, listed), write the run's TOML beside the configs, queue it."""
    from lib_lora.fileio import atomic_write_text
    from lib_lora.train.dataset import validate
    try:
        ctx.check_writes()
        cfg = build_config(ctx, dataset, checkpoint, output_name, values, extra)
        report = validate(cfg, check_model=True)
        if not report.ok:
            return report_markdown(report)
        final = Path(cfg.output_dir) / f"{cfg.name}.safetensors"
        if final.exists():
            raise LoraStudioError(f"'{final}' exists; choose another output name or move the file away.")
        folder = train_folder(ctx) / "runs"
        folder.mkdir(parents=True, exist_ok=True)
        toml_path = folder / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}{CONFIG_SUFFIX}"
        atomic_write_text(str(toml_path), config_toml(cfg), overwrite=True)
        run = queue.submit(cfg.name, cfg, str(toml_path))
    except Exception as exc:  # noqa: BLE001 — shown as one line
        return error_line(exc)
    return f"✓ Queued '{run.name}' ({report.steps.get('max_train_steps', '?')} steps); config {toml_path}."


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


def compare_epochs(ctx, checkpoint, run_name, weights, prompt, negative="", seed=1, steps=20, size=512,
                   cfg_scale=7.0, model=None, progress=None):
    """Standalone: an epoch × weight grid (rows: epochs, columns: a no-LoRA image then each weight) with one
    seed, rendered with lib_lora.sd; each LoRA goes on through the core patcher and is taken off exactly."""
    import torch
    from PIL import Image, ImageDraw

    from lib_lora.host import Host
    from lib_lora.network import load_network
    from lib_lora.patcher import ActiveLora, Patcher
    from lib_lora.sd.sample import generate
    from lib_lora.train.trainer import model_layers

    files = epoch_files(ctx, run_name)
    ws = parse_weights(weights)
    if not str(prompt or "").strip():
        raise LoraStudioError("Type a prompt for the grid (with the trigger word).")
    size = int(size)
    if model is None:
        from lib_lora.sd import load_model
        model = load_model(checkpoint_path(ctx, checkpoint, "base"))
    host = Host.from_named_modules([(layer, m) for layer, m, _ in model_layers(model)], arch=model.arch)
    patcher = Patcher(host)
    total = 1 + len(files) * len(ws)
    done = 0

    def render():
        nonlocal done
        with torch.no_grad():
            img = generate(model, str(prompt), str(negative or ""), seed=int(seed), steps=int(steps),
                           cfg=float(cfg_scale), width=size, height=size)
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
            patcher.apply([ActiveLora(net, te=w, unet=w)])
            try:
                row.append(render())
            finally:
                patcher.restore()
        rows.append((f.stem, row))
    label_w, head_h = 150, 24
    grid = Image.new("RGB", (label_w + size * (1 + len(ws)), head_h + size * len(rows)), "white")
    d = ImageDraw.Draw(grid)
    for j, title in enumerate(["no LoRA", *[f"weight {w:g}" for w in ws]]):
        d.text((label_w + j * size + 4, 6), title, fill=(0, 0, 0))
    for i, (stem, row) in enumerate(rows):
        y = head_h + i * size
        d.text((4, y + size // 2), stem[-24:], fill=(0, 0, 0))
        grid.paste(base, (label_w, y))
        for j, img in enumerate(row):
            grid.paste(img, (label_w + (j + 1) * size, y))
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


def host_problem(ctx) -> str | None:
    """One line when runs cannot start in this host (the WebUI's Python lacks the trainer's packages)."""
    check = getattr(ctx.train_host, "unavailable", None)
    if check is None:
        return None
    try:
        return check()
    except Exception as exc:  # noqa: BLE001 — the check itself failing is shown, not raised
        return error_line(exc)[2:]


# ---- layout ---------------------------------------------------------------------------------------------


def _elem(name: str) -> str:
    return f"lora_studio_train_{name}"


def build(ctx) -> None:
    import gradio as gr
    from lib_lora.ui import compat

    queue = TrainQueue(ctx)
    ckpts = list(checkpoint_choices(ctx)) if (ctx.checkpoint_list is not None or ctx.checkpoint_dirs) else []
    defaults = default_values()
    gr.Markdown("Train a LoRA from a kohya folder (`<repeats>_<concept>` sub-folders with images and captions): "
                "pick it, check the report, set the parameters (sd-scripts names), Start. Files go into "
                f"the LoRA folder ({html.escape(', '.join(str(d) for d in ctx.lora_dirs))}) as "
                "`<name>-000001.safetensors` … `<name>.safetensors`.")
    problem = host_problem(ctx)
    if problem:
        gr.Markdown(f"⚠ {html.escape(problem)}", elem_id=_elem("unavailable"))
    with gr.Row():
        dataset = gr.Dropdown(choices=list_datasets(ctx), label="Dataset folder", scale=3, elem_id=_elem("dataset"))
        checkpoint = gr.Dropdown(choices=ckpts, label="Base checkpoint", scale=3, elem_id=_elem("checkpoint"))
        output_name = gr.Textbox(label="Output name", scale=2, elem_id=_elem("output_name"))
        refresh = gr.Button("Refresh", size="sm", scale=1, elem_id=_elem("refresh"))
    with gr.Row():
        validate_btn = gr.Button("Validate dataset", elem_id=_elem("validate"))
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
                    controls[n] = compat.option_control(TrainConfig, n, control_value(n, defaults[n]),
                                                        info=o.spec.help or None, elem_id=_elem(n), min_width=160)
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
        with gr.Row():
            cmp_steps = gr.Slider(1, 50, value=20, step=1, label="Steps", elem_id=_elem("cmp_steps"))
            cmp_size = gr.Slider(64, 1024, value=512, step=64, label="Size", elem_id=_elem("cmp_size"))
            cmp_btn = gr.Button("Render the grid" if ctx.train_host is None else "Show the X/Y/Z settings",
                                elem_id=_elem("cmp_run_btn"))
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

    def do_compare(run_name, ws, seed, prompt, steps, size, ck, progress=None):
        if ctx.train_host is not None:       # WebUI: its own sampler draws the grid through X/Y/Z
            try:
                return xyz_settings(run_name, epoch_files(ctx, run_name), ws), None
            except Exception as exc:  # noqa: BLE001
                return error_line(exc), None
        try:
            rep = (lambda d, t: progress(d / t, desc=f"image {d}/{t}")) if progress is not None else None
            grid = compare_epochs(ctx, ck, run_name, ws, prompt, seed=seed, steps=steps, size=size, progress=rep)
        except Exception as exc:  # noqa: BLE001
            return error_line(exc), None
        return "✓ Rows: epochs; columns: no LoRA, then each weight (one seed).", grid

    cmp_inputs = [cmp_run, cmp_weights, cmp_seed, cmp_prompt, cmp_steps, cmp_size, checkpoint]
    cmp_btn.click(compat.with_progress(do_compare, len(cmp_inputs)), inputs=cmp_inputs, outputs=[cmp_status, cmp_grid])
