"""The loaded model as seen by the patcher: canonical layer name → live tensors (ARCHITECTURE.md).

One mapping layer for every source (A1111 `sd_model`, diffusers + transformers objects, a checkpoint
state dict). Everything downstream speaks canonical compvis names only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from lib_lora.arch import (CONTEXT_WIDTH, HF_TO_OPENCLIP, LAYER_ROOTS, TE_COMPONENTS, TE_WIDTH, UNET, arch_of_layers,
                           canonical_layer_name)
from lib_lora.unet_names import diffusers_to_compvis

_LEAF_TYPES = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm)
@dataclass
class LayerRef:
    """Live tensors of one canonical layer; the patcher writes into them in place.

    `weight`/`bias` are the tensors themselves (Parameters or state-dict tensors). A fused OpenCLIP
    attention keeps `in_proj_weight` as `weight`; a split one (diffusers/transformers CLIP) has
    `weight` None and three (weight, bias) pairs in `parts` (q, k, v).
    """

    name: str
    weight: torch.Tensor | None
    bias: torch.Tensor | None = None
    fused: bool = False
    parts: list = field(default_factory=list)

    # -- the patcher's view: a layer is one or more "parts", each a live weight (+ bias) ---------
    def part_tensors(self) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        if self.parts:
            return list(self.parts)
        return [(self.weight, self.bias)]

    @property
    def is_qkv(self) -> bool:
        return self.fused or bool(self.parts)

    def qkv_width(self) -> int:
        if self.parts:
            return self.parts[0][0].shape[0]
        return self.weight.shape[0] // 3

    def locate(self, qkv: int | None) -> list[tuple[int, slice, slice]]:
        """Where a module's delta lands: [(part index, rows in the part, rows in the delta)]."""
        full = slice(None)
        if qkv is None:
            if self.parts:  # a whole-in_proj delta split over q, k, v
                c = self.qkv_width()
                return [(i, full, slice(i * c, (i + 1) * c)) for i in range(3)]
            return [(0, full, full)]
        if not self.is_qkv:
            raise ValueError(f"layer {self.name} has no q/k/v slices")
        if self.parts:
            return [(qkv, full, full)]
        c = self.qkv_width()
        return [(0, slice(qkv * c, (qkv + 1) * c), full)]

    def qkv_rows(self, i: int) -> torch.Tensor:
        """Live rows of q (0), k (1) or v (2): a view of `in_proj_weight` or the separate Linear."""
        part, rows, _ = self.locate(i)[0]
        w = self.part_tensors()[part][0]
        return w if rows == slice(None) else w[rows]

    def qkv_bias(self, i: int) -> torch.Tensor | None:
        part, rows, _ = self.locate(i)[0]
        b = self.part_tensors()[part][1]
        return b if b is None or rows == slice(None) else b[rows]

    def target_shape(self, qkv: int | None) -> torch.Size:
        if qkv is None:
            if self.parts:
                w = self.parts[0][0]
                return torch.Size((3 * w.shape[0],) + tuple(w.shape[1:]))
            return self.weight.shape
        return self.qkv_rows(qkv).shape


class Host:
    """Canonical layer name → LayerRef, plus the model family (`arch`)."""

    def __init__(self, layers: dict[str, LayerRef], arch: str | None = None):
        self.layers = layers
        self.arch = arch or detect_host_arch(layers)

    def __contains__(self, name: str) -> bool:
        return name in self.layers

    def __getitem__(self, name: str) -> LayerRef:
        return self.layers[name]

    def get(self, name: str) -> LayerRef | None:
        return self.layers.get(name)

    def __len__(self) -> int:
        return len(self.layers)

    def _first(self) -> torch.Tensor | None:
        for ref in self.layers.values():
            return ref.part_tensors()[0][0]
        return None

    @property
    def device(self) -> torch.device:
        t = self._first()
        return t.device if t is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        t = self._first()
        return t.dtype if t is not None else torch.float32

    # -- constructors ---------------------------------------------------------------------------
    @classmethod
    def from_named_modules(cls, pairs, arch: str | None = None) -> "Host":
        """From `(name, module)` pairs with A1111 module names (`.wrapped` segments allowed)."""
        layers: dict[str, LayerRef] = {}
        for name, mod in pairs:
            canon = canonical_name(name)
            if canon is None:
                continue
            ref = _ref_of_module(canon, mod)
            if ref is not None and canon not in layers:
                layers[canon] = ref
        return cls(layers, arch)

    @classmethod
    def from_a1111(cls, sd_model) -> "Host":
        """From a loaded A1111/ldm/sgm `sd_model` (U-Net, cond_stage_model or conditioner)."""
        return cls.from_named_modules(sd_model.named_modules())

    @classmethod
    def from_diffusers(cls, unet=None, text_encoders=(), arch: str | None = None) -> "Host":
        """From a diffusers UNet2DConditionModel and transformers CLIPTextModel(WithProjection)s."""
        arch = arch or _diffusers_arch(unet, text_encoders)
        layers: dict[str, LayerRef] = {}
        if unet is not None:
            for name, mod in unet.named_modules():
                if not isinstance(mod, _LEAF_TYPES):
                    continue
                path = diffusers_to_compvis(name, arch)
                ref = _ref_of_module(path, mod) if path else None
                if ref is not None:
                    layers[path] = ref
        # the i-th encoder is the arch's i-th text-encoder component (an unknown arch reads as SD1)
        components = list(TE_COMPONENTS.get(arch, TE_COMPONENTS["sd1"]).values())
        for te, (base, kind, _) in zip(text_encoders, components):
            if te is None:
                continue
            if kind == "openclip":
                layers.update(_openclip_from_hf(te, base + ".transformer.resblocks."))
            else:
                for name, mod in _hf_clip_modules(te):
                    if isinstance(mod, _LEAF_TYPES) and name.startswith("text_model."):
                        canon = f"{base}.{name}"
                        layers[canon] = _ref_of_module(canon, mod)
        return cls(layers, arch)

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor], arch: str | None = None) -> "Host":
        """From a checkpoint state dict (`<layer>.weight`, fused `<layer>.in_proj_weight`).

        The LayerRefs hold the dict's own tensors, so patching edits the dict in place.
        """
        layers: dict[str, LayerRef] = {}
        for key, t in sd.items():
            if not key.startswith(LAYER_ROOTS) or not torch.is_tensor(t) or not t.is_floating_point():
                continue
            if key.endswith(".in_proj_weight"):
                base = key[: -len(".in_proj_weight")]
                layers[canonical_layer_name(base)] = LayerRef(canonical_layer_name(base), t,
                                                         sd.get(base + ".in_proj_bias"), fused=True)
            elif key.endswith(".weight"):
                base = key[: -len(".weight")]
                canon = canonical_layer_name(base)
                layers[canon] = LayerRef(canon, t, sd.get(base + ".bias"))
        return cls(layers, arch)


# -- names ----------------------------------------------------------------------------------------
def checkpoint_name(name: str) -> str:
    """A module or state_dict name of a loaded model → its checkpoint-file spelling (A1111's `.wrapped`
    segments dropped, canonical text-encoder names); names that are already a checkpoint's stay as they are."""
    return canonical_layer_name(".".join(p for p in name.split(".") if p != "wrapped"))


def canonical_name(name: str) -> str | None:
    """A1111 module name → canonical layer name, or None when it is not a U-Net/TE layer."""
    name = checkpoint_name(name)
    return name if name.startswith(LAYER_ROOTS) else None


def _ref_of_module(canon: str, mod) -> LayerRef | None:
    if isinstance(mod, torch.nn.MultiheadAttention):
        if mod.in_proj_weight is None:  # kdim != embed_dim: separate q/k/v weights (never in SD)
            return None
        return LayerRef(canon, mod.in_proj_weight, mod.in_proj_bias, fused=True)
    if _is_leaf(mod):
        w = getattr(mod, "weight", None)
        if not torch.is_tensor(w):
            return None
        b = getattr(mod, "bias", None)
        return LayerRef(canon, w, b if torch.is_tensor(b) else None)
    return None


_LEAF_NAMES = frozenset(("Linear", "Conv2d", "GroupNorm", "LayerNorm"))


def _is_leaf(mod) -> bool:
    # Forge's backend.operations layers subclass nn.Module, not nn.Linear: accept them by class name.
    return isinstance(mod, _LEAF_TYPES) or any(c.__name__ in _LEAF_NAMES for c in type(mod).__mro__)


def _hf_clip_modules(te):
    """named_modules() with the `text_model.` head (transformers 5 dropped it from CLIPTextModel)."""
    for name, mod in te.named_modules():
        if name.startswith(("embeddings", "encoder", "final_layer_norm")):
            name = "text_model." + name
        yield name, mod


_HF_TO_OPENCLIP = {hf: oc for hf, oc, qkv in HF_TO_OPENCLIP if qkv is None}  # q/k/v: one fused layer below


def _openclip_from_hf(te, root: str) -> dict[str, LayerRef]:
    """transformers CLIP with OpenCLIP weights → canonical resblocks; q/k/v become the fused layer."""
    layers: dict[str, LayerRef] = {}
    mods = dict(_hf_clip_modules(te))
    pat = re.compile(r"^text_model\.encoder\.layers\.(\d+)\.(.+)$")
    for name, mod in mods.items():
        m = pat.match(name)
        if not m or not isinstance(mod, _LEAF_TYPES):
            continue
        n, rest = m.group(1), m.group(2)
        if rest in _HF_TO_OPENCLIP:
            canon = f"{root}{n}.{_HF_TO_OPENCLIP[rest]}"
            layers[canon] = LayerRef(canon, mod.weight, mod.bias)
        elif rest == "self_attn.q_proj":
            pre = f"text_model.encoder.layers.{n}.self_attn."
            qkv = [mods[pre + p] for p in ("q_proj", "k_proj", "v_proj")]
            canon = f"{root}{n}.attn"
            layers[canon] = LayerRef(canon, None, None, parts=[(x.weight, x.bias) for x in qkv])
    return layers


# -- architecture ---------------------------------------------------------------------------------
def detect_host_arch(layers: dict[str, LayerRef]) -> str:
    """"sd1" / "sd2" / "sdxl" / "unknown" from the layers present (arch.arch_of_layers)."""
    width = None
    for n, ref in layers.items():
        if n.endswith(".attn2.to_k") and ref.weight is not None:
            width = ref.weight.shape[1]
            break
    return arch_of_layers(layers.keys(), width)


def _diffusers_arch(unet, text_encoders) -> str:
    if unet is not None:
        for name, mod in unet.named_modules():
            if name.endswith("attn2.to_k") and isinstance(mod, torch.nn.Linear):
                return CONTEXT_WIDTH.get(mod.in_features, "unknown")
    tes = [t for t in text_encoders if t is not None]
    if len(tes) == 2:
        return "sdxl"
    if tes:
        width = getattr(getattr(tes[0], "config", None), "hidden_size", 768)
        return "sd2" if TE_WIDTH.get(width) == "sd2" else "sd1"  # one encoder: SD1 (CLIP-L) or SD2 (OpenCLIP-H)
    return "unknown"
