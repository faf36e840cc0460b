"""Patcher: exact restore, reference equality, cache rescale, fused q/k/v, arch refusal, gating."""

from __future__ import annotations

import random

import pytest
import torch

from lib_lora.host import Host
from lib_lora.patcher import ActiveLora, Patcher
from tests.engine_helpers import SD15_LAYERS, make_net, reference_weights, snapshot, tol
from tests.models import bits, build_model, half_ulp_above, model_state, same_state

ALGO_SPECS = [  # (name, factory kwargs)
    ("lora", dict(algo="lora", rank=8)),
    ("locon", dict(algo="locon", rank=4, family="lycoris")),
    ("loha", dict(algo="loha", rank=4, family="lycoris")),
    ("lokr", dict(algo="lokr", rank=4, family="lycoris")),
    ("ia3", dict(algo="ia3", family="lycoris")),
    ("full", dict(algo="full", family="lycoris")),
    ("norm", dict(algo="norm", family="lycoris")),
    ("dora", dict(algo="dora", rank=4, family="lycoris")),
    ("glora", dict(algo="glora", rank=4, family="lycoris")),
    ("oft", dict(algo="oft", rank=8, family="lycoris")),
    ("boft", dict(algo="boft", rank=8, family="lycoris")),
    ("peft", dict(algo="lora", rank=4, family="peft")),
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nets")
    layers = set(SD15_LAYERS)
    out = {}
    for i, (name, kw) in enumerate(ALGO_SPECS):
        out[name] = make_net(tmp, name, layers=lambda layer: layer in layers, seed=i, **kw)
        assert out[name].modules, name
    return out


# The 1000-cycle tests use the smaller layers only (the 3×3 conv is out.2); the others stay in the rest.
CYCLE_LAYERS = tuple(l for l in SD15_LAYERS if not l.endswith(("in_layers.2", "time_embed.0", "ff.net.2")))


def _model(dtype, layers=SD15_LAYERS):
    root = build_model("sd15", include=layers, dtype=dtype, seed=1)
    return root, Host.from_named_modules(root.named_modules())


def _random_active(rng: random.Random, nets) -> ActiveLora:
    name = rng.choice(sorted(nets))
    te = rng.choice([0.0, 1.0, rng.uniform(-1.5, 2.0)])
    unet = rng.choice([te, 1.0, rng.uniform(-1.5, 2.0)])
    blocks = None if rng.random() < 0.4 else [rng.choice([0.0, 1.0, round(rng.uniform(-1, 2), 3)]) for _ in range(26)]
    dyn = rng.choice([None, None, 2]) if name in ("lora", "locon") else None
    start = rng.choice([None, None, 2, 5])
    stop = rng.choice([None, None, 4, 9])
    return ActiveLora(nets[name], te=te, unet=unet, blocks=blocks, dyn=dyn, start=start, stop=stop)


def _check_reference(host, originals, actives, step, dtype):
    ref = reference_weights(originals, actives, step)
    for layer, (w0, b0) in originals.items():
        live = host[layer]
        want_w, want_b = ref.get(layer, (w0, b0))
        torch.testing.assert_close(live.weight.float(), want_w.float(), **tol(dtype), msg=layer)
        if b0 is not None:
            torch.testing.assert_close(live.bias.float(), want_b.float(), **tol(dtype), msg=layer)
        if layer not in ref:  # untouched layers are bit-exact originals
            assert torch.equal(bits(live.weight), bits(w0)), layer


@pytest.mark.parametrize("dtype,cycles", [(torch.float32, 1000), (torch.float16, 1000), (torch.bfloat16, 1000)])
def test_random_cycles_end_bit_exact(nets, dtype, cycles):
    root, host = _model(dtype, CYCLE_LAYERS)
    original = model_state(root)
    originals = snapshot(host)
    patcher = Patcher(host, cache_bytes=(32 << 20) if dtype == torch.float32 else (512 << 20))  # fp32: evictions too
    rng = random.Random(int(dtype.itemsize) * 7 + 3)
    actives: list = []
    for cycle in range(cycles):
        op = rng.random()
        if op < 0.3 and actives:
            actives.pop(rng.randrange(len(actives)))                 # remove one
        elif op < 0.6 and actives:
            actives[rng.randrange(len(actives))] = _random_active(rng, nets)  # change one
        elif op < 0.95:
            if len(actives) < 4:
                actives.append(_random_active(rng, nets))           # add one
        else:
            patcher.restore()
            actives = []
            assert same_state(model_state(root), original), f"restore not exact at cycle {cycle}"
        step = rng.choice([None, 0, 1, 3, 4, 8, 12])
        rep = patcher.apply(actives, step=step)
        assert not rep.errors
        if cycle % 97 == 0 or cycle == cycles - 1:
            _check_reference(host, originals, actives, step, dtype)
    patcher.restore()
    assert same_state(model_state(root), original)


def test_weights_match_reference_every_algo(nets):
    root, host = _model(torch.float32)
    originals = snapshot(host)
    actives = [ActiveLora(n, te=0.7, unet=-1.3) for n in nets.values()]
    rep = Patcher(host).apply(actives)
    assert not rep.errors and all(r.applied > 0 for r in rep.loras)
    assert all(not r.skipped for r in rep.loras), [r.skipped for r in rep.loras if r.skipped]
    _check_reference(host, originals, actives, None, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_rescale_from_cache_equals_recompute(nets, dtype):
    blocks_a = [1.0] * 26
    blocks_b = [0.5 if i % 2 else 1.5 for i in range(26)]
    r1, h1 = _model(dtype)
    p1 = Patcher(h1)
    first = p1.apply([ActiveLora(nets["lora"], 0.6, 0.6, blocks_a), ActiveLora(nets["dora"], 1.0, 0.8)])
    assert first.deltas_computed > 0
    again = p1.apply([ActiveLora(nets["lora"], 1.1, -0.4, blocks_b), ActiveLora(nets["dora"], 0.3, 1.7)])
    assert again.deltas_computed == 0 and again.cache_hits > 0     # rescaled, not recomputed
    r2, h2 = _model(dtype)
    fresh = Patcher(h2).apply([ActiveLora(nets["lora"], 1.1, -0.4, blocks_b), ActiveLora(nets["dora"], 0.3, 1.7)])
    assert fresh.deltas_computed > 0
    assert same_state(model_state(r1), model_state(r2))


def test_only_changed_layers_are_rewritten_and_removed_layers_restored_by_copy(nets):
    root, host = _model(torch.float16)
    original = model_state(root)
    p = Patcher(host)
    p.apply([ActiveLora(nets["locon"]), ActiveLora(nets["norm"])])
    norm_layers = {m.layer for m in nets["norm"].modules.values()}
    locon_layers = {m.layer for m in nets["locon"].modules.values()}
    # A block change that only concerns OUT11 rewrites only the OUT11 layers.
    blocks = [1.0] * 26
    blocks[25] = 0.25
    rep = p.apply([ActiveLora(nets["locon"], blocks=blocks), ActiveLora(nets["norm"])])
    out11 = {m.layer for m in nets["locon"].modules.values() if m.slot == 25}
    assert out11 and rep.layers_written == len(out11) and rep.layers_restored == 0
    # Dropping the norm LoRA copies the exact originals back into its layers only.
    rep = p.apply([ActiveLora(nets["locon"], blocks=blocks)])
    assert rep.layers_restored == len(norm_layers - locon_layers) and rep.layers_written == len(norm_layers & locon_layers)
    state = model_state(root)
    for layer in norm_layers - locon_layers:
        for k in (layer + ".weight", layer + ".bias"):
            assert torch.equal(bits(state[k]), bits(original[k]))
    p.restore()
    assert same_state(model_state(root), original)


def test_architecture_mismatch_refused_and_others_still_apply(tmp_path, nets):
    root, host = _model(torch.float32)
    xl = make_net(tmp_path, "xl", model="sdxl", algo="lora")
    assert xl.arch == "sdxl" and host.arch == "sd1"
    before = model_state(root)
    rep = Patcher(host).apply([ActiveLora(xl)])
    assert len(rep.errors) == 1 and rep.errors[0].startswith("LoRA 'xl' is SDXL, the model is SD1")
    assert rep.layers_written == 0 and same_state(model_state(root), before)
    rep = Patcher(host).apply([ActiveLora(xl), ActiveLora(nets["lora"])])
    assert len(rep.errors) == 1 and rep.loras[1].applied == len(nets["lora"].modules)


def test_layers_missing_from_model_are_reported_not_fatal(tmp_path):
    root, host = _model(torch.float32)
    net = make_net(tmp_path, "wide", algo="lora")  # default factory pick: many layers this model lacks
    rep = Patcher(host).apply([ActiveLora(net)])
    r = rep.loras[0]
    present = [m for m in net.modules.values() if m.layer in host]
    assert r.applied == len(present) and len(r.skipped) == len(net.modules) - len(present) > 0
    assert all("is not in the model" in why for _, why in r.skipped)


def test_start_stop_switches_only_gated_unet_layers(nets):
    root, host = _model(torch.float32)
    originals = snapshot(host)
    gated = ActiveLora(nets["lora"], te=1.0, unet=1.0, start=3)
    plain = ActiveLora(nets["loha"], te=0.5, unet=0.5)
    p = Patcher(host)
    p.apply([gated, plain], step=0)
    unet_layers = {m.layer for m in nets["lora"].modules.values() if not m.is_te}
    te_layers = {m.layer for m in nets["lora"].modules.values() if m.is_te}
    _check_reference(host, originals, [gated, plain], 0, torch.float32)
    rep = p.set_step(1)                                                # 1-based step 2: still off
    assert rep.layers_written == 0 and rep.layers_restored == 0
    rep = p.set_step(2)                                                # 1-based step 3: on
    assert rep.layers_written == len(unet_layers) and rep.layers_restored == 0
    _check_reference(host, originals, [gated, plain], 2, torch.float32)
    assert te_layers  # text-encoder part never gated
    p.apply([ActiveLora(nets["lora"], stop=4)], step=2)
    rep = p.set_step(3)                                                # 1-based step 4: off again
    loha_only = {m.layer for m in nets["loha"].modules.values()}
    assert rep.layers_written + rep.layers_restored == len(unet_layers)
    _check_reference(host, originals, [ActiveLora(nets["lora"], stop=4)], 3, torch.float32)
    assert loha_only


def test_no_forward_hooks_and_forward_uses_plain_weights(nets):
    root, host = _model(torch.float32)
    Patcher(host).apply([ActiveLora(n) for n in nets.values()])
    for _, mod in root.named_modules():
        assert not mod._forward_hooks and not mod._forward_pre_hooks
    assert not torch.nn.modules.module._global_forward_hooks
    lin = root.get_submodule(SD15_LAYERS[0])
    x = torch.randn(2, lin.in_features)
    assert torch.equal(lin(x), torch.nn.functional.linear(x, lin.weight, lin.bias))


def test_fused_qkv_slices_and_split_host_agree(tmp_path):
    pick = ("conditioner.embedders.1.model.transformer.resblocks.0.attn",
            "conditioner.embedders.1.model.transformer.resblocks.0.mlp.c_fc")
    net = make_net(tmp_path, "te2", model="sdxl", algo="lora", layers=lambda l: l in pick)
    assert sorted(m.qkv for m in net.modules.values() if m.qkv is not None) == [0, 1, 2]
    root = build_model("sdxl", include=pick, seed=2)
    host = Host.from_named_modules(root.named_modules())
    assert host[pick[0]].fused and host.arch == "sdxl"
    originals = snapshot(host)
    a = ActiveLora(net, te=0.9)
    Patcher(host).apply([a])
    _check_reference(host, originals, [a], None, torch.float32)
    # Only k: q and v rows stay bit-exact.
    k_only = type(net)(**{**vars(net), "modules": {k: m for k, m in net.modules.items() if m.qkv in (1, None)}}) \
        if hasattr(net, "__dataclass_fields__") else None
    if k_only is None:
        import copy
        k_only = copy.copy(net)
        k_only.modules = {k: m for k, m in net.modules.items() if m.qkv in (1, None)}
    root2 = build_model("sdxl", include=pick, seed=2)
    host2 = Host.from_named_modules(root2.named_modules())
    Patcher(host2).apply([ActiveLora(k_only, te=0.9)])
    w0 = originals[pick[0]][0]
    live = host2[pick[0]].weight
    assert torch.equal(live[:1280], w0[:1280]) and torch.equal(live[2560:], w0[2560:])
    assert not torch.equal(live[1280:2560], w0[1280:2560])
    torch.testing.assert_close(live[1280:2560], host[pick[0]].weight[1280:2560])


def test_delta_cache_is_lru_by_bytes_and_keys_files_by_mtime_and_size(tmp_path):
    import os
    from types import SimpleNamespace

    from lib_lora.algos import Delta
    from lib_lora.delta_cache import DeltaCache, network_identity

    c = DeltaCache(100)
    d = lambda n: Delta(torch.zeros(n // 4), None)  # noqa: E731  n bytes of fp32
    assert c.put("a", d(40)) and c.put("b", d(40))
    assert c.get("a") is not None                       # a is now the most recent
    assert c.put("c", d(40)) and "b" not in c and "a" in c and c.bytes == 80
    assert not c.put("huge", d(200)) and "huge" not in c
    c.resize(40)
    assert len(c) == 1 and "c" in c
    f = tmp_path / "x.safetensors"
    f.write_bytes(b"1234")
    net = SimpleNamespace(path=str(f))
    first = network_identity(net)
    f.write_bytes(b"123456")
    os.utime(f, ns=(1, 1))
    assert network_identity(net) != first
    mem1, mem2 = SimpleNamespace(path=None), SimpleNamespace(path=None)
    assert network_identity(mem1) == network_identity(mem1) != network_identity(mem2)


@pytest.mark.skipif(not hasattr(torch, "float8_e4m3fn"), reason="torch without float8")
def test_fp8_storage_weights_patch_and_restore_exactly(nets):
    # A1111 `fp8_storage`: weights are float8; deltas still fp32, cast once, restore bit-exact.
    root, host = _model(torch.float32)
    sd = {k: (v.to(torch.float8_e4m3fn) if k.endswith(".weight") and v.dim() > 1 else v.clone())
          for k, v in root.state_dict().items()}
    h8 = Host.from_state_dict(sd)
    before = {k: v.clone() for k, v in sd.items()}
    p = Patcher(h8)
    rep = p.apply([ActiveLora(nets["lora"], 1.0, 1.0)])
    assert rep.layers_written > 0 and not rep.errors and not any(r.skipped for r in rep.loras)
    layer = SD15_LAYERS[0]
    assert sd[layer + ".weight"].dtype == torch.float8_e4m3fn
    assert not torch.equal(sd[layer + ".weight"].view(torch.uint8), before[layer + ".weight"].view(torch.uint8))
    p.restore()
    assert all(torch.equal(sd[k].view(torch.uint8) if sd[k].dtype == torch.float8_e4m3fn else sd[k],
                           before[k].view(torch.uint8) if before[k].dtype == torch.float8_e4m3fn else before[k])
               for k in sd)


def test_report_names_used_blocks_the_weight_format_did_not_list(nets):
    from lib_lora.blocks import expand

    root, host = _model(torch.float32)
    vec, listed = expand([1.0] * 12)  # the SDXL 12-value format given to an SD1 LoRA
    rep = Patcher(host).apply([ActiveLora(nets["locon"], blocks=vec, listed=listed)])
    r = rep.loras[0]
    used = {m.slot for m in nets["locon"].modules.values() if m.slot is not None}
    assert r.unlisted == sorted(s for s in used if not listed[s]) and 2 in r.unlisted  # IN01 (slot 2)
    assert r.outside == sum(1 for m in nets["locon"].modules.values() if m.slot is None) > 0
    assert r.zero == sum(1 for m in nets["locon"].modules.values() if m.slot is not None and vec[m.slot] == 0)


def test_sd2_kohya_text_encoder_lora_lands_in_fused_in_proj_rows(tmp_path):
    from safetensors.torch import save_file

    from tests.engine_helpers import load_net

    g = torch.Generator().manual_seed(7)
    r, c = 4, 1024
    lora = {}
    for part in ("k_proj", "v_proj", "out_proj"):  # no q: its rows must stay untouched
        key = f"lora_te_text_model_encoder_layers_0_self_attn_{part}"
        lora[key + ".lora_down.weight"] = torch.randn(r, c, generator=g) * 0.1
        lora[key + ".lora_up.weight"] = torch.randn(c, r, generator=g) * 0.1
        lora[key + ".alpha"] = torch.tensor(2.0)
    lora["lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight"] = torch.randn(r, c)
    lora["lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight"] = torch.randn(640, r)
    path = tmp_path / "sd2.safetensors"
    save_file(lora, str(path), metadata={"ss_v2": "True", "ss_base_model_version": "sd_v2"})
    net = load_net(path)
    assert net.arch == "sd2"
    base = "cond_stage_model.model.transformer.resblocks.0.attn"
    sd = {base + ".in_proj_weight": torch.randn(3 * c, c, generator=g) * 0.05,
          base + ".in_proj_bias": torch.zeros(3 * c),
          base + ".out_proj.weight": torch.randn(c, c, generator=g) * 0.05,
          "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": torch.randn(640, c)}
    before = {k: v.clone() for k, v in sd.items()}
    host = Host.from_state_dict(sd)
    assert host.arch == "sd2"
    rep = Patcher(host).apply([ActiveLora(net, te=0.5, unet=0.0)])
    assert rep.loras[0].applied == 3 and not rep.loras[0].skipped and rep.loras[0].zero == 1
    w, w0 = sd[base + ".in_proj_weight"], before[base + ".in_proj_weight"]
    assert torch.equal(w[:c], w0[:c])                                   # q rows untouched
    for i, part in ((1, "k_proj"), (2, "v_proj")):
        key = f"lora_te_text_model_encoder_layers_0_self_attn_{part}"
        want = w0[i * c:(i + 1) * c] + 0.5 * 0.5 * lora[key + ".lora_up.weight"] @ lora[key + ".lora_down.weight"]
        torch.testing.assert_close(w[i * c:(i + 1) * c], want, rtol=1e-5, atol=1e-6)
    assert not torch.equal(sd[base + ".out_proj.weight"], before[base + ".out_proj.weight"])
    assert torch.equal(sd["model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"],
                       before["model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"])


def test_a_layer_whose_write_fails_is_restored_and_reported(nets):
    from lib_lora.algos import compute_delta

    class Unaddable:  # passes the shape check, then breaks the accumulation half-way
        def __init__(self, shape):
            self.shape = shape

        def __getitem__(self, _):
            return self

    target = SD15_LAYERS[0]
    bad_key = next(k for k, m in nets["loha"].modules.items() if m.layer == target)

    def compute(mod, w, b=None, dyn=None):
        d = compute_delta(mod, w, b, dyn=dyn)
        return type(d)(Unaddable(d.weight.shape), None) if mod.key == bad_key else d

    root, host = _model(torch.float32)
    original = model_state(root)
    p = Patcher(host, compute=compute)
    rep = p.apply([ActiveLora(nets["lora"]), ActiveLora(nets["loha"])])  # lora's delta is added first
    assert [l for l, _ in rep.failed_layers] == [target]
    assert torch.equal(bits(host[target].weight), bits(original[target + ".weight"]))
    assert target not in p.patched_layers and rep.layers_written > 0
    p.restore()
    assert same_state(model_state(root), original)


# -- factors instead of dense deltas, admission instead of LRU (issue 11) --------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_lora_and_locon_are_written_from_factors_with_no_dense_delta_and_nothing_cached(nets, dtype):
    from lib_lora.algos import compute_delta

    dense_calls = []

    def compute(mod, w, b=None, dyn=None):
        dense_calls.append(mod.key)
        return compute_delta(mod, w, b, dyn=dyn)

    root, host = _model(dtype)
    originals = snapshot(host)
    original = model_state(root)
    p = Patcher(host, compute=compute)
    actives = [ActiveLora(nets["lora"], 0.7, -1.3), ActiveLora(nets["locon"], 1.0, 0.45, dyn=2)]
    conv3 = [m for m in nets["locon"].modules.values() if m.tensors["lora_down.weight"].dim() == 4
             and m.tensors["lora_down.weight"].shape[-1] == 3]
    assert conv3, "the LoCon must have a 3×3 conv module"
    rep = p.apply(actives)
    n = sum(r.applied for r in rep.loras)
    assert rep.factored == n and rep.deltas_computed == 0 and not dense_calls and p.cache.bytes == 0
    _check_reference(host, originals, actives, None, dtype)  # equal to the dense path within tolerance
    # and to a float64 statement of W0 + m·(alpha/r)·up@down for a 3×3 conv (dyn=2 keeps 2 ranks)
    mod = conv3[0]
    w0 = originals[mod.layer][0].double()
    down, up = mod.tensors["lora_down.weight"].double()[:2], mod.tensors["lora_up.weight"].double()[:, :2]
    scale = float(mod.alpha) / mod.tensors["lora_down.weight"].shape[0] if mod.alpha else 1.0
    want = w0 + 0.45 * scale * (up.flatten(1) @ down.flatten(1)).reshape(w0.shape)
    if mod.layer in {m.layer for m in nets["lora"].modules.values()}:
        lm = next(m for m in nets["lora"].modules.values() if m.layer == mod.layer)
        from lib_lora.algos import compute_delta as cd
        want = want + (-1.3) * cd(lm, w0.float()).weight.double()
    torch.testing.assert_close(host[mod.layer].weight.double(), want.to(dtype).double(), **tol(dtype))
    again = p.apply([ActiveLora(nets["lora"], 0.2, 0.9), ActiveLora(nets["locon"], 1.0, 1.5, dyn=2)])
    assert again.deltas_computed == 0 and again.factored == n and not dense_calls
    p.restore()
    assert same_state(model_state(root), original)


def test_a_sweep_over_a_lora_larger_than_the_budget_hits_what_was_kept(nets):
    """A LoHa whose deltas are 2.5× the budget: the first apply keeps what fits; every later weight of the
    sweep hits exactly those (a plain LRU evicts each entry just before its reuse: 0 hits)."""
    root, host = _model(torch.float32)
    probe = Patcher(host)
    probe.apply([ActiveLora(nets["loha"])])
    total, count = probe.cache.bytes, len(probe.cache)
    probe.restore()
    assert count > 4
    p = Patcher(host, cache_bytes=int(total * 0.4))
    first = p.apply([ActiveLora(nets["loha"], 0.3, 0.3)])
    kept = len(p.cache)
    # what does not fit is written from its factors (never a dense ΔW built and dropped)
    assert first.deltas_computed == kept and first.factored == count - kept
    assert 0 < kept < count and p.cache.bytes <= total * 0.4
    for m in (0.6, 0.9, 0.6):
        rep = p.apply([ActiveLora(nets["loha"], m, m)])
        assert rep.cache_hits == kept and rep.deltas_computed == 0 and rep.factored == count - kept, m
        assert len(p.cache) == kept
    p.restore()


def test_lokr_is_cached_as_its_two_kronecker_factors(nets):
    root, host = _model(torch.float16)
    p = Patcher(host)
    rep = p.apply([ActiveLora(nets["lokr"], 0.8, 0.8)])
    dense = sum(host[m.layer].target_shape(m.qkv).numel() * 4 for m in nets["lokr"].modules.values()
                if m.layer in host.layers)
    assert rep.deltas_computed == len(p.cache) > 0 and p.cache.bytes * 4 < dense
    again = p.apply([ActiveLora(nets["lokr"], 0.5, 1.2)])
    assert again.deltas_computed == 0 and again.cache_hits == len(p.cache)
    r2, h2 = _model(torch.float16)
    Patcher(h2).apply([ActiveLora(nets["lokr"], 0.5, 1.2)])
    assert same_state(model_state(root), model_state(r2))  # rescale from the cache == fresh apply, bit for bit


def test_default_budget_follows_the_free_memory_of_the_deltas_device():
    from lib_lora import delta_cache
    from lib_lora.algos import Delta

    root, host = _model(torch.float32, SD15_LAYERS[:1])
    p = Patcher(host)
    free = delta_cache.free_bytes(torch.device("cpu"))
    assert p.cache.auto and free is not None
    assert abs(p.cache.max_bytes - free * delta_cache.AUTO_FRACTION) < 0.1 * free
    c = delta_cache.DeltaCache(delta_cache.AUTO)
    c.put("x", Delta(torch.zeros(1 << 20), None))
    c.protect()                                   # re-read: what the cache holds counts as available to it
    assert c.auto and c.max_bytes > (4 << 20) * delta_cache.AUTO_FRACTION


def test_protected_entries_are_never_evicted_and_refused_ones_are_not_kept():
    from lib_lora.algos import Delta
    from lib_lora.delta_cache import DeltaCache

    c = DeltaCache(100)
    d = lambda n: Delta(torch.zeros(n // 4), None)  # noqa: E731
    assert c.put("a", d(40)) and c.put("b", d(40))
    c.protect({"a", "b", "c"})
    assert not c.put("c", d(40)) and "c" not in c and len(c) == 2 and c.refused == 1
    c.protect({"c"})
    assert c.put("c", d(40)) and "c" in c and "a" not in c   # unprotected: least recent leaves


def _loha_f64(mod) -> torch.Tensor:
    """LoHa's ΔW at multiplier 1 in float64, straight from its factors (no Tucker in the factory's LoHa)."""
    from lib_lora.algos._common import rank_scale

    t = {k: v.detach().double().flatten(1) for k, v in mod.tensors.items()}
    scale = rank_scale(mod, int(t["hada_w1_b"].shape[0]))
    return scale * (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"])


@pytest.mark.parametrize("dtype,u", [(torch.float16, 2.0 ** -11), (torch.bfloat16, 2.0 ** -8)])
def test_dense_deltas_of_half_models_are_cached_in_the_weight_dtype_within_the_stated_bound(nets, dtype, u):
    """fp16/bf16 model: LoHa's ΔW is cached in the weight dtype (half the bytes, one fused add per change).
    Stated bound (patch_terms.Dense): |W − (W0 + m·ΔW)| ≤ ½ ulp(W) + 2·u·|m·ΔW| (+ |m|·½ the dtype's smallest
    subnormal, where ΔW underflows) against float64; rescale from the cache equals a fresh apply bit for bit;
    restore is bit-exact."""
    tiny = float(torch.finfo(dtype).smallest_normal) * u  # ½ subnormal spacing: u = 2⁻ᵖ, spacing = 2^(emin−p+1)
    root, host = _model(dtype)
    original = model_state(root)
    originals = snapshot(host)
    p = Patcher(host)
    first = p.apply([ActiveLora(nets["loha"], 1.0, 1.0)])
    dense32 = sum(host[m.layer].target_shape(m.qkv).numel() * 4 for m in nets["loha"].modules.values()
                  if m.layer in host.layers)
    assert first.deltas_computed == len(p.cache) > 0 and p.cache.bytes * 2 == dense32
    for m in (0.3, -1.3, 1.7):
        rep = p.apply([ActiveLora(nets["loha"], m, m)])
        assert rep.deltas_computed == 0 and rep.cache_hits == len(p.cache)
        for mod in nets["loha"].modules.values():
            if mod.layer not in host.layers:
                continue
            w = host[mod.layer].weight
            md = m * _loha_f64(mod).reshape(w.shape)
            want = originals[mod.layer][0].double() + md
            half_ulp = half_ulp_above(w)
            err = (w.double() - want).abs()
            bound = half_ulp + 2 * u * md.abs() + abs(m) * tiny + 1e-6 * u * want.abs()
            assert bool((err <= bound).all()), (mod.layer, m, float((err - bound).max()))
    r2, h2 = _model(dtype)
    Patcher(h2).apply([ActiveLora(nets["loha"], 1.7, 1.7)])
    assert same_state(model_state(root), model_state(r2))      # rescale from the cache == fresh apply
    p.restore()
    assert same_state(model_state(root), original)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_dense_lowrank_caches_what_the_budget_admits_writes_the_rest_from_factors_and_restores_exactly(nets, dtype):
    """Patcher(dense_lowrank=True): LoRA/LoCon deltas kept dense (weight dtype on fp16) up to the budget, the
    rest written from factors; every weight within the stated bound of float64 (patch_terms.Dense); exact restore."""
    u = 2.0 ** -11 if dtype == torch.float16 else 2.0 ** -24
    tiny = float(torch.finfo(dtype).smallest_normal) * u
    net = nets["locon"]
    root, host = _model(dtype)
    original = model_state(root)
    originals = snapshot(host)
    size = {m.key: host[m.layer].target_shape(m.qkv).numel() * (2 if dtype == torch.float16 else 4)
            for m in net.modules.values() if m.layer in host.layers}
    budget = sum(size.values()) // 2
    p = Patcher(host, cache_bytes=budget, dense_lowrank=True)
    first = p.apply([ActiveLora(net, 0.8, 0.8)])
    n = sum(r.applied for r in first.loras)
    # one generation never builds a dense ΔW: the first write of each module is from its factors
    assert first.factored == n and first.deltas_computed == 0 and p.cache.bytes == 0
    second = p.apply([ActiveLora(net, 0.5, 0.5)])
    assert 0 < len(p.cache) < n and second.deltas_computed == len(p.cache) and second.factored == n - len(p.cache)
    assert p.cache.bytes <= budget
    for m in (0.3, -1.3):
        rep = p.apply([ActiveLora(net, m, m)])
        assert rep.cache_hits == len(p.cache) and rep.factored == n - len(p.cache) and rep.deltas_computed == 0
        for mod in net.modules.values():
            if mod.layer not in host.layers:
                continue
            w = host[mod.layer].weight
            t = {k: v.detach().double() for k, v in mod.tensors.items()}
            scale = float(mod.alpha) / t["lora_down.weight"].shape[0] if mod.alpha else 1.0
            up, down = t["lora_up.weight"].flatten(1), t["lora_down.weight"].flatten(1)
            md = m * scale * (up @ down).reshape(w.shape)
            # the fp32 GEMM's own error (rank-r sums): (r+2)·2⁻²⁴·|m·s|·(|up| @ |down|)
            gemm = (down.shape[0] + 2) * 2.0 ** -24 * abs(m * scale) * (up.abs() @ down.abs()).reshape(w.shape)
            want = originals[mod.layer][0].double() + md
            half_ulp = half_ulp_above(w)
            bound = half_ulp + 2 * u * md.abs() + abs(m) * tiny + gemm
            assert bool(((w.double() - want).abs() <= bound).all()), (mod.layer, m)
    p.restore()
    assert same_state(model_state(root), original)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_loha_at_budget_0_is_written_from_its_factors_within_float64_bounds_with_no_memory_beyond_backups(
        nets, dtype):
    """Delta cache 0 (overhead = the backups, as the built-in Lora's): LoHa is written from its four factors in
    row blocks (patch_terms.Hada), no dense ΔW built or kept. Each weight is W0 + m·ΔW in fp32, cast once: within
    ½ ulp(W) + the fp32 rounding of the products (bounded from float64 |factor| products). After a LoRA on the
    same layers (add_to) it matches the reference; a rescale equals a fresh apply bit for bit; restore is exact."""
    from lib_lora.algos._common import rank_scale
    from lib_lora.patcher import effective_multiplier

    root, host = _model(dtype)
    original, originals = model_state(root), snapshot(host)
    p = Patcher(host, cache_bytes=0)
    n = sum(1 for m in nets["loha"].modules.values() if m.layer in host.layers)
    eps = 2.0 ** -24
    for te, unet in ((1.0, 1.0), (-1.3, 0.7)):
        active = ActiveLora(nets["loha"], te, unet)
        rep = p.apply([active])
        assert rep.factored == n and rep.deltas_computed == 0 and p.cache.bytes == 0 and not rep.failed_layers
        for mod in nets["loha"].modules.values():
            if mod.layer not in host.layers:
                continue
            w = host[mod.layer].weight
            m = effective_multiplier(active, mod)
            t = {k: v.detach().double().flatten(1) for k, v in mod.tensors.items()}
            mag = abs(rank_scale(mod, int(t["hada_w1_b"].shape[0])) * m) * \
                ((t["hada_w1_a"].abs() @ t["hada_w1_b"].abs()) * (t["hada_w2_a"].abs() @ t["hada_w2_b"].abs()))
            ref = originals[mod.layer][0].double().flatten(1) + m * _loha_f64(mod)
            half_ulp = half_ulp_above(w).flatten(1)
            r = int(t["hada_w1_b"].shape[0])
            bound = half_ulp + (2 * r + 8) * eps * (mag + ref.abs())
            err = (w.double().flatten(1) - ref).abs()
            assert bool((err <= bound).all()), (mod.layer, float((err - bound).max()))
    both = [ActiveLora(nets["lora"], 0.5, 0.5), ActiveLora(nets["loha"], 1.7, 1.7)]
    rep = p.apply(both)
    assert rep.factored >= n and rep.deltas_computed == 0 and p.cache.bytes == 0
    for layer, (w, b) in reference_weights(originals, both).items():
        torch.testing.assert_close(host[layer].weight.double(), w.double(), **tol(dtype))
    r2, h2 = _model(dtype)
    Patcher(h2, cache_bytes=0).apply(both)
    assert same_state(model_state(root), model_state(r2))      # after three changes == one fresh apply
    p.restore()
    assert same_state(model_state(root), original)


def test_dense_lowrank_auto_keeps_dense_deltas_for_half_weights_only(nets):
    """"auto" (the WebUI's default): fp16 weights get dense LoRA/LoCon deltas from the second apply on (the
    factor product costs several fp16 copies there); fp32 weights stay on the factors (as fast, half the memory)."""
    for dtype, dense in ((torch.float16, True), (torch.float32, False)):
        root, host = _model(dtype)
        p = Patcher(host, dense_lowrank="auto")
        first = p.apply([ActiveLora(nets["locon"], 0.8, 0.8)])
        assert first.deltas_computed == 0 and p.cache.bytes == 0
        p.apply([ActiveLora(nets["locon"], 0.5, 0.5)])
        assert (p.cache.bytes > 0) == dense, dtype
        p.restore()
