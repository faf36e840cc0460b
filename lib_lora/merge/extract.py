"""Extract a LoRA from two checkpoints (`python -m lib_lora extract`): per target layer, diff = tuned − base,
its best rank-r factors (`svd.dense_svd` + `svd.truncate`), alpha = rank, relative error per block reported.

Targets as kohya's LoRA: attention, feed-forward and proj layers of the U-Net transformers and the text
encoders' attention/MLP (OpenCLIP's fused q/k/v as three modules); with a conv rank also the ResNet,
down- and upsampler layers (3×3 convs at the conv rank). Exact when a difference has rank ≤ the rank asked:
no clamping unless `clamp_quantile` is given. Tensors are read one pair at a time from memory maps.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Optional

from lib_lora import fileio
from lib_lora.arch import SS_BASE_MODEL_VERSION
from lib_lora.errors import LoraFileError, LoraStudioError

_UNET_TARGETS = (".attn1.to_q", ".attn1.to_k", ".attn1.to_v", ".attn1.to_out.0", ".attn2.to_q", ".attn2.to_k",
                 ".attn2.to_v", ".attn2.to_out.0", ".ff.net.0.proj", ".ff.net.2", ".proj_in", ".proj_out")
_TE_TARGETS = (".self_attn.q_proj", ".self_attn.k_proj", ".self_attn.v_proj", ".self_attn.out_proj", ".mlp.fc1",
               ".mlp.fc2", ".attn", ".attn.out_proj", ".mlp.c_fc", ".mlp.c_proj")
_PREFIX = {"unet": "lora_unet_", "te": "lora_te_", "te1": "lora_te1_", "te2": "lora_te2_"}


@dataclass
class ExtractResult:
    out: str
    arch: str
    modules: dict = field(default_factory=dict)     # module key → (rank, relative error)
    blocks: dict = field(default_factory=dict)      # block name → relative error ‖ΔW − ΔW_r‖ / ‖ΔW‖
    messages: list = field(default_factory=list)
    metadata: dict = field(default_factory=dict)


def _layer_of(key: str):
    """(canonical layer, fused) of a checkpoint weight key, or None."""
    from lib_lora.arch import canonical_layer_name

    if key.endswith(".in_proj_weight"):
        return canonical_layer_name(key[: -len(".in_proj_weight")]), True
    if key.endswith(".weight"):
        return canonical_layer_name(key[: -len(".weight")]), False
    return None


def kohya_names(arch: str) -> dict:
    """(canonical layer, qkv) → kohya module key, from the key mapper's own index (so the file loads back).

    U-Net modules are spelled as kohya sd-scripts spells them: from the diffusers U-Net on SD1/SD2
    (`lora_unet_down_blocks_0_attentions_0_proj_in`), from the original (SGM) U-Net on SDXL
    (`lora_unet_input_blocks_4_1_proj_in`)."""
    from lib_lora.arch import UNET
    from lib_lora.keys import _flat, _index
    from lib_lora.unet_names import compvis_to_diffusers

    unet, te = _index(arch)
    out = {}
    for flat, layer in unet.items():
        name = compvis_to_diffusers(layer[len(UNET):], arch) if arch != "sdxl" else None
        out[(layer, None)] = _PREFIX["unet"] + (_flat(name) if name else flat)
    for comp, names in te.items():
        for flat, where in names.items():  # HF names come after native ones: kohya writes those
            out[where] = _PREFIX[comp] + flat
    return out


_NAMES_BY_ARCH: dict = {}


def kohya_name(layer: str, qkv, arch: str) -> str | None:
    """The kohya module key of a canonical layer (and fused q/k/v part) on `arch`, or None: how a LoRA read
    with diffusers/PEFT names is written back (resize, merge-loras) in the names every loader reads."""
    if arch not in _NAMES_BY_ARCH:
        _NAMES_BY_ARCH[arch] = kohya_names(arch)
    return _NAMES_BY_ARCH[arch].get((layer, qkv))


def is_target(layer: str, shape: tuple, conv: bool) -> bool:
    from lib_lora.arch import UNET, is_te_layer

    if is_te_layer(layer):
        return layer.endswith(_TE_TARGETS) and len(shape) == 2
    if not layer.startswith(UNET) or len(shape) not in (2, 4):
        return False
    if ".transformer_blocks." in layer or layer.endswith((".proj_in", ".proj_out")):
        return layer.endswith(_UNET_TARGETS)
    rest = layer[len(UNET):]
    # ResNet convs, skip connections, time projections, down/upsamplers (not conv_in / out / time_embed)
    return conv and rest.startswith(("input_blocks.", "middle_block.", "output_blocks.")) and \
        not rest.startswith("input_blocks.0.")


def _arch_of(path: str, header: dict) -> str:
    from lib_lora.arch import arch_of_layers

    names = [k.rsplit(".", 1)[0] for k in header if k != "__metadata__"]
    ctx = next((v["shape"][1] for k, v in header.items()
                if k.endswith("input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight")), None)
    return arch_of_layers(names, ctx)


def extract_lora(base, tuned, out, rank: int, conv_rank: Optional[int] = None, overwrite: bool = False,
                 clamp_quantile: Optional[float] = None, min_diff: float = 0.01,
                 progress: Optional[Callable] = None) -> ExtractResult:
    """LoRA of `tuned − base` written to `out`. `min_diff`: the text encoder is left out when no TE weight
    differs by more than this (as sd-scripts does; 0 keeps any difference)."""
    import torch
    from safetensors import safe_open

    from lib_lora.arch import label
    from lib_lora.blocks import BLOCK_NAMES, slot_of_layer
    from lib_lora.merge import svd as _svd

    out = os.fspath(out)
    fileio.check_target(out, overwrite, ".safetensors")
    for name, r in (("--rank", rank), ("--conv-rank", conv_rank)):
        if r is not None and r < 1:
            raise LoraStudioError(f"{name} must be at least 1; got {r}")
    if clamp_quantile is not None and not 0 < clamp_quantile <= 1:
        raise LoraStudioError(f"--clamp-quantile must be in (0, 1]; got {clamp_quantile:g}")
    heads = {}
    for what, p in (("base", base), ("tuned", tuned)):
        p = os.fspath(p)
        if not p.lower().endswith(".safetensors"):
            raise LoraFileError(f"--{what} '{p}' is not a .safetensors file; extract reads safetensors only")
        heads[what] = fileio.read_safetensors_header(p)[1]
    archs = {w: _arch_of(p, heads[w]) for w, p in (("base", base), ("tuned", tuned))}
    if archs["base"] != archs["tuned"]:
        raise LoraStudioError(f"the base model is {label(archs['base'])}, the tuned model is "
                              f"{label(archs['tuned'])}: extraction needs models of the same architecture")
    arch = archs["base"]
    if arch not in SS_BASE_MODEL_VERSION:
        raise LoraStudioError(f"cannot tell the architecture of '{os.fspath(base)}' (SD1/SD2/SDXL checkpoint expected)")
    names = kohya_names(arch)
    hb, ht = heads["base"], heads["tuned"]
    targets = []
    for key, info in hb.items():
        got = None if key == "__metadata__" else _layer_of(key)
        if got is None or key not in ht:
            continue
        layer, fused = got
        if tuple(ht[key]["shape"]) != tuple(info["shape"]):
            raise LoraStudioError(f"'{key}' is {tuple(info['shape'])} in the base and {tuple(ht[key]['shape'])} "
                                  f"in the tuned model; they are not the same architecture")
        if is_target(layer, tuple(info["shape"]), conv_rank is not None):
            for qkv in ((0, 1, 2) if fused else (None,)):
                if (layer, qkv) in names:
                    targets.append((key, layer, qkv))
    if not targets:
        raise LoraStudioError("no layer of the base model is a LoRA target; are these SD checkpoints?")
    result = ExtractResult(out, arch)
    tensors, te_max, te_keys = {}, 0.0, []
    err_sq: dict = {}
    norm_sq: dict = {}
    with safe_open(os.fspath(base), "pt") as fb, safe_open(os.fspath(tuned), "pt") as ft:
        for i, (key, layer, qkv) in enumerate(targets):
            if progress is not None:
                progress("extract", i, len(targets))
            diff = ft.get_tensor(key).float() - fb.get_tensor(key).float()
            if qkv is not None:
                c = diff.shape[1]
                diff = diff[qkv * c:(qkv + 1) * c]
            shape = tuple(diff.shape)
            conv3 = len(shape) == 4 and shape[2:] != (1, 1)
            s = _svd.dense_svd(diff, torch.float32)
            r = max(1, min(conv_rank if conv3 else rank, s.length))
            up, down = _svd.truncate(s, r)
            if clamp_quantile is not None:
                up, down = _svd.clamp(up, down, clamp_quantile)
            up, down = _svd.shape_factors(up, down, shape)
            mk = names[(layer, qkv)]
            tensors[f"{mk}.lora_down.weight"] = down.contiguous()
            tensors[f"{mk}.lora_up.weight"] = up.contiguous()
            tensors[f"{mk}.alpha"] = torch.tensor(float(r))
            total = float(torch.sum(s.S.double() ** 2))
            kept = float(torch.sum(s.S[:r].double() ** 2))
            if clamp_quantile is not None:  # clamped factors: measure the error itself
                kept_err = float(((up.reshape(shape[0], -1) @ down.reshape(r, -1)) - diff.reshape(shape[0], -1))
                                 .double().pow(2).sum())
            else:
                kept_err = max(total - kept, 0.0)
            result.modules[mk] = (r, math.sqrt(kept_err / total) if total > 0 else 0.0)
            block = BLOCK_NAMES[slot_of_layer(layer)] if slot_of_layer(layer) is not None else "other"
            err_sq[block] = err_sq.get(block, 0.0) + kept_err
            norm_sq[block] = norm_sq.get(block, 0.0) + total
            if slot_of_layer(layer) == 0:
                te_max = max(te_max, float(diff.abs().max()))
                te_keys.append(mk)
    if progress is not None:
        progress("extract", len(targets), len(targets))
    if te_keys and te_max <= min_diff:
        for mk in te_keys:
            for part in ("lora_down.weight", "lora_up.weight", "alpha"):
                tensors.pop(f"{mk}.{part}")
            result.modules.pop(mk)
        err_sq.pop("BASE", None)
        norm_sq.pop("BASE", None)
        result.messages.append(f"text encoder left out: no weight differs by more than {min_diff:g} "
                               f"(largest {te_max:.3g}); pass --min-diff 0 to keep it")
    if not tensors:
        raise LoraStudioError("the two models do not differ in any LoRA target layer; nothing to extract")
    order = {n: i for i, n in enumerate(BLOCK_NAMES + ["other"])}
    result.blocks = {b: (math.sqrt(err_sq[b] / norm_sq[b]) if norm_sq[b] > 0 else 0.0)
                     for b in sorted(norm_sq, key=order.get)}
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": str(rank), "ss_network_alpha": str(float(rank)),
            "ss_base_model_version": SS_BASE_MODEL_VERSION[arch],
            "lora_studio_extracted": json.dumps({"base": os.path.basename(os.fspath(base)),
                                                 "tuned": os.path.basename(os.fspath(tuned)), "rank": rank,
                                                 "conv_rank": conv_rank, "clamp_quantile": clamp_quantile})}
    if arch == "sd2":
        meta["ss_v2"] = "True"
    if conv_rank is not None:
        meta["ss_network_args"] = json.dumps({"conv_dim": str(conv_rank), "conv_alpha": str(float(conv_rank))})
    result.metadata = meta
    fileio.atomic_save_safetensors(tensors, out, meta, overwrite=overwrite,
                                   progress=None if progress is None else (lambda d, t: progress("write", d, t)))
    return result
