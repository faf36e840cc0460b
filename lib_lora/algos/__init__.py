"""Per-algorithm ΔW at user multiplier 1, in fp32, against the ORIGINAL weight (order independent).

`compute_delta(module, base_weight, base_bias=None, dyn=None) -> Delta` is the single entry point;
`detect_algo(suffixes)` names the algorithm of a module from its tensor suffixes (docs/spec/formats.md §2 order);
`rank_of(module)` gives the rank for reports. Returned tensors are fresh (never views of the file's tensors),
so callers may scale them in place.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Optional, Set

import torch

from . import boft, dora, full, glora, ia3, lokr, loha, lora, norm, oft
from ._common import UnsupportedModule, check_values, dora_tensor

__all__ = ["Delta", "UnsupportedModule", "check_module", "compute_delta", "detect_algo", "rank_of", "unknown_suffixes", "ALGOS"]


@dataclass
class Delta:
    weight: Optional[torch.Tensor]  # ΔW at multiplier 1, fp32, shape of the target weight (or qkv slice)
    bias: Optional[torch.Tensor]  # Δb at multiplier 1, or None


_DELTA: Dict[str, Callable] = {
    "lora": lora.delta,
    "loha": loha.delta,
    "lokr": lokr.delta,
    "ia3": ia3.delta,
    "full": full.delta,
    "norm": norm.delta,
    "glora": glora.delta,
    "oft": oft.delta,
    "boft": boft.delta,
}
ALGOS = tuple(_DELTA)
_DORA_ALGOS = frozenset(("lora", "loha", "lokr"))
_SUFFIXES = {
    "lora": lora.SUFFIXES,
    "loha": loha.SUFFIXES,
    "lokr": lokr.SUFFIXES,
    "ia3": ia3.SUFFIXES,
    "full": full.SUFFIXES,
    "norm": norm.SUFFIXES,
    "glora": glora.SUFFIXES,
    "oft": oft.SUFFIXES,
    "boft": boft.SUFFIXES,
}
_CHECK = {"lora": lora.check, "loha": loha.check, "lokr": lokr.check, "glora": glora.check, "oft": oft.check,
          "boft": boft.check}
_RANK = {"lora": lora.rank, "loha": loha.rank, "lokr": lokr.rank, "glora": glora.rank}


def _ndim(v) -> Optional[int]:
    if v is None:
        return None
    if isinstance(v, torch.Tensor):
        return v.dim()
    try:
        return len(v)  # a shape
    except TypeError:
        return None


def detect_algo(suffixes: Iterable[str]) -> Optional[str]:
    """Algorithm from a module's suffixes, in LyCORIS detection order; None = not a known algorithm.

    `suffixes` may also be a mapping suffix → tensor (or shape): then a 4-D `oft_blocks` is told apart as
    "boft" (with a plain set it reports "oft" and compute_delta still dispatches on the tensor's rank).
    """
    s = set(suffixes)
    if s & {"lora_up.weight", "lora_A.weight", "lora_down.weight", "lora_B.weight"}:
        return "lora"
    if "hada_w1_a" in s:
        return "loha"
    if "on_input" in s:
        return "ia3"
    if "lokr_w1" in s or "lokr_w1_a" in s:
        return "lokr"
    if "diff" in s:
        return "full"
    if "w_norm" in s or "b_norm" in s:
        return "norm"
    if "oft_blocks" in s:
        nd = _ndim(suffixes.get("oft_blocks")) if isinstance(suffixes, Mapping) else None
        return "boft" if nd == 4 else "oft"
    if "oft_diag" in s:
        return "oft"
    if "a1.weight" in s:
        return "glora"
    return None


def unknown_suffixes(algo: str, suffixes: Iterable[str]) -> Set[str]:
    """Suffixes the given algorithm does not read (e.g. T-LoRA's `lambda_layer`): report, and usually skip."""
    return set(suffixes) - _SUFFIXES.get(algo, frozenset())


def rank_of(module) -> Optional[int]:
    """Rank for reports; None for algorithms without one (IA3, full, norm, OFT, LoKr with two full factors)."""
    fn = _RANK.get(module.algo)
    if fn is None:
        return None
    try:
        return fn(module)
    except Exception:  # a report must not fail on a malformed module; compute_delta says what is wrong
        return None


def check_module(module) -> None:
    """Raise LoraStudioError (message starts with the module key) when a module is wrong whatever the model:
    NaN/Inf values, an empty tensor (rank 0), factors whose shapes disagree, a missing factor. Run at load
    time, so a damaged module is left out and reported before any delta is computed."""
    check_values(module)
    fn = _CHECK.get(_algo(module))
    if fn is not None:
        fn(module)


def _fresh(t: Optional[torch.Tensor], module) -> Optional[torch.Tensor]:
    if t is None:
        return None
    for src in module.tensors.values():
        if isinstance(src, torch.Tensor) and src.device == t.device and src.data_ptr() == t.data_ptr():
            return t.clone()
    return t


def _algo(module) -> str:
    algo = module.algo
    if algo == "oft":
        blocks = module.tensors.get("oft_blocks")
        if blocks is not None and blocks.dim() == 4:
            return "boft"
    return algo


def compute_delta(module, base_weight: torch.Tensor, base_bias: Optional[torch.Tensor] = None, dyn: Optional[int] = None) -> Delta:
    """ΔW (and Δb) of one module at multiplier 1, fp32, on base_weight's device, shaped like base_weight.

    Raises UnsupportedModule for modules to skip (conv IA3, unknown algorithm) and LoraStudioError for
    shape mismatches (naming the module key and both shapes).
    """
    algo = _algo(module)
    fn = _DELTA.get(algo)
    if fn is None:
        raise UnsupportedModule(f"{module.key}: algorithm '{module.algo}' is not supported; the module is skipped")
    with torch.no_grad():
        w, b = fn(module, base_weight, base_bias, dyn)
        g = dora_tensor(module)
        if g is not None and w is not None and algo in _DORA_ALGOS:
            w = dora.apply(module.key, base_weight, w, g, peft=bool(getattr(module, "peft_dora", False)))
        return Delta(_fresh(w, module), _fresh(b, module))
