"""Live merges in a fake AUTOMATIC1111: a LoRA tag on top of a live merge applies and restores to the merge,
re-merging with LoRAs applied starts from the loaded weights, the conditioning cache is dropped after a
text-encoder change, loading another checkpoint drops the state, Reload UI restores the loaded weights."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from lib_lora.errors import LoraStudioError
from tests.fake_webui.harness import LAYERS
from tests.models import bits

TE = LAYERS[5]
ALL17 = ",".join(["1"] * 17)


def same(x: dict, y: dict) -> bool:
    return x.keys() == y.keys() and all(torch.equal(bits(x[k]), bits(y[k])) for k in x)


def write_other(webui, tmp_path, name, seed):
    """A 'checkpoint' with the loaded model's keys and shapes and other weights."""
    from lib_lora.merge.live import checkpoint_tensors
    gen = torch.Generator().manual_seed(seed)
    sd = {k: (torch.randn(t.shape, generator=gen) * 0.05).to(t.dtype) for k, t in checkpoint_tensors(webui.model).items()}
    path = tmp_path / f"{name}.safetensors"
    save_file(sd, str(path))
    return str(path)


@pytest.fixture
def live(webui, tmp_path):
    from lora_studio_webui import live_merge
    lm = live_merge.provider()
    return lm, write_other(webui, tmp_path, "b", 11), write_other(webui, tmp_path, "c", 12)


def merged_reference(webui, b, **kw):
    """The same merge on a copy of the loaded weights, outside the WebUI."""
    from lib_lora.merge.live import LiveMerge
    from lib_lora.merge.live import checkpoint_tensors
    copy = {k: v.detach().clone() for k, v in checkpoint_tensors(webui.model).items()}
    LiveMerge(copy, keep=("first_stage_model.",)).apply(b=b, **kw)
    return copy


def test_provider_maps_checkpoint_keys(webui):
    from lib_lora.merge.live import checkpoint_tensors
    keys = set(checkpoint_tensors(webui.model))
    assert TE + ".weight" in keys and LAYERS[0] + ".weight" in keys
    assert not any(".wrapped." in k for k in keys)


def test_lora_on_top_of_live_merge_applies_and_restores_to_the_merge(webui, live):
    lm, b, c = live
    original = webui.weights()
    ref = merged_reference(webui, b, alpha=0.4)
    ref2 = merged_reference(webui, b, c=c, mode="add-diff", alpha=0.9)
    ref2 = {k: ref2[k + ".weight"] for k in LAYERS}
    assert "live merge" in lm.apply(b=b, alpha=0.4)
    merged = webui.weights()
    assert same(merged, {k: ref[k + ".weight"] for k in LAYERS})
    webui.generate(f"x <lora:foo:1:{ALL17}>")
    assert not same(webui.weights(), merged)
    webui.generate("x")                                  # the LoRA's backups held the merge
    assert same(webui.weights(), merged)
    webui.generate(f"x <lora:foo:0.7:{ALL17}>")          # re-merge while the LoRA is on: no LoRA in the base
    lm.apply(b=b, c=c, mode="add-diff", alpha=0.9)
    assert same(webui.weights(), ref2)
    webui.generate(f"x <lora:foo:1:{ALL17}>")
    webui.generate("x")
    assert same(webui.weights(), ref2)
    webui.generate(f"x <lora:foo:1:{ALL17}>")
    assert "restored" in lm.restore()                    # restore with the LoRA on: the loaded weights exactly
    assert same(webui.weights(), original)
    webui.generate("x")
    assert same(webui.weights(), original)


def test_text_encoder_change_drops_cached_conditioning(webui, live):
    lm, b, _ = live
    p = webui.processing("x")
    p.cond_fn = lambda proc: float(webui.weight(TE).double().sum())
    from modules import processing
    processing.process_images(p)
    assert processing.Processing.cached_c[0] is not None
    lm.apply(b=b, alpha=0.5)
    assert processing.Processing.cached_c[0] is None
    q = webui.processing("x")
    q.cond_fn = p.cond_fn
    processing.process_images(q)
    assert q.conds_used[-1][2] == float(webui.weight(TE).double().sum())


def test_vae_reload_keeps_and_checkpoint_load_drops_the_live_merge(webui, live):
    from modules import script_callbacks
    from lora_studio_webui.live_merge import HOST
    lm, b, _ = live
    lm.apply(b=b, alpha=0.5)
    webui.generate(f"x <lora:foo:1:{ALL17}>")            # our own LoRA writes do not read as a reload
    script_callbacks.model_loaded_callback(webui.model)  # a VAE reload: nothing changed
    assert HOST.live is lm and lm.active is not None
    webui.generate("x")
    loaded = {}
    with torch.no_grad():                                # another checkpoint loaded into the same model
        for layer in LAYERS:
            param = webui.model.get_submodule(_a1111(layer)).weight
            param.copy_(torch.full_like(param, 0.01))
            loaded[layer] = param.detach().clone()
    script_callbacks.model_loaded_callback(webui.model)
    assert HOST.live is None
    assert same(webui.weights(), loaded)                 # nothing "restored" over the new weights
    fresh = HOST()
    assert fresh is not lm and fresh.active is None


def _a1111(layer):
    from tests.models import a1111_name
    return a1111_name(layer)


def test_reload_ui_restores_the_loaded_weights(webui, live):
    lm, b, _ = live
    original = webui.weights()
    lm.apply(b=b, alpha=0.5)
    assert not same(webui.weights(), original)
    webui.reload_ui()
    assert same(webui.weights(), original)


def test_no_model_loaded_is_one_line(webui):
    from modules import sd_models
    from lora_studio_webui import live_merge
    sd_models.model_data.sd_model = None
    with pytest.raises(LoraStudioError, match="^no model is loaded in the WebUI"):
        live_merge.provider()


def test_save_as_input_writes_the_checkpoint_files_types(webui, tmp_path):
    """The WebUI runs an fp16 checkpoint in fp32 (--no-half, CPU): "Save what is applied" with the output type
    "as input" writes the types of A's file, as the Merge button does, not the loaded model's fp32."""
    from safetensors import safe_open

    from lib_lora.merge.live import checkpoint_tensors
    from lora_studio_webui import live_merge
    from modules import sd_models
    loaded = checkpoint_tensors(webui.model)
    a = {k: v.detach().to(torch.float16) if v.is_floating_point() else v.detach().clone() for k, v in loaded.items()}
    path = tmp_path / "Stable-diffusion" / "a.safetensors"
    path.parent.mkdir()
    save_file(a, str(path))
    with torch.no_grad():                                # the model holds the fp16 file's values in fp32
        for k, v in loaded.items():
            v.copy_(a[k])
    webui.model.sd_checkpoint_info = sd_models.CheckpointInfo(str(path))
    lm = live_merge.provider()
    lm.apply(b=write_other(webui, tmp_path, "b", 11), alpha=0.5)
    out = tmp_path / "saved.safetensors"
    lm.save(out)
    with safe_open(str(out), "pt") as f:
        assert set(f.keys()) == set(a)
        for k, v in checkpoint_tensors(webui.model).items():
            t = f.get_tensor(k)
            assert t.dtype == a[k].dtype, k
            assert torch.equal(bits(t), bits(v.detach().to(t.dtype))), k
