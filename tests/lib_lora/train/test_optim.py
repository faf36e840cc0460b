"""Optimizers by sd-scripts name and the learning-rate schedules."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from lib_lora.errors import LoraStudioError
from lib_lora.train import optim as O


def test_schedules_match_their_definitions():
    T, W = 100, 10
    f = O.schedule_factor
    assert [f("constant_with_warmup", s, T, W) for s in (0, 5, 10, 99)] == [0.0, 0.5, 1.0, 1.0]
    assert f("linear", 55, T, W) == pytest.approx(0.5)
    assert f("cosine", 55, T, W) == pytest.approx(0.5)
    assert f("cosine", 100, T, W) == pytest.approx(0.0)
    # 3 cycles: back to the top after each third of the decay
    assert f("cosine_with_restarts", 10 + 30, T, W, cycles=3) == pytest.approx(1.0)
    assert f("cosine_with_restarts", 10 + 15, T, W, cycles=3) == pytest.approx(0.5)
    assert f("cosine_with_restarts", 100, T, W, cycles=3) == 0.0
    lr = 1e-4
    assert f("polynomial", 55, T, W, power=2.0, lr=lr) * lr == pytest.approx((lr - 1e-7) * 0.25 + 1e-7)
    assert f("constant", 3, T, 0) == 1.0
    assert O.warmup_steps(0.05, 1000) == 50 and O.warmup_steps(20, 1000) == 20


def test_schedule_drives_each_group_and_restores():
    p1, p2 = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [p1], "lr": 1e-3}, {"params": [p2], "lr": 5e-4}])
    s = O.Schedule(opt, "linear", 10, 0)
    for _ in range(5):
        s.step()
    assert s.last_lrs() == pytest.approx([5e-4, 2.5e-4])
    s2 = O.Schedule(torch.optim.AdamW([{"params": [p1], "lr": 1e-3}, {"params": [p2], "lr": 5e-4}]), "linear",
                    10, 0)
    s2.load_state_dict(s.state_dict())
    assert s2.last_lrs() == pytest.approx([5e-4, 2.5e-4])


def test_optimizer_args_and_missing_packages():
    assert O.parse_optimizer_args(["betas=0.9,0.99", "weight_decay=0.01", "decouple=True", "x=abc"]) == {
        "betas": (0.9, 0.99), "weight_decay": 0.01, "decouple": True, "x": "abc"}
    p = torch.nn.Parameter(torch.zeros(2))
    opt, desc, _ = O.build_optimizer("adamw", [{"params": [p], "lr": 1e-3}], ["weight_decay=0.1"], 1e-3)
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["weight_decay"] == 0.1
    assert desc == "torch.optim.adamw.AdamW(weight_decay=0.1)"
    with pytest.raises(LoraStudioError, match="do not fit AdamW"):
        O.build_optimizer("AdamW", [{"params": [p], "lr": 1e-3}], ["bogus=1"], 1e-3)
    for name, module in (("AdamW8bit", "bitsandbytes"), ("Lion", "lion_pytorch"), ("Prodigy", "prodigyopt"),
                         ("DAdaptAdam", "dadaptation")):
        if importlib.util.find_spec(module) is None:
            with pytest.raises(LoraStudioError) as e:
                O.build_optimizer(name, [{"params": [p], "lr": 1.0}], [], 1.0)
            assert "pip install" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers not installed")
def test_adafactor_relative_step():
    p = torch.nn.Parameter(torch.ones(4))
    opt, desc, relative = O.build_optimizer("AdaFactor", [{"params": [p], "lr": 1e-3}], [], 1e-3)
    assert relative and "Adafactor" in desc
    p.grad = torch.ones(4)
    opt.step()
    assert not math.isnan(float(p.detach().sum()))
