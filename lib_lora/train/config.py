"""Training configuration in sd-scripts' own words.

`TrainConfig` holds `train_network.py` arguments under their sd-scripts names and defaults, declared with
`lib_lora.options` (so argparse, TOML and UI controls come from one place). `load_config(path)` reads an
sd-scripts `--config_file` TOML (tables are flattened, as sd-scripts does); `load_dataset_config` reads its
`--dataset_config` TOML ([general] / [[datasets]] / [[datasets.subsets]]). A key LoRA Studio does not
implement is never ignored: all of them are listed in one error. A known sd-scripts key that is set to its
default (`color_aug = false`) is accepted, since it asks for nothing.

Standard library only (the CLI's --help must stay light).
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field

from lib_lora.errors import LoraStudioError
from lib_lora.options import OptionsError, fields as option_fields, option, problems

NETWORK_MODULES = ("networks.lora", "lycoris.kohya")
LYCORIS_ALGOS = ("lora", "locon", "loha", "lokr")
OPTIMIZERS = ("AdamW", "AdamW8bit", "PagedAdamW8bit", "Lion", "Lion8bit", "Prodigy", "DAdaptAdam",
              "DAdaptation", "AdaFactor", "SGDNesterov")
SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
MIXED = ("no", "fp16", "bf16")
SAVE_PRECISIONS = ("float", "fp16", "bf16")
LOSS_TYPES = ("l2", "l1")

G_MODEL, G_DATA, G_NET, G_OPT, G_NOISE, G_SAVE = "model", "dataset", "network", "optimizer", "noise", "saving"
G_SAMPLE = "samples"


@dataclass
class TrainConfig:
    """`train`: a LoRA from a kohya folder or dataset TOML. Keys and defaults are sd-scripts'."""
    OPTION_FLAGS = "_"

    # model
    pretrained_model_name_or_path: str = option(help="base checkpoint (.safetensors, SD1.x or SDXL)",
                                                group=G_MODEL, label="Base checkpoint")
    v2: bool = option(False, group=G_MODEL, help="SD2 base (not supported by the built-in model yet)")
    v_parameterization: bool = option(False, group=G_MODEL, help="train with v-prediction targets")
    clip_skip: int | None = option(None, group=G_MODEL, low=1, high=12,
                                   help="use the text encoder's N-th last layer (2 for anime/NAI bases; SD1 only)")
    max_token_length: int | None = option(None, group=G_MODEL, choices=(75, 150, 225),
                                          help="caption tokens: 75 (default), 150 or 225")
    # dataset
    train_data_dir: str | None = option(None, group=G_DATA, help="folder of <repeats>_<concept> sub-folders")
    reg_data_dir: str | None = option(None, group=G_DATA, help="regularisation folder, same naming")
    dataset_config: str | None = option(None, group=G_DATA, help="sd-scripts dataset TOML (replaces the folders)")
    resolution: str = option("512", group=G_DATA, help='training resolution: "512" or "W,H"')
    train_batch_size: int = option(1, group=G_DATA, low=1, help="images per batch")
    dataset_repeats: int = option(1, group=G_DATA, low=1, help="repeats for dataset TOML subsets without num_repeats")
    enable_bucket: bool = option(False, group=G_DATA, help="aspect-ratio buckets")
    min_bucket_reso: int = option(256, group=G_DATA, low=64, help="smallest bucket side")
    max_bucket_reso: int = option(1024, group=G_DATA, low=64, help="largest bucket side")
    bucket_reso_steps: int = option(64, group=G_DATA, low=8, help="bucket sides are multiples of this")
    bucket_no_upscale: bool = option(False, group=G_DATA, help="never upscale; buckets from each image's size")
    caption_extension: str = option(".caption", group=G_DATA, help="caption file extension (sd-scripts: .caption)")
    shuffle_caption: bool = option(False, group=G_DATA, help="shuffle comma-separated tags")
    keep_tokens: int = option(0, group=G_DATA, low=0, help="keep the first N tags in place")
    keep_tokens_separator: str = option("", group=G_DATA, help="tags before this text stay in place")
    caption_separator: str = option(",", group=G_DATA, help="tag separator")
    secondary_separator: str | None = option(None, group=G_DATA, help="joins tags that move together")
    caption_prefix: str | None = option(None, group=G_DATA, help="text put before every caption")
    caption_suffix: str | None = option(None, group=G_DATA, help="text put after every caption")
    caption_dropout_rate: float = option(0.0, group=G_DATA, low=0.0, high=1.0, help="drop the whole caption")
    caption_dropout_every_n_epochs: int = option(0, group=G_DATA, low=0, help="drop captions every N-th epoch")
    caption_tag_dropout_rate: float = option(0.0, group=G_DATA, low=0.0, high=1.0, help="drop each tag")
    token_warmup_min: int = option(1, group=G_DATA, low=0, help="tags kept at the start of token warm-up")
    token_warmup_step: float = option(0.0, group=G_DATA, low=0.0, help="token warm-up steps (< 1: fraction)")
    flip_aug: bool = option(False, group=G_DATA, help="random horizontal flips")
    random_crop: bool = option(False, group=G_DATA, help="random crop offset instead of centre")
    prior_loss_weight: float = option(1.0, group=G_DATA, low=0.0, help="loss weight of regularisation images")
    cache_latents: bool = option(False, group=G_DATA, help="encode images once and keep the latents in memory")
    cache_latents_to_disk: bool = option(False, group=G_DATA, help="keep the latents in a .npz beside each image, "
                                                                   "reused while the image and its bucket stay")
    vae_batch_size: int = option(1, group=G_DATA, low=1, help="images per VAE call when caching")
    max_data_loader_n_workers: int = option(8, group=G_DATA, low=0,
                                            help="accepted for compatibility (data is prepared in-process)")
    persistent_data_loader_workers: bool = option(False, group=G_DATA, help="accepted for compatibility")
    # network
    network_module: str = option("networks.lora", group=G_NET, choices=NETWORK_MODULES,
                                 help="networks.lora (LoRA/LoCon) or lycoris.kohya (LoCon/LoHa/LoKr)")
    network_dim: int | None = option(None, group=G_NET, low=1, help="rank (default 4)")
    network_alpha: float = option(1.0, group=G_NET, low=0.0, help="alpha; scale = alpha / dim (default 1)")
    network_dropout: float | None = option(None, group=G_NET, low=0.0, high=1.0, help="neuron dropout")
    network_args: list[str] = option([], group=G_NET, help='"key=value" network arguments (conv_dim, algo, loraplus_lr_ratio, …)')
    loraplus_lr_ratio: float | None = option(None, group=G_NET, low=0.0,
                                             help="LoRA+: the up (B) weights learn at lr × this (the paper: 16); "
                                                  "also as network_args")
    loraplus_unet_lr_ratio: float | None = option(None, group=G_NET, low=0.0,
                                                  help="LoRA+ ratio for the U-Net only (else loraplus_lr_ratio)")
    loraplus_text_encoder_lr_ratio: float | None = option(None, group=G_NET, low=0.0,
                                                          help="LoRA+ ratio for the text encoder only (else "
                                                               "loraplus_lr_ratio)")
    network_weights: str | None = option(None, group=G_NET, help="start from this LoRA's weights")
    scale_weight_norms: float | None = option(None, group=G_NET, low=0.0,
                                              help="cap each module's weight norm after every step (1.0)")
    network_train_unet_only: bool = option(False, group=G_NET, help="train only the U-Net")
    network_train_text_encoder_only: bool = option(False, group=G_NET, help="train only the text encoder(s)")
    # optimizer
    optimizer_type: str = option("", group=G_OPT, help="AdamW (default), AdamW8bit, Lion, Prodigy, DAdaptAdam, "
                                                       "AdaFactor")
    optimizer_args: list[str] = option([], group=G_OPT, help='"key=value" optimizer arguments')
    learning_rate: float = option(2e-6, group=G_OPT, low=0.0, help="learning rate (fallback for both parts)")
    unet_lr: float | None = option(None, group=G_OPT, low=0.0, help="U-Net learning rate")
    text_encoder_lr: float | None = option(None, group=G_OPT, low=0.0, help="text encoder learning rate")
    lr_scheduler: str = option("constant", group=G_OPT, choices=SCHEDULERS, help="learning-rate schedule")
    lr_warmup_steps: float = option(0, group=G_OPT, low=0.0, help="warm-up steps (< 1: fraction of all steps)")
    lr_scheduler_num_cycles: int = option(1, group=G_OPT, low=1, help="cosine_with_restarts cycles")
    lr_scheduler_power: float = option(1.0, group=G_OPT, help="polynomial power")
    max_grad_norm: float = option(1.0, group=G_OPT, low=0.0, help="gradient clipping (0 = off)")
    max_train_steps: int = option(1600, group=G_OPT, low=1, help="optimizer steps (when no epochs are given)")
    max_train_epochs: int | None = option(None, group=G_OPT, low=1, help="epochs (overrides max_train_steps)")
    gradient_accumulation_steps: int = option(1, group=G_OPT, low=1, help="batches per optimizer step")
    gradient_checkpointing: bool = option(False, group=G_OPT, help="recompute activations (less memory)")
    mixed_precision: str = option("no", group=G_OPT, choices=MIXED, help="autocast precision")
    seed: int | None = option(None, group=G_OPT, help="random seed (default: a random one, recorded)")
    # noise / loss
    noise_offset: float | None = option(None, group=G_NOISE, low=0.0, help="noise offset (0.05-0.1)")
    multires_noise_iterations: int | None = option(None, group=G_NOISE, low=0, help="multires noise iterations")
    multires_noise_discount: float = option(0.3, group=G_NOISE, low=0.0, help="multires noise discount")
    min_snr_gamma: float | None = option(None, group=G_NOISE, low=0.0, help="min-SNR weighting gamma (5)")
    loss_type: str = option("l2", group=G_NOISE, choices=LOSS_TYPES, help="loss")
    min_timestep: int | None = option(None, group=G_NOISE, low=0, high=1000, help="smallest timestep")
    max_timestep: int | None = option(None, group=G_NOISE, low=1, high=1000, help="largest timestep + 1")
    # saving
    output_dir: str | None = option(None, group=G_SAVE, help="folder for the LoRA files")
    output_name: str | None = option(None, group=G_SAVE, help="file name stem (default: last)")
    save_model_as: str = option("safetensors", group=G_SAVE, choices=("safetensors",), help="file format")
    save_precision: str | None = option(None, group=G_SAVE, choices=SAVE_PRECISIONS, help="stored weight type")
    save_every_n_epochs: int | None = option(None, group=G_SAVE, low=1, help="save every N epochs")
    save_every_n_steps: int | None = option(None, group=G_SAVE, low=1, help="save every N steps")
    save_state: bool = option(False, group=G_SAVE, help="also save the training state (for resume)")
    save_state_on_train_end: bool = option(False, group=G_SAVE, help="save the state at the end")
    resume: str | None = option(None, group=G_SAVE, help="resume from this state folder")
    training_comment: str | None = option(None, group=G_SAVE, help="comment stored in the metadata")
    no_metadata: bool = option(False, group=G_SAVE, help="store only the minimal metadata")
    logging_dir: str | None = option(None, group=G_SAVE, help="loss/LR logs (TensorBoard or CSV)")
    log_prefix: str | None = option(None, group=G_SAVE, help="log run-folder prefix")
    log_with: str | None = option(None, group=G_SAVE, choices=("tensorboard",), help="logger")
    # sample images
    sample_prompts: str | None = option(None, group=G_SAMPLE, help="prompt file (.txt: one prompt per line with "
                                                                   "--n negative --w/--h size --s steps --l CFG "
                                                                   "--d seed; .toml/.json also)")
    sample_every_n_epochs: int | None = option(None, group=G_SAMPLE, low=1, help="sample every N epochs")
    sample_every_n_steps: int | None = option(None, group=G_SAMPLE, low=1,
                                              help="sample every N steps (ignored when every_n_epochs is set)")
    sample_sampler: str = option("ddim", group=G_SAMPLE, help="ddim (default) or euler (k_euler)")
    sample_at_first: bool = option(False, group=G_SAMPLE, help="also sample before the first step")
    # accepted, no effect on the result (attention kernels, memory knobs)
    xformers: bool = option(False, group=G_OPT, help="accepted (attention uses torch's SDPA)")
    sdpa: bool = option(False, group=G_OPT, help="accepted (attention uses torch's SDPA)")
    mem_eff_attn: bool = option(False, group=G_OPT, help="accepted (attention uses torch's SDPA)")
    lowram: bool = option(False, group=G_OPT, help="accepted")
    highvram: bool = option(False, group=G_OPT, help="accepted")

    def check(self) -> list[str]:
        out = []
        if not (self.train_data_dir or self.dataset_config):
            out.append("train_data_dir or dataset_config must be set.")
        if not self.output_dir:
            out.append("output_dir must be set.")
        if self.network_train_unet_only and self.network_train_text_encoder_only:
            out.append("network_train_unet_only and network_train_text_encoder_only exclude each other; keep one.")
        if self.lr_scheduler == "constant" and self.lr_warmup_steps:
            out.append("lr_scheduler 'constant' cannot warm up; use constant_with_warmup or lr_warmup_steps = 0.")
        try:
            parse_resolution(self.resolution)
        except LoraStudioError as exc:
            out.append(str(exc))
        if self.sample_prompts:
            from lib_lora.train.samples import sampler_name

            try:
                sampler_name(self.sample_sampler)
            except LoraStudioError as exc:
                out.append(str(exc))
        opt = optimizer_name(self.optimizer_type)
        if opt not in OPTIMIZERS:
            out.append(f"optimizer_type '{self.optimizer_type}' is not supported; use one of "
                       f"{', '.join(OPTIMIZERS)}.")
        return out

    @property
    def name(self) -> str:
        return self.output_name or "last"


def optimizer_name(text: str) -> str:
    """sd-scripts matches optimizer names case-insensitively; '' is AdamW."""
    low = (text or "AdamW").lower()
    for n in OPTIMIZERS:
        if n.lower() == low:
            return n
    return text


def parse_resolution(value) -> tuple[int, int]:
    """"512" / 512 / "512,768" / [512, 768] → (width, height), as sd-scripts reads --resolution."""
    if isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        parts = [p.strip() for p in str(value).split(",")]
    try:
        nums = [int(p) for p in parts]
    except (TypeError, ValueError):
        nums = []
    if len(nums) == 1:
        nums = nums * 2
    if len(nums) != 2 or min(nums) < 64:
        raise LoraStudioError(f"resolution {value!r} is not a size; write \"512\" or \"768,512\" (width,height, "
                              "at least 64).")
    return nums[0], nums[1]


def parse_kv_args(items, what: str) -> dict[str, str]:
    """["conv_dim=8", "algo=loha"] → {"conv_dim": "8", "algo": "loha"} (values stay text, as sd-scripts)."""
    out = {}
    for item in items or []:
        key, eq, value = str(item).partition("=")
        if not eq or not key.strip():
            raise LoraStudioError(f"{what} entry '{item}' is not key=value; write e.g. \"conv_dim=8\".")
        out[key.strip()] = value.strip()
    return out


# sd-scripts arguments that LoRA Studio knows but does not implement: accepted only at their default value.
KNOWN_UNSUPPORTED = {
    "vae": None, "in_json": None, "color_aug": False, "face_crop_aug_range": None, "full_fp16": False,
    "full_bf16": False, "fp8_base": False, "fp8_base_unet": False, "noise_offset_random_strength": False,
    "adaptive_noise_scale": None, "ip_noise_gamma": None, "ip_noise_gamma_random_strength": False,
    "zero_terminal_snr": False, "scale_v_pred_loss_like_noise_pred": False, "v_pred_like_loss": None,
    "debiased_estimation_loss": False, "huber_c": 0.1, "huber_schedule": "snr", "huber_scale": 1.0,
    "wandb_api_key": None, "wandb_run_name": None, "huggingface_repo_id": None,
    "save_last_n_epochs": None, "save_last_n_steps": None, "save_last_n_epochs_state": None,
    "save_last_n_steps_state": None, "save_n_epoch_ratio": None, "enable_wildcard": False,
    "cache_text_encoder_outputs": False, "cache_text_encoder_outputs_to_disk": False, "lr_scheduler_type": "",
    "lr_scheduler_args": None, "weighted_captions": False, "dim_from_weights": False, "base_weights": None,
    "validation_split": 0.0, "validation_seed": None, "alpha_mask": False, "masked_loss": False,
    "initial_epoch": None, "initial_step": None, "skip_until_initial_step": False, "network_multiplier": 1.0,
    "output_config": False, "config_file": None, "ddp_timeout": None,
    "ddp_gradient_as_bucket_view": False, "ddp_static_graph": False, "no_half_vae": False,
    "lr_scheduler_min_lr_ratio": None, "lr_scheduler_timescale": None, "lr_decay_steps": 0,
    "fused_backward_pass": False, "resize_interpolation": None, "log_tracker_name": None,
    "log_tracker_config": None, "log_config": False, "metadata_title": None, "metadata_author": None,
    "metadata_description": None, "metadata_license": None, "metadata_tags": None, "mem_eff_save": False,
}


def _is_default(value, default) -> bool:
    if value is None:
        return True
    if default is None:
        return False
    return value == default or (default == "" and value in ("", None)) or (default is False and value is False)


def _flatten(data: dict, where: str) -> tuple[dict, list[str]]:
    """sd-scripts' config_file: top-level keys and the keys of every table, flattened."""
    flat, dup = {}, []
    for key, value in data.items():
        items = value.items() if isinstance(value, dict) else [(key, value)]
        for k, v in items:
            if isinstance(v, dict):
                dup.append(f"{where}: [{key}.{k}] is nested; sd-scripts config tables are one level deep.")
                continue
            if k in flat:
                dup.append(f"{where}: '{k}' is given twice; keep one.")
            flat[k] = v
    return flat, dup


def _coerce(cls, values: dict) -> dict:
    """TOML values → the field kinds (ints where floats go, text where sd-scripts reads text)."""
    kinds = {o.name: o for o in option_fields(cls)}
    out = {}
    for k, v in values.items():
        o = kinds[k]
        if o.kind is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        elif o.kind is str and isinstance(v, (int, float)) and not isinstance(v, bool):
            v = str(v)
        elif o.kind is str and isinstance(v, list) and k == "resolution":
            v = ",".join(str(x) for x in v)
        elif o.kind is float and isinstance(v, list) and k == "text_encoder_lr" and v:
            v = float(v[0])     # networks.lora / lycoris.kohya read only the first value
        elif o.kind is list and isinstance(v, str):
            v = v.split() if k in ("network_args", "optimizer_args") else [v]
        out[k] = v
    return out


def unsupported_error(keys: list[str], where: str) -> LoraStudioError:
    return LoraStudioError(
        f"{where}: LoRA Studio does not support {', '.join(keys)}; remove "
        f"{'it' if len(keys) == 1 else 'them'} (or set {'it' if len(keys) == 1 else 'them'} to the default) "
        "and run again.")


def config_from_dict(data: dict, where: str = "config", base: TrainConfig | None = None) -> TrainConfig:
    """A parsed sd-scripts config TOML → a validated TrainConfig; every unsupported key in one error."""
    flat, bad = _flatten(data, where)
    if bad:
        raise OptionsError(bad)
    known = {o.name for o in option_fields(TrainConfig)}
    unsupported = [k for k, v in flat.items() if k not in known and
                   (k not in KNOWN_UNSUPPORTED or not _is_default(v, KNOWN_UNSUPPORTED[k]))]
    if unsupported:
        raise unsupported_error(unsupported, where)
    values = {o.name: getattr(base, o.name) for o in option_fields(TrainConfig)} if base is not None else {}
    values.update(_coerce(TrainConfig, {k: v for k, v in flat.items() if k in known}))
    if "pretrained_model_name_or_path" not in values:
        raise OptionsError([f"{where}: 'pretrained_model_name_or_path' is required; add "
                            "`pretrained_model_name_or_path = \"model.safetensors\"`."])
    cfg = TrainConfig(**values)
    found = problems(cfg, "key")
    if found:
        raise OptionsError([f"{where}: {p}" for p in found])
    return cfg


def read_toml_file(path, what: str) -> dict:
    """A TOML file with arrays of tables ([[datasets]]): tomllib / tomli / toml, whichever is importable."""
    from lib_lora.fileio import read_small_text

    text = read_small_text(path, what)
    for name in ("tomllib", "tomli", "toml"):
        try:
            lib = importlib.import_module(name)
        except ImportError:
            continue
        try:
            return lib.loads(text)
        except Exception as exc:     # each library has its own decode error class
            raise LoraStudioError(f"{what} '{path}': not valid TOML: {exc}; fix that line.") from None
    from lib_lora.options import parse_toml   # Python 3.10 without tomli: the built-in subset reader
    return parse_toml(text, str(path))


def load_config(path) -> TrainConfig:
    return config_from_dict(read_toml_file(path, "training config"), str(path))


def to_sd_scripts_toml(cfg: TrainConfig) -> str:
    """The config as a TOML this module and sd-scripts' --config_file both read (tables are flattened)."""
    from lib_lora.options import to_toml

    return to_toml(cfg)


# ---- dataset TOML ------------------------------------------------------------------------------------------

@dataclass
class SubsetSpec:
    image_dir: str
    num_repeats: int = 1
    is_reg: bool = False
    class_tokens: str | None = None
    caption_extension: str = ".caption"
    shuffle_caption: bool = False
    caption_separator: str = ","
    keep_tokens: int = 0
    keep_tokens_separator: str = ""
    secondary_separator: str | None = None
    caption_prefix: str | None = None
    caption_suffix: str | None = None
    caption_dropout_rate: float = 0.0
    caption_dropout_every_n_epochs: int = 0
    caption_tag_dropout_rate: float = 0.0
    token_warmup_min: int = 1
    token_warmup_step: float = 0.0
    flip_aug: bool = False
    random_crop: bool = False


@dataclass
class DatasetSpec:
    resolution: tuple[int, int]
    batch_size: int = 1
    enable_bucket: bool = False
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64
    bucket_no_upscale: bool = False
    subsets: list[SubsetSpec] = field(default_factory=list)


_SUBSET_KEYS = [f.name for f in dataclasses.fields(SubsetSpec)]
_DATASET_KEYS = [f.name for f in dataclasses.fields(DatasetSpec) if f.name != "subsets"]
_DATASET_UNSUPPORTED = {"color_aug": False, "face_crop_aug_range": None, "enable_wildcard": False,
                        "alpha_mask": False, "cache_info": False, "network_multiplier": 1.0,
                        "validation_split": 0.0, "validation_seed": None, "resize_interpolation": None,
                        "metadata_file": None, "conditioning_data_dir": None}
# CLI names of the dataset values (sd-scripts: --train_batch_size ↔ batch_size, --dataset_repeats ↔ num_repeats)
_FROM_CLI = {"batch_size": "train_batch_size", "num_repeats": "dataset_repeats"}


def _pick(key: str, layers: list[dict], cfg: TrainConfig, default):
    """subset > dataset > general > CLI argument > built-in default: the first one that is set."""
    for layer in layers:
        if layer.get(key) is not None:
            return layer[key]
    cli = _FROM_CLI.get(key, key)
    if hasattr(cfg, cli) and getattr(cfg, cli) is not None:
        return getattr(cfg, cli)
    return default


def dataset_specs_from_dict(data: dict, cfg: TrainConfig, where: str = "dataset config") -> list[DatasetSpec]:
    general = data.get("general") or {}
    datasets = data.get("datasets")
    bad_keys = [k for k in data if k not in ("general", "datasets")]
    if not isinstance(datasets, list) or not datasets:
        raise LoraStudioError(f"{where}: no [[datasets]] table; add one with a [[datasets.subsets]] image_dir.")

    def unknown(table: dict, allowed, label: str):
        for k, v in table.items():
            if k in allowed or (k in _DATASET_UNSUPPORTED and _is_default(v, _DATASET_UNSUPPORTED[k])):
                continue
            bad_keys.append(f"{label}{k}")

    unknown(general, set(_SUBSET_KEYS) | set(_DATASET_KEYS), "[general] ")
    specs = []
    for i, ds in enumerate(datasets):
        subsets = ds.get("subsets") or []
        unknown({k: v for k, v in ds.items() if k != "subsets"}, set(_SUBSET_KEYS) | set(_DATASET_KEYS),
                f"[[datasets]] #{i + 1} ")
        if not subsets:
            raise LoraStudioError(f"{where}: [[datasets]] #{i + 1} has no [[datasets.subsets]]; add one with "
                                  "image_dir.")
        dlayers = [ds, general]
        res = _pick("resolution", dlayers, cfg, "512")
        spec = DatasetSpec(resolution=parse_resolution(res))
        for k in _DATASET_KEYS:
            if k != "resolution":
                setattr(spec, k, _pick(k, dlayers, cfg, getattr(spec, k)))
        for j, sub in enumerate(subsets):
            unknown(sub, set(_SUBSET_KEYS), f"[[datasets.subsets]] #{j + 1} ")
            if "image_dir" not in sub:
                raise LoraStudioError(f"{where}: [[datasets.subsets]] #{j + 1} has no image_dir; add "
                                      "`image_dir = \"…\"`.")
            layers = [sub, ds, general]
            s = SubsetSpec(image_dir=str(sub["image_dir"]))
            for k in _SUBSET_KEYS:
                if k != "image_dir":
                    setattr(s, k, _pick(k, layers, cfg, getattr(s, k)))
            s.token_warmup_step = float(s.token_warmup_step)
            spec.subsets.append(s)
        specs.append(spec)
    if bad_keys:
        raise unsupported_error(bad_keys, where)
    return specs


def load_dataset_config(path, cfg: TrainConfig) -> list[DatasetSpec]:
    return dataset_specs_from_dict(read_toml_file(path, "dataset config"), cfg, str(path))


def dataset_specs(cfg: TrainConfig, warnings: list | None = None) -> list[DatasetSpec]:
    """The datasets a config trains on: its dataset TOML, else one dataset of the kohya folders (the folder
    names give repeats and class tokens; with a TOML they are not parsed, as in sd-scripts)."""
    if cfg.dataset_config:
        return load_dataset_config(cfg.dataset_config, cfg)
    from lib_lora.train.dataset import folder_subsets

    spec = DatasetSpec(resolution=parse_resolution(cfg.resolution), batch_size=cfg.train_batch_size,
                       enable_bucket=cfg.enable_bucket, min_bucket_reso=cfg.min_bucket_reso,
                       max_bucket_reso=cfg.max_bucket_reso, bucket_reso_steps=cfg.bucket_reso_steps,
                       bucket_no_upscale=cfg.bucket_no_upscale)
    common = {k: getattr(cfg, k) for k in _SUBSET_KEYS if k not in ("image_dir", "num_repeats", "is_reg",
                                                                      "class_tokens") and hasattr(cfg, k)}
    spec.subsets = folder_subsets(cfg.train_data_dir, False, common, warnings)
    if cfg.reg_data_dir:
        spec.subsets += folder_subsets(cfg.reg_data_dir, True, common, warnings)
    return [spec]


@dataclass
class TrainCliOptions:
    """`train`: the command line around a config file."""
    config: str | None = option(None, metavar="FILE.toml", help="sd-scripts style training config (TOML)")
    dataset_config: str | None = option(None, metavar="FILE.toml",
                                        help="sd-scripts dataset TOML (overrides the config's dataset_config)")
    validate_only: bool = option(False, help="print the dataset report and the step count, then stop")
    prepare_from: str | None = option(None, metavar="DIR", group="prepare a folder",
                                      help="copy/link this tagged folder into <repeats>_<concept> and stop")
    into: str | None = option(None, metavar="DIR", group="prepare a folder",
                              help="where the <repeats>_<concept> folder is made")
    concept: str | None = option(None, group="prepare a folder", help="concept (trigger) name")
    target_steps: int = option(1500, low=1, group="prepare a folder", help="steps the repeats aim at (1500)")
    epochs: int = option(10, low=1, group="prepare a folder", help="epochs the repeats are for (10)")
    batch_size: int = option(1, low=1, group="prepare a folder", help="batch size the repeats are for (1)")
    resolution: str | None = option(None, group="prepare a folder",
                                    help="training resolution (\"512\" or \"768,512\"): count the steps per "
                                         "aspect-ratio bucket as sd-scripts does (else one bucket)")
    enable_bucket: bool = option(False, group="prepare a folder",
                                 help="with --resolution: the images go to aspect-ratio buckets (default range)")
    mode: str = option("copy", choices=("copy", "link", "symlink"), group="prepare a folder",
                       help="copy the files, hard-link them (copy across drives) or symlink them")
    quiet: bool = option(False, help="no progress line")
    progress_json: bool = option(False, help="for programs running the trainer: one JSON line per step and per "
                                             "file on stdout; a 'cancel' line on stdin (or its end) stops after "
                                             "the current step")
