"""Switching `lora_studio_take_over` back on after the built-in Lora merged a LoRA: Script.process re-registers
us and puts the built-in's merge back. That runs outside A1111's no_grad, where the built-in's in-place
restore into a Parameter raises (seen in a real A1111 1.10.1: "a leaf Variable that requires grad is being
used in an in-place operation" printed at every switch)."""

from __future__ import annotations

import torch

from tests.fake_webui.harness import LAYERS


def test_take_over_switched_on_restores_builtin_merge_outside_no_grad(webui, capsys):
    import networks
    from modules import extra_networks, shared

    base = webui.weights()
    layer = LAYERS[0]
    mod = webui.model.get_submodule("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k")
    assert mod.weight.requires_grad                    # as in A1111: restoring needs no_grad
    shared.opts.data["lora_studio_take_over"] = False
    webui.generate("x")                                # hands `lora` back to the built-in
    assert getattr(extra_networks.extra_network_registry["lora"], "marker", None) != "lora_studio"

    mod.network_layer_name = "diffusion_model_input_blocks_1_1_transformer_blocks_0_attn2_to_k"
    networks.loaded_networks[:] = [networks.FakeNet("old", delta={mod.network_layer_name: torch.ones_like(mod.weight)})]
    networks.forward_update(mod)                       # the built-in merged its LoRA while it had the tags
    assert not torch.equal(webui.weight(layer), base[layer])
    capsys.readouterr()

    shared.opts.data["lora_studio_take_over"] = True
    assert torch.is_grad_enabled()                     # the fake processing, like Script.process, runs with grad on
    p, _ = webui.generate("x")                         # Script.process → verify → register → flush_builtin
    out = capsys.readouterr()
    assert "Traceback" not in out.err and "leaf Variable" not in out.err, out.err
    assert "registered it again" in out.out
    assert getattr(extra_networks.extra_network_registry["lora"], "marker", None) == "lora_studio"
    assert networks.loaded_networks == []
    assert getattr(mod, "network_current_names", ()) == ()
    assert torch.equal(webui.weight(layer), base[layer])
    assert all(torch.equal(webui.weight(k), base[k]) for k in LAYERS)
