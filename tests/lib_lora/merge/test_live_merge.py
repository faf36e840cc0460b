"""Live merges on a loaded model's tensors: bit for bit what the streamed file merge writes for the same recipe,
restore bit-exact (also after a cancel, an error or Ctrl-C mid-apply), no drift over re-applies, only the
changed blocks rewritten, save = the live weights, LoRA patches on top of a live merge."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from lib_lora import blocks
from lib_lora.errors import LoraStudioError
from lib_lora.merge.checkpoint import RECIPE_KEY, merge_checkpoints
from lib_lora.merge.live import LiveMerge, LiveMergeCancelled
from tests.checkpoints import write_checkpoint
from tests.models import bits

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SLOT_W = [round(0.04 * i - 0.1, 2) for i in range(26)]
OTHER_W = list(SLOT_W)
OTHER_W[5] = 0.9      # IN04 only
OTHER_W[20] = -0.3    # OUT05 only


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("live")
    for k, seed in zip("abc", (1, 2, 3)):
        write_checkpoint(tmp / f"{k}.safetensors", "sd15", seed=seed)
    write_checkpoint(tmp / "xl.safetensors", "sdxl", scale=32, seed=4)
    return {"tmp": tmp, **{k: str(tmp / f"{k}.safetensors") for k in ("a", "b", "c", "xl")}}


def loaded(files):
    """The 'loaded model': A's tensors in memory (fp16 weights, fp32 schedule, int64 position_ids)."""
    return {k: v.clone() for k, v in load_file(files["a"]).items()}


def same(x: dict, y: dict) -> list:
    """Keys whose tensors differ in dtype, shape or any bit."""
    assert x.keys() == y.keys()
    return [k for k in x if x[k].dtype != y[k].dtype or x[k].shape != y[k].shape
            or not torch.equal(bits(x[k]), bits(y[k]))]


def snapshot(t: dict) -> dict:
    return {k: v.clone() for k, v in t.items()}


def file_merge(files, tmp, name, **kw):
    out = tmp / name
    if not out.exists():
        merge_checkpoints(files["a"], files["b"], out, **kw)
    return load_file(str(out))


@pytest.mark.parametrize("recipe", [
    dict(mode="weighted", alpha=0.3),
    dict(mode="weighted", alpha=0.5, block_weights=SLOT_W, base_alpha=0.7),
    dict(mode="add-diff", alpha=0.8, block_weights=",".join(str(v) for v in SLOT_W), c="c"),
])
def test_live_apply_equals_streamed_file_merge(files, recipe):
    recipe = dict(recipe)
    if recipe.get("c") == "c":
        recipe["c"] = files["c"]
    t = loaded(files)
    lm = LiveMerge(t)
    line = lm.apply(b=files["b"], **recipe)
    assert "live merge" in line and "\n" not in line
    ref = file_merge(files, files["tmp"], f"f_{recipe['mode']}_{recipe['alpha']}.safetensors", **recipe)
    assert same(t, ref) == []
    assert lm.active is not None and lm.active.mode == recipe["mode"]


def test_restore_is_bit_exact_and_reapply_does_not_drift(files):
    t = loaded(files)
    a = snapshot(t)
    lm = LiveMerge(t)
    lm.apply(b=files["b"], alpha=0.5, block_weights=SLOT_W)
    first = snapshot(t)
    for w in (OTHER_W, [1.0] * 26, SLOT_W):
        lm.apply(b=files["b"], alpha=0.5, block_weights=w)
    assert same(t, first) == []
    lm.apply(b=files["b"], c=files["c"], mode="add-diff", alpha=1.3)
    line = lm.restore()
    assert "restored" in line
    assert same(t, a) == []
    assert lm.active is None and lm._orig == {}
    assert "unchanged" in lm.restore()


def test_block_weight_change_rewrites_only_the_changed_blocks(files):
    t = loaded(files)
    lm = LiveMerge(t)
    lm.apply(b=files["b"], alpha=0.5, block_weights=SLOT_W)
    changed = [k for k in t if blocks.checkpoint_key_slot(k, "sd1") in (5, 20) and t[k].is_floating_point()]
    assert changed
    line = lm.apply(b=files["b"], alpha=0.5, block_weights=OTHER_W)
    assert f" {len(changed)} of " in line
    assert " 0 of " in lm.apply(b=files["b"], alpha=0.5, block_weights=OTHER_W)


class _Stop:
    def __init__(self, after, exc=None):
        self.n, self.after, self.exc = 0, after, exc

    def __call__(self, *args):
        self.n += 1
        if self.exc is not None and self.n > self.after:
            raise self.exc
        return self.n > self.after


@pytest.mark.parametrize("how", ["cancel", "error", "interrupt"])
@pytest.mark.parametrize("from_merge", [False, True])
def test_failed_apply_leaves_the_model_as_before(files, how, from_merge):
    t = loaded(files)
    a = snapshot(t)
    lm = LiveMerge(t)
    if from_merge:
        lm.apply(b=files["b"], alpha=0.5, block_weights=SLOT_W)
    before, recipe = snapshot(t), lm.active
    kw = {"cancel": _Stop(40)} if how == "cancel" else \
        {"progress": _Stop(40, RuntimeError("disk gone") if how == "error" else KeyboardInterrupt())}
    exc = {"cancel": LiveMergeCancelled, "error": RuntimeError, "interrupt": KeyboardInterrupt}[how]
    with pytest.raises(exc):
        lm.apply(b=files["c"], alpha=0.9, **kw)
    assert same(t, before) == []
    assert lm.active == recipe
    lm.restore()
    assert same(t, a) == []


def test_cancel_message_is_one_line(files):
    lm = LiveMerge(loaded(files))
    with pytest.raises(LiveMergeCancelled, match="^live merge cancelled; the loaded model is as before$"):
        lm.apply(b=files["b"], cancel=lambda: True)


def test_save_writes_the_live_weights(files, tmp_path):
    t = loaded(files)
    lm = LiveMerge(t)
    with pytest.raises(LoraStudioError, match="no live merge to save"):
        lm.save(tmp_path / "x.safetensors")
    lm.apply(b=files["b"], c=files["c"], mode="add-diff", alpha=0.6, block_weights=SLOT_W)
    out = tmp_path / "live.safetensors"
    assert "saved the live merge" in lm.save(out)
    assert same(load_file(str(out)), t) == []
    merge_checkpoints(files["a"], files["b"], tmp_path / "ref.safetensors", c=files["c"], mode="add-diff",
                      alpha=0.6, block_weights=SLOT_W)
    assert same(load_file(str(out)), load_file(str(tmp_path / "ref.safetensors"))) == []
    from safetensors import safe_open
    with safe_open(str(out), "pt") as f:
        assert '"live": true' in f.metadata()[RECIPE_KEY]
    with pytest.raises(LoraStudioError, match="exists"):
        lm.save(out)
    lm.save(out, dtype="fp32", overwrite=True)
    saved = load_file(str(out))
    assert saved["model.diffusion_model.input_blocks.1.1.proj_in.weight"].dtype == torch.float32
    assert saved["cond_stage_model.transformer.text_model.embeddings.position_ids"].dtype == torch.int64


def test_keys_kept_as_loaded_are_not_merged_and_the_saved_recipe_says_so(files, tmp_path):
    import json

    t = loaded(files)
    vae = {k: v.clone() for k, v in t.items() if k.startswith("first_stage_model.")}
    assert vae
    lm = LiveMerge(t, keep=("first_stage_model.",))
    lm.apply(b=files["b"], alpha=0.6)
    assert all(torch.equal(t[k], v) for k, v in vae.items())          # the host's VAE stays as loaded
    out = tmp_path / "kept.safetensors"
    lm.save(out)
    from safetensors import safe_open
    with safe_open(str(out), "pt") as f:
        recipe = json.loads(f.metadata()[RECIPE_KEY])
    assert recipe["kept_as_loaded"] == ["first_stage_model."]


def test_refusals_leave_the_model_untouched(files):
    t = loaded(files)
    a = snapshot(t)
    lm = LiveMerge(t)
    with pytest.raises(LoraStudioError, match="^model B 'xl.safetensors' is SDXL but the loaded model is SD1"):
        lm.apply(b=files["xl"])
    with pytest.raises(LoraStudioError, match="needs a third model C"):
        lm.apply(b=files["b"], mode="add-diff")
    with pytest.raises(LoraStudioError, match="not known"):
        lm.apply(b=files["b"], mode="average")
    with pytest.raises(LoraStudioError, match="not found"):
        lm.apply(b=str(files["tmp"] / "nope.safetensors"))
    with pytest.raises(LoraStudioError, match="26"):
        lm.apply(b=files["b"], block_weights=[0.5] * 7)
    assert same(t, a) == [] and lm.active is None


def test_hooks_see_every_write(files):
    t = loaded(files)
    calls = []
    lm = LiveMerge(t, before_write=lambda: calls.append("before"), after_write=lambda keys: calls.append(len(keys)))
    lm.apply(b=files["b"], alpha=0.5, block_weights=SLOT_W)
    assert calls[0] == "before" and calls[1] > 0
    calls.clear()
    lm.apply(b=files["b"], alpha=0.5, block_weights=SLOT_W)      # nothing changes: no write, no hook
    assert calls == []


def test_lora_on_top_of_a_live_merge_restores_to_the_merge(files):
    """The patcher's backups hold the merge as base when the host drops them before each live write."""
    from lib_lora.host import Host
    from lib_lora.network import load_network
    from lib_lora.patcher import ActiveLora, Patcher

    t = loaded(files)
    a = snapshot(t)
    lora = files["tmp"] / "lora.safetensors"
    _write_small_lora(lora, t)
    net = load_network(str(lora))
    net.arch = "sd1"      # the scaled-down widths read as another arch; the layer names are SD1.5's
    patcher = Patcher(Host.from_state_dict(t))

    def drop_lora():
        patcher.restore()
        patcher.forget()

    lm = LiveMerge(t, before_write=drop_lora, before_read=patcher.restore)
    patcher.apply([ActiveLora(net)])
    lm.apply(b=files["b"], alpha=0.5, block_weights=SLOT_W)       # LoRA taken off first, then merged
    merged = snapshot(t)
    ref = LiveMerge(snapshot(a))
    ref.apply(b=files["b"], alpha=0.5, block_weights=SLOT_W)
    assert same(merged, ref.tensors) == []
    patcher.apply([ActiveLora(net, unet=0.7)])
    assert same(t, merged) != []
    patcher.restore()
    assert same(t, merged) == []                                  # the backups held the merge
    patcher.apply([ActiveLora(net)])
    lm.restore()
    assert same(t, a) == []


def _write_small_lora(path, state):
    """A kohya LoRA over a few SD1.5 layers of `state` (the checkpoint's scaled-down shapes)."""
    from safetensors.torch import save_file
    gen = torch.Generator().manual_seed(7)
    sd = {}
    for layer in ("model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k",
                  "model.diffusion_model.output_blocks.5.1.transformer_blocks.0.attn1.to_q",
                  "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj"):
        w = state[layer + ".weight"]
        kohya = ("lora_te_" + layer[len("cond_stage_model.transformer."):] if layer.startswith("cond")
                 else "lora_unet_" + layer[len("model.diffusion_model."):]).replace(".", "_")
        sd[kohya + ".lora_down.weight"] = torch.randn(4, w.shape[1], generator=gen) * 0.1
        sd[kohya + ".lora_up.weight"] = torch.randn(w.shape[0], 4, generator=gen) * 0.1
        sd[kohya + ".alpha"] = torch.tensor(4.0)
    save_file(sd, str(path))
