"""Issue 11: the `dense_lowrank` setting. On (default): from a LoRA's second generation on, its deltas are kept
dense where the budget admits them and a weight change is one add per layer (cache hits); off, or budget 0: written from the factors with no
memory beyond the backups. Either way the weights equal a fresh apply of the same tag."""

from __future__ import annotations

import torch

from tests.fake_webui.harness import LAYERS


def test_dense_lowrank_setting_is_automatic_by_default_and_followed_when_switched(webui):
    from modules import shared

    from lora_studio_webui.engine import ENGINE
    webui.generate("x <lora:foo:1>")
    p = ENGINE.patcher
    assert p.dense_lowrank == "auto"                    # the fake WebUI's model is fp32: factors only
    webui.generate("x <lora:foo:0.7>")
    assert p.cache.bytes == 0
    shared.opts.data["lora_studio_dense_lowrank"] = "on"
    webui.generate("x <lora:foo:0.9>")
    assert p.dense_lowrank is True and p.cache.bytes > 0   # a change: the deltas are kept from now on
    hits = p.cache.hits
    webui.generate("x <lora:foo:0.5>")
    assert p.cache.hits > hits                          # the next change rescaled the kept deltas
    dense = webui.weights()

    shared.opts.data["lora_studio_dense_lowrank"] = "off"
    webui.generate("x")
    p.cache.clear()
    webui.generate("x <lora:foo:0.5>")
    assert not ENGINE.patcher.dense_lowrank and ENGINE.patcher.cache.bytes == 0
    factored = webui.weights()
    # fp32 model: the dense and the factor forms are both one rounding of W0 + m·ΔW
    assert all(torch.allclose(dense[k], factored[k], rtol=1e-5, atol=1e-6) for k in LAYERS)

    shared.opts.data["lora_studio_dense_lowrank"] = "on"
    shared.opts.data["lora_studio_cache_mb"] = 0           # the built-in's memory: nothing kept
    webui.generate("x <lora:foo:0.7>")
    assert ENGINE.patcher.dense_lowrank is True and ENGINE.patcher.cache.bytes == 0
    shared.opts.data["lora_studio_cache_mb"] = -1
    shared.opts.data["lora_studio_dense_lowrank"] = "automatic"
