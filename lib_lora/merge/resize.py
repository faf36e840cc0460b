"""Resize a LoRA (`python -m lib_lora resize`): to a fixed rank, or to the rank sd-scripts' dynamic methods
(sv_ratio, sv_fro, sv_cumulative) select for the same parameter, with the retained Frobenius share of every
module's ΔW reported.

LoRA/LoCon modules take the exact fast path (`svd.lowrank_svd`: QR of both factors, SVD of the r×r core),
which equals a full SVD of up·down. Other algorithms whose ΔW does not depend on the model weight (Tucker LoRA,
LoHa, LoKr, full) go through their ΔW from the registry, then a dense SVD, and come out as LoRA modules.
As in sd-scripts, the SVD is of ΔW without the alpha scale, every 4-D module (1×1 convs included) uses the
conv rank, and alpha becomes scale·new rank so that alpha/rank and ΔW's scale are kept.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Optional

from lib_lora import fileio
from lib_lora.errors import LoraStudioError

# torch is imported inside the functions: the CLI reads METHODS for its choices without it
METHODS = ("none", "sv_ratio", "sv_fro", "sv_cumulative")
_STALE = ("sshs_model_hash", "sshs_legacy_hash", "modelspec.hash_sha256")
_KOHYA_SUFFIXES = {"down": "lora_down.weight", "up": "lora_up.weight"}


@dataclass
class ModuleResize:
    key: str
    algo: str
    old_rank: Optional[int]
    new_rank: int
    alpha: float
    conv: bool
    fro_retained: float       # ‖ΔW_new‖_F / ‖ΔW‖_F (the share of ΔW's Frobenius norm kept)
    sum_retained: float       # share of ΣS kept (nuclear norm)


@dataclass
class ResizeResult:
    out: str
    modules: list = field(default_factory=list)   # ModuleResize
    kept: list = field(default_factory=list)      # (module key, why) copied unchanged
    metadata: dict = field(default_factory=dict)


def check_method(method: str, param: Optional[float]) -> None:
    """One line for a method/parameter the rank rules cannot use."""
    if method not in METHODS:
        raise LoraStudioError(f"unknown resize method '{method}'; choose one of {', '.join(METHODS)}")
    if method == "none":
        return
    if param is None or not math.isfinite(param):
        raise LoraStudioError(f"--method {method} needs --param (e.g. {'2' if method == 'sv_ratio' else '0.9'})")
    if method == "sv_ratio" and param <= 1:
        raise LoraStudioError(f"sv_ratio needs --param above 1 (largest / smallest kept singular value); got {param:g}")
    if method != "sv_ratio" and not 0 < param <= 1:
        raise LoraStudioError(f"{method} needs --param in (0, 1] (share of the norm kept); got {param:g}")


def dense_shape(module, algo) -> Optional[tuple]:
    """Target weight shape of a module whose ΔW needs no model weight, read from its factors."""
    t = module.tensors
    if algo == "full":
        return tuple(t["diff"].shape)
    if algo == "loha":
        a, b, mid = t.get("hada_w1_a"), t.get("hada_w1_b"), t.get("hada_t1")
        if mid is not None:
            return (a.shape[1] if a.shape[0] == mid.shape[0] else a.shape[0], b.shape[1], *mid.shape[2:])
        return (a.shape[0], b.shape[1])
    if algo == "lokr":
        w1 = t.get("lokr_w1")
        w1 = w1 if w1 is not None else t["lokr_w1_a"] @ t["lokr_w1_b"]
        w2 = t.get("lokr_w2")
        if w2 is None:
            a, b = t["lokr_w2_a"], t["lokr_w2_b"]
            if t.get("lokr_t2") is not None:
                return (w1.shape[0] * a.shape[0], w1.shape[1] * b.shape[1], *t["lokr_t2"].shape[2:])
            return (w1.shape[0] * a.shape[0], w1.shape[1] * b.shape[1])
        return (w1.shape[0] * w2.shape[0], w1.shape[1] * w2.shape[1], *w2.shape[2:])
    if algo == "lora":
        down, up = t.get("lora_down.weight"), t.get("lora_up.weight")
        return (up.shape[0], *down.shape[1:])
    return None


def dense_delta(module):
    """(ΔW at multiplier 1 as a 2-D fp64 matrix (out, in·kh·kw), weight shape) from the registry's compute
    path, for any algorithm whose ΔW needs no model weight; a str saying why not otherwise."""
    import torch

    from lib_lora.algos import algorithm_of, compute_delta

    a = algorithm_of(module)
    if a is None:
        return f"algorithm '{module.algo}' is unknown"
    if a.base is not None or a.norm is None:
        return f"{a.name.upper()} ΔW depends on the model weight"
    shape = dense_shape(module, a.name)
    if shape is None:
        return f"{a.name} modules have no low-rank form"
    with torch.no_grad():
        d = compute_delta(module, torch.empty(shape)).weight
    return d.reshape(d.shape[0], -1).to(torch.float64), shape


def module_svd(module):
    """(Svd of ΔW without the alpha scale, scale, old rank, weight shape, algorithm name) of one module, or
    a str saying why it cannot be resized without the model."""
    from lib_lora.algos import rank_of
    from lib_lora.algos._common import rank_scale
    from lib_lora.merge import svd as _svd
    from lib_lora.merge.lora_merge import plain_lora

    if plain_lora(module):
        down, up = module.tensors["lora_down.weight"], module.tensors["lora_up.weight"]
        r = int(down.shape[0])
        return _svd.lowrank_svd(up, down), rank_scale(module, r), r, (up.shape[0], *down.shape[1:]), "lora"
    got = dense_delta(module)
    if isinstance(got, str):
        return got + "; kept unchanged"
    # the scale is inside ΔW here: the new alpha is the new rank
    return _svd.dense_svd(got[0]), 1.0, rank_of(module), got[1], module.algo


def resize_lora(src, out, rank: int, conv_rank: Optional[int] = None, method: str = "none",
                param: Optional[float] = None, overwrite: bool = False,
                progress: Optional[Callable] = None) -> ResizeResult:
    """Write `src` resized to `out` (kohya/LyCORIS key names). `progress(phase, done, total)`."""
    import torch

    from lib_lora.merge import svd as _svd
    from lib_lora.merge.bake_lora import _module_of
    from lib_lora.merge.extract import kohya_name
    from lib_lora.network import load_network

    out = os.fspath(out)
    fileio.check_target(out, overwrite, ".safetensors")
    check_method(method, param)
    for name, r in (("--rank", rank), ("--conv-rank", conv_rank)):
        if r is not None and r < 1:
            raise LoraStudioError(f"{name} must be at least 1; got {r}")
    conv_rank = rank if conv_rank is None else conv_rank
    net = load_network(src)
    raw, metadata = fileio.read_tensors(src)
    # diffusers/PEFT-named modules are written back under the kohya name of the same layer
    out_name = {}
    for k, mod in net.modules.items():
        out_name[k] = kohya_name(mod.layer, mod.qkv, net.arch) if "." in k else k
        if out_name[k] is None:
            raise LoraStudioError(f"'{net.name}': module '{k}' ({mod.layer}) has no kohya name on {net.arch}; "
                                  f"this LoRA cannot be resized")
    by_module: dict = {}
    for key in raw:
        mk, _ = _module_of(key, net.modules)
        if mk is not None:
            by_module.setdefault(mk, []).append(key)
    result = ResizeResult(out)
    tensors = {k: v for k, v in raw.items() if _module_of(k, net.modules)[0] is None and k not in net.damaged_keys}
    total = len(net.modules)
    for i, (mk, module) in enumerate(net.modules.items()):
        if progress is not None:
            progress("resize", i, total)
        got = module_svd(module)
        if isinstance(got, str) and out_name[mk] != mk:
            raise LoraStudioError(f"'{net.name}': module '{mk}' cannot be resized ({got}) and its diffusers/PEFT "
                                  f"name cannot be kept beside kohya names; resize a kohya/LyCORIS file")
        if isinstance(got, str):
            result.kept.append((mk, got))
            tensors.update({k: raw[k] for k in by_module.get(mk, ())})
            continue
        s, scale, old, shape, algo = got
        conv = len(shape) == 4
        cap = conv_rank if conv else rank
        if method == "none":
            cap = min(cap, s.S.numel())  # beyond the input's rank there are only zero components
        new = _svd.select_rank(s.S, s.length, method, param, cap)
        up, down = _svd.shape_factors(*_svd.truncate(s, new), shape)
        dtype = next((raw[k].dtype for k in by_module[mk] if raw[k].is_floating_point()), torch.float32)
        if dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            dtype = torch.float32
        alpha = float(scale * new)
        fro, nuc = _svd.retained(s.S, new)
        name = out_name[mk]
        result.modules.append(ModuleResize(name, algo, old, new, alpha, conv, fro, nuc))
        tensors[f"{name}.lora_down.weight"] = down.to(dtype).contiguous()
        tensors[f"{name}.lora_up.weight"] = up.to(dtype).contiguous()
        tensors[f"{name}.alpha"] = torch.tensor(alpha, dtype=dtype)
        if module.dora_scale is not None:  # unreachable today (DoRA is kept); never drop a magnitude silently
            raise LoraStudioError(f"{mk}: DoRA magnitude cannot be resized")
    if progress is not None:
        progress("resize", total, total)
    if not result.modules:
        why = result.kept[0][1] if result.kept else "no modules"
        raise LoraStudioError(f"'{net.name}': no module can be resized ({why})")
    result.metadata = _metadata(metadata, result, rank, conv_rank, method, param)
    fileio.atomic_save_safetensors(tensors, out, result.metadata, overwrite=overwrite,
                                   progress=None if progress is None else (lambda d, t: progress("write", d, t)))
    return result


def _metadata(metadata: dict, result: ResizeResult, rank: int, conv_rank: int, method: str, param) -> dict:
    """ss_network_dim/alpha: the common value, or "Dynamic" when modules differ; a training-comment prefix
    as sd-scripts writes it; hashes of the old body dropped (stale)."""
    meta = {k: v for k, v in metadata.items() if k not in _STALE}
    ranks = {m.new_rank for m in result.modules if not m.conv}
    conv_ranks = {m.new_rank for m in result.modules if m.conv}
    alphas = {m.alpha for m in result.modules if not m.conv}
    old = meta.get("ss_network_dim", "?")
    dim = ranks.pop() if len(ranks) == 1 else None
    meta["ss_network_dim"] = str(dim) if dim is not None else "Dynamic"
    meta["ss_network_alpha"] = str(alphas.pop()) if len(alphas) == 1 and dim is not None else "Dynamic"
    if method == "none":
        note = f"dimension is resized from {old} to {rank}" + (f" (conv: {conv_rank})" if conv_rank != rank else "")
    else:
        note = f"Dynamic resize with {method}: {param:g} from {old}"
    comment = meta.get("ss_training_comment", "")
    meta["ss_training_comment"] = f"{note}; {comment}" if comment else note
    try:
        args = json.loads(meta.get("ss_network_args") or "null")
    except ValueError:
        args = None
    if isinstance(args, dict) and "conv_dim" in args:
        c = conv_ranks.pop() if len(conv_ranks) == 1 else None
        args["conv_dim"] = str(c) if c is not None else "Dynamic"
        cm = [m.alpha for m in result.modules if m.conv]
        args["conv_alpha"] = str(cm[0]) if c is not None and len(set(cm)) == 1 else "Dynamic"
        meta["ss_network_args"] = json.dumps(args)
    meta["lora_studio_resized"] = json.dumps({"method": method, "param": param, "rank": rank,
                                              "conv_rank": conv_rank, "modules": len(result.modules),
                                              "kept": len(result.kept)})
    return meta


def fidelity_summary(result: ResizeResult) -> str:
    """One line: mean and minimum retained Frobenius share, rank range."""
    f = [m.fro_retained for m in result.modules]
    ranks = [m.new_rank for m in result.modules]
    return (f"{len(f)} modules resized (rank {min(ranks)}–{max(ranks)}), Frobenius norm kept: mean "
            f"{sum(f) / len(f):.1%}, min {min(f):.1%}" + (f"; {len(result.kept)} kept unchanged" if result.kept else ""))
