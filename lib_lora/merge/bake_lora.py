"""LoRA + multiplier + block weights → a new LoRA with those weights built in (`python -m lib_lora bake-lora`).

Each module's effective multiplier m (docs/spec/prompt_syntax.md §3, same function the patcher uses) is folded into
ONE factor of the module, so the file keeps its algorithm, rank and key names: ΔW is linear in that factor.
Modules at m = 0 are dropped. Which factor carries m is the algorithm's `linear_in` (lib_lora/algos); algorithms
whose delta is not linear in any stored factor (DoRA, OFT, BOFT) can only be kept at m = 1 or dropped at m = 0;
anything else is refused with a message.
"""

from __future__ import annotations

import json
import os

from lib_lora import fileio
from lib_lora.algos import algorithm_of
from lib_lora.merge.bake import _STALE_METADATA, load_presets, parse_tags, resolve_tag
from lib_lora.errors import LoraStudioError, SyntaxProblem
from lib_lora.syntax import format_number

def _module_of(key: str, modules: dict):
    """(module key, normalised suffix) of a file key, or (None, None) for keys outside any module."""
    from lib_lora.keys import split_key

    parts = split_key(key)
    if parts is not None and parts[1] in modules:
        return parts[1], parts[3]
    if key.endswith(".weight") and key[:-7] in modules:  # dotted IA3 `<module>.weight`
        return key[:-7], "weight"
    return None, None


def _factors(algo, suffixes) -> set:
    """The stored factor(s) a multiplier folds into (the algorithm's `linear_in`: first present, or all)."""
    present = [n for n in algo.linear_in if n in suffixes]
    return set(present if algo.linear_all else present[:1])


def bake_lora(prompt: str, lora_dir, out, overwrite: bool = False, presets_path=None, seed: int = 0):
    """Returns (output path, stats dict, warnings). Tags resolve exactly as for `bake` (resolve_tag)."""
    from lib_lora.patcher import effective_multiplier

    out = os.fspath(out)
    fileio.check_target(out, overwrite, ".safetensors")
    messages: list = []
    tags = parse_tags(prompt, lora_dir)
    if len(tags) != 1:
        raise SyntaxProblem(f"bake-lora takes exactly one <lora:…> tag; the prompt has {len(tags)}")
    r = resolve_tag(*tags[0], None, load_presets(presets_path, lora_dir, messages), seed, messages)
    net, active = r.network, r.active
    raw, metadata = fileio.read_tensors(net.path)
    mult = {k: effective_multiplier(active, m) for k, m in net.modules.items()}
    algo = {k: algorithm_of(m) for k, m in net.modules.items()}
    refused = [k for k in net.modules if not algo[k].linear and mult[k] not in (0.0, 1.0)]
    if refused:
        raise LoraStudioError(
            f"LoRA '{net.name}': {len(refused)} DoRA/OFT/BOFT modules (e.g. '{refused[0]}') would need a "
            f"multiplier of {format_number(mult[refused[0]])}, which cannot be stored in the file; bake them into a "
            f"checkpoint with `python -m lib_lora bake` instead")
    by_module: dict = {}
    for key in raw:
        mk, suffix = _module_of(key, net.modules)
        if mk is not None:
            by_module.setdefault(mk, {})[suffix] = key
    ranks = _dyn_ranks(net, active.dyn, messages)
    result: dict = {}
    dropped = scaled = 0
    for key, t in raw.items():
        mk, suffix = _module_of(key, net.modules)
        if mk is None:
            if key not in net.damaged_keys:  # a damaged module (NaN, rank 0…) is not copied either
                result[key] = t  # not an applied module (bundled embedding, unknown key): kept as is
            continue
        m = mult[mk]
        if m == 0.0:
            continue
        factor = m
        if mk in ranks:
            n, extra = ranks[mk]
            t = algo[mk].narrow(suffix, t, n)
            factor *= extra
        # a variant (DoRA) is kept only at m = 1: what is left is dyn's factor, which its base's factors carry
        if factor != 1.0 and suffix in _factors(algo[mk].base or algo[mk], by_module[mk]):
            t = (t.float() * factor).to(t.dtype)
        result[key] = t
    for mk, m in mult.items():
        if m == 0.0:
            dropped += 1
        elif m != 1.0:
            scaled += 1
    if not any(mult[mk] != 0.0 for mk in by_module):
        raise LoraStudioError(f"LoRA '{net.name}': every module has multiplier 0 with these weights; nothing to write")
    meta = {k: v for k, v in metadata.items() if k not in _STALE_METADATA}
    meta["ss_output_name"] = os.path.splitext(os.path.basename(out))[0]  # no duplicate alias
    meta["lora_studio_baked"] = json.dumps({
        "from": net.name, "tag": r.tag.text, "te": active.te, "unet": active.unet, "blocks": active.blocks,
        "dyn": active.dyn, "modules_scaled": scaled, "modules_dropped": dropped})
    fileio.atomic_save_safetensors(result, out, meta, overwrite=overwrite)
    return out, {"modules": len(net.modules), "scaled": scaled, "dropped": dropped, "name": net.name}, messages


def _dyn_ranks(net, dyn, messages) -> dict:
    """dyn=N keeps the first N ranks of modules whose algorithm can narrow (LoRA). The full-rank scale alpha/r
    must survive although the new file's alpha is divided by N: module key → (N, extra factor N/r for the
    linear factor)."""
    if dyn is None:
        return {}
    out, other = {}, 0
    for mk, mod in net.modules.items():
        algo = algorithm_of(mod)
        rank = algo.rank(mod) if algo.narrow is not None else None
        if rank is None:
            other += 1
            continue
        n = min(int(dyn), rank)
        if n < rank:
            out[mk] = (n, n / rank if (mod.scale is None and mod.alpha is not None) else 1.0)
    if other:
        messages.append(f"`{net.name}`: dyn= applies to LoRA modules only; {other} other modules kept whole")
    return out
