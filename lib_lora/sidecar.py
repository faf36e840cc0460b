"""A LoRA's user metadata: the WebUI's own per-LoRA `.json` sidecar (`<file stem>.json` beside the weights), with
the field names AUTOMATIC1111's user-metadata editor reads and writes, so both editors share one file; and the
training facts of a file's `ss_*` header as a display model (`training_view`).

The weights file is never written. Unknown keys of an existing sidecar are kept; the file is replaced atomically.
"""

from __future__ import annotations

import json
import os
from collections import Counter

from lib_lora import fileio
from lib_lora.errors import LoraStudioError

# The WebUI's own names (its Lora card editor) — a card inserts "<lora:name:preferred weight>" + activation text.
DESCRIPTION = "description"
ACTIVATION = "activation text"
WEIGHT = "preferred weight"
NEGATIVE = "negative text"
NOTES = "notes"
SD_VERSION = "sd version"
# Ours: the block-weight preset a card writes into the tag (`<lora:name:w:lbw=PRESET>`); the WebUI ignores it.
PRESET = "lora studio preset"

TEXT_FIELDS = (DESCRIPTION, ACTIVATION, NEGATIVE, NOTES, SD_VERSION, PRESET)
EDITABLE = TEXT_FIELDS + (WEIGHT,)
MAX_BYTES = 1 << 20


def sidecar_path(lora_path) -> str:
    return os.path.splitext(os.fspath(lora_path))[0] + ".json"


def read_sidecar(lora_path) -> dict:
    """The sidecar's keys ({} when there is none); one-line LoraStudioError when it is not a JSON object."""
    path = sidecar_path(lora_path)
    if not os.path.exists(path):
        return {}
    text = fileio.read_small_text(path, "LoRA metadata file", max_bytes=MAX_BYTES)
    try:
        data = json.loads(text) if text.strip() else {}
    except ValueError as exc:
        raise LoraStudioError(f"LoRA metadata file '{fileio.display_path(path)}' is not valid JSON ({exc.msg}, "
                              f"line {exc.lineno}); fix or remove it") from None
    if not isinstance(data, dict):
        raise LoraStudioError(f"LoRA metadata file '{fileio.display_path(path)}' holds a JSON "
                              f"{type(data).__name__}, not an object; fix or remove it")
    return data


def clean_fields(changes: dict) -> dict:
    """The editable fields of `changes`, checked: text fields as strings, the preferred weight as a number
    (0 = none, as the WebUI reads it). Unknown names are refused, so a typo never writes a key nobody reads."""
    out = {}
    for key, value in changes.items():
        if key not in EDITABLE:
            raise LoraStudioError(f"'{key}' is not a LoRA metadata field; use one of: {', '.join(EDITABLE)}")
        if key == WEIGHT:
            if value in (None, ""):
                value = 0.0
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise LoraStudioError(f"preferred weight '{value}' is not a number; give e.g. 0.8 (0 = none)") \
                    from None
            if value != value or value in (float("inf"), float("-inf")):
                raise LoraStudioError(f"preferred weight '{value}' is not a finite number; give e.g. 0.8")
        else:
            value = "" if value is None else str(value)
        out[key] = value
    return out


def update_sidecar(lora_path, changes: dict) -> dict:
    """Merge `changes` (editable fields) into the sidecar and write it atomically; returns the written dict.
    An unreadable existing sidecar is refused rather than replaced (nothing the user wrote is lost)."""
    fields = clean_fields(changes)
    data = read_sidecar(lora_path)
    data.update(fields)
    text = json.dumps(data, indent=4, ensure_ascii=False)
    fileio.atomic_write_text(sidecar_path(lora_path), text, overwrite=True)
    return data


# --- training facts from the ss_* header -------------------------------------------------------------------

def _json(meta: dict, key: str, problems: list):
    raw = meta.get(key)
    if raw in (None, "", "None"):
        return None
    try:
        return json.loads(raw)
    except (TypeError, ValueError):
        problems.append(f"{key} is not valid JSON; left out")
        return None


def tag_frequency(meta: dict, problems: list | None = None) -> list[tuple[str, int]]:
    """Training tags by how many captions had them, summed over every dataset folder (ss_tag_frequency, else
    the datasets' own tag_frequency), most frequent first, ties by name."""
    problems = [] if problems is None else problems
    sources = []
    freq = _json(meta, "ss_tag_frequency", problems)
    if isinstance(freq, dict):
        sources = list(freq.values())
    else:
        datasets = _json(meta, "ss_datasets", problems)
        if isinstance(datasets, list):
            for d in datasets:
                if isinstance(d, dict) and isinstance(d.get("tag_frequency"), dict):
                    sources.extend(d["tag_frequency"].values())
    total: Counter = Counter()
    for folder in sources:
        if not isinstance(folder, dict):
            continue
        for tag, n in folder.items():
            tag = str(tag).strip()
            try:
                n = int(n)
            except (TypeError, ValueError):
                continue
            if tag and n > 0:
                total[tag] += n
    return sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))


def _datasets(meta: dict, problems: list) -> list[dict]:
    """[{dir, repeats, images}] from ss_dataset_dirs, else from the subsets of ss_datasets."""
    out = []
    dirs = _json(meta, "ss_dataset_dirs", problems)
    if isinstance(dirs, dict):
        for name, info in dirs.items():
            info = info if isinstance(info, dict) else {}
            out.append({"dir": str(name), "repeats": info.get("n_repeats"), "images": info.get("img_count")})
    if out:
        return out
    datasets = _json(meta, "ss_datasets", problems)
    for d in datasets if isinstance(datasets, list) else []:
        for s in (d.get("subsets") or []) if isinstance(d, dict) else []:
            if isinstance(s, dict):
                out.append({"dir": str(s.get("image_dir", "?")), "repeats": s.get("num_repeats"),
                            "images": s.get("img_count")})
    return out


def _resolution(meta: dict, problems: list):
    if meta.get("ss_resolution") not in (None, "", "None"):
        return meta["ss_resolution"]
    datasets = _json(meta, "ss_datasets", []) or []
    for d in datasets if isinstance(datasets, list) else []:
        if isinstance(d, dict) and d.get("resolution"):
            r = d["resolution"]
            return f"({r[0]}, {r[1]})" if isinstance(r, list) and len(r) == 2 else str(r)
    return None


_FACTS = (   # (label, ss_* keys shown joined); absent or "None" values are left out
    ("base model", ("ss_sd_model_name",)),
    ("base model version", ("ss_base_model_version", "modelspec.architecture")),
    ("network module", ("ss_network_module",)),
    ("network dim", ("ss_network_dim",)),
    ("network alpha", ("ss_network_alpha",)),
    ("learning rate", ("ss_learning_rate",)),
    ("U-Net learning rate", ("ss_unet_lr",)),
    ("text encoder learning rate", ("ss_text_encoder_lr",)),
    ("optimizer", ("ss_optimizer",)),
    ("LR scheduler", ("ss_lr_scheduler",)),
    ("epoch", ("ss_epoch",)),
    ("epochs", ("ss_num_epochs",)),
    ("steps", ("ss_steps",)),
    ("max steps", ("ss_max_train_steps",)),
    ("training images", ("ss_num_train_images",)),
    ("batch size", ("ss_total_batch_size", "ss_batch_size_per_device")),
    ("clip skip", ("ss_clip_skip",)),
    ("output name", ("ss_output_name",)),
    ("trained", ("ss_training_started_at",)),
)


def training_view(meta: dict) -> dict:
    """What a LoRA card shows of its training: {"facts": [(label, text)], "resolution", "network_args": dict,
    "datasets": [{dir, repeats, images}], "tags": [(tag, count)], "problems": [one line each]}."""
    meta = meta or {}
    problems: list = []
    facts = []
    for label, keys in _FACTS:
        for key in keys:
            v = meta.get(key)
            if v not in (None, "", "None"):
                facts.append((label, str(v)))
                break
    resolution = _resolution(meta, problems)
    if resolution:
        facts.insert(2, ("resolution", str(resolution)))
    args = _json(meta, "ss_network_args", problems)
    return {"facts": facts, "resolution": resolution, "network_args": args if isinstance(args, dict) else {},
            "datasets": _datasets(meta, problems), "tags": tag_frequency(meta, problems),
            "problems": list(dict.fromkeys(problems))}


__all__ = ["DESCRIPTION", "ACTIVATION", "WEIGHT", "NEGATIVE", "NOTES", "SD_VERSION", "PRESET", "EDITABLE",
           "sidecar_path", "read_sidecar", "clean_fields", "update_sidecar", "tag_frequency", "training_view"]
