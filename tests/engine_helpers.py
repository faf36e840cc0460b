"""Shared helpers of the host/patcher/bake tests: real LoRA files → networks, references."""

from __future__ import annotations

import os
from types import SimpleNamespace

import torch

from lib_lora.algos import compute_delta
from lib_lora.patcher import ActiveLora
from tests.factory import write_lora

# A spread of SD1.5 layers (full size, small enough for many cycles): attention, 1×1 and 3×3 convs,
# GroupNorm, LayerNorm, a text-encoder layer and two layers outside the block table.
SD15_LAYERS = (
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q",
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k",
    "model.diffusion_model.input_blocks.1.1.proj_in",
    "model.diffusion_model.input_blocks.1.0.in_layers.2",
    "model.diffusion_model.input_blocks.1.1.norm",
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.norm1",
    "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.attn1.to_out.0",
    "model.diffusion_model.output_blocks.9.1.transformer_blocks.0.ff.net.2",
    "model.diffusion_model.middle_block.1.norm",
    "model.diffusion_model.output_blocks.4.1.transformer_blocks.0.attn2.to_k",
    "model.diffusion_model.time_embed.0",
    "model.diffusion_model.out.2",
    "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj",
    "cond_stage_model.transformer.text_model.encoder.layers.0.layer_norm1",
)


def load_net(path):
    """The real loader when it exists; until then keys.group_modules on the file (same modules)."""
    try:
        from lib_lora.network import load_network
    except ImportError:
        load_network = None
    if load_network is not None:
        return load_network(path)
    from lib_lora.fileio import read_tensors
    from lib_lora.keys import group_modules_with_arch

    sd, md = read_tensors(path)
    modules, skipped, arch = group_modules_with_arch(sd, md)
    return SimpleNamespace(name=os.path.splitext(os.path.basename(path))[0], path=os.fspath(path), arch=arch,
                           metadata=md, modules=modules, skipped=skipped)


def make_net(tmp_path, name, model="sd15", **kw):
    return load_net(write_lora(tmp_path / f"{name}.safetensors", model=model, **kw))


def gate_on(a: ActiveLora, step) -> bool:
    """Independent statement of docs/spec/prompt_syntax.md §2.4: on from 1-based step `start`, off from `stop`."""
    if step is None:
        return True
    s1 = step + 1
    return (a.start is None or s1 >= a.start) and (a.stop is None or s1 < a.stop)


def multiplier(a: ActiveLora, mod, step=None) -> float:
    blocks = a.blocks or [1.0] * 26
    if mod.is_te:
        return a.te * blocks[0]
    if not gate_on(a, step):
        return 0.0
    return a.unet * (1.0 if mod.slot is None else blocks[mod.slot])


def reference_weights(originals: dict, actives, step=None, layers=None) -> dict:
    """layer → expected (weight, bias) computed straight from compute_delta: W0 + Σ m·ΔW, cast once.

    `originals`: layer → (W0, b0) of the unpatched model (fused attention: whole in_proj).
    """
    acc = {}
    for a in actives:
        for mod in a.network.modules.values():
            if mod.layer not in originals or (layers is not None and mod.layer not in layers):
                continue
            m = multiplier(a, mod, step)
            if m == 0:
                continue
            w0, b0 = originals[mod.layer]
            if mod.layer not in acc:
                acc[mod.layer] = [w0.float().clone(), None if b0 is None else b0.float().clone()]
            rows = slice(None) if mod.qkv is None else slice(mod.qkv * w0.shape[0] // 3,
                                                                (mod.qkv + 1) * w0.shape[0] // 3)
            base_b = None if b0 is None else b0.float()[rows]
            d = compute_delta(mod, w0.float()[rows], base_b, dyn=a.dyn)
            if d.weight is not None:
                acc[mod.layer][0][rows] += m * d.weight
            if d.bias is not None and b0 is not None:
                acc[mod.layer][1][rows] += m * d.bias
    out = {}
    for layer, (w, b) in acc.items():
        w0, b0 = originals[layer]
        out[layer] = (w.to(w0.dtype), None if b is None else b.to(b0.dtype))
    return out


def snapshot(host) -> dict:
    """layer → (weight clone, bias clone) of every single-tensor layer of a host."""
    return {n: (r.weight.detach().clone(), None if r.bias is None else r.bias.detach().clone())
            for n, r in host.layers.items() if r.weight is not None}


def tol(dtype):
    return {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float16: dict(rtol=2e-3, atol=1e-4),
            torch.bfloat16: dict(rtol=1.6e-2, atol=1e-3)}[dtype]
