"""load_model: a single-file SD1/SDXL .safetensors checkpoint into an SDModel, by key name and shape,
viewing the file's memory map where the dtype already matches (no second copy in RAM)."""

from __future__ import annotations

import os

import torch
from torch import nn

from lib_lora import arch as archs
from lib_lora.errors import LoraFileError, LoraStudioError

from . import schedule
from .model import PARTS, SCALE_FACTOR, SDModel, config

# Keys a checkpoint may have or lack without changing the model (filled in or ignored).
_OPTIONAL_SUFFIXES = ("embeddings.position_ids", ".logit_scale")
_SCHEDULE_KEYS = frozenset(schedule.ldm_buffers())
_IGNORED_PREFIXES = ("model_ema.", "conditioner.embedders.1.model.visual.", "cond_stage_model.model.visual.",
                     "first_stage_model.loss.")


def _part_of(key: str) -> str | None:
    if key.startswith("model.diffusion_model."):
        return "unet"
    if key.startswith(("cond_stage_model.", "conditioner.")):
        return "te"
    if key.startswith(archs.VAE):
        return "vae"
    if key in _SCHEDULE_KEYS:
        return "unet"
    return None


def _infer_config(family: str, shapes: dict) -> dict:
    """The full or tiny configuration whose shapes the file has (widths from the tensors)."""
    for size in ("full", "tiny"):
        cfg = config(family, size)
        if shapes.get("model.diffusion_model.input_blocks.0.0.weight", [None])[0] == cfg["unet"]["model_channels"] \
                or shapes.get("first_stage_model.encoder.conv_in.weight", [None])[0] == cfg["vae"]["ch"]:
            return cfg
    return config(family, "full")


def _fmt(keys) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
    return ", ".join(f"'{k}'" for k in keys[:3]) + more


def load_model(path, *, dtype=torch.float32, parts=PARTS, allow_pickle: bool = False) -> SDModel:
    """An SDModel from a single-file SD1/SDXL checkpoint; parts not asked for are not read. Frozen, eval mode."""
    from lib_lora.fileio import MappedTensors, read_tensors

    path = os.fspath(path)
    parts = tuple(parts)
    if set(parts) - set(PARTS) or not parts:
        raise LoraStudioError(f"unknown model part(s) {list(parts)}: use some of {', '.join(PARTS)}")
    name = os.path.basename(path)
    if path.lower().endswith(".safetensors"):
        source = MappedTensors(path)
        get, raw_keys, shape_of = source.get, source.keys(), source.shape
    else:
        if not allow_pickle:
            raise LoraFileError(f"'{name}' is not a .safetensors file: convert it to safetensors, or enable "
                                f"loading pickled checkpoints")
        tensors, _ = read_tensors(path, allow_pickle=True)
        tensors = tensors.get("state_dict", tensors) if isinstance(tensors, dict) else tensors
        get, raw_keys, shape_of = tensors.__getitem__, list(tensors), lambda k: tuple(tensors[k].shape)
    canon = {}
    for key in raw_keys:
        if key.startswith(_IGNORED_PREFIXES):
            continue
        canon[archs.canonical_layer_name(key)] = key
    family = archs.arch_of_layers(canon)
    if family not in SCALE_FACTOR:
        what = "an SD2 checkpoint" if family == "sd2" else "not an SD1 or SDXL checkpoint"
        raise LoraStudioError(f"'{name}' is {what}: training and sampling support SD1.x and SDXL checkpoints")
    shapes = {k: tuple(shape_of(v)) for k, v in canon.items()}
    cfg = _infer_config(family, shapes)
    with torch.device("meta"):
        model = SDModel(family, cfg, parts)
    expected = model.state_dict()
    wanted = {k: v for k, v in shapes.items() if _part_of(k) in parts}
    missing = [k for k in expected if k not in wanted and not k.endswith(_OPTIONAL_SUFFIXES)
               and k not in _SCHEDULE_KEYS]
    unexpected = [k for k in wanted if k not in expected]
    wrong = [k for k in expected if k in wanted and tuple(expected[k].shape) != wanted[k]]
    if missing or unexpected or wrong:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing key(s) ({_fmt(missing)})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected key(s) ({_fmt(unexpected)})")
        if wrong:
            k = sorted(wrong)[0]
            problems.append(f"{len(wrong)} tensor(s) of the wrong shape ('{k}' is {list(wanted[k])}, "
                            f"expected {list(expected[k].shape)})")
        raise LoraFileError(f"'{name}' does not match the {archs.label(family)} model: {'; '.join(problems)}; "
                            f"use an unmodified single-file {archs.label(family)} checkpoint")
    defaults = None
    for key, ref in expected.items():
        if key in wanted:
            t = get(canon[key])
        else:  # optional key the file lacks: the value every checkpoint of the family has
            if defaults is None:
                defaults = {k: v for k, v in SDModel(family, config(family, "tiny"), ()).state_dict().items()}
                defaults.update(schedule.ldm_buffers())
            t = _default_value(key, ref, defaults)
        if ref.is_floating_point() and key not in _SCHEDULE_KEYS:
            t = t.to(dtype) if t.dtype != dtype else t
        else:
            t = t.to(ref.dtype)
        _assign(model, key, t)
    return model.requires_grad_(False).eval()


def _default_value(key: str, ref: torch.Tensor, defaults: dict) -> torch.Tensor:
    if key.endswith("position_ids"):
        return torch.arange(ref.shape[-1]).reshape(ref.shape)
    if key.endswith("logit_scale"):
        return torch.tensor(4.6052)
    return defaults[key]


def _assign(model: nn.Module, key: str, tensor: torch.Tensor) -> None:
    mod_path, _, leaf = key.rpartition(".")
    mod = model.get_submodule(mod_path) if mod_path else model
    if leaf in mod._parameters:
        mod._parameters[leaf] = nn.Parameter(tensor, requires_grad=False)
    else:
        mod._buffers[leaf] = tensor
