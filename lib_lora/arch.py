"""Everything about model families in one place: names, labels, prefixes, widths, canonical layer names
(generated) and the architecture detectors for LoRA files (`detect_arch_raw`) and for models (`arch_of_layers`).

The layer generator replaces shipping key lists: it is checked against real checkpoint key lists in tests.
"""

from __future__ import annotations

import functools
import re

ARCHS = ("sd1", "sd2", "sdxl")
ARCH_LABELS = {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL", "unknown": "unknown"}
# kohya's `ss_base_model_version` of a LoRA for each family (sd-scripts' train_network.py; a v-prediction
# SD1/SD2 run adds "_v")
SS_BASE_MODEL_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}

# Roots of canonical layer names: the U-Net, and the text encoders (SD1/SD2 cond_stage_model, SDXL's two
# embedders of the conditioner; the conditioner's other children are not text encoders).
UNET = "model.diffusion_model."
VAE = "first_stage_model."   # the autoencoder's root in a checkpoint
TE_PREFIXES = ("cond_stage_model.", "conditioner.embedders.")
LAYER_ROOTS = (UNET,) + TE_PREFIXES

# Widths that tell the families apart: cross-attention context (attn2.to_k input) and text-encoder hidden size.
CONTEXT_WIDTH = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
TE_WIDTH = {768: "sd1", 1024: "sd2", 1280: "sdxl"}


# Old SD1 checkpoints (and A1111's hijacked CLIP) lack the `text_model.` segment of the CLIP names.
_TEXT_MODEL_FIX = re.compile(r"^((?:cond_stage_model|conditioner\.embedders\.\d+)\.transformer\.)"
                             r"(?!text_model\.)(encoder\.|embeddings\.|final_layer_norm)")
_SDXL_TE_ALIAS = "cond_stage_model.embedders."  # A1111 exposes SDXL's conditioner under this name too


def canonical_layer_name(name: str) -> str:
    """The canonical spelling of a compvis/SGM layer path: SDXL's text encoders under `conditioner.embedders.`
    (not A1111's `cond_stage_model.embedders.` alias) and CLIP paths with `text_model.`."""
    if name.startswith(_SDXL_TE_ALIAS):
        name = "conditioner." + name[len("cond_stage_model."):]
    return _TEXT_MODEL_FIX.sub(r"\1text_model.\2", name)


def label(arch) -> str:
    """"SDXL" for "sdxl"; anything unknown as given."""
    return ARCH_LABELS.get(arch, str(arch))


def is_te_layer(layer: str) -> bool:
    """A canonical layer of a text encoder."""
    return layer.startswith(TE_PREFIXES)

# Per-arch U-Net layout: channels and transformer depth per level, transformer depth in the middle block.
_UNET_LAYOUT = {
    "sd1": ((320, 640, 1280, 1280), (1, 1, 1, 0), 1, False),
    "sd2": ((320, 640, 1280, 1280), (1, 1, 1, 0), 1, False),
    "sdxl": ((320, 640, 1280), (0, 2, 10), 10, True),  # last flag: has label_emb (size conditioning)
}

# Text encoders: component -> (base path, kind, number of layers). Component names follow the kohya prefixes.
TE_COMPONENTS = {
    "sd1": {"te": ("cond_stage_model.transformer", "clip", 12)},
    "sd2": {"te": ("cond_stage_model.model", "openclip", 24)},
    "sdxl": {"te1": ("conditioner.embedders.0.transformer", "clip", 12),
             "te2": ("conditioner.embedders.1.model", "openclip", 32)},
}

# transformers' CLIP layer names → OpenCLIP's (SD2, SDXL TE2), with the q/k/v slice of the fused `attn`
# (kohya and diffusers name OpenCLIP weights the HF way; checkpoints hold them the OpenCLIP way).
HF_TO_OPENCLIP = (("self_attn.q_proj", "attn", 0), ("self_attn.k_proj", "attn", 1), ("self_attn.v_proj", "attn", 2),
                  ("self_attn.out_proj", "attn.out_proj", None), ("mlp.fc1", "mlp.c_fc", None),
                  ("mlp.fc2", "mlp.c_proj", None), ("layer_norm1", "ln_1", None), ("layer_norm2", "ln_2", None))

_RES = ("in_layers.0", "in_layers.2", "emb_layers.1", "out_layers.0", "out_layers.3")
_TB = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
       "attn2.to_out.0", "ff.net.0.proj", "ff.net.2", "norm1", "norm2", "norm3")
_CLIP_LAYER = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "layer_norm1",
               "mlp.fc1", "mlp.fc2", "layer_norm2")
_OPENCLIP_LAYER = ("ln_1", "attn", "attn.out_proj", "ln_2", "mlp.c_fc", "mlp.c_proj")


def _res(prefix: str, skip: bool) -> list[str]:
    return [f"{prefix}.{c}" for c in _RES] + ([f"{prefix}.skip_connection"] if skip else [])


def _attn(prefix: str, depth: int) -> list[str]:
    out = [f"{prefix}.norm", f"{prefix}.proj_in", f"{prefix}.proj_out"]
    for t in range(depth):
        out += [f"{prefix}.transformer_blocks.{t}.{c}" for c in _TB]
    return out


@functools.lru_cache(maxsize=None)
def unet_layers(arch: str) -> tuple[str, ...]:
    """U-Net layer names relative to `model.diffusion_model.` (every module with a weight)."""
    chans, depths, mid_depth, label = _UNET_LAYOUT[arch]
    n = len(chans)
    out = ["time_embed.0", "time_embed.2"] + (["label_emb.0.0", "label_emb.0.2"] if label else [])
    out.append("input_blocks.0.0")
    for lvl in range(n):
        for j in range(2):
            idx = 1 + 3 * lvl + j
            out += _res(f"input_blocks.{idx}.0", skip=(j == 0 and lvl > 0 and chans[lvl] != chans[lvl - 1]))
            if depths[lvl]:
                out += _attn(f"input_blocks.{idx}.1", depths[lvl])
        if lvl < n - 1:
            out.append(f"input_blocks.{3 + 3 * lvl}.0.op")
    out += _res("middle_block.0", False) + _attn("middle_block.1", mid_depth) + _res("middle_block.2", False)
    for i in range(n):  # output level i mirrors input level n-1-i
        depth = depths[n - 1 - i]
        for j in range(3):
            idx = 3 * i + j
            out += _res(f"output_blocks.{idx}.0", skip=True)
            if depth:
                out += _attn(f"output_blocks.{idx}.1", depth)
        if i < n - 1:
            out.append(f"output_blocks.{3 * i + 2}.{2 if depth else 1}.conv")
    out += ["out.0", "out.2"]
    return tuple(out)


def te_layers(arch: str, component: str) -> tuple[str, ...]:
    """Canonical layer names of one text encoder (full paths)."""
    base, kind, count = TE_COMPONENTS[arch][component]
    if kind == "clip":
        names = ["text_model.embeddings.token_embedding", "text_model.embeddings.position_embedding"]
        for i in range(count):
            names += [f"text_model.encoder.layers.{i}.{c}" for c in _CLIP_LAYER]
        names.append("text_model.final_layer_norm")
    else:
        names = ["token_embedding"]
        for i in range(count):
            names += [f"transformer.resblocks.{i}.{c}" for c in _OPENCLIP_LAYER]
        names.append("ln_final")
    return tuple(f"{base}.{n}" for n in names)


@functools.lru_cache(maxsize=None)
def canonical_layers(arch: str) -> frozenset:
    """Every canonical layer name of an architecture (U-Net and text encoders; no VAE)."""
    names = {UNET + n for n in unet_layers(arch)}
    for comp in TE_COMPONENTS[arch]:
        names.update(te_layers(arch, comp))
    return frozenset(names)


# ---------------------------------------------------------------- detection (docs/spec/formats.md §3.5)

# Metadata fields that name the base model, with the value prefixes of each family (kohya, then ModelSpec).
_METADATA_ARCH = (
    ("ss_base_model_version", (("sdxl", "sdxl"), ("sd_v2", "sd2"), ("sd_v1", "sd1"))),
    ("modelspec.architecture", (("stable-diffusion-xl-v1", "sdxl"), ("stable-diffusion-v2", "sd2"),
                                ("stable-diffusion-v1", "sd1"))),
)


def arch_from_metadata(metadata: dict | None) -> str | None:
    md = metadata or {}
    for field, prefixes in _METADATA_ARCH:
        value = str(md.get(field, "")).lower()
        for prefix, arch in prefixes:
            if value.startswith(prefix):
                return arch
    if str(md.get("ss_v2", "")).lower() == "true":
        return "sd2"
    return None


_SDXL_PREFIXES = ("lora_te1_", "lora_te2_", "text_encoder_2.")
_COMPVIS_UNET = re.compile(r"^(lora_unet_|oft_unet_|lycoris_)(input_blocks|middle_block|output_blocks)_")
_DEEP_TB = re.compile(r"transformer_blocks[._][1-9]")


def _in_features(key: str, sd: dict) -> int | None:
    """Input width of the layer a key belongs to, from its module's factors (each algorithm's `in_width`)."""
    from lib_lora import algos  # algos never imports arch: no cycle, and `--help` paths stay light

    for algo in algos.REGISTRY:
        if algo.in_width is None:
            continue
        for suffix in algo.suffixes:
            if key.endswith("." + suffix):
                stem = key[: -len(suffix)]
                w = algo.in_width(lambda s: sd.get(stem + s))
                if w is not None:
                    return w
    if key.endswith("down.weight") and sd[key].dim() >= 2:  # old diffusers `…_lora.down.weight`
        return int(sd[key].shape[1])
    return None


def detect_arch_raw(state_dict: dict, metadata: dict | None = None) -> str:
    """Architecture from raw keys and shapes (before grouping), first conclusive rule wins."""
    return detect_arch_raw_detail(state_dict, metadata)[0]


def detect_arch_raw_detail(state_dict: dict, metadata: dict | None = None) -> tuple[str, bool]:
    """(arch, conclusive). Weak answers come from name hints only: "sd1" = SD1 or SD2 (never SDXL),
    "sdxl" from SGM-style U-Net names (SD1 files written with compvis names exist too)."""
    by_meta = arch_from_metadata(metadata)
    if by_meta:
        return by_meta, True
    keys = list(state_dict)
    if any(k.startswith(_SDXL_PREFIXES) for k in keys):
        return "sdxl", True
    for k in keys:  # cross-attention context width settles SD1/SD2/SDXL
        if "attn2" in k and ("to_k" in k or "to_v" in k):
            arch = CONTEXT_WIDTH.get(_in_features(k, state_dict) or 0)
            if arch:
                return arch, True
    for k in keys:  # text-encoder width
        if ("q_proj" in k or "fc1" in k) and ("lora_te" in k or k.startswith("text_encoder.")):
            w = _in_features(k, state_dict)
            if w in TE_WIDTH:
                return TE_WIDTH[w], True
    if any(_DEEP_TB.search(k) for k in keys):
        return "sdxl", True  # SD1/SD2 have one transformer block per attention
    for k in keys:  # SD1 proj_in is a 1x1 conv (SD2 and SDXL use Linear)
        if "proj_in" in k and k.endswith(("lora_down.weight", "lora_A.weight")) and state_dict[k].dim() == 4:
            return "sd1", True
    if any(_COMPVIS_UNET.match(k) for k in keys):
        return "sdxl", False
    if any(re.search(r"down_blocks[._]3[._]|down_blocks[._]0[._]attentions", k) for k in keys):
        return "sd1", False  # SDXL has 3 levels and no attention in the first; SD1 vs SD2 undecided
    return "unknown", False


def arch_of_layers(names, context_width: int | None = None) -> str:
    """A loaded model's family from its canonical layer names ("sd1" | "sd2" | "sdxl" | "unknown"): the text
    encoders' roots, else the cross-attention context width (`attn2.to_k` input), else SDXL's label_emb.
    Only for real model layers: a LoRA's layer names follow the arch they were mapped with."""
    names = list(names)
    if any(n.startswith("conditioner.embedders.") for n in names):
        return "sdxl"
    if any(n.startswith("cond_stage_model.model.transformer.") for n in names):
        return "sd2"
    if any(n.startswith("cond_stage_model.transformer.") for n in names):
        return "sd1"
    if context_width:
        return CONTEXT_WIDTH.get(int(context_width), "unknown")
    if any(n.startswith(UNET + "label_emb.") for n in names):
        return "sdxl"
    return "unknown"


# ---------------------------------------------------------------- what a file without LoRA modules is

def _lora_marks() -> tuple:
    """Key endings that only LoRA files have: every suffix an algorithm reads, except the generic ones."""
    from lib_lora import algos

    return tuple("." + s for s in set().union(*(a.suffixes for a in algos.REGISTRY)) - {"weight", "scale"})


def guess_non_lora(keys) -> str | None:
    """What a tensor file whose keys hold no usable LoRA module is ("a model checkpoint (…), not a LoRA"),
    or None when its keys do look like a LoRA (for another model family)."""
    keys = [str(k) for k in keys]
    n = len(keys)
    if not keys:
        return "a file without tensors"
    marks = _lora_marks()
    if any("lora_" in k or k.startswith(("lycoris_", "oft_")) or k.endswith(marks) for k in keys):
        return None
    if any(k.startswith((UNET, VAE, "cond_stage_model.", "conditioner.")) for k in keys):
        return f"a model checkpoint ({n} tensors), not a LoRA"
    if any(k.startswith(("down_blocks.", "mid_block.", "up_blocks.", "conv_in.")) for k in keys):
        return f"a diffusers model ({n} tensors), not a LoRA"
    if any(k.startswith(("encoder.down.", "decoder.up.", "encoder.conv_in", "decoder.conv_in")) for k in keys):
        return f"a VAE ({n} tensors), not a LoRA"
    if any(k in ("emb_params", "string_to_param", "clip_l", "clip_g") or k.startswith("string_to_param.")
           for k in keys):
        return "a textual-inversion embedding, not a LoRA (put it in the embeddings folder)"
    return f"a file of unknown tensors ({n}, e.g. '{keys[0]}'), not a LoRA"
