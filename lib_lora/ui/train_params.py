"""Training tab, parameters: the kohya dataset folders the tab picks (inside the configured folders), the
sd-scripts parameters in groups with the guides' defaults (and the host's: mixed precision and token length
follow the device), the validation report, presets and the saved run configs (the sd-scripts TOML
`python -m lib_lora train --config` reads). Plain functions of (ctx, values); errors are one line."""

from __future__ import annotations

import html
import os
from pathlib import Path

from lib_lora import options
from lib_lora.errors import LoraStudioError
from lib_lora.train.config import TrainConfig
from lib_lora.ui.files import checkpoint_choices, checkpoint_path
from lib_lora.ui.jobs import error_line

# The groups the tab shows, in order (sd-scripts key names; every other key keeps its value from a loaded
# config, or its sd-scripts default).
GROUPS = [
    ("Network", ["network_module", "network_dim", "network_alpha", "network_dropout", "network_args",
                 "network_train_unet_only"]),
    ("Optimizer and learning rate", ["optimizer_type", "learning_rate", "unet_lr", "text_encoder_lr",
                                     "lr_scheduler", "lr_warmup_steps", "lr_scheduler_num_cycles",
                                     "optimizer_args", "loraplus_lr_ratio"]),
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
    "seed": 42, "min_snr_gamma": 5.0,
}
# mixed_precision and max_token_length depend on the device the run trains on: `host_defaults`.
HOST_KEYS = ("mixed_precision", "max_token_length")
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


def host_defaults(cuda: bool | None = None, bf16: bool | None = None) -> tuple[dict, dict]:
    """(values, one-line reasons) for the keys whose good value depends on the device the trainer uses (the
    WebUI's training subprocess sees the same devices as the WebUI). On a CUDA GPU the guides' choices: bf16
    where the GPU computes it natively (compute capability 8+, RTX 30xx and later: no fp16 underflow), else
    fp16; 225 tokens for long tag captions. On the CPU fp16 autocast does not exist and every 75-token chunk
    is one more text-encoder pass, so: no mixed precision, 75 tokens (None, sd-scripts' default)."""
    if cuda is None or bf16 is None:
        import torch
        cuda = torch.cuda.is_available() if cuda is None else cuda
        bf16 = (cuda and torch.cuda.is_bf16_supported()) if bf16 is None else bf16
    if not cuda:
        why = "this host has no CUDA GPU"
        return ({"mixed_precision": "no", "max_token_length": 75},
                {"mixed_precision": f"Default here: no ({why}: fp16 autocast does not run on the CPU).",
                 "max_token_length": f"Default here: 75 ({why}: each 75 more tokens is one more text-encoder "
                                     "pass; 225 is the guides' value for long tag captions on a GPU)."})
    mp = "bf16" if bf16 else "fp16"
    return ({"mixed_precision": mp, "max_token_length": 225},
            {"mixed_precision": f"Default here: {mp} (CUDA GPU {'with' if bf16 else 'without'} native bf16; "
                                "the guides: bf16 on RTX 30xx and later, else fp16).",
             "max_token_length": "Default here: 225 (the guides' value for long tag captions)."})


def default_values(cuda: bool | None = None, bf16: bool | None = None) -> dict:
    """The shown keys' starting values: sd-scripts defaults with the guides' recommendations over them, and
    the device-dependent ones for this host (`host_defaults`). Only a new run starts here: a loaded config or
    a value the user set keeps its value."""
    base = {o.name: o.default for o in options.fields(TrainConfig) if o.name in SHOWN}
    base.update(TAB_DEFAULTS)
    base.update(host_defaults(cuda, bf16)[0])
    return base


def control_value(name: str, value):
    """A config value as its control shows it (lists as comma-separated text, None as empty/None)."""
    o = options.get(TrainConfig, name)
    if o.kind is list:
        return value if isinstance(value, str) else ", ".join(map(str, value or []))
    if o.kind is str and value is None:
        return ""
    return value


def from_controls(values: list, base: TrainConfig) -> TrainConfig:
    """The shown controls' values → a TrainConfig over `base`. An empty choice list (a dropdown left without a
    value, e.g. the token length of a config that did not set it) means None, sd-scripts' default."""
    vals = [None if v == "" and options.get(TrainConfig, n).optional else v for n, v in zip(SHOWN, values)]
    return options.from_ui(TrainConfig, SHOWN, vals, base=base)


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
    cfg = from_controls(values, base_cfg)
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
    cfg = from_controls([control_value(n, vals[n]) for n in SHOWN], _placeholder())
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
        cfg = from_controls(values, _placeholder())
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
