"""The algorithm registry: `REGISTRY`, one `Algorithm` descriptor per file, in LyCORIS detection order.

`algorithm_of(module)` is the descriptor that applies to a module (DoRA-wrapped when it carries a magnitude);
`compute_delta(module, base_weight, base_bias=None, dyn=None) -> Delta` its ΔW at user multiplier 1, in fp32,
against the ORIGINAL weight (order independent); `detect_algo(tensors)` names the algorithm of a module from its
suffixes; `rank_of` / `norm_of` serve reports; `check_module` is the load-time validation. Returned tensors are
fresh (never views of the file's tensors), so callers may scale them in place.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Set

import torch

from . import boft, dora, full, glora, ia3, lokr, loha, lora, norm, oft
from .algorithm import Algorithm
from ._common import UnsupportedModule, check_values

__all__ = ["ALGOS", "Algorithm", "Delta", "REGISTRY", "UnsupportedModule", "algorithm_of", "check_module",
           "compute_delta", "detect_algo", "get", "norm_of", "rank_of", "unknown_suffixes"]

# Detection order matters: the first descriptor that claims a module's tensors wins (BOFT before OFT).
REGISTRY: tuple = (lora.ALGORITHM, loha.ALGORITHM, ia3.ALGORITHM, lokr.ALGORITHM, full.ALGORITHM, norm.ALGORITHM,
                   boft.ALGORITHM, oft.ALGORITHM, glora.ALGORITHM)
_BY_NAME: Dict[str, Algorithm] = {a.name: a for a in REGISTRY}
ALGOS = tuple(_BY_NAME)


@dataclass
class Delta:
    weight: Optional[torch.Tensor]  # ΔW at multiplier 1, fp32, shape of the target weight (or qkv slice)
    bias: Optional[torch.Tensor]  # Δb at multiplier 1, or None


def get(name: str) -> Optional[Algorithm]:
    return _BY_NAME.get(name)


def detect_algo(suffixes: Iterable[str]) -> Optional[str]:
    """Algorithm from a module's suffixes, in LyCORIS detection order; None = not a known algorithm.

    `suffixes` may be a mapping suffix → tensor (or shape): then a 4-D `oft_blocks` is told apart as "boft"
    (with a plain set it reports "oft"; `algorithm_of` still tells BOFT by the tensor).
    """
    t = suffixes if isinstance(suffixes, Mapping) else dict.fromkeys(suffixes)
    for algo in REGISTRY:
        if algo.claims(t):
            return algo.name
    return None


def algorithm_of(module) -> Optional[Algorithm]:
    """The descriptor that computes this module (None: unknown algorithm)."""
    base = _BY_NAME.get(module.algo)
    if base is oft.ALGORITHM and boft.ALGORITHM.claims(module.tensors):
        base = boft.ALGORITHM
    if base is not None and dora.magnitude(module) is not None:
        return dora.variant(base)
    return base


def unknown_suffixes(algo: str, suffixes: Iterable[str]) -> Set[str]:
    """Suffixes the given algorithm does not read (e.g. T-LoRA's `lambda_layer`): report, and usually skip."""
    a = _BY_NAME.get(algo)
    return set(suffixes) - (a.suffixes if a is not None else frozenset())


def rank_of(module) -> Optional[int]:
    """Rank for reports; None for algorithms without one (IA3, full, norm, OFT, LoKr with two full factors)."""
    a = algorithm_of(module)
    if a is None or a.rank is None:
        return None
    try:
        return a.rank(module)
    except Exception:  # a report must not fail on a malformed module; compute_delta says what is wrong
        return None


def norm_of(module) -> Optional[float]:
    """‖ΔW‖_F at multiplier 1, or None when it depends on the model weight (IA3, GLoRA, OFT, BOFT, DoRA)."""
    a = algorithm_of(module)
    if a is None or a.norm is None:
        return None
    return a.norm(module)


def check_module(module) -> None:
    """Raise LoraStudioError (message starts with the module key) when a module is wrong whatever the model:
    NaN/Inf values, an empty tensor (rank 0), factors whose shapes disagree, a missing factor. Run at load
    time, so a damaged module is left out and reported before any delta is computed."""
    check_values(module)
    a = algorithm_of(module)
    if a is not None and a.check is not None:
        a.check(module)


def _fresh(t: Optional[torch.Tensor], module) -> Optional[torch.Tensor]:
    if t is None:
        return None
    for src in module.tensors.values():
        if isinstance(src, torch.Tensor) and src.device == t.device and src.data_ptr() == t.data_ptr():
            return t.clone()
    return t


def compute_delta(module, base_weight: torch.Tensor, base_bias: Optional[torch.Tensor] = None, dyn: Optional[int] = None) -> Delta:
    """ΔW (and Δb) of one module at multiplier 1, fp32, on base_weight's device, shaped like base_weight.

    Raises UnsupportedModule for modules to skip (conv IA3, unknown algorithm) and LoraStudioError for
    shape mismatches (naming the module key and both shapes).
    """
    a = algorithm_of(module)
    if a is None:
        raise UnsupportedModule(f"{module.key}: algorithm '{module.algo}' is not supported; the module is skipped")
    with torch.no_grad():
        w, b = a.delta(module, base_weight, base_bias, dyn)
        return Delta(_fresh(w, module), _fresh(b, module))
