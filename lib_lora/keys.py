"""LoRA key families → `LoraModule`s named by canonical (compvis/SGM) layer names (docs/spec/formats.md §3).
diffusers U-Net paths are translated by rule in `unet_names.py`.

Underscore-joined kohya names are never split by guessing: each arch has a dictionary from
`path.replace('.', '_')` to the canonical layer, built from the generated layer list (arch.py).
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass, field
from typing import Optional

import torch

from lib_lora import algos
from lib_lora import arch as _arch
from lib_lora.blocks import slot_of_layer
from lib_lora.errors import LoraStudioError
from lib_lora.unet_names import translate_unet

UNET = _arch.UNET


@dataclass
class LoraModule:
    key: str                              # module key as in the file (for messages)
    layer: str                            # canonical layer name
    qkv: Optional[int]                    # slice of a fused OpenCLIP in_proj, else None
    algo: str                             # lora | loha | lokr | ia3 | full | norm | glora | oft | boft
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # suffix -> tensor; alpha/scale/dora_scale removed
    alpha: Optional[float] = None         # None when absent or 0 (=> scale 1); OFT/BOFT: constraint, 0 kept
    scale: Optional[float] = None         # explicit `scale` tensor, overrides alpha/rank
    dora_scale: Optional[torch.Tensor] = None
    slot: Optional[int] = None
    is_te: bool = False
    peft_dora: bool = False               # magnitude came from PEFT: reshaped to output axis (out,1[,1,1])


# ---------------------------------------------------------------- per-arch name index

def _flat(path: str) -> str:
    return path.replace(".", "_")


@functools.lru_cache(maxsize=None)
def _index(arch: str):
    """(unet: flat rel → layer, te: component → {flat name → (layer, qkv)})."""
    unet = {_flat(n): UNET + n for n in _arch.unet_layers(arch)}
    te = {}
    for comp, (base, kind, count) in _arch.TE_COMPONENTS[arch].items():
        names = {}
        for layer in _arch.te_layers(arch, comp):
            names[_flat(layer[len(base) + 1:])] = (layer, None)  # native names relative to the base
        if kind == "openclip":  # HF CLIP names used by kohya/diffusers for OpenCLIP weights
            for i in range(count):
                for hf, oc, qkv in _arch.HF_TO_OPENCLIP:
                    names[_flat(f"text_model.encoder.layers.{i}.{hf}")] = (f"{base}.transformer.resblocks.{i}.{oc}", qkv)
            names["text_model_final_layer_norm"] = (f"{base}.ln_final", None)
            names["text_model_embeddings_token_embedding"] = (f"{base}.token_embedding", None)
        te[comp] = names
    return unet, te


def _te_component(arch: str, comp: str) -> str | None:
    comps = _arch.TE_COMPONENTS[arch]
    if comp in comps:
        return comp
    if comp in ("te", "te1"):  # lora_te_ on SDXL = TE1; lora_te1_ on SD1/SD2 = the only TE
        return "te1" if "te1" in comps else "te"
    return None


def resolve(component: str, path: str, arch: str):
    """(layer, qkv) for a component ('unet' | 'te' | 'te1' | 'te2' | 'compvis') and a dotted or flat path."""
    if arch not in _arch.ARCHS:
        return None
    unet, te = _index(arch)
    flat = _flat(path)
    if component == "unet":
        if flat in unet:
            return unet[flat], None
        rel = translate_unet(flat, "_", arch)
        return (unet[rel], None) if rel in unet else None
    if component == "compvis":
        layer = _arch.canonical_layer_name(path)
        return (layer, None) if layer in _arch.canonical_layers(arch) else None
    comp = _te_component(arch, component)
    if comp is None:
        return None
    return te[comp].get(flat)


# ---------------------------------------------------------------- splitting keys into module + suffix

KOHYA_PREFIXES = (("lora_unet_", "unet"), ("lora_te1_", "te1"), ("lora_te2_", "te2"), ("lora_te_", "te"),
                  ("oft_unet_", "unet"), ("lycoris_", "unet"))  # lycoris_: LyCORIS' own wrapper on a diffusers U-Net

# Every suffix an algorithm reads (IA3's bare `weight` is joined to its module below), plus lokr_t1, read only
# to refuse it by name.
_KNOWN_SUFFIX = "|".join(re.escape(s) for s in sorted(
    set().union(*(a.suffixes for a in algos.REGISTRY)) - {"weight"} | {"lokr_t1"}))
_ATTN_OLD = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}
_TE_OLD = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}

_DOTTED = [
    ("proc", re.compile(r"(.+)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight")),
    ("proc", re.compile(r"(.+)\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight")),
    ("plain", re.compile(r"(.+)\.lora_linear_layer\.(down|up)\.weight")),
    ("plain", re.compile(r"(.+)\.lora\.(down|up)\.weight")),
    ("peft", re.compile(r"(.+)\.lora_(A|B)(?:\.[A-Za-z_][\w-]*)?\.weight")),
    ("mag", re.compile(r"(.+)\.lora_magnitude_vector(?:\.[A-Za-z_][\w-]*)?(?:\.weight)?")),
    ("known", re.compile(rf"(.+)\.({_KNOWN_SUFFIX})")),
]


def split_key(key: str):
    """(component, module key, path, suffix) or None. Suffixes are normalised to kohya names."""
    for prefix, comp in KOHYA_PREFIXES:
        if key.startswith(prefix):
            module, _, suffix = key.partition(".")
            suffix = {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight"}.get(suffix, suffix)
            return comp, module, module[len(prefix):], suffix
    for kind, rx in _DOTTED:
        m = rx.fullmatch(key)
        if not m:
            continue
        g = m.groups()
        if kind == "proc":
            parent = g[0]
            te_like = parent.endswith("self_attn")
            module = f"{parent}.{(_TE_OLD if te_like else _ATTN_OLD)[g[1]]}"
            suffix = f"lora_{g[2]}.weight"
        elif kind == "plain":
            module, suffix = g[0], f"lora_{g[1]}.weight"
        elif kind == "peft":
            module, suffix = g[0], "lora_down.weight" if g[1] == "A" else "lora_up.weight"
        elif kind == "mag":
            module, suffix = g[0], "lora_magnitude_vector"
        else:
            module, suffix = g[0], g[1]
        comp, path = _component_of(module)
        return (comp, module, path, suffix) if comp else None
    return None


_UNET_HEADS = ("down_blocks.", "mid_block.", "up_blocks.", "conv_in", "conv_out", "conv_norm_out", "time_embedding.",
               "add_embedding.")
_COMPVIS_HEADS = ("input_blocks.", "middle_block.", "output_blocks.", "time_embed.", "label_emb.", "out.")


def _component_of(module: str):
    for strip in ("base_model.model.", "model.base_model.model."):
        if module.startswith(strip):
            module = module[len(strip):]
    if module.startswith("unet."):
        return "unet", module[5:]
    if module.startswith("text_encoder_2."):
        return "te2", module[15:]
    if module.startswith("text_encoder."):
        return "te", module[13:]
    if module.startswith(UNET):
        return "unet", module[len(UNET):]
    if module.startswith(_arch.TE_PREFIXES):
        return "compvis", module
    if module.startswith(_UNET_HEADS) or module.startswith(_COMPVIS_HEADS):
        return "unet", module
    if module.startswith("text_model."):
        return "te", module
    return None, None


# ---------------------------------------------------------------- diffusers/PEFT adapter metadata

def _peft_config(metadata: dict) -> dict:
    raw = (metadata or {}).get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        cfg = json.loads(raw)
    except ValueError:
        return {}
    return cfg if isinstance(cfg, dict) else {}


_PEFT_COMPONENT = {"unet": "unet", "te": "text_encoder", "te1": "text_encoder", "te2": "text_encoder_2"}


def _peft_alpha(cfg: dict, component: str, path: str, rank: int | None) -> float | None:
    """lora_alpha for one module from a diffusers LoraConfig dump (keys plain or prefixed per component)."""
    if not cfg:
        return None
    pre = _PEFT_COMPONENT.get(component, "unet") + "."

    def get(name):
        return cfg.get(pre + name, cfg.get(name))

    alpha = get("lora_alpha")
    for pattern, value in (get("alpha_pattern") or {}).items():
        try:
            if re.match(rf"(.*\.)?({pattern})$", path):  # PEFT's module-name rule
                alpha = value
                break
        except re.error:
            continue
    if alpha is None:
        return None
    alpha = float(alpha)
    if get("use_rslora") and rank:
        alpha *= math.sqrt(rank)  # scale alpha/sqrt(r) expressed as alpha'/r
    return alpha


# ---------------------------------------------------------------- grouping


def _peft_magnitude(mag: torch.Tensor) -> torch.Tensor:
    """PEFT magnitudes are always per output channel: Linear (out,), Conv (1,out,1,1) → (out,1[,1,1])."""
    if mag.dim() == 4:
        return mag.reshape(-1, 1, 1, 1)
    return mag.reshape(-1, 1)


def _check(module: LoraModule) -> str | None:
    """Why a module cannot be right whatever the model (NaN/Inf, rank 0, factor shapes), or None."""
    try:
        algos.check_module(module)
    except LoraStudioError as exc:
        msg = str(exc)
        return msg[len(module.key) + 2:] if msg.startswith(module.key + ": ") else msg
    return None


def _one_number(t: torch.Tensor | None, what: str) -> tuple[float | None, str | None]:
    """(value, problem) of an `alpha`/`scale` tensor: a scalar or shape [1] is one number, more is an error
    (silently ignoring it would change the strength)."""
    if t is None:
        return None, None
    if t.numel() != 1:
        return None, (f"{what} holds {t.numel()} values (shape {tuple(t.shape)}) where one number is expected; "
                      f"the file is broken, re-export it")
    return float(t.float().item()), None


def _group(state_dict: dict, metadata: dict, arch: str, checked: dict | None = None):
    raw: dict[str, dict] = {}
    where: dict[str, tuple[str, str]] = {}
    owners: dict[str, list[str]] = {}
    loose: list[str] = []
    skipped: list[tuple[str, str]] = []
    rejected: list[tuple[str, str, tuple]] = []  # (module key, problem, its keys): damaged, also in skipped
    for key, tensor in state_dict.items():
        parts = split_key(key)
        if parts is None:
            loose.append(key)
            continue
        comp, module, path, suffix = parts
        raw.setdefault(module, {})[suffix] = tensor
        where[module] = (comp, path)
        owners.setdefault(module, []).append(key)
    for key in loose:  # dotted IA3 `<module>.weight` is only recognisable next to its on_input
        stem = key[:-7] if key.endswith(".weight") else None
        if stem in raw and "on_input" in raw[stem]:
            raw[stem]["weight"] = state_dict[key]
            owners[stem].append(key)
        else:
            skipped.append((key, "not a LoRA/LyCORIS key for SD1/SD2/SDXL"))

    cfg = _peft_config(metadata)
    modules: dict[str, LoraModule] = {}
    label = _arch.label(arch)
    for module, tensors in raw.items():
        comp, path = where[module]
        hit = resolve(comp, path, arch)
        if hit is None:
            skipped += [(k, f"no matching {label} layer") for k in owners[module]]
            continue
        tensors = dict(tensors)
        alpha_t = tensors.pop("alpha", None)
        scale_t = tensors.pop("scale", None)
        dora = tensors.pop("dora_scale", None)
        mag = tensors.pop("lora_magnitude_vector", None)
        algo = algos.detect_algo(tensors)  # a dict carries shapes too: BOFT's 4-D oft_blocks
        if algo is None:
            what = ", ".join(sorted(tensors)) or "no weights"
            skipped += [(k, f"unknown algorithm ({what})") for k in owners[module]]
            continue
        extra = algos.unknown_suffixes(algo, tensors)
        if extra:  # e.g. T-LoRA's lambda_layer: applying the rest would give a wrong delta
            skipped += [(k, f"{algo} module with unsupported tensors ({', '.join(sorted(extra))})")
                        for k in owners[module]]
            continue
        alpha, problem = _one_number(alpha_t, "alpha")
        scale, problem2 = _one_number(scale_t, "scale")
        problem = problem or problem2
        layer, qkv = hit
        mod = LoraModule(
            key=module, layer=layer, qkv=qkv, algo=algo, tensors=tensors, alpha=alpha, scale=scale,
            dora_scale=_peft_magnitude(mag) if mag is not None else dora,
            slot=slot_of_layer(layer), is_te=_arch.is_te_layer(layer), peft_dora=mag is not None)
        if alpha is None and alpha_t is None and not module.startswith(("lora_", "oft_", "lycoris_")):
            mod.alpha = _peft_alpha(cfg, comp, path, algos.rank_of(mod))
        if mod.alpha == 0 and not algos.get(algo).alpha_constraint:
            mod.alpha = None  # 0 means "unset" (scale 1); for OFT it is a real constraint value
        if not problem:  # the same module is checked once even when several archs are tried
            checked = {} if checked is None else checked
            if module not in checked:
                checked[module] = _check(mod)
            problem = checked[module]
        if problem:  # the rest of the file still loads; the caller reports the file as partly applied
            rejected.append((module, problem, tuple(owners[module])))
            skipped += [(k, problem) for k in owners[module]]
            continue
        modules[module] = mod
    return modules, skipped, rejected


def group_modules_with_arch(state_dict: dict, metadata: dict | None = None, arch_hint: str | None = None,
                            rejected: list | None = None):
    """(modules, skipped, arch). Names follow `arch_hint` when it is an arch, else the arch detected from the
    keys (`arch_hint` "unknown": already detected, nothing found); when none is known, the names of the arch that
    matches most keys. `arch` is the architecture this decided, "unknown" when two archs' names fit equally well
    (U-Net-only SD1/SD2 files). Damaged modules (NaN/Inf, rank 0, disagreeing factors, a vector alpha) are left
    out, listed in skipped per key, and appended to `rejected` as (module key, problem, its keys) when a list is
    given."""
    metadata = metadata or {}
    arch = arch_hint if arch_hint is not None else _arch.detect_arch_raw(state_dict, metadata)
    if arch in _arch.ARCHS:
        mods, skipped, bad = _group(state_dict, metadata, arch)
    else:
        tried, checked = [], {}
        for cand in ("sd1", "sdxl", "sd2"):
            mods, skipped, bad = _group(state_dict, metadata, cand, checked)
            # keys of damaged modules did match a layer name of this arch
            tried.append((len(skipped) - sum(len(r[2]) for r in bad), cand, mods, skipped, bad))
        best = min(tried, key=lambda t: t[0])  # the first of equals: SD1 names for SD1/SD2 U-Net files
        _, arch, mods, skipped, bad = best
        if sum(t[0] == best[0] for t in tried) > 1 or not mods:
            arch = "unknown"
    if rejected is not None:
        rejected.extend(bad)
    return mods, skipped, arch


def group_modules(state_dict: dict, metadata: dict | None = None, arch_hint: str | None = None):
    """(dict module key → LoraModule, list of (key, reason) not loaded)."""
    modules, skipped, _ = group_modules_with_arch(state_dict, metadata, arch_hint)
    return modules, skipped
