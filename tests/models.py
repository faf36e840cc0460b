"""torch module trees with the real SD1.5 / SDXL layer names and (optionally scaled-down) shapes.

Built from tests/fixtures/*_checkpoint_compvis.json so host/patcher tests see exactly the names a
real checkpoint has. Nothing here runs a forward pass: only names, shapes and leaf types matter.
"""

from __future__ import annotations

import json
import math
import os
import re

import torch

from tests.paths import FIXTURES
_FILES = {"sd15": "sd15_checkpoint_compvis.json", "sdxl": "sdxl_checkpoint_compvis.json"}
_ROOTS = ("model.diffusion_model.", "cond_stage_model.", "conditioner.embedders.")
_SKIP = re.compile(r"(embedding|positional_embedding|text_projection|logit_scale|position_ids)")
_LAYERNORM = re.compile(r"(transformer_blocks\.\d+\.norm\d|layer_norm|final_layer_norm|\.ln_)")


def fixture_keys(model: str = "sd15") -> dict[str, list[int]]:
    with open(os.path.join(FIXTURES, _FILES[model]), encoding="utf-8") as f:
        return json.load(f)["keys"]


def scale_dim(d: int, scale: int) -> int:
    """Divide channel-like widths (≥ 64, divisible) by `scale`; kernels and latent channels stay."""
    return d // scale if scale > 1 and d >= 64 and d % scale == 0 else d


def layer_specs(model: str = "sd15", scale: int = 1, include=None) -> dict[str, dict]:
    """Canonical layer → {"kind", "shape", "bias"}; kind ∈ linear, conv, groupnorm, layernorm, mha.

    `include`: None (all U-Net + text-encoder layers), a tuple of name prefixes, or a predicate.
    """
    keys = fixture_keys(model)
    specs: dict[str, dict] = {}
    for key, shape in keys.items():
        if not key.startswith(_ROOTS) or _SKIP.search(key):
            continue
        if key.endswith(".in_proj_weight"):
            base, kind = key[: -len(".in_proj_weight")], "mha"
            has_bias = base + ".in_proj_bias" in keys
        elif key.endswith(".weight"):
            base = key[: -len(".weight")]
            has_bias = base + ".bias" in keys
            if len(shape) == 4:
                kind = "conv"
            elif len(shape) == 2:
                kind = "linear"
            elif len(shape) == 1:
                kind = "layernorm" if (_LAYERNORM.search(base) or not base.startswith("model.")) else "groupnorm"
            else:
                continue
        else:
            continue
        if base.endswith(".attn.out_proj") and base[: -len(".out_proj")] + ".in_proj_weight" in keys:
            kind = "mha_out"  # created by its MultiheadAttention
        if include is not None:
            ok = include(base) if callable(include) else base.startswith(tuple(include))
            if not ok:
                continue
        specs[base] = {"kind": kind, "shape": [scale_dim(d, scale) if i < 2 else d for i, d in enumerate(shape)],
                       "bias": has_bias}
    return specs


def _leaf(spec: dict) -> torch.nn.Module:
    kind, shape, bias = spec["kind"], spec["shape"], spec["bias"]
    if kind == "linear":
        return torch.nn.Linear(shape[1], shape[0], bias=bias)
    if kind == "conv":
        return torch.nn.Conv2d(shape[1], shape[0], tuple(shape[2:]), padding=shape[2] // 2, bias=bias)
    if kind == "groupnorm":
        return torch.nn.GroupNorm(math.gcd(32, shape[0]), shape[0])
    if kind == "layernorm":
        return torch.nn.LayerNorm(shape[0])
    if kind == "mha":
        c = shape[1]
        return torch.nn.MultiheadAttention(c, 1, bias=bias)
    raise ValueError(kind)


def _set(root: torch.nn.Module, path: str, leaf: torch.nn.Module) -> None:
    parts = path.split(".")
    node = root
    for p in parts[:-1]:
        child = node._modules.get(p)
        if child is None:
            child = torch.nn.Module()
            node.add_module(p, child)
        node = child
    node.add_module(parts[-1], leaf)


def a1111_name(canon: str, drop_text_model: bool = False) -> str:
    """Canonical → how A1111 names the module (`.wrapped` under the text-encoder roots)."""
    name = re.sub(r"^cond_stage_model\.", "cond_stage_model.wrapped.", canon)
    name = re.sub(r"^conditioner\.embedders\.(\d+)\.", r"conditioner.embedders.\1.wrapped.", name)
    if drop_text_model:
        name = name.replace(".transformer.text_model.", ".transformer.", 1)
    return name


def build_model(model: str = "sd15", scale: int = 1, include=None, dtype=torch.float32, seed: int = 0,
                a1111: bool = False, drop_text_model: bool = False) -> torch.nn.Module:
    """An nn.Module tree whose named_modules() carry the real (or A1111-wrapped) layer names.

    Weights are random (normal, std 0.05) so that weight-dependent algorithms see non-trivial values.
    """
    gen = torch.Generator().manual_seed(seed)
    root = torch.nn.Module()
    for canon, spec in layer_specs(model, scale, include).items():
        if spec["kind"] == "mha_out":
            continue
        leaf = _leaf(spec)
        with torch.no_grad():
            for p in leaf.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
        name = a1111_name(canon, drop_text_model) if a1111 else canon
        _set(root, name, leaf)
    return root.to(dtype)


def model_state(root: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Exact clone of every parameter, for bit-exact comparisons."""
    return {k: v.detach().clone() for k, v in root.state_dict().items()}


_INT = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def bits(t: torch.Tensor) -> torch.Tensor:
    """Bit pattern of a float tensor (so -0.0 ≠ 0.0 and NaN payloads count)."""
    return t.view(_INT[t.element_size()]) if t.is_floating_point() else t


def half_ulp_above(t: torch.Tensor) -> torch.Tensor:
    """Half the gap from |t| to the next representable value of its dtype, in float64 (the rounding bound of a
    value stored as t). By the bit pattern: |t|'s pattern + 1 is the next value up for any finite float; torch 2.1
    (A1111's) has no CPU nextafter for Half."""
    a = t.abs()
    up = (bits(a) + 1).view(t.dtype)
    return (up.double() - a.double()) / 2


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(bits(a[k]), bits(b[k])) for k in a)
