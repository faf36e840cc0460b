"""A LoRA's user metadata and training record, as the WebUI keeps and shows them.

User metadata lives in the WebUI's own per-LoRA sidecar, `<file stem>.json` beside the weights, with the keys
AUTOMATIC1111's card editor writes ("description", "sd version", "activation text", "preferred weight",
"negative text", "notes") plus LoRA Studio's "preferred preset" (a block-weight preset name the card inserts
as the tag's block weights). Writes go through `fileio.atomic_write_text` and keep every other key the file
has; the weights file is never touched.

The training record is read from the kohya `ss_*` metadata of the weights file: tags by frequency (merged
across datasets, as the WebUI's editor counts them), datasets, resolutions, learning rates, steps and epochs,
base model, network.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from lib_lora.errors import LoraStudioError

# The WebUI's editor keys (its Lora extension's user-metadata editor), and ours.
DESCRIPTION, SD_VERSION, ACTIVATION, WEIGHT, NEGATIVE, NOTES = (
    "description", "sd version", "activation text", "preferred weight", "negative text", "notes")
PRESET = "preferred preset"
EDITABLE = (DESCRIPTION, ACTIVATION, WEIGHT, PRESET, NEGATIVE, NOTES, SD_VERSION)
SD_VERSIONS = ("SD1", "SD2", "SDXL", "Unknown")


def sidecar_path(lora_path) -> Path:
    p = Path(lora_path)
    return p.with_name(p.stem + ".json")


def read_sidecar(lora_path) -> dict:
    """The sidecar's contents ({} when there is none); a damaged sidecar is one clear error."""
    from lib_lora.fileio import read_small_text

    path = sidecar_path(lora_path)
    if not path.is_file():
        return {}
    text = read_small_text(path, "card metadata file")
    try:
        data = json.loads(text) if text.strip() else {}
    except ValueError as exc:
        raise LoraStudioError(f"card metadata file '{path}' is not valid JSON ({exc}); fix or delete it.") from None
    if not isinstance(data, dict):
        raise LoraStudioError(f"card metadata file '{path}' does not hold a JSON object; fix or delete it.")
    return data


def clean_updates(updates: dict) -> dict:
    """The editable fields checked and normalised (one clear line for a bad value)."""
    out = {}
    for key, value in updates.items():
        if key not in EDITABLE:
            raise LoraStudioError(f"'{key}' is not a card field; use one of {', '.join(EDITABLE)}.")
        if key == WEIGHT:
            try:
                w = float(value or 0)
            except (TypeError, ValueError):
                raise LoraStudioError(f"preferred weight {value!r} is not a number; use e.g. 0.8 (0 = none).") from None
            if not math.isfinite(w):
                raise LoraStudioError("preferred weight must be a finite number such as 0.8 (0 = none).")
            out[key] = w
        elif key == SD_VERSION:
            v = str(value or "Unknown")
            if v not in SD_VERSIONS:
                raise LoraStudioError(f"sd version {v!r} is not one of {', '.join(SD_VERSIONS)}.")
            out[key] = v
        else:
            text = "" if value is None else str(value)
            if key in (ACTIVATION, NEGATIVE, PRESET) and ("\n" in text or "\r" in text):
                raise LoraStudioError(f"{key} must be one line; remove the line breaks.")
            if key == PRESET and any(c in text for c in ":<>"):
                raise LoraStudioError(f"preferred preset {text!r} cannot hold ':', '<' or '>'; give a preset name.")
            out[key] = text.strip() if key == PRESET else text
    return out


def write_sidecar(lora_path, updates: dict) -> dict:
    """Merge `updates` into the sidecar (other keys kept) and write it atomically; returns what was written."""
    from lib_lora.fileio import atomic_write_text

    data = read_sidecar(lora_path)
    data.update(clean_updates(updates))
    atomic_write_text(sidecar_path(lora_path), json.dumps(data, indent=4, ensure_ascii=False), overwrite=True)
    return data


# ---- the training record (kohya ss_* metadata) -------------------------------------------------------


def _json(value):
    if isinstance(value, (dict, list)):
        return value
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        return json.loads(value)
    except ValueError:
        return None


def tag_frequency(metadata: dict) -> list[tuple[str, int]]:
    """Training tags by how many captions held them, summed over the datasets, most frequent first."""
    counts: dict[str, int] = {}
    freq = _json(metadata.get("ss_tag_frequency"))
    if isinstance(freq, dict):
        for tags in freq.values():
            if not isinstance(tags, dict):
                continue
            for tag, n in tags.items():
                tag = str(tag).strip()
                try:
                    counts[tag] = counts.get(tag, 0) + int(n)
                except (TypeError, ValueError):
                    continue
    counts.pop("", None)
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def _resolutions(metadata: dict) -> str | None:
    info = _json(metadata.get("ss_bucket_info"))
    found: dict[str, int] = {}
    if isinstance(info, dict) and isinstance(info.get("buckets"), dict):
        for bucket in info["buckets"].values():
            try:
                w, h = bucket["resolution"][0], bucket["resolution"][1]
                found[f"{w}x{h}"] = found.get(f"{w}x{h}", 0) + int(bucket.get("count", 0))
            except (KeyError, TypeError, IndexError, ValueError):
                continue
    if found:
        return ", ".join(sorted(found, key=lambda r: -found[r]))
    res = metadata.get("ss_resolution")
    return str(res).strip("()").replace(", ", "x") if res else None


def _datasets(metadata: dict) -> str | None:
    dirs = _json(metadata.get("ss_dataset_dirs"))
    if not isinstance(dirs, dict) or not dirs:
        return None
    parts = []
    for name, info in dirs.items():
        if isinstance(info, dict):
            parts.append(f"{name} ({info.get('img_count', '?')} images × {info.get('n_repeats', '?')})")
        else:
            parts.append(str(name))
    return "; ".join(parts)


def training_record(metadata: dict) -> list[tuple[str, str]]:
    """(label, value) rows of what the file says about its training; rows without a value are left out."""
    md = metadata or {}

    def get(key):
        v = md.get(key)
        return None if v is None or str(v) in ("", "None", "null") else str(v)

    network = get("ss_network_module")
    if network:
        dim, alpha, args = get("ss_network_dim"), get("ss_network_alpha"), _json(md.get("ss_network_args"))
        network += "".join(f", {k} {v}" for k, v in (("dim", dim), ("alpha", alpha)) if v)
        if isinstance(args, dict) and args:
            network += ", " + ", ".join(f"{k}={v}" for k, v in args.items())
    lrs = [f"{label} {get(k)}" for label, k in (("base", "ss_learning_rate"), ("U-Net", "ss_unet_lr"),
                                                 ("text encoder", "ss_text_encoder_lr")) if get(k)]
    epochs = get("ss_epoch")
    if epochs and get("ss_num_epochs"):
        epochs += f" of {get('ss_num_epochs')}"
    base = get("ss_sd_model_name")
    if base and get("ss_base_model_version"):
        base += f" ({get('ss_base_model_version')})"
    tags = tag_frequency(md)
    rows = [
        ("Output name", get("ss_output_name")),
        ("Base model", base or get("ss_base_model_version")),
        ("Network", network),
        ("Datasets", _datasets(md)),
        ("Training images", get("ss_num_train_images")),
        ("Resolutions", _resolutions(md)),
        ("Learning rates", ", ".join(lrs) or None),
        ("Optimizer", get("ss_optimizer")),
        ("Scheduler", get("ss_lr_scheduler")),
        ("Epoch", epochs),
        ("Steps", get("ss_steps")),
        ("Batch size", get("ss_batch_size_per_device")),
        ("Clip skip", get("ss_clip_skip")),
        ("Noise offset", get("ss_noise_offset")),
        ("Min-SNR gamma", get("ss_min_snr_gamma")),
        ("Seed", get("ss_seed")),
        ("Tags", f"{len(tags)} distinct" if tags else None),
        ("Comment", get("ss_training_comment")),
    ]
    return [(k, v) for k, v in rows if v]


def card_prompt(alias: str, user: dict, default_weight: str = "1") -> str:
    """The text a card click inserts: `<lora:alias:w>` (or `<lora:alias:w:preset>`) and the activation text."""
    from lib_lora.syntax import format_number

    try:
        w = float(user.get(WEIGHT) or 0)
    except (TypeError, ValueError):
        w = 0.0
    weight = format_number(w) if w else default_weight
    preset = str(user.get(PRESET) or "").strip()
    tag = f"<lora:{alias}:{weight}" + (f":{preset}" if preset else "") + ">"
    activation = str(user.get(ACTIVATION) or "").strip()
    return tag + (f" {activation}" if activation else "")
