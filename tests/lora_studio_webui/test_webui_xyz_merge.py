"""X/Y/Z "Merge: alpha" / "Merge: block weights" in a fake AUTOMATIC1111: each cell generates with its live
merge, the first generation after the grid puts back the merge active before it, refusals are one line."""

from __future__ import annotations

import pytest
import torch

from tests.fake_webui.harness import LAYERS
from tests.lora_studio_webui.test_webui_live_merge import merged_reference, same, write_other
from tests.models import bits

W26 = ",".join(f"{0.04 * i:.2f}" for i in range(26))
LAYER = LAYERS[2]          # M00


def option(label):
    from lora_studio_webui.xyz import find_xyz_module
    xyz = find_xyz_module()
    return xyz, next(o for o in xyz.axis_options if o.label.endswith(label))


def run(webui, label, values):
    xyz, opt = option(label)
    p = webui.processing("x")
    p.observer = lambda proc: webui.weight(LAYER)
    xs = opt.prepare(values) if opt.prepare is not None and isinstance(values, str) else values
    return [(x, res.trace[0][3]) for x, _, res in xyz.run_axis(p, opt, xs)]


@pytest.fixture
def recipe(webui, tmp_path):
    (tmp_path / "user_presets.txt").write_text(f"MIX26:{W26}\n", encoding="utf-8")
    from lora_studio_webui import live_merge, xyz_merge
    xyz_merge.TAB_RECIPE = None
    b = write_other(webui, tmp_path, "b", 21)
    yield live_merge, b
    xyz_merge.TAB_RECIPE = None
    xyz_merge._GRID.update(before=None, running=False)


def test_no_recipe_is_refused(webui, recipe):
    with pytest.raises(RuntimeError, match=r"^\[LoRA Studio\] Merge: alpha: no merge recipe yet"):
        run(webui, "Merge: alpha", ["0.2"])


def test_alpha_cells_then_the_grid_is_put_back(webui, recipe):
    live_merge, b = recipe
    live = live_merge.provider()
    live.apply(b=b, alpha=0.3)
    before = webui.weights()
    cells = run(webui, "Merge: alpha", ["0.2", "0.8"])
    for alpha, (x, w) in zip((0.2, 0.8), cells):
        ref = merged_reference(webui_original(webui, live), b, alpha=alpha)
        assert torch.equal(bits(w), bits(ref[LAYER + ".weight"]))
    webui.generate("x")                                  # not a cell: the model gets its merge back
    assert same(webui.weights(), before)
    assert live.active.alpha == 0.3


def test_images_on_a_live_merge_say_so_in_their_parameters(webui, recipe):
    live_merge, b = recipe
    p, _ = webui.generate("x")
    assert "LoRA Studio merge" not in p.extra_generation_params          # no merge: nothing claimed
    live_merge.provider().apply(b=b, alpha=0.3)
    p, _ = webui.generate("x")
    assert p.extra_generation_params["LoRA Studio merge"] == "weighted with b.safetensors, alpha 0.3"
    xyz, opt = option("Merge: alpha")
    q = webui.processing("x")
    notes = []
    q.observer = lambda proc: notes.append(dict(proc.extra_generation_params))
    xyz.run_axis(q, opt, [0.7])
    assert notes[-1]["LoRA Studio merge"] == "weighted with b.safetensors, alpha 0.7"   # the cell's own merge
    live_merge.provider().restore()
    p, _ = webui.generate("x")
    assert "LoRA Studio merge" not in p.extra_generation_params


def webui_original(webui, live):
    """A stand-in object whose model tensors are A (the loaded weights before the live merge)."""
    class _W:
        pass
    w = _W()
    w.model = _Model({k: live._orig.get(k, t) for k, t in live.tensors.items()})
    return w


class _Model:
    def __init__(self, tensors):
        self._t = tensors

    def state_dict(self, keep_vars=False):
        return dict(self._t)


def test_block_weight_cells_take_lists_and_presets(webui, recipe):
    live_merge, b = recipe
    from lora_studio_webui import xyz_merge
    xyz_merge.TAB_RECIPE = {"b": b, "c": None, "mode": "weighted", "alpha": 0.5, "block_weights": None,
                            "base_alpha": None}
    original = webui.weights()
    ref = merged_reference(webui, b, alpha=0.5, block_weights=W26)
    cells = run(webui, "Merge: block weights", f"MIX26|{W26.replace('0.52', '0.9')}")
    assert len(cells) == 2
    assert torch.equal(bits(cells[0][1]), bits(ref[LAYER + ".weight"]))
    assert not torch.equal(bits(cells[1][1]), bits(cells[0][1]))      # M00 = slot 13: 0.52 became 0.9
    webui.generate("x")
    assert same(webui.weights(), original)                # no merge before the grid: loaded weights back
    assert "MIX26" in option("Merge: block weights")[1].choices()
    assert "ALL" not in option("Merge: block weights")[1].choices()   # a 17-value LoRA preset


@pytest.mark.parametrize("label,values,message", [
    ("Merge: alpha", [], "no values given"),
    ("Merge: block weights", ["nosuchpreset"], "neither a list of numbers nor a preset name"),
    ("Merge: block weights", ["0.5,0.5,0.5"], "has 3 values"),
    ("Merge: block weights", ["ALL"], "has 17 values"),
])
def test_bad_values_are_one_line(webui, recipe, label, values, message):
    live_merge, b = recipe
    live_merge.provider().apply(b=b, alpha=0.3)
    with pytest.raises(RuntimeError, match=message):
        run(webui, label, values)


def test_prepare_splits_lists(webui):
    from lora_studio_webui.xyz_merge import prepare_blocks
    assert prepare_blocks(f"{W26}") == [W26]
    assert prepare_blocks("face, MIX26") == ["face", "MIX26"]
    assert prepare_blocks(f'"{W26}", MIX26') == [W26, "MIX26"]
    assert prepare_blocks(f"{W26} | MIX26") == [W26, "MIX26"]
    assert prepare_blocks("  ") == []


def test_model_b_axis_makes_a_grid_without_any_recipe(webui, recipe, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from modules import sd_models
    from tests.lora_studio_webui.test_webui_live_merge import write_other as other
    live_merge, b = recipe
    b2 = other(webui, tmp_path, "b2", 33)
    monkeypatch.setattr(sd_models, "checkpoints_list", {n: SimpleNamespace(name=n, filename=f) for n, f in
                                                        (("b.safetensors", b), ("b2.safetensors", b2))}, raising=False)
    xyz, _ = option("Merge: alpha")
    labels = [o.label for o in xyz.axis_options]
    ix_alpha, ix_b = labels.index("[LoRA Studio] Merge: alpha"), labels.index("[LoRA Studio] Merge: model B")
    assert xyz.axis_options[ix_b].choices() == ["b.safetensors", "b2.safetensors"]
    before = webui.weights()
    live = live_merge.provider()
    p = webui.processing("x")
    p.observer = lambda proc: (webui.weight(LAYER), dict(proc.extra_generation_params))
    cells = xyz.Script().run(p, ix_alpha, ["0.2", "0.8"], ix_b, ["b.safetensors", "b2.safetensors"])
    assert len(cells) == 4
    for (alpha, name, _), pc, res in cells:
        weight, params = res.trace[0][3]
        ref = merged_reference(webui_original(webui, live), b if name == "b.safetensors" else b2, alpha=alpha)
        assert torch.equal(bits(weight), bits(ref[LAYER + ".weight"])), (alpha, name)
        assert params["LoRA Studio merge"] == f"weighted with {name}, alpha {alpha:g}"   # as the cell generated
    webui.generate("x")                                  # the grid ends: the loaded weights come back
    assert same(webui.weights(), before) and live.active is None
    with pytest.raises(RuntimeError, match=r"'nope.safetensors' not in the checkpoint list"):
        xyz.Script().run(webui.processing("x"), ix_alpha, ["0.2"], ix_b, ["nope.safetensors"])
    with pytest.raises(RuntimeError, match=r"Merge: alpha: no merge recipe yet"):   # no B axis: still refused
        xyz.Script().run(webui.processing("x"), ix_alpha, ["0.2"], 0, [""])
