"""Optimizers by sd-scripts name and the learning-rate schedules (small own implementations, factor of the
base learning rate per optimizer step, as sd-scripts / diffusers define them)."""

from __future__ import annotations

import ast
import importlib
import math

import torch

from lib_lora.errors import LoraStudioError
from lib_lora.train.config import optimizer_name, parse_kv_args

# name → (package to import, attribute path, pip name) of optimizers outside torch
_EXTERNAL = {
    "AdamW8bit": ("bitsandbytes.optim", "AdamW8bit", "bitsandbytes"),
    "PagedAdamW8bit": ("bitsandbytes.optim", "PagedAdamW8bit", "bitsandbytes"),
    "Lion8bit": ("bitsandbytes.optim", "Lion8bit", "bitsandbytes"),
    "Lion": ("lion_pytorch", "Lion", "lion-pytorch"),
    "Prodigy": ("prodigyopt", "Prodigy", "prodigyopt"),
    "DAdaptAdam": ("dadaptation", "DAdaptAdam", "dadaptation"),
    "DAdaptation": ("dadaptation", "DAdaptAdam", "dadaptation"),
    "AdaFactor": ("transformers.optimization", "Adafactor", "transformers"),
}
ADAPTIVE = ("Prodigy", "DAdaptAdam", "DAdaptation")


def parse_optimizer_args(items) -> dict:
    """"key=value" → value as a Python literal when it is one ("betas=0.9,0.999" → (0.9, 0.999))."""
    out = {}
    for k, v in parse_kv_args(items, "optimizer_args").items():
        try:
            out[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k] = v
    return out


def optimizer_class(name: str):
    name = optimizer_name(name)
    if name == "AdamW":
        return torch.optim.AdamW
    if name == "SGDNesterov":
        return torch.optim.SGD
    module, attr, pip = _EXTERNAL[name]
    try:
        return getattr(importlib.import_module(module), attr)
    except ImportError:
        raise LoraStudioError(f"optimizer_type {name} needs the '{pip}' package, which is not installed; "
                              f"install it (pip install {pip}) or use AdamW.") from None


def build_optimizer(name: str, groups: list[dict], args_list, lr: float):
    """(optimizer, description for ss_optimizer, lr_is_relative): groups carry their own lr."""
    name = optimizer_name(name)
    args = parse_optimizer_args(args_list)
    cls = optimizer_class(name)
    if name == "SGDNesterov":
        args.setdefault("nesterov", True)
        args.setdefault("momentum", 0.9)
    if name in ADAPTIVE and len({g["lr"] for g in groups}) > 1:
        lr0 = groups[0]["lr"]      # sd-scripts: adaptive optimizers use the first group's learning rate
        for g in groups:
            g["lr"] = lr0
    relative = False
    if name == "AdaFactor":
        args.setdefault("relative_step", True)
        if args["relative_step"]:
            args.setdefault("warmup_init", True)
            args.setdefault("scale_parameter", True)
            relative = True
            for g in groups:
                g["lr"] = None
    try:
        opt = cls([dict(g) for g in groups], lr=None if relative else lr, **args)
    except TypeError as exc:
        raise LoraStudioError(f"optimizer_args do not fit {name}: {exc}; check the names.") from None
    desc = f"{cls.__module__}.{cls.__name__}" + (f"({','.join(f'{k}={v}' for k, v in args.items())})"
                                                 if args else "")
    return opt, desc, relative


def schedule_factor(name: str, step: int, total: int, warmup: int, cycles: int = 1, power: float = 1.0,
                    lr: float = 1.0) -> float:
    """Factor of the base learning rate at optimizer step `step` (0-based)."""
    if warmup and step < warmup:
        return step / max(1, warmup) if name != "constant" else 1.0
    if name in ("constant", "constant_with_warmup"):
        return 1.0
    p = (step - warmup) / max(1, total - warmup)
    if name == "linear":
        return max(0.0, 1.0 - p)
    if name == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * p)))
    if name == "cosine_with_restarts":
        if p >= 1.0:
            return 0.0
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((cycles * p) % 1.0))))
    if name == "polynomial":
        end = 1e-7
        if step > total:
            return end / lr
        decay = (lr - end) * (1 - p) ** power + end
        return decay / lr
    raise LoraStudioError(f"lr_scheduler '{name}' is not supported.")


class Schedule:
    """Sets each group's lr to base × factor(step); state is the step count (saved with the run state)."""

    def __init__(self, optimizer, name: str, total: int, warmup: int, cycles: int = 1, power: float = 1.0):
        self.opt, self.name, self.total, self.warmup = optimizer, name, total, warmup
        self.cycles, self.power = cycles, power
        self.base = [g["lr"] for g in optimizer.param_groups]
        self.step_count = 0
        self._apply()

    def _apply(self) -> None:
        for g, base in zip(self.opt.param_groups, self.base):
            if base is not None:
                g["lr"] = base * schedule_factor(self.name, self.step_count, self.total, self.warmup, self.cycles,
                                                 self.power, base)

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def last_lrs(self) -> list[float]:
        out = []
        for g in self.opt.param_groups:
            lr = g["lr"]
            if lr is None:      # Adafactor's relative step: the optimizer keeps its own rate
                lr = g.get("d", 1.0)
            if "d" in g and g["lr"] is not None:      # D-Adaptation / Prodigy: effective lr = d × lr
                lr = g["d"] * g["lr"]
            out.append(float(lr))
        return out

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "base": list(self.base)}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
        self.base = list(state["base"])
        self._apply()


def warmup_steps(value: float, total: int) -> int:
    """lr_warmup_steps: a whole number of steps, or a fraction (< 1) of all steps."""
    return int(value * total) if 0 < value < 1 else int(value)
