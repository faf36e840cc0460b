"""LoRA Studio on a fake Forge (tests/fake_webui/forge): block weights become per-block add_patches strengths on
clones of forge_objects_original.unet/clip, checked on real SD1.5 parameter names with real kohya LoRA files;
feature tests fall back to Forge's built-in Lora with a message, and nothing raises."""

from __future__ import annotations

import pytest
import torch

from lib_lora.blocks import FORMATS, slot_of_layer
from lib_lora.patcher import ActiveLora
from tests.fake_webui.forge_harness import OUTSIDE, FakeForge, forge_key
from tests.fake_webui.harness import LAYERS, write_lora

V17 = [0.5, 0.1, 0.9, 0.2, 0.9, 0.9, 0.9, 0.3, 0.4, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.6]
TE, UNET = 0.8, 0.7


def vec26(values):
    out = [0.0] * 26
    for slot, v in zip(FORMATS[len(values)], values):
        out[slot] = v
    return out


@pytest.fixture
def forge(tmp_path):
    w = FakeForge(tmp_path)
    write_lora(w, "foo", seed=1)
    write_lora(w, "bar", seed=2)
    w.start()
    yield w
    w.close()


def unet_calls(w):
    return w.unet.calls


def clip_calls(w):
    return w.clip.patcher.calls


def lbw(values):
    return "lbw=" + ",".join(f"{v:g}" for v in values)


def test_start_up_takes_over_lora_and_lyco(tmp_path, capsys):
    forge = FakeForge(tmp_path).start()
    try:
        _check_start_up(capsys)
    finally:
        forge.close()


def _check_start_up(capsys):
    from modules import extra_networks
    assert getattr(extra_networks.extra_network_registry["lora"], "marker", None) == "lora_studio"
    assert getattr(extra_networks.extra_network_aliases["lyco"], "marker", None) == "lora_studio"
    out = capsys.readouterr().out
    assert "Block weights (presets, weight lists, lbw=) are applied through Forge's LoRA patcher" in out
    from modules import scripts
    xyz = [d.module for d in scripts.scripts_data if d.script_class.__module__ == "xyz_grid.py"][0]
    assert len([o for o in xyz.axis_options if o.label.startswith("[LoRA Studio]")]) > 2


def test_strengths_per_block_equal_the_resolved_vector(forge):
    p, _ = forge.generate(f"x <lora:foo:{TE}:{UNET}:{lbw(V17)}>")
    v = vec26(V17)
    calls = unet_calls(forge)
    assert calls, "no U-Net patches were added"
    seen = {}
    for c in calls:
        assert c["strength_model"] == 1.0 and c["online_mode"] is False
        for key in c["keys"]:
            slot = slot_of_layer("model." + key)
            want = UNET if slot is None else UNET * v[slot]
            assert c["strength_patch"] == pytest.approx(want), key
            seen[key] = c["strength_patch"]
    # every U-Net layer of the LoRA was patched exactly once, one call per distinct strength
    unet_layers = [layer for layer in LAYERS + (OUTSIDE,) if layer.startswith("model.")]
    assert sorted(seen) == sorted(forge_key(layer) for layer in unet_layers)
    assert len(calls) == len({c["strength_patch"] for c in calls}) == len(set(seen.values()))
    assert len({c["filename"] for c in calls}) == len(calls)          # no identifier overwrites another
    # outside the table (time_embed): the plain unet multiplier
    assert seen[forge_key(OUTSIDE)] == pytest.approx(UNET)
    # BASE → the text encoder, te × w[BASE]
    [cc] = clip_calls(forge)
    assert cc["strength_patch"] == pytest.approx(TE * V17[0])
    assert cc["keys"] == [forge_key(LAYERS[5])]
    # stored where Forge's processing reads it, on clones (the originals stay clean)
    sd = forge.engine
    assert sd.forge_objects_after_applying_lora.unet is not forge.unet
    assert sd.forge_objects_after_applying_lora.clip is not forge.clip
    assert forge.unet.lora_patches == {} and forge.clip.patcher.lora_patches == {}
    assert sd.current_lora_hash.startswith("lora_studio:")
    assert "Lora hashes" in p.extra_generation_params


def test_merged_weights_equal_the_core_delta_times_block_weight(forge):
    """What Forge would merge from our patches = base + multiplier × lib_lora's delta, per block."""
    from lib_lora.algos import compute_delta
    from lib_lora.network import load_network
    forge.generate(f"x <lora:foo:{TE}:{UNET}:{lbw(V17)}>")
    after = forge.engine.forge_objects_after_applying_lora
    net = load_network(forge.lora_dir / "foo.safetensors")
    v = vec26(V17)
    checked = 0
    for m in net.modules.values():
        key = forge_key(m.layer)
        patcher = after.clip.patcher if m.is_te else after.unet
        base = dict(patcher.model.named_parameters())[key].detach().float()
        mult = TE * v[0] if m.is_te else UNET * (1.0 if m.slot is None else v[m.slot])
        want = base + mult * compute_delta(m, base).weight
        torch.testing.assert_close(patcher.merged(key), want, rtol=1e-5, atol=1e-6)
        checked += 1
    assert checked == len(LAYERS) + 1


def test_same_tags_reuse_the_patches_changed_blocks_rebuild_and_no_tags_reset(forge):
    forge.generate(f"x <lora:foo:1:{lbw(V17)}>", n_iter=2, enable_hr=True)
    n = len(unet_calls(forge))
    first = forge.engine.forge_objects_after_applying_lora.unet
    forge.generate(f"x <lora:foo:1:{lbw(V17)}>")
    assert len(unet_calls(forge)) == n and forge.engine.forge_objects_after_applying_lora.unet is first
    # same strengths, other blocks: a new identifier set, so Forge re-merges
    swapped = [V17[0], V17[2], V17[1]] + V17[3:]
    forge.generate(f"x <lora:foo:1:{lbw(swapped)}>")
    assert len(unet_calls(forge)) > n
    forge.generate("x")
    sd = forge.engine
    assert sd.forge_objects_after_applying_lora.unet is forge.unet and sd.current_lora_hash == "[]"


def test_zero_blocks_are_not_patched_and_two_loras_stack(forge):
    zero = [1.0] + [0.0] * 16
    forge.generate(f"x <lora:foo:1:{lbw(zero)}> <lyco:bar:0.5>")
    calls = unet_calls(forge)
    foo = [c for c in calls if "foo.safetensors" in c["filename"]]
    bar = [c for c in calls if "bar.safetensors" in c["filename"]]
    assert [c["keys"] for c in foo] == [[forge_key(OUTSIDE)]]       # only the outside-table key
    assert len(bar) == 1 and bar[0]["strength_patch"] == 0.5 and len(bar[0]["keys"]) == 6
    assert len(clip_calls(forge)) == 2


def test_random_base_weight_per_batch_refreshes_the_cached_conditioning(forge):
    """Same tag text every batch, BASE drawn per batch: the text-keyed conditioning cache must not be reused."""
    sd = forge.engine

    def te_strengths(p):
        return tuple(sorted(ident[1] for ident in sd.forge_objects_after_applying_lora.clip.patcher.lora_patches))
    p = forge.processing("x <lora:foo:1:lbw=R,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1>", n_iter=4)
    p.cond_fn = te_strengths
    from modules import processing
    processing.process_images(p)
    used = [c for _, _, c in p.conds_used]
    assert len(set(used)) > 1                                        # drawn per batch
    drawn = [c["strength_patch"] for c in clip_calls(forge)]
    assert [u[0] for u in used] == pytest.approx(drawn)              # each batch saw its own TE weights


def test_start_stop_said_once_per_generation(forge, capsys):
    p, _ = forge.generate("x <lora:foo:1:start=2>", n_iter=3)
    err = capsys.readouterr().err
    assert err.count("start=/stop= are not supported on Forge") == 1
    assert any("start=/stop= are not supported on Forge" in c for c in p.comments)
    assert unet_calls(forge)                                          # still applied, for all steps


@pytest.mark.parametrize("prompt", [
    "x <lora:foo:abc>", "x <lora:foo:1:lbw=NOSUCHPRESET>", "x <lora:missing:1>", "x <lora:foo:1:lbw=1,2,3>",
    "x <lora:foo:1:start=x>", "x <lora: :1>", "x <lora:foo:1:2:3:4:5:6>",
])
def test_bad_tags_never_raise(forge, prompt):
    from modules import extra_networks
    p, _ = forge.generate(prompt)
    assert extra_networks.errors_seen == []
    assert p.comments, "the user is told what was wrong"


def test_internal_error_is_reported_and_leaves_no_patches(forge, monkeypatch):
    from modules import extra_networks

    import backend.patcher.lora as bl
    forge.generate("x <lora:foo:1>")
    assert forge.engine.current_lora_hash != "[]"

    def boom(lora, to_load):
        raise RuntimeError("broken loader")
    monkeypatch.setattr(bl, "load_lora", boom)
    p, _ = forge.generate("x <lora:bar:1>")
    assert extra_networks.errors_seen == []
    assert any("internal error" in c and "broken loader" in c for c in p.comments)
    assert forge.engine.forge_objects_after_applying_lora.unet is forge.unet


def _old_add_patches(self, patches, strength_patch=1.0, strength_model=1.0):   # ComfyUI/older Forge shape
    return set()


def test_unknown_signature_falls_back_to_the_start_up_message(tmp_path, capsys):
    w = FakeForge(tmp_path, builtin=True)
    try:
        from backend.patcher.base import ModelPatcher
        ModelPatcher.add_patches = _old_add_patches
        write_lora(w, "foo")
        w.start()
        out = capsys.readouterr().out
        assert "block weights (presets, weight lists, lbw=) are NOT applied" in out
        assert "add_patches has another signature" in out
        from modules import extra_networks
        assert getattr(extra_networks.extra_network_registry.get("lora"), "marker", None) is None
        p, _ = w.generate(f"x <lora:foo:1:{lbw(V17)}>")            # Forge's own handler's business
        assert extra_networks.errors_seen == []
        # called anyway (another extension, stale registration): message + plain te/unet to the built-in
        import networks
        from lora_studio_webui.forge_apply import APPLIER
        p = w.processing("x")
        APPLIER.activate(p, [extra_networks.ExtraNetworkParams(items=["foo", "0.5", "0.25", "lbw=ALL"])])
        assert any("cannot be applied on this Forge version" in c for c in p.comments)
        assert networks.extra_network_lora.calls[-1] == [["foo", "0.5", "0.25"]]
    finally:
        w.close()


def test_model_without_the_interface_falls_back_per_generation(forge):
    from modules import extra_networks

    from lora_studio_webui.forge_apply import APPLIER
    forge.engine.forge_objects_original.clip = object()             # no clone()/add_patches
    p = forge.processing("x")
    APPLIER.activate(p, [extra_networks.ExtraNetworkParams(items=["foo", "1"])])
    assert any("forge_objects_original.clip has no clone()" in c for c in p.comments)
    assert forge.engine.current_lora_hash == "[]"


def test_sdxl_checkpoint_keys_group_by_block():
    """Every SDXL U-Net parameter, named as Forge names it, lands in its block's group (12-value format)."""
    import json
    import os
    import re

    from lora_studio_webui.forge_apply import group_unet, slot_of_key
    from tests.factory import FIXTURES
    with open(os.path.join(FIXTURES, "sdxl_checkpoint_compvis.json")) as f:
        keys = json.load(f)["keys"]
    unet = [k[len("model."):] for k in keys if k.startswith("model.diffusion_model.")]
    v12 = [0.5, 0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9, 1.1, 1.2, 1.3]
    v = vec26(v12)
    groups = group_unet({k: ("lora", k) for k in unet}, ActiveLora(None, unet=2.0, blocks=v))
    got = {k: s for s, (_, g) in groups.items() for k in g}
    assert sorted(got) == sorted(unet)
    n_outside = 0
    for k in unet:
        m = re.match(r"diffusion_model\.(input_blocks|output_blocks)\.(\d+)\.", k)
        if m:
            slot = (1 if m.group(1) == "input_blocks" else 14) + int(m.group(2))
        elif k.startswith("diffusion_model.middle_block."):
            slot = 13
        else:
            slot, n_outside = None, n_outside + 1
        assert slot_of_key(k) == slot and slot_of_key((k, (0, 0, 1))) == slot
        assert got[k] == pytest.approx(2.0 if slot is None else 2.0 * v[slot]), k
    assert n_outside > 0                                   # time_embed, label_emb, out: the plain unet multiplier


def test_damaged_module_is_left_out_on_forge_as_in_the_core(forge):
    """A LoRA with NaN in one module: Forge gets every other module's patches, never the damaged one's, and
    the user reads the core's damage line (before: the NaN patch reached Forge's add_patches)."""
    from safetensors.torch import load_file, save_file
    sd = load_file(str(forge.lora_dir / "foo.safetensors"))
    victim = sorted(k for k in sd if k.endswith(".lora_up.weight"))[0]
    sd[victim][0, 0] = float("nan")
    save_file(sd, str(forge.lora_dir / "nan.safetensors"), metadata={"ss_output_name": "nan"})
    forge.generate("x <lora:foo:1>")
    good = {k for c in unet_calls(forge) + clip_calls(forge) for k in c["keys"]}
    forge.unet.calls.clear()
    forge.clip.patcher.calls.clear()
    p, _ = forge.generate("x <lora:nan:1>")
    patched = {k for c in unet_calls(forge) + clip_calls(forge) for k in c["keys"]}
    assert len(patched) == len(good) - 1 and patched < good
    for obj in (forge.engine.forge_objects.unet, forge.engine.forge_objects.clip.patcher):
        for patches in obj.lora_patches.values():
            for key, entries in patches.items():       # [strength, ("lora", (up, down, alpha, …)), …]
                assert all(bool(torch.isfinite(t).all()) for e in entries for t in e[1][1][:2]), key
    about = [c for c in p.comments if "partly damaged" in c]
    assert len(about) == 1 and victim[: -len(".lora_up.weight")] in about[0]


def test_elemental_weights_are_said_not_applied_on_forge(forge):
    p, _ = forge.generate("x <lora:foo:1:lbwe=IN01-OUT11;attn;0>")
    assert any("lbwe= elemental weights are not applied here" in c for c in p.comments)
    assert unet_calls(forge)                                          # the LoRA itself still applied
