"""The standalone app's live merge: model A loaded with lib_lora.sd (merge_live.LoadedModel) holds, after
"Apply to loaded model", bit for bit what the streamed file merge writes; a block-weight change rewrites only
that block's tensors; Restore is bit-exact; Save writes the CLI merge's tensors; the preview image changes
with the merge and is the pre-merge image again after Restore; a LoRA tag in the preview prompt comes off
after its image; Cancel and bad input are one line with the model unchanged. The Training tab's epoch grid
renders on model A (locked, given back bit for bit) when it is the same file without a live merge."""

from __future__ import annotations

import os
import shutil
import threading

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("gradio")

from lib_lora import blocks  # noqa: E402
from lib_lora.__main__ import main  # noqa: E402
from lib_lora.errors import LoraStudioError  # noqa: E402
from lib_lora.merge.live import checkpoint_tensors  # noqa: E402
from lib_lora.ui import app, merge_live as ml, merge_tab as mt, train_compare as tc  # noqa: E402
from tests.models import bits  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

W = [round(0.03 * i + 0.1, 2) for i in range(26)]      # m per slot (26, slot order)
W2 = list(W)
W2[blocks.BLOCK_NAMES.index("IN04")] = 0.95             # one block moved
PV = dict(prompt="a toy, red", negative="blurry", seed=7, steps=2, size=64)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from lib_lora.sd.model import build_model, save_model
    tmp = tmp_path_factory.mktemp("mergelive")
    for sub in ("ckpt", "lora", "out"):
        (tmp / sub).mkdir()
    for name, seed in (("a", 0), ("b", 1), ("c", 2)):
        save_model(build_model("sd1", "tiny", seed=seed, dtype=torch.float32), tmp / "ckpt" / f"{name}.safetensors")
    return tmp


@pytest.fixture
def ctx(folders):
    return app.build_context([folders / "lora"], [folders / "out", folders / "ckpt"], folders / "tagger")


def _apply(ctx, jobs, weights, mode="add-diff", c="c.safetensors", alpha=0.6):
    line = mt.live_apply(ctx, jobs, "b.safetensors", c, mode, alpha, True, "a.safetensors", *weights)
    assert line.startswith("✓ live merge") and "\n" not in line, line
    return line


def _two_models(tmp_path, arch, dtype, seeds):
    """An app context over a checkpoint folder holding tiny models a and b (`seeds`) of `arch` in `dtype`."""
    from lib_lora.sd.model import build_model, save_model
    for sub in ("ckpt", "lora"):
        (tmp_path / sub).mkdir()
    for name, seed in zip(("a", "b"), seeds):
        save_model(build_model(arch, "tiny", seed=seed, dtype=dtype), tmp_path / "ckpt" / f"{name}.safetensors")
    return app.build_context([tmp_path / "lora"], [tmp_path / "ckpt"], tmp_path / "tagger")


def _preview(ctx, jobs):
    line, image = ml.preview(ctx, jobs, PV["prompt"], PV["negative"], PV["seed"], PV["steps"], PV["size"])
    assert line.startswith("✓ ") and image is not None, line
    return np.asarray(image)


def _diff(x: dict, y: dict) -> list:
    assert x.keys() == y.keys()
    return [k for k in x if x[k].dtype != y[k].dtype or not torch.equal(bits(x[k].detach()), bits(y[k].detach()))]


def _cli_merge(folders, name, *extra):
    out = folders / "out" / name
    if not out.exists():
        assert main(["merge", "--a", str(folders / "ckpt" / "a.safetensors"), "--b",
                     str(folders / "ckpt" / "b.safetensors"), "--out", str(out), "--quiet", *extra]) == 0
    return load_file(str(out))


def _weights_arg(w):
    return ["--block-weights", mt.block_text("sd1", w)]


def test_apply_holds_the_file_merge_restore_is_bit_exact_and_the_preview_follows(ctx, folders):
    jobs = mt.Jobs()
    assert mt.live_restore(ctx) == f"⚠ {ml.NO_MODEL}"            # nothing loaded yet: one line
    assert ml.load_a(ctx, "a.safetensors").startswith("✓ Loaded: a.safetensors (SD1, cpu, fp32)")
    live = checkpoint_tensors(ctx.loaded_model.model)
    a = {k: v.detach().clone() for k, v in live.items()}
    assert _diff(a, load_file(str(folders / "ckpt" / "a.safetensors"))) == []   # the model is A's file
    before = _preview(ctx, jobs)
    _apply(ctx, jobs, W)
    ref = _cli_merge(folders, "ref_w.safetensors", "--mode", "add-diff", "--c", str(folders / "ckpt" / "c.safetensors"),
                     "--alpha", "0.6", *_weights_arg(W))
    assert _diff(live, ref) == []
    assert "live merge: add-diff" in ctx.loaded_model.describe()
    merged = _preview(ctx, jobs)
    assert not np.array_equal(merged, before)
    assert mt.live_restore(ctx).startswith("✓ live merge removed")
    assert _diff(live, a) == []
    assert np.array_equal(_preview(ctx, jobs), before)


def test_a_block_weight_change_rewrites_only_that_block(ctx, folders):
    jobs = mt.Jobs()
    ml.load_a(ctx, "a.safetensors")
    live = checkpoint_tensors(ctx.loaded_model.model)
    _apply(ctx, jobs, W)
    versions = {k: t._version for k, t in live.items()}
    line = _apply(ctx, jobs, W2)
    rewritten = {k for k, t in live.items() if t._version != versions[k]}
    in04 = {k for k in live if blocks.checkpoint_key_slot(k, "sd1") == blocks.BLOCK_NAMES.index("IN04")}
    assert rewritten == in04 and in04, (len(rewritten), len(in04))
    assert f" {len(in04)} of " in line, line
    ref = _cli_merge(folders, "ref_w2.safetensors", "--mode", "add-diff", "--c",
                     str(folders / "ckpt" / "c.safetensors"), "--alpha", "0.6", *_weights_arg(W2))
    assert _diff(live, ref) == []


def test_save_writes_the_cli_merge_file(ctx, folders):
    jobs = mt.Jobs()
    ml.load_a(ctx, "a.safetensors")
    _apply(ctx, jobs, W, mode="weighted", c="", alpha=0.4)
    line = mt.live_save(ctx, jobs, mt.AS_INPUT, "live_w", False)
    assert line.startswith("✓ saved the live merge"), line
    saved = load_file(str(folders / "out" / "live_w.safetensors"))
    ref = _cli_merge(folders, "ref_sum.safetensors", "--mode", "weighted", "--alpha", "0.4", *_weights_arg(W))
    assert _diff(saved, ref) == []
    assert "already exists" in mt.live_save(ctx, jobs, mt.AS_INPUT, "live_w", False)


def test_a_lora_tag_in_the_preview_comes_off_after_its_image(ctx, folders):
    from lib_lora.merge.extract import extract_lora
    lora = folders / "lora" / "ext.safetensors"
    if not lora.exists():
        extract_lora(str(folders / "ckpt" / "a.safetensors"), str(folders / "ckpt" / "c.safetensors"), str(lora), 4, 4)
    jobs = mt.Jobs()
    ml.load_a(ctx, "a.safetensors")
    _apply(ctx, jobs, W, mode="weighted", c="", alpha=0.5)
    live = checkpoint_tensors(ctx.loaded_model.model)
    held = {k: v.detach().clone() for k, v in live.items()}
    plain = _preview(ctx, jobs)
    line, tagged = ml.preview(ctx, jobs, PV["prompt"] + " <lora:ext:1>", PV["negative"], PV["seed"], PV["steps"],
                              PV["size"])
    assert line.startswith("✓ ") and not np.array_equal(np.asarray(tagged), plain), line
    assert _diff(live, held) == []                        # the merge is the LoRA's base and is held again
    line, same = ml.preview(ctx, jobs, PV["prompt"] + " <lora:ext:0>", PV["negative"], PV["seed"], PV["steps"],
                            PV["size"])
    assert np.array_equal(np.asarray(same), plain)       # the tag's text is not in the prompt
    bad, image = ml.preview(ctx, jobs, "x <lora:nope:1>", "", 1, 2, 64)
    assert bad.startswith("⚠ ") and "'nope' not found" in bad and "press Refresh" in bad and image is None, bad
    # the bake tool's tag rules: a path is not a LoRA name; start=/stop= cannot be honoured by the preview
    bad, image = ml.preview(ctx, jobs, "x <lora:../ext:1>", "", 1, 2, 64)
    assert bad.startswith("⚠ ") and "not a plain name" in bad and image is None, bad
    line, _ = ml.preview(ctx, jobs, "x <lora:ext:1:stop=3>", "", 1, 2, 64)
    assert line.startswith("✓ ") and "start=/stop= only apply while sampling; applied for the whole preview" in line
    # every tag's note is on the line, not only the first one's
    shutil.copyfile(lora, folders / "lora" / "ext2.safetensors")
    line, _ = ml.preview(ctx, jobs, "x <lora:ext:1:stop=3> <lora:ext2:0.5:start=2>", "", 1, 2, 64)
    assert "2 note(s)" in line and "`ext2`: start=/stop= only apply while sampling" in line, line
    (folders / "lora" / "ext2.safetensors").unlink()


def test_cancel_and_bad_input_leave_the_model_as_it_was(ctx, folders):
    jobs = mt.Jobs()
    ml.load_a(ctx, "a.safetensors")
    live = checkpoint_tensors(ctx.loaded_model.model)
    a = {k: v.detach().clone() for k, v in live.items()}

    def stop(*_a, **_k):
        jobs.cancel_all()
    line = mt.live_apply(ctx, jobs, "b.safetensors", "", "weighted", 0.5, False, "a.safetensors", *W, progress=stop)
    assert line.startswith("⚠ ") and "cancelled" in line.lower(), line
    assert _diff(live, a) == [] and ctx.loaded_model.live.active is None
    line, image = ml.preview(ctx, jobs, "a toy", "", 1, 3, 64, progress=stop)
    assert line.startswith("⚠ Cancelled") and image is None, line
    for args, needle in ((("", "", 1, 2, 64), "Type a prompt"), (("x", "", 1, 2, 60), "multiple of 8"),
                         (("x", "", 1, 0, 64), "1 to 1000")):
        line, image = ml.preview(ctx, jobs, *args)
        assert line.startswith("⚠ ") and needle in line and "\n" not in line and image is None, line
    assert ml.load_a(ctx, "").startswith("⚠ Pick model A")
    assert "not in the checkpoint list" in ml.load_a(ctx, "../ckpt/a.safetensors")


def test_loading_another_model_drops_the_live_merge(ctx, folders):
    jobs = mt.Jobs()
    ml.load_a(ctx, "a.safetensors")
    _apply(ctx, jobs, W, mode="weighted", c="", alpha=0.5)
    line = ml.load_a(ctx, "b.safetensors")
    assert line.startswith("✓ Loaded: b.safetensors") and "live merge on a.safetensors was dropped" in line, line
    assert ctx.loaded_model.live.active is None
    assert mt.live_restore(ctx).startswith("✓ no live merge was applied")
    # an action that took the old model's LiveMerge and waited for its lock while B was loaded refuses
    old = ctx.loaded_model.live
    ml.load_a(ctx, "a.safetensors")
    before = {k: t.clone() for k, t in old.tensors.items()}
    with pytest.raises(LoraStudioError, match="unloaded while this waited"):
        old.apply(b=str(folders / "ckpt" / "b.safetensors"), mode="weighted", alpha=0.5)
    assert _diff(dict(old.tensors), before) == []
    assert ctx.loaded_model.live is not old and ctx.loaded_model.live.active is None
    from safetensors.torch import save_file
    save_file({"x.weight": torch.zeros(2, 2)}, str(folders / "out" / "junk.safetensors"))
    line = ml.load_a(ctx, "junk.safetensors")
    assert line.startswith("⚠ ") and "not an SD1 or SDXL checkpoint" in line and "\n" not in line, line
    assert mt.live_restore(ctx) == f"⚠ {ml.NO_MODEL}"        # the model before it was let go first
    assert ctx.loaded_model.describe() == "No model is loaded."
    (folders / "out" / "junk.safetensors").unlink()


def test_tab_has_the_load_and_preview_controls_in_the_app(ctx):
    demo = app.create_app(ctx, tabs=[("Merge", "lib_lora.ui.merge_tab", "lora_studio_tab_merge")])
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    need = {f"lora_studio_merge_{n}" for n in ("live_load", "live_loaded", "live_apply", "live_restore",
                                               "live_save", "live_cancel", "pv_prompt", "pv_run", "pv_image")}
    assert need <= ids, need - ids
    assert "lora_studio_merge_live_unavailable" not in ids


def test_an_fp16_model_a_is_merged_in_fp32_and_saved_as_the_fp16_file_merge(tmp_path):
    """The app's model is fp32: the live merge of an fp16 A is the file merge with --dtype fp32, and Save with
    fp16 writes the file merge with --dtype fp16 (what the guide tells users to pick)."""
    from lib_lora.merge.checkpoint import merge_checkpoints
    ctx = _two_models(tmp_path, "sd1", torch.float16, (3, 4))
    jobs = mt.Jobs()
    assert ml.load_a(ctx, "a.safetensors").startswith("✓ Loaded")
    assert mt.live_apply(ctx, jobs, "b.safetensors", "", "weighted", 0.3, False, "a.safetensors", *W).startswith("✓")
    refs = {}
    for dt in ("fp32", "fp16"):
        refs[dt] = tmp_path / f"ref_{dt}.safetensors"
        merge_checkpoints(tmp_path / "ckpt" / "a.safetensors", tmp_path / "ckpt" / "b.safetensors", refs[dt],
                          alpha=0.3, dtype=dt)
    assert _diff(checkpoint_tensors(ctx.loaded_model.model), load_file(str(refs["fp32"]))) == []
    assert mt.live_save(ctx, jobs, "fp16", "saved16", False).startswith("✓ saved")
    saved = load_file(str(tmp_path / "ckpt" / "saved16.safetensors"))
    assert _diff(saved, load_file(str(refs["fp16"]))) == []
    assert any(v.dtype == torch.float16 for v in saved.values())
    # "as input" is A's file's dtypes, not the fp32 the app computes in
    refs["input"] = tmp_path / "ref_input.safetensors"
    merge_checkpoints(tmp_path / "ckpt" / "a.safetensors", tmp_path / "ckpt" / "b.safetensors", refs["input"],
                      alpha=0.3)
    assert mt.live_save(ctx, jobs, mt.AS_INPUT, "saved_in", False).startswith("✓ saved")
    saved = load_file(str(tmp_path / "ckpt" / "saved_in.safetensors"))
    a_file = load_file(str(tmp_path / "ckpt" / "a.safetensors"))
    assert {k: v.dtype for k, v in saved.items()} == {k: a_file[k].dtype for k in saved}
    assert sum(v.dtype == torch.float16 for v in saved.values()) > len(saved) // 2
    assert _diff(saved, load_file(str(refs["input"]))) == []


def test_sdxl_model_a(tmp_path):
    """SDXL: 20 block weights, the live merge is the file merge, the preview renders with it."""
    from lib_lora.merge.checkpoint import merge_checkpoints
    ctx = _two_models(tmp_path, "sdxl", torch.float32, (5, 6))
    jobs = mt.Jobs()
    assert ml.load_a(ctx, "a.safetensors").startswith("✓ Loaded: a.safetensors (SDXL, cpu, fp32)")
    before = _preview(ctx, jobs)
    assert mt.live_apply(ctx, jobs, "b.safetensors", "", "weighted", 0.5, True, "a.safetensors", *W).startswith("✓")
    ref = tmp_path / "ref.safetensors"
    merge_checkpoints(tmp_path / "ckpt" / "a.safetensors", tmp_path / "ckpt" / "b.safetensors", ref,
                      block_weights=mt.block_text("sdxl", W))
    assert _diff(checkpoint_tensors(ctx.loaded_model.model), load_file(str(ref))) == []
    assert not np.array_equal(_preview(ctx, jobs), before)
    assert mt.live_restore(ctx).startswith("✓ live merge removed")
    assert np.array_equal(_preview(ctx, jobs), before)


# ---- the Training tab's epoch grid on the loaded model ----------------------------------------------------

GRID = dict(seed=3, steps=2, size=64)


@pytest.fixture
def run(folders):
    """Run 'ep' in the LoRA folder: an epoch file and a final file (LoRAs extracted from A to C and to B)."""
    from lib_lora.merge.extract import extract_lora
    ck = folders / "ckpt"
    for stem, tuned in (("ep-000001", "c"), ("ep", "b")):
        out = folders / "lora" / f"{stem}.safetensors"
        if not out.exists():
            extract_lora(str(ck / "a.safetensors"), str(ck / f"{tuned}.safetensors"), str(out), 4, 4)
    return "ep"


@pytest.fixture
def loads(monkeypatch):
    """The file names lib_lora.sd.load_model was called with (the real loader runs)."""
    import lib_lora.sd as sd
    real, calls = sd.load_model, []

    def counting(path, **kw):
        calls.append(os.path.basename(path))
        return real(path, **kw)
    monkeypatch.setattr(sd, "load_model", counting)
    return calls


def _grid(ctx, run, ckpt="a.safetensors", progress=None):
    line, grid = tc.compare_run(ctx, ckpt, run, "0.5, 1", "a toy, red", progress=progress, **GRID)
    assert line.startswith("✓ ") and grid is not None and "\n" not in line, line
    return line, np.asarray(grid)


def _held(ctx) -> dict:
    return {k: v.detach().clone() for k, v in checkpoint_tensors(ctx.loaded_model.model).items()}


def test_the_epoch_grid_renders_on_model_a_locked_and_gives_its_weights_back_bit_for_bit(ctx, run, loads):
    line, own = _grid(ctx, run)                          # nothing loaded in the Merge tab: the grid loads A
    assert loads == ["a.safetensors"] and "Merge tab" not in line, line
    assert ml.load_a(ctx, "a.safetensors").startswith("✓ Loaded")
    loaded = ctx.loaded_model
    model, before = loaded.model, _held(ctx)
    locked = []

    def probe(done, total):   # from another thread, as a Merge-tab action would: both locks are taken
        def try_locks():
            for lock in (loaded.lock, loaded.live.lock):
                got = lock.acquire(blocking=False)
                locked.append(not got)
                if got:
                    lock.release()
        t = threading.Thread(target=try_locks)
        t.start()
        t.join()

    line, shared = _grid(ctx, run, progress=probe)
    assert loads == ["a.safetensors", "a.safetensors"]    # only load_a's: no second copy of A
    assert "Reused model A loaded in the Merge tab." in line, line
    assert np.array_equal(shared, own)                    # the same grid as on a model of its own
    assert locked and all(locked), locked                 # 5 images × 2 locks, each held
    assert loaded.model is model and _diff(checkpoint_tensors(model), before) == []   # bit for bit
    # a name that resolves to the same file is the same checkpoint
    alias = ctx.checkpoint_dirs[0] / "alias.safetensors"
    alias.symlink_to(ctx.checkpoint_dirs[1] / "a.safetensors")
    try:
        line, again = _grid(ctx, run, "alias.safetensors")
        assert len(loads) == 2 and "Reused" in line and np.array_equal(again, own), line
    finally:
        alias.unlink()
    assert loaded.lock.acquire(blocking=False) and loaded.live.lock.acquire(blocking=False)   # given back
    loaded.live.lock.release()
    loaded.lock.release()


def test_a_merge_tab_action_during_the_grid_says_it_waits_then_runs(ctx, run):
    """While the epoch grid borrows model A, Restore (from another thread, as the tab would run it) shows why it
    waits instead of hanging silently, and runs once the grid has given the model back."""
    import time

    from lib_lora.ui import merge_run as mr

    assert ml.load_a(ctx, "a.safetensors").startswith("✓ Loaded")
    seen, result, started = [], [], []

    def rec(frac, desc=""):
        seen.append(desc)

    def probe(done, total):   # the grid's progress, with the model lent: the action starts now
        if started:
            return
        t = threading.Thread(target=lambda: result.append(mr.live_restore(ctx, progress=rec)))
        started.append(t)
        t.start()
        deadline = time.monotonic() + 20
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not result     # it waits for the grid, it does not run beside it

    _grid(ctx, run, progress=probe)
    started[0].join(30)
    assert seen and "model A is in use by the Training tab's epoch grid" in seen[0], seen
    assert len(result) == 1 and result[0].startswith("✓"), result
    assert ctx.loaded_model.lent_to is None and ml.wait_note(ctx) == ""   # nothing to wait for afterwards


def test_another_checkpoint_a_live_merge_or_a_replaced_file_load_the_grid_its_own_model(ctx, folders, run, loads):
    jobs = mt.Jobs()
    ml.load_a(ctx, "a.safetensors")
    loaded = ctx.loaded_model
    _, plain = _grid(ctx, run)
    line, _ = _grid(ctx, run, "b.safetensors")
    assert loads == ["a.safetensors", "b.safetensors"] and "Reused" not in line, line
    assert loaded.name == "a.safetensors" and loaded.live.active is None     # A was not evicted
    # a live merge on A: the grid is the plain base from a copy of its own; the merge stays as applied
    _apply(ctx, jobs, W, mode="weighted", c="", alpha=0.5)
    merged = _held(ctx)
    line, g = _grid(ctx, run)
    assert loads[-1] == "a.safetensors" and len(loads) == 3
    assert "holds a live merge" in line and "Restore it there" in line, line
    assert np.array_equal(g, plain)
    assert loaded.live.active is not None and _diff(checkpoint_tensors(loaded.model), merged) == []
    assert mt.live_restore(ctx).startswith("✓ live merge removed")
    assert "Reused" in _grid(ctx, run)[0] and len(loads) == 3
    # the file A was loaded from is replaced on disk: the loaded model is no longer that checkpoint
    other = ctx.checkpoint_dirs[0] / "swap.safetensors"
    shutil.copyfile(folders / "ckpt" / "a.safetensors", other)
    try:
        ml.load_a(ctx, "swap.safetensors")
        shutil.copyfile(folders / "ckpt" / "c.safetensors", str(other) + ".new")
        os.replace(str(other) + ".new", other)
        line, g = _grid(ctx, run, "swap.safetensors")
        assert loads[-1] == "swap.safetensors" and "Reused" not in line, line
        assert not np.array_equal(g, plain)                # C's weights, not the loaded A's
    finally:
        other.unlink()
