"""Checkpoint + prompt → checkpoint with every `<lora:…>` of the prompt merged in (`python -m lib_lora bake`).

The merge is the inference patcher run once on the checkpoint's own tensors, so a baked model equals what
the WebUI computes for the same prompt; keys no LoRA touches are written back bit-exact.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass, field

import torch

from lib_lora import fileio
from lib_lora.errors import LoraFileError, LoraStudioError, SyntaxProblem

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# Hashes of the source body are wrong for the new file.
_STALE_METADATA = ("sshs_model_hash", "sshs_legacy_hash", "modelspec.hash_sha256")


@dataclass
class Resolved:
    """One usable tag of a prompt: the tag, its network, the resolved blocks and the ActiveLora."""
    tag: object
    network: object
    blocks: object
    active: object


@dataclass
class BakeResult:
    out: str
    loras: list = field(default_factory=list)      # Resolved
    report: object = None                          # patcher ApplyReport
    messages: list = field(default_factory=list)   # warnings shown to the user


def lora_index(lora_dir) -> tuple[dict, dict]:
    """(stem → path, alias → [paths]) of every .safetensors under `lora_dir` (sub-folders included)."""
    if not lora_dir or not os.path.isdir(lora_dir):
        raise LoraFileError(f"LoRA folder '{lora_dir}' does not exist; pass --lora-dir with your LoRA folder")
    stems: dict[str, str] = {}
    aliases: dict[str, list] = {}
    for root, _, files in os.walk(lora_dir):
        for f in sorted(files):
            if not f.lower().endswith(".safetensors"):
                continue
            path = os.path.join(root, f)
            stems.setdefault(os.path.splitext(f)[0], path)
            try:
                alias = fileio.read_metadata(path).get("ss_output_name")
            except LoraStudioError:
                alias = None
            if alias:
                aliases.setdefault(alias, []).append(path)
    return stems, aliases


def find_lora(name: str, lora_dir, index=None) -> str:
    """Path of LoRA `name` (file stem, else unique alias) inside `lora_dir`; never outside it."""
    if not name or any(c in name for c in "/\\") or name in (".", "..") or os.path.isabs(name):
        raise SyntaxProblem(f"LoRA name '{name}' is not a plain name; write the file name without folders")
    stems, aliases = index or lora_index(lora_dir)
    if name in stems:
        return stems[name]
    hits = aliases.get(name, [])
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise LoraFileError(f"LoRA alias '{name}' belongs to {len(hits)} files; use the file name instead: "
                            + ", ".join(os.path.splitext(os.path.basename(p))[0] for p in hits))
    close = difflib.get_close_matches(name, list(stems) + list(aliases), n=3, cutoff=0.6)
    near = f" (close: {', '.join(close)})" if close else ""
    raise LoraFileError(f"LoRA '{name}' not found in '{lora_dir}'{near}; check the name or --lora-dir")


def load_presets(presets_path=None):
    from lib_lora.presets import PresetStore

    if presets_path and not os.path.isfile(presets_path):
        raise LoraFileError(f"preset file '{presets_path}' not found; check --presets")
    return PresetStore(user_path=presets_path)


def resolve_prompt(prompt: str, lora_dir, arch: str | None, presets=None, seed: int = 0,
                   messages: list | None = None) -> list[Resolved]:
    """Every LoRA tag of `prompt` → Resolved; any error (bad tag, unknown name) raises, warnings collect."""
    from lib_lora.network import load_network
    from lib_lora.patcher import ActiveLora
    from lib_lora.syntax import parse_prompt, resolve_blocks

    messages = messages if messages is not None else []
    tags = parse_prompt(prompt)
    if not tags:
        raise SyntaxProblem("the prompt has no <lora:NAME:…> tag; nothing to bake")
    index = lora_index(lora_dir)
    out = []
    for tag in tags:
        if tag.errors:
            raise SyntaxProblem(tag.errors[0])
        messages.extend(tag.warnings)
        net = load_network(find_lora(tag.name, lora_dir, index), expected_arch=arch)
        if net.damage_message:  # damaged modules were left out at load time
            messages.append(net.damage_message)
        res = resolve_blocks(tag, presets, net.arch if net.arch != "unknown" else arch, seed)
        if res.errors:
            raise SyntaxProblem(res.errors[0])
        messages.extend(res.warnings)
        active = ActiveLora(net, te=tag.te, unet=tag.unet_multiplier, blocks=res.vector, dyn=tag.dyn,
                            start=tag.start, stop=tag.stop, listed=res.listed)
        if active.gated:
            messages.append(f"`{tag.name}`: start=/stop= only apply while sampling; baked at full strength")
        out.append(Resolved(tag, net, res, active))
    return out


def unlisted_messages(resolved: list[Resolved], report) -> list[str]:
    """blocks.md §2.5 warning for every LoRA with weights in blocks its format did not list."""
    from lib_lora.blocks import BLOCK_NAMES

    out = []
    for r, lr in zip(resolved, report.loras):
        if lr.unlisted:
            names = ", ".join(BLOCK_NAMES[s] for s in lr.unlisted)
            out.append(f"LoRA '{lr.name}' has weights in {names}, which the {r.blocks.count}-value format "
                       f"does not list; they were set to 0")
    return out


def bake_checkpoint(base, prompt: str, lora_dir, out, dtype: str | None = None, overwrite: bool = False,
                    presets_path=None, seed: int = 0) -> BakeResult:
    from lib_lora.host import Host
    from lib_lora.patcher import Patcher

    out = os.fspath(out)
    fileio.check_target(out, overwrite)
    if dtype is not None and dtype not in DTYPES:
        raise LoraStudioError(f"--dtype {dtype} is not supported; use one of {', '.join(DTYPES)}")
    sd, metadata = fileio.read_tensors(base)
    if dtype is not None:
        want = DTYPES[dtype]
        sd = {k: (v.to(want) if v.is_floating_point() else v) for k, v in sd.items()}
    host = Host.from_state_dict(sd)
    if not len(host):
        raise LoraFileError(f"'{base}' has no U-Net or text-encoder weights; is it a Stable Diffusion checkpoint?")
    result = BakeResult(out)
    result.loras = resolve_prompt(prompt, lora_dir, host.arch, load_presets(presets_path), seed, result.messages)
    report = Patcher(host, cache_bytes=0, one_shot=True).apply([r.active for r in result.loras])
    if report.errors:
        raise LoraStudioError(report.errors[0])
    if report.failed_layers:
        layer, why = report.failed_layers[0]
        raise LoraStudioError(f"could not merge into {layer} ({why}); nothing was written")
    result.report = report
    result.messages += unlisted_messages(result.loras, report)
    meta = {k: v for k, v in metadata.items() if k not in _STALE_METADATA}
    meta["lora_studio_baked"] = json.dumps({"prompt": prompt, "loras": [
        {"name": r.network.name, "te": r.active.te, "unet": r.active.unet, "blocks": r.active.blocks,
         "dyn": r.active.dyn, "applied": lr.applied}
        for r, lr in zip(result.loras, report.loras)]})
    fileio.atomic_save_safetensors(sd, out, meta, overwrite=overwrite)
    return result
