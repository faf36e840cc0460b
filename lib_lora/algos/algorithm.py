"""`Algorithm`: the one descriptor each file under algos/ exports as `ALGORITHM` (the list is in __init__.py).

Everything the project knows about an algorithm is reached through its descriptor: how a module is recognised,
which tensors it reads, its ΔW, rank, norm and load-time checks, and how a multiplier can be folded into its
factors. Each file keeps the math in pure tensor functions (`kernel`…: factors in, delta out) and a thin adapter
that reads a module's tensors by suffix and calls them; resize, extraction and training reuse the kernels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Tuple

import torch

Tensors = Mapping[str, Optional[torch.Tensor]]  # suffix → tensor (None when only the suffix is known)


@dataclass(frozen=True)
class Algorithm:
    name: str
    suffixes: frozenset                          # tensor suffixes it reads (normalised by keys.split_key)
    claims: Callable[[Tensors], bool]            # does a module's suffix → tensor mapping belong to it
    delta: Callable                              # (module, base_weight, base_bias, dyn) → (ΔW | None, Δb | None)
    check: Optional[Callable] = None             # (module) → None; raises for factors no model can use
    rank: Optional[Callable] = None              # (module) → int | None, for reports and dyn=
    norm: Optional[Callable] = None              # (module) → ‖ΔW‖_F at multiplier 1; None: needs the model weight
    # Suffixes of the factor(s) ΔW is linear in: a multiplier folds into the first present (or into all
    # present when linear_all, e.g. GLoRA's two terms). Empty: not linear in any stored factor (OFT, BOFT, DoRA).
    linear_in: Tuple[str, ...] = ()
    linear_all: bool = False
    # A form the patcher writes without a dense ΔW: "lowrank" (up·scale, down; written with one addmm, never
    # cached), "kron" (W1·scale, W2; cached as the two factors) or "hada" (w1a·scale, w1b, w2a, w2b; written in
    # row blocks where its dense ΔW does not fit the cache). compact(module, dyn, device) → the tuple or None.
    compact_kind: Optional[str] = None
    compact: Optional[Callable] = None
    alpha_constraint: bool = False               # alpha bounds the factors (OFT): 0 is a value, not "unset"
    cache: bool = True                           # False: its dense ΔW costs a cast or one product with W0
    in_width: Optional[Callable] = None          # (get: suffix → tensor | None) → input width of the target layer
    narrow: Optional[Callable] = None            # (suffix, tensor, n) → tensor keeping the first n ranks (dyn=)
    base: Optional["Algorithm"] = None           # a variant's wrapped algorithm (DoRA on LoRA: the LoRA)
    factorise: Optional[Callable] = None         # reserved: ΔW → this algorithm's factors (resize, extraction)
    initialise: Optional[Callable] = None        # reserved: layer shape + rank → trainable factors (training)

    @property
    def linear(self) -> bool:
        """ΔW is linear in one stored factor, so a multiplier can be written into the file."""
        return bool(self.linear_in)
