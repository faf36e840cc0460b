"""LoRA Studio inside a fake AUTOMATIC1111 (tests/fake_webui): registration, activation across batches and
the hires pass, start/stop, coexistence with the built-in Lora, bad tags. Weights are checked on real
SD1.5 layer names with real kohya LoRA files."""

from __future__ import annotations

import pytest
import torch

from tests.fake_webui.harness import LAYERS, POS17, FakeWebui, write_lora

ALL17 = ",".join(["1"] * 17)


WEBUI_LORAS = (("foo", 1), ("bar", 2))          # written by the `webui` fixture (tests/conftest.py)


def deltas(w, base):
    return {k: v - base[k] for k, v in w.weights().items()}


def full_delta(w, base, name="foo"):
    w.generate(f"x <lora:{name}:1:{ALL17}>")
    d = deltas(w, base)
    w.generate("x")                                   # back to the base model
    return d


def registry():
    from modules import extra_networks
    return extra_networks.extra_network_registry, extra_networks.extra_network_aliases


def test_registry_won_after_builtin_before_ui_and_reload(webui):
    import extra_networks_lora  # the fake built-in's module, imported by its script
    reg, aliases = registry()
    assert getattr(reg["lora"], "marker", None) == "lora_studio"
    assert aliases["lyco"] is reg["lora"]
    first = reg["lora"]
    webui.reload_ui()                                 # registry cleared, built-in registers again in before_ui
    reg, aliases = registry()
    assert reg["lora"] is first and aliases["lyco"] is first
    assert extra_networks_lora.calls == []


def test_callbacks_not_duplicated_after_reload(webui):
    from modules import script_callbacks

    def ours():
        return sum(1 for fns in script_callbacks.callback_map.values() for fn in fns
                   if getattr(getattr(fn, "__wrapped__", fn), "__module__", "").startswith("lora_studio_webui"))
    n = ours()
    assert n >= 6
    webui.reload_ui()
    webui.reload_ui()
    assert ours() == n


def test_process_reregisters_when_replaced(webui):
    import extra_networks_lora
    from modules import extra_networks
    base = webui.weights()
    extra_networks.register_extra_network(extra_networks_lora.ExtraNetworkLora())   # someone took `lora`
    webui.generate(f"x <lora:foo:1:{ALL17}>")
    assert extra_networks_lora.calls == []           # never reached the built-in
    assert getattr(registry()[0]["lora"], "marker", None) == "lora_studio"
    assert all(not torch.equal(webui.weight(k), base[k]) for k in LAYERS)


def test_block_vector_scales_each_block_exactly(webui):
    base = webui.weights()
    full = full_delta(webui, base)
    vec = [0.0] * 17
    vec[0], vec[1], vec[3], vec[7], vec[8], vec[16] = 1.0, -0.5, 2.0, 0.0, 0.25, 1.5
    webui.generate(f"x <lora:foo:0.8:{','.join(str(v) for v in vec)}>")
    got = deltas(webui, base)
    for layer in LAYERS:
        expected = full[layer] * 0.8 * vec[POS17[layer]]
        assert torch.allclose(got[layer], expected, atol=1e-5, rtol=1e-4), layer
    assert torch.equal(webui.weight(LAYERS[2]), base[LAYERS[2]])   # M00 at 0 → untouched, bit-exact


def test_zero_vector_is_base_and_no_tags_restores_exactly(webui):
    base = webui.weights()
    webui.generate("x <lora:foo:1:" + ",".join(["0"] * 17) + ">")
    assert all(torch.equal(webui.weight(k), base[k]) for k in LAYERS)
    webui.generate("x <lora:foo:1>")
    assert not torch.equal(webui.weight(LAYERS[0]), base[LAYERS[0]])
    webui.generate("x")                               # activate(p, []) restores; deactivate is not called
    assert all(torch.equal(webui.weight(k), base[k]) for k in LAYERS)


def test_plain_tag_equals_all_ones(webui):
    base = webui.weights()
    webui.generate("x <lora:foo:0.7>")
    plain = deltas(webui, base)
    webui.generate(f"x <lora:foo:0.7:{ALL17}>")
    listed = deltas(webui, base)
    assert all(torch.equal(plain[k], listed[k]) for k in LAYERS)


def test_batches_hires_and_random_letters(webui):
    layer = LAYERS[3]                                  # OUT03: 17-format position 8
    base = webui.weights()
    full = full_delta(webui, base)
    vec = ["1"] * 17
    vec[8] = "R"
    p, res = webui.generate(f"x <lora:foo:1:{','.join(vec)}>", n_iter=3, steps=2, enable_hr=True,
                            hr_second_pass_steps=2)
    p.observer = None
    # re-run with an observer: weight of OUT03 at every step of every pass
    q = webui.processing(f"x <lora:foo:1:{','.join(vec)}>", n_iter=3, steps=2, enable_hr=True, hr_second_pass_steps=2)
    q.observer = lambda proc: float(((webui.weight(layer) - base[layer]).sum() / full[layer].sum()))
    from modules import processing
    res = processing.process_images(q)
    by_batch = {}
    for it, pass_name, step, ratio in res.trace:
        by_batch.setdefault(it, set()).add(round(ratio, 4))
    assert all(len(v) == 1 for v in by_batch.values())          # hires pass reuses the batch's draw
    draws = [next(iter(by_batch[i])) for i in range(3)]
    assert len(set(draws)) > 1 and all(0 <= d < 1 for d in draws)
    # infotext of each batch records that batch's value
    from tests.fake_webui.modules_access import blocks_field
    for i, text in enumerate(res.infotexts):
        assert abs(blocks_field(text)["foo"][8] - draws[i]) < 1e-3


def test_hires_prompt_with_other_tags(webui):
    base = webui.weights()
    q = webui.processing("x <lora:foo:1>", steps=1, enable_hr=True, hr_prompt="x <lora:bar:1>", hr_second_pass_steps=1)
    seen = []
    q.observer = lambda proc: (proc.is_hr_pass, {k: not torch.equal(webui.weight(k), base[k]) for k in LAYERS})
    from modules import processing
    res = processing.process_images(q)
    first = [s for _, name, _, s in res.trace if name == "first"][0]
    hires = [s for _, name, _, s in res.trace if name == "hires"][0]
    assert not first[0] and hires[0]
    # foo during the first pass, bar during the hires pass: different weights
    webui.generate("x <lora:foo:1>")
    foo = webui.weights()
    webui.generate("x <lora:bar:1>")
    bar = webui.weights()
    assert not torch.equal(foo[LAYERS[0]], bar[LAYERS[0]])
    assert 'Lora hashes' in res.infotexts[0] and "foo" in res.infotexts[0] and "bar" in res.infotexts[0]


def test_start_stop_gate_unet_only(webui):
    unet, te = LAYERS[0], LAYERS[5]
    base = webui.weights()
    q = webui.processing("x <lora:foo:1:start=2:stop=4>", steps=5)
    q.observer = lambda proc: (not torch.equal(webui.weight(unet), base[unet]),
                               not torch.equal(webui.weight(te), base[te]))
    from modules import processing
    res = processing.process_images(q)
    on = [s for *_, s in res.trace]
    # 1-based steps 2 and 3 on (0-based 1, 2); text encoder always on
    assert [u for u, _ in on] == [False, True, True, False, False]
    assert all(t for _, t in on)


def test_bad_tags_warn_and_the_rest_applies(webui):
    base = webui.weights()
    p, _ = webui.generate("x <lora:fooo:1> <lora:foo:1:1,1,1> <lora:bar:0.5:nosuchpreset> <lora:foo:1:lbw=ALL:zzz=1>")
    text = " | ".join(p.comments)
    assert "'fooo' not found" in text and "'foo'" in text               # close match named
    assert "3 block weights given" in text
    assert "unknown preset 'nosuchpreset'" in text
    assert "zzz" in text
    # bar (unknown preset) is skipped like the wrong count; the last foo (ALL) is applied
    assert not torch.equal(webui.weight(LAYERS[0]), base[LAYERS[0]])


def test_builtin_stale_merge_is_put_back_first(webui):
    import networks
    base = webui.weights()
    layer = LAYERS[0]
    mod = webui.model.get_submodule("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k")
    mod.network_layer_name = "diffusion_model_input_blocks_1_1_transformer_blocks_0_attn2_to_k"
    networks.loaded_networks[:] = [networks.FakeNet("old", delta={mod.network_layer_name: torch.ones_like(mod.weight)})]
    networks.forward_update(mod)                       # the built-in merged its LoRA earlier
    assert not torch.equal(webui.weight(layer), base[layer])
    networks.loaded_networks.clear()                   # its activate(p, []) ran, weights stay merged
    full = full_delta(webui, base)                     # our first apply must start from the true original
    webui.generate("x <lora:foo:1>")
    got = webui.weight(layer) - base[layer]
    assert torch.allclose(got, full[layer], atol=1e-5)
    before = webui.weight(layer)
    networks.forward_update(mod)                       # built-in's forward check: nothing wanted, nothing held
    assert torch.equal(webui.weight(layer), before)


def test_builtin_holding_networks_blocks_us(webui):
    import networks
    base = webui.weights()
    from modules import processing
    p = webui.processing("x <lora:foo:1>")

    class Other:                                       # an extension that loads through the built-in
        def before_process_batch(self, p, **kw):
            networks.loaded_networks[:] = [networks.FakeNet("other")]
    p.scripts.alwayson.append(Other())
    processing.process_images(p)
    assert any("holds networks (other)" in c for c in p.comments)
    assert all(torch.equal(webui.weight(k), base[k]) for k in LAYERS)


def test_lyco_tag_and_alias_name(webui):
    base = webui.weights()
    write_lora(webui, "file_stem", seed=3, ss_output_name="nice alias")
    webui.generate("x <lyco:nice alias:1>")
    a = webui.weights()
    webui.generate("x <lora:file_stem:1>")
    assert all(torch.equal(a[k], webui.weight(k)) for k in LAYERS)
    assert not torch.equal(a[LAYERS[0]], base[LAYERS[0]])


def test_arch_mismatch_is_skipped_with_message(webui):
    from safetensors.torch import save_file

    from tests.factory import make_lora
    sd, md = make_lora("sdxl", family="kohya", algo="lora", layers=3)
    save_file(sd, str(webui.lora_dir / "xl.safetensors"), metadata=md)
    p, _ = webui.generate("x <lora:xl:1> <lora:foo:1>")
    assert any("SDXL" in c and "SD1" in c for c in p.comments)


def test_builtin_disabled(tmp_path):
    w = FakeWebui(tmp_path, builtin=False)
    write_lora(w, "foo")
    w.start()
    try:
        reg, aliases = registry()
        assert getattr(reg["lora"], "marker", None) == "lora_studio" and aliases["lyco"] is reg["lora"]
        from modules import ui_extra_networks
        assert [p.title for p in ui_extra_networks.extra_pages] == ["LoRA Studio"]
        base = w.weights()
        w.generate("x <lora:foo:1:face>")
        assert not torch.equal(w.weight(LAYERS[3]), base[LAYERS[3]])
    finally:
        w.close()


def test_take_over_off_leaves_builtin(tmp_path):
    w = FakeWebui(tmp_path)
    from modules import shared
    shared.opts.data["lora_studio_take_over"] = False
    w.start()
    try:
        reg, _ = registry()
        assert getattr(reg["lora"], "marker", None) is None
    finally:
        w.close()


def test_model_loaded_keeps_state_on_vae_reload_and_forgets_on_weight_reload(webui):
    from modules import script_callbacks
    base = webui.weights()
    webui.generate("x <lora:foo:1>")
    patched = webui.weights()
    script_callbacks.model_loaded_callback(webui.model)          # VAE reload: U-Net/TE untouched
    webui.generate("x")
    assert all(torch.equal(webui.weight(k), base[k]) for k in LAYERS)   # our backups were kept
    webui.generate("x <lora:foo:1>")
    # weights reloaded in place from the checkpoint (load_state_dict copies in place), then model_loaded
    with torch.no_grad():
        for k in LAYERS:
            from tests.fake_webui.harness import a1111_param
            a1111_param(webui.model, k).copy_(base[k] * 2)
    script_callbacks.model_loaded_callback(webui.model)
    webui.generate("x")                                          # nothing to restore: backups were dropped
    assert all(torch.equal(webui.weight(k), base[k] * 2) for k in LAYERS)
    webui.generate("x <lora:foo:1>")
    assert all(torch.allclose(webui.weight(k) - base[k] * 2, patched[k] - base[k], atol=1e-4) for k in LAYERS)


def test_take_over_switched_off_and_on_at_run_time(webui):
    import extra_networks_lora
    import networks
    from modules import shared
    base = webui.weights()
    webui.generate("x <lora:foo:1>")
    shared.opts.data["lora_studio_take_over"] = False
    webui.generate("x <lora:foo:0.5>")
    assert extra_networks_lora.calls[-1] == [["foo", "0.5"]]     # the built-in got the tag
    assert all(torch.equal(webui.weight(k), base[k]) for k in LAYERS)   # ours were taken out first
    assert [n.name for n in networks.loaded_networks] == ["foo"]
    shared.opts.data["lora_studio_take_over"] = True
    webui.generate("x <lora:foo:1:face>")
    assert networks.loaded_networks == []                        # stale built-in state dropped
    assert getattr(registry()[0]["lora"], "marker", None) == "lora_studio"


def test_same_lora_twice_warns_and_adds(webui):
    base = webui.weights()
    webui.generate("x <lora:foo:0.5>")
    half = {k: webui.weight(k) - base[k] for k in LAYERS}
    p, _ = webui.generate("x <lora:foo:0.25> <lora:foo:0.25>")
    assert any("appears more than once" in c for c in p.comments)
    assert all(torch.allclose(webui.weight(k) - base[k], half[k], atol=1e-5) for k in LAYERS)


def test_conditioning_cache_follows_text_encoder_state(webui):
    """Random letters drawn per batch change the TE while the prompt text stays: A1111's text-keyed cond
    cache must not hand batch 2 the conds computed with batch 1's weights (seen in the real A1111 run)."""
    te = LAYERS[5]
    vec = ",".join(["R"] + ["1"] * 16)
    q = webui.processing(f"x <lora:foo:1:{vec}>", n_iter=3, steps=1, enable_hr=True, hr_second_pass_steps=1)
    q.cond_fn = lambda proc: float(webui.weight(te).double().sum())
    seen = []
    q.observer = lambda proc: seen.append((proc.iteration, float(webui.weight(te).double().sum())))
    from modules import processing
    processing.process_images(q)
    live = dict(seen)
    assert len(set(live.values())) == 3
    for it, _pass, cond in q.conds_used:
        assert cond == live[it]
    # same tag text in the next job, but the preset behind it changed: conds recomputed too
    (webui.lora_dir.parent / "user_presets.txt").write_text("mine:1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1\n")
    q1 = webui.processing("x <lora:foo:1:mine>", steps=1)
    q1.cond_fn = q.cond_fn
    processing.process_images(q1)
    (webui.lora_dir.parent / "user_presets.txt").write_text("mine:0.5,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1\n")
    import os
    os.utime(webui.lora_dir.parent / "user_presets.txt", ns=(1, 1))   # mtime differs for sure
    q2 = webui.processing("x <lora:foo:1:mine>", steps=1)
    q2.cond_fn = q.cond_fn
    processing.process_images(q2)
    assert q2.conds_used[0][2] != q1.conds_used[0][2]
    assert q2.conds_used[0][2] == float(webui.weight(te).double().sum())


def test_partly_unmatched_lora_warns_and_applies_the_rest(webui):
    """A LoRA whose keys partly name no layer of the model (e.g. text-encoder keys without `text_model_`) is
    applied where it matches, and the user is told how many modules were left out."""
    from safetensors.torch import load_file, save_file
    path = webui.lora_dir / "foo.safetensors"
    sd = load_file(str(path))
    sd["lora_te_encoder_layers_0_mlp_fc1.lora_down.weight"] = torch.zeros(4, 768)
    sd["lora_te_encoder_layers_0_mlp_fc1.lora_up.weight"] = torch.zeros(3072, 4)
    save_file(sd, str(webui.lora_dir / "partial.safetensors"))
    base = webui.weights()
    p, _ = webui.generate("x <lora:partial:1>")
    text = " | ".join(p.comments)
    assert "`partial`: 1 module(s) not applied" in text and "lora_te_encoder_layers_0_mlp_fc1" in text
    assert not torch.equal(webui.weight(LAYERS[0]), base[LAYERS[0]])
    p, _ = webui.generate("x <lora:foo:1>")             # a fully matching LoRA: no such warning
    assert not any("not applied" in c for c in p.comments)


def test_unlisted_blocks_warning_is_the_one_bake_prints(webui):
    """The WebUI and `bake` say the same line when a weight list leaves out blocks the LoRA has weights in
    (before: the WebUI left out the module count that bake gives)."""
    from lib_lora.merge.bake import resolve_tag
    from lib_lora.syntax import parse_prompt

    tag = "<lora:foo:1:" + ",".join(["1"] * 12) + ">"            # 12 values: SD1's IN01/IN02 are not listed
    p, _ = webui.generate(f"x {tag}")
    said = [c.split("LoRA Studio: ", 1)[-1] for c in p.comments if "does not list" in c]
    baked: list = []
    resolve_tag(parse_prompt(tag)[0], webui.lora_dir / "foo.safetensors", "sd1", None, 0, baked)
    assert len(said) == 1 and said == [m for m in baked if "does not list" in m]
    assert "modules dropped" in said[0]
