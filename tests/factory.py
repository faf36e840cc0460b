"""Test-file factory: real-shaped LoRA/LyCORIS state dicts in every key family, built from the fixture key lists.

    from tests.factory import fixture_layers, make_lora, write_lora, make_lora_with_targets

    sd, md = make_lora("sd15", family="kohya", algo="lora", rank=4)           # a few attention + TE layers
    sd, md = make_lora("sdxl", family="peft", algo="dora", layers=10)         # first 10 targets
    sd, md = make_lora("sd15", algo="locon", layers="all")                    # every Linear and conv layer
    sd, md = make_lora("sd15", layers=lambda layer: "attn2" in layer)         # filter on canonical layer names
    path = write_lora(tmp_path / "x.safetensors", model="sdxl", algo="loha")

Families name keys exactly as the real tools do: "kohya" (kohya-ss sd-scripts; `oft_unet_` for algo "oft"),
"lycoris" (LyCORIS: same prefixes as kohya), "peft" (current diffusers: lora_A/lora_B, alpha in the
`lora_adapter_metadata` header), "diffusers_old" (attention processors, LoRACompatible layers, TE lora_linear_layer).
Targets are (canonical layer, qkv) pairs; the OpenCLIP fused attention gives three targets (q, k, v).
Values are random (seeded), small, and make non-zero deltas.
"""

from __future__ import annotations

import functools
import json
import math
import os
from typing import Callable, Iterable, Optional, Union

import torch

from tests.paths import FIXTURES
MODELS = {"sd15": "sd1", "sdxl": "sdxl"}  # fixture model name -> lib_lora arch
ALGOS = ("lora", "locon", "loha", "lokr", "ia3", "full", "norm", "dora", "glora", "oft", "boft")
FAMILIES = ("kohya", "lycoris", "peft", "diffusers_old")

_UNET = "model.diffusion_model."
_SD1_TE = "cond_stage_model.transformer."
_OPENCLIP_TO_HF = {"attn.out_proj": "self_attn.out_proj", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
                   "ln_1": "layer_norm1", "ln_2": "layer_norm2"}


@functools.lru_cache(maxsize=None)
def _fixture_layers(model: str) -> dict:
    with open(os.path.join(FIXTURES, f"{model}_checkpoint_compvis.json")) as f:
        keys = json.load(f)["keys"]
    out = {}
    for key, shape in keys.items():
        if not key.startswith((_UNET, "cond_stage_model.", "conditioner.")):
            continue
        if key.endswith(".in_proj_weight"):
            layer = key[: -len(".in_proj_weight")]
        elif key.endswith(".weight"):
            layer = key[: -len(".weight")]
        else:
            continue
        if layer.startswith(_SD1_TE) and not layer.startswith(_SD1_TE + "text_model."):
            layer = _SD1_TE + "text_model." + layer[len(_SD1_TE):]  # canonical SD1 TE names carry text_model.
        out[layer] = tuple(shape)
    return out


def fixture_layers(model: str) -> dict:
    """canonical layer → weight shape for "sd15" or "sdxl" (U-Net and text encoders, no VAE)."""
    return dict(_fixture_layers(model))


@functools.lru_cache(maxsize=None)
def compvis_to_diffusers(model: str) -> dict:
    """canonical U-Net layer → diffusers module path, inverted from the diffusers fixture key list."""
    from lib_lora.unet_names import diffusers_to_compvis

    with open(os.path.join(FIXTURES, f"{model}_unet_diffusers.json")) as f:
        keys = json.load(f)["keys"]
    out = {}
    for key in keys:
        if key.endswith(".weight"):
            path = key[: -len(".weight")]
            out[diffusers_to_compvis(path, MODELS[model])] = path
    return out


# ---------------------------------------------------------------- which layers an algorithm targets

def _kind(layer: str, shape: tuple) -> str:
    if layer.endswith(("token_embedding", "position_embedding")):
        return "embedding"
    if len(shape) == 1:
        return "norm"
    if len(shape) == 4:
        return "conv1x1" if shape[2:] == (1, 1) else "conv"
    return "linear"


def _targets_for(model: str, algo: str, include_te: bool) -> list:
    """[(layer, qkv, weight shape)] every layer the algorithm can train, in fixture order."""
    out = []
    for layer, shape in _fixture_layers(model).items():
        kind = _kind(layer, shape)
        is_te = not layer.startswith(_UNET)
        if is_te and not include_te or kind == "embedding":
            continue
        if algo == "norm":
            ok = kind == "norm"
        elif algo in ("locon", "full"):
            ok = kind in ("linear", "conv1x1", "conv")
        elif algo in ("ia3", "glora", "oft", "boft"):
            ok = kind == "linear" or (algo == "oft" and kind == "conv1x1")
        else:  # lora/dora/loha/lokr: LoRA-style attention + linear + 1x1 conv (kohya default set)
            ok = kind in ("linear", "conv1x1")
        if not ok:
            continue
        if layer.endswith(".attn") and len(shape) == 2 and shape[0] == 3 * shape[1]:  # fused OpenCLIP q/k/v
            c = shape[1]
            out += [(layer, i, (c, c)) for i in range(3)]
        else:
            out.append((layer, None, shape))
    return out


_DEFAULT_PICK = ("input_blocks.1.1.transformer_blocks.0.attn2.to_k", "input_blocks.4.1.transformer_blocks.0.attn1.to_q",
                 "input_blocks.4.1.proj_in", "output_blocks.3.1.transformer_blocks.1.ff.net.2",
                 "middle_block.1.transformer_blocks.0.attn2.to_out.0", "encoder.layers.0.self_attn.q_proj",
                 "encoder.layers.1.mlp.fc1", "resblocks.0.attn", "resblocks.0.mlp.c_fc",
                 "input_blocks.4.0.in_layers.2", "input_blocks.4.0.skip_connection", "input_blocks.3.0.op",
                 "input_blocks.1.1.norm", "output_blocks.3.1.transformer_blocks.0.norm1",
                 "encoder.layers.0.layer_norm1", "resblocks.0.ln_1")


def _select(targets: list, layers) -> list:
    if layers is None:
        return [t for t in targets if t[0].endswith(_DEFAULT_PICK)]
    if layers == "all":
        return list(targets)
    if isinstance(layers, int):
        return targets[:layers]
    if callable(layers):
        return [t for t in targets if layers(t[0])]
    wanted = set(layers)
    return [t for t in targets if t[0] in wanted]


# ---------------------------------------------------------------- key names per family

def _hf_te_path(model: str, layer: str, qkv: Optional[int]) -> tuple:
    """(component, HF CLIP path) of a text-encoder layer."""
    if layer.startswith(_SD1_TE):
        return "te", layer[len(_SD1_TE):]
    if layer.startswith("conditioner.embedders.0.transformer."):
        return "te1", layer[len("conditioner.embedders.0.transformer."):]
    if layer == "conditioner.embedders.1.model.ln_final":
        return "te2", "text_model.final_layer_norm"
    rest = layer[len("conditioner.embedders.1.model.transformer.resblocks."):]
    n, _, sub = rest.partition(".")
    sub = "self_attn." + "qkv"[qkv] + "_proj" if sub == "attn" else _OPENCLIP_TO_HF[sub]
    return "te2", f"text_model.encoder.layers.{n}.{sub}"


def module_name(model: str, family: str, layer: str, qkv: Optional[int], algo: str = "lora") -> str:
    """Module key (dotted for PEFT/diffusers) the given family writes for one target."""
    if layer.startswith(_UNET):
        rel = layer[len(_UNET):]
        diff = compvis_to_diffusers(model).get(layer)
        if family in ("kohya", "lycoris"):
            prefix = "oft_unet_" if family == "kohya" and algo == "oft" else "lora_unet_"
            name = rel if model == "sdxl" else diff  # kohya SD1 writes diffusers paths, SDXL writes SGM paths
            return prefix + name.replace(".", "_")
        return "unet." + diff
    comp, hf = _hf_te_path(model, layer, qkv)
    if family in ("kohya", "lycoris"):
        prefix = {"te": "lora_te_", "te1": "lora_te1_", "te2": "lora_te2_"}[comp]
        return prefix + hf.replace(".", "_")
    return ("text_encoder_2." if comp == "te2" else "text_encoder.") + hf


_OLD_ATTN = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out.0": "to_out"}
_OLD_TE = {"q_proj": "to_q", "k_proj": "to_k", "v_proj": "to_v", "out_proj": "to_out"}


def _old_diffusers_key(module: str, part: str) -> str:
    """part 'down'/'up' → key of the pre-PEFT diffusers formats."""
    head, _, last = module.rpartition(".")
    if module.startswith("unet."):
        for tail, short in _OLD_ATTN.items():
            if module.endswith("." + tail) and ".attn" in module:
                parent = module[: -len(tail) - 1]
                return f"{parent}.processor.{short}_lora.{part}.weight"
        return f"{module}.lora.{part}.weight"
    if last in _OLD_TE:
        return f"{head}.{_OLD_TE[last]}_lora.{part}.weight"
    return f"{module}.lora_linear_layer.{part}.weight"


# ---------------------------------------------------------------- tensors per algorithm

def _factor(dim: int) -> tuple:
    """(small, big) with small*big = dim, small the largest divisor ≤ sqrt(dim) (LyCORIS-like)."""
    a = max(d for d in range(1, int(math.isqrt(dim)) + 1) if dim % d == 0)
    return a, dim // a


def _algo_tensors(algo: str, shape: tuple, rank: int, gen: torch.Generator, peft: bool) -> dict:
    def rnd(*s, scale=0.1):
        return torch.randn(*s, generator=gen) * scale

    out, inn = shape[0], shape[1] if len(shape) > 1 else None
    k = shape[2:] if len(shape) == 4 else ()
    flat_in = inn * (math.prod(k) if k else 1) if inn else None
    unit = (1, 1) if k else ()
    if algo in ("lora", "locon", "dora"):
        t = {"lora_down.weight": rnd(rank, inn, *k), "lora_up.weight": rnd(out, rank, *unit)}
        if algo == "dora":
            mag = torch.rand(out, generator=gen) + 0.5
            if peft:
                t["lora_magnitude_vector"] = mag.reshape(1, out, 1, 1) if k else mag
            else:
                t["dora_scale"] = mag.reshape(out, 1, *unit)
        return t
    if algo == "loha":
        return {"hada_w1_a": rnd(out, rank), "hada_w1_b": rnd(rank, flat_in), "hada_w2_a": rnd(out, rank),
                "hada_w2_b": rnd(rank, flat_in)}
    if algo == "lokr":
        a, b = _factor(out)
        c, d = _factor(inn)
        return {"lokr_w1": rnd(a, c), "lokr_w2_a": rnd(b, rank), "lokr_w2_b": rnd(rank, d * (math.prod(k) if k else 1))}
    if algo == "ia3":
        return {"weight": rnd(out), "on_input": torch.tensor(False)}
    if algo == "full":
        return {"diff": rnd(*shape, scale=0.01), "diff_b": rnd(out, scale=0.01)}
    if algo == "norm":
        return {"w_norm": rnd(out), "b_norm": rnd(out)}
    if algo == "glora":
        return {"a1.weight": rnd(inn, rank), "a2.weight": rnd(rank, inn), "b1.weight": rnd(out, rank),
                "b2.weight": rnd(rank, inn)}
    if algo in ("oft", "boft"):
        bs = max(d for d in (2, 4, 8, 16, 32) if out % d == 0 and d <= max(2, rank))
        if algo == "oft":
            return {"oft_blocks": rnd(out // bs, bs, bs, scale=0.01)}
        return {"oft_blocks": rnd(2, out // bs, bs, bs, scale=0.01)}
    raise ValueError(f"unknown algo {algo!r}; choose one of {ALGOS}")


_AUTO = object()


def make_lora_with_targets(model: str = "sd15", family: str = "kohya", algo: str = "lora", rank: int = 4,
                           layers: Union[None, int, str, Callable, Iterable] = None, include_te: bool = True,
                           dtype: torch.dtype = torch.float32, seed: int = 0, alpha=_AUTO,
                           metadata: Union[bool, dict] = True):
    """(state_dict, metadata, targets) where targets maps module key → (canonical layer, qkv).

    alpha: default rank/2 for rank-based algos, 1e-3 (constraint) for OFT/BOFT, none otherwise; None = no alpha.
    metadata: True = realistic ss_* (kohya/lycoris) or lora_adapter_metadata (peft); False = none; dict = extra.
    """
    if model not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}")
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}")
    if family in ("peft", "diffusers_old") and algo not in ("lora", "dora") or family == "diffusers_old" and algo == "dora":
        raise ValueError(f"family {family!r} only stores LoRA" + ("/DoRA" if family == "peft" else ""))
    if alpha is _AUTO:
        alpha = 1e-3 if algo in ("oft", "boft") else (rank / 2 if algo in ("lora", "locon", "dora", "loha", "lokr",
                                                                             "glora") else None)
    gen = torch.Generator().manual_seed(seed)
    picked = _select(_targets_for(model, algo, include_te), layers)
    if family == "kohya" and algo == "oft":
        picked = [t for t in picked if t[0].startswith(_UNET)]  # kohya OFT trains the U-Net only
    sd, targets = {}, {}
    for layer, qkv, shape in picked:
        module = module_name(model, family, layer, qkv, algo)
        tensors = _algo_tensors(algo, shape, rank, gen, peft=family == "peft")
        targets[module] = (layer, qkv)
        for suffix, t in tensors.items():
            if family == "peft":
                suffix = {"lora_down.weight": "lora_A.weight", "lora_up.weight": "lora_B.weight"}.get(suffix, suffix)
                sd[f"{module}.{suffix}"] = t.to(dtype)
            elif family == "diffusers_old":
                sd[_old_diffusers_key(module, suffix.split("_")[1].split(".")[0])] = t.to(dtype)
            else:
                sd[f"{module}.{suffix}"] = t if suffix == "on_input" else t.to(dtype)
        if alpha is not None and family in ("kohya", "lycoris"):
            sd[f"{module}.alpha"] = torch.tensor(float(alpha), dtype=dtype)
    md = {}
    if metadata:
        if family in ("kohya", "lycoris"):
            kohya_module = {"oft": "networks.oft", "lora": "networks.lora", "locon": "networks.lora"}.get(algo)
            md = {"ss_network_module": kohya_module if family == "kohya" and kohya_module else "lycoris.kohya",
                  "ss_network_dim": str(rank), "ss_network_alpha": str(alpha),
                  "ss_base_model_version": "sdxl_base_v1-0" if model == "sdxl" else "sd_v1",
                  "ss_output_name": f"test_{model}_{algo}"}
        elif family == "peft" and alpha is not None:
            cfg = {}
            for comp in ("unet", "text_encoder", "text_encoder_2"):
                cfg.update({f"{comp}.r": rank, f"{comp}.lora_alpha": alpha, f"{comp}.use_dora": algo == "dora"})
            md = {"lora_adapter_metadata": json.dumps(cfg), "format": "pt"}
        if isinstance(metadata, dict):
            md.update({str(k): str(v) for k, v in metadata.items()})
    return sd, md, targets


def make_lora(model: str = "sd15", **kwargs):
    """(state_dict, metadata) in a real family's naming; see make_lora_with_targets for the options."""
    sd, md, _ = make_lora_with_targets(model, **kwargs)
    return sd, md


def write_lora(path, model: str = "sd15", **kwargs) -> str:
    """make_lora + save as safetensors; returns the path as str."""
    from safetensors.torch import save_file

    sd, md = make_lora(model, **kwargs)
    save_file(sd, os.fspath(path), metadata=md)
    return os.fspath(path)
