"""LoRA + LoRA (`python -m lib_lora merge-loras`): exact concatenation, or the optimal rank-r approximation
of the summed deltas.

Each input is a `<lora:…>` tag resolved as bake resolves it (multipliers, block weights, presets); a module's
weight is its effective multiplier m (lib_lora.activate / patcher.effective_multiplier).
- concat: up'_i = up_i·(m_i·alpha_i/d_i), down'_i = down_i, concatenated on the rank axis; rank R = Σd_i,
  alpha = R, so up'·down' = Σ m_i·(alpha_i/d_i)·up_i·down_i exactly (no cross terms, no squared ratios).
  LoRA/LoCon only (other algorithms: --mode svd).
- svd: per layer, ΔW = Σ m_i·ΔW_i (any algorithm whose ΔW needs no model weight), then its best rank-r factors
  (`svd.lowrank_svd` on the stacked folded factors when every input is a LoRA: exact and fast; else a dense
  SVD); --conv-rank for 3×3 convs; alpha = rank; clamping only with clamp_quantile.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Callable, Optional

from lib_lora import fileio
from lib_lora.errors import LoraStudioError

MODES = ("concat", "svd")


@dataclass
class MergeResult:
    out: str
    inputs: list = field(default_factory=list)      # (tag text, network name, modules used)
    modules: int = 0
    ranks: dict = field(default_factory=dict)       # output module key → rank
    fro_retained: dict = field(default_factory=dict)  # svd: module key → Frobenius share of ΣΔW kept
    messages: list = field(default_factory=list)
    metadata: dict = field(default_factory=dict)


def plain_lora(module) -> bool:
    """A LoRA/LoCon module without Tucker core or DoRA magnitude: ΔW = scale·up·down."""
    from lib_lora.algos import algorithm_of

    a = algorithm_of(module)
    t = module.tensors
    return (a is not None and a.name == "lora" and a.base is None and t.get("lora_mid.weight") is None
            and t.get("lora_down.weight") is not None and t.get("lora_up.weight") is not None)


def _folded(module, m: float):
    """(up·m·scale as (out, r) fp64, down as (r, in·k·k) fp64, down's shape)."""
    import torch

    from lib_lora.algos._common import rank_scale

    down, up = module.tensors["lora_down.weight"], module.tensors["lora_up.weight"]
    r = int(down.shape[0])
    u = up.reshape(up.shape[0], -1).to(torch.float64) * (m * rank_scale(module, r))
    return u, down.reshape(r, -1).to(torch.float64), tuple(down.shape)


def _dense(module, m: float):
    """(m·ΔW as 2-D fp64, weight shape), or a str saying why the module cannot be merged."""
    from lib_lora.merge.resize import dense_delta

    if plain_lora(module):
        u, d, dshape = _folded(module, m)
        return u @ d, (u.shape[0], *dshape[1:])
    got = dense_delta(module)
    return f"{module.key}: {got}" if isinstance(got, str) else (got[0] * m, got[1])


def merge_loras(tags: list, lora_dir, out, mode: str = "concat", rank: Optional[int] = None,
                conv_rank: Optional[int] = None, overwrite: bool = False, presets_path=None, seed: int = 0,
                clamp_quantile: Optional[float] = None, progress: Optional[Callable] = None) -> MergeResult:
    """Merge the LoRAs of `tags` (each a `<lora:…>` tag) into one LoRA file `out`."""
    import torch

    from lib_lora.merge import svd as _svd
    from lib_lora.merge.bake import load_presets, parse_tags, resolve_tag
    from lib_lora.merge.extract import kohya_name
    from lib_lora.patcher import effective_multiplier

    out = os.fspath(out)
    fileio.check_target(out, overwrite, ".safetensors")
    if mode not in MODES:
        raise LoraStudioError(f"unknown merge mode '{mode}'; choose one of {', '.join(MODES)}")
    if mode == "svd" and not rank:
        raise LoraStudioError("--mode svd needs --rank (the rank of the merged LoRA)")
    for name, r in (("--rank", rank), ("--conv-rank", conv_rank)):
        if r is not None and r < 1:
            raise LoraStudioError(f"{name} must be at least 1; got {r}")
    if clamp_quantile is not None and not 0 < clamp_quantile <= 1:
        raise LoraStudioError(f"--clamp-quantile must be in (0, 1]; got {clamp_quantile:g}")
    result = MergeResult(out)
    parsed = parse_tags(" ".join(tags), lora_dir)
    if len(parsed) < 1:
        raise LoraStudioError("give at least one <lora:…> tag")
    presets = load_presets(presets_path, lora_dir, result.messages)
    resolved, arch = [], None
    for tag, path in parsed:
        r = resolve_tag(tag, path, arch, presets, seed, result.messages)  # a second arch is refused here
        arch = arch or (r.network.arch if r.network.arch in ("sd1", "sd2", "sdxl") else None)
        resolved.append(r)
    # layer (+ fused q/k/v part) → [(module, effective multiplier)]; the output keeps the first module key
    layers: dict = {}
    names: dict = {}
    for r in resolved:
        used = 0
        for mk, mod in r.network.modules.items():
            if "." in mk:   # diffusers/PEFT names: written back under the kohya name of the same layer
                mk = kohya_name(mod.layer, mod.qkv, r.network.arch)
                if mk is None:
                    raise LoraStudioError(f"'{r.network.name}': module '{mod.key}' ({mod.layer}) has no kohya name "
                                          f"on {r.network.arch}; this LoRA cannot be merged")
            m = effective_multiplier(r.active, mod)
            if m == 0.0:
                continue
            where = (mod.layer, mod.qkv)
            layers.setdefault(where, []).append((mod, m))
            names.setdefault(where, mk)
            used += 1
        result.inputs.append((r.tag.text, r.network.name, used))
    if not layers:
        raise LoraStudioError("every module has weight 0 with these tags; nothing to write")
    dtype = next((t.dtype for r in resolved for mod in r.network.modules.values() for t in mod.tensors.values()
                  if isinstance(t, torch.Tensor) and t.is_floating_point()), torch.float32)
    tensors: dict = {}
    conv_seen = False
    for i, (where, parts) in enumerate(layers.items()):
        if progress is not None:
            progress("merge", i, len(layers))
        mk = names[where]
        if mode == "concat":
            bad = next((mod for mod, _ in parts if not plain_lora(mod)), None)
            if bad is not None:
                raise LoraStudioError(f"{bad.key}: {bad.algo.upper()} modules cannot be concatenated; use --mode svd")
            ups, downs, shapes = zip(*(_folded(mod, m) for mod, m in parts))
            if len({s[1:] for s in shapes}) != 1:
                raise LoraStudioError(f"{mk}: the LoRAs' factors have different shapes "
                                      f"({', '.join(str(s) for s in shapes)}); they target different layers")
            up, down, shape = torch.cat(ups, 1), torch.cat(downs, 0), (ups[0].shape[0], *shapes[0][1:])
            new = up.shape[1]
        else:
            if all(plain_lora(mod) for mod, _ in parts):
                ups, downs, shapes = zip(*(_folded(mod, m) for mod, m in parts))
                s = _svd.lowrank_svd(torch.cat(ups, 1), torch.cat(downs, 0))
                shape = (ups[0].shape[0], *shapes[0][1:])
            else:
                acc, shape = None, None
                for mod, m in parts:
                    got = _dense(mod, m)
                    if isinstance(got, str):
                        raise LoraStudioError(f"{got}; it cannot be merged without a model (bake it instead)")
                    acc = got[0] if acc is None else acc + got[0]
                    shape = got[1]
                s = _svd.dense_svd(acc)
            conv3 = len(shape) == 4 and tuple(shape[2:]) != (1, 1)
            want = (conv_rank or rank) if conv3 else rank
            new = max(1, min(want, s.S.numel()))
            up, down = _svd.truncate(s, new, torch.float64)
            result.fro_retained[mk] = _svd.retained(s.S, new)[0]
            if clamp_quantile is not None:
                up, down = _svd.clamp(up, down, clamp_quantile)
        conv_seen |= len(shape) == 4 and tuple(shape[2:]) != (1, 1)
        up, down = _svd.shape_factors(up, down, shape)
        tensors[f"{mk}.lora_down.weight"] = down.to(dtype).contiguous()
        tensors[f"{mk}.lora_up.weight"] = up.to(dtype).contiguous()
        tensors[f"{mk}.alpha"] = torch.tensor(float(new), dtype=dtype)  # alpha = rank: scale 1
        result.ranks[mk] = new
    if progress is not None:
        progress("merge", len(layers), len(layers))
    result.modules = len(tensors) // 3
    result.metadata = _metadata(resolved, result, mode, rank, conv_rank, clamp_quantile, conv_seen)
    fileio.atomic_save_safetensors(tensors, out, result.metadata, overwrite=overwrite,
                                   progress=None if progress is None else (lambda d, t: progress("write", d, t)))
    return result


def _metadata(resolved, result: MergeResult, mode, rank, conv_rank, clamp_quantile, conv_seen) -> dict:
    first = resolved[0].network.metadata
    meta = {k: first[k] for k in ("ss_base_model_version", "ss_v2", "modelspec.architecture") if k in first}
    ranks = set(result.ranks.values())
    dim = str(ranks.pop()) if len(ranks) == 1 else "Dynamic"
    meta.update({"ss_network_module": "networks.lora", "ss_network_dim": dim, "ss_network_alpha": dim,
                 "ss_output_name": os.path.splitext(os.path.basename(result.out))[0]})
    if mode == "svd" and conv_seen and conv_rank:
        meta["ss_network_args"] = json.dumps({"conv_dim": str(conv_rank), "conv_alpha": str(conv_rank)})
    meta["lora_studio_merged"] = json.dumps({
        "mode": mode, "rank": rank, "conv_rank": conv_rank, "clamp_quantile": clamp_quantile,
        "loras": [{"tag": t, "name": n, "hash": r.network.short_hash, "modules": u}
                  for (t, n, u), r in zip(result.inputs, resolved)]})
    return meta
