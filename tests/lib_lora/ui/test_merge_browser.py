"""The Merge tab in a real headless Chromium against the standalone app: pick two tiny checkpoints, move a block
slider, merge, see the summary line, and find the slider's value in the written file's recipe.

Screenshots are kept under artifacts/ (or $ARTIFACTS_DIR).
"""

from __future__ import annotations

import json

import pytest

from tests import browser as B

pytestmark = B.pytestmarks()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from tests.checkpoints import write_checkpoint

    root = tmp_path_factory.mktemp("mergeapp")
    for sub in ("lora", "ckpt", "tag"):
        (root / sub).mkdir()
    write_checkpoint(root / "ckpt" / "alpha.safetensors", seed=1)
    write_checkpoint(root / "ckpt" / "beta.safetensors", seed=2)
    with B.session(root, ["--lora-dir", str(root / "lora"), "--checkpoint-dir", str(root / "ckpt"),
                          "--tagger-models-dir", str(root / "tag")], 180) as (app, drv):
        yield {"root": root, "app": app, "drv": drv}


def test_pick_two_models_move_a_slider_and_merge(env):
    drv, root = env["drv"], env["root"]
    drv.get(env["app"].url)
    B.open_tab(drv, "Merge")
    B.choose(drv, "lora_studio_merge_a", "alpha.safetensors")
    B.wait_text(drv, "lora_studio_merge_arch", "SD1: 26 block weights", timeout=30)
    B.choose(drv, "lora_studio_merge_b", "beta.safetensors")
    B.set_number(drv, "lora_studio_merge_w_OUT03", "0.9")      # ticks "Merge per block" by itself
    B.wait_for(lambda: B.css(drv, "#lora_studio_merge_per_block input").is_selected(), 10, "per block ticked")
    B.set_textbox(drv, "lora_studio_merge_out", "merged")
    B.click(drv, "lora_studio_merge_run")
    line = B.wait_text(drv, "lora_studio_merge_status", "wrote", timeout=60)
    B.screenshot(drv, "app_merge_tab.png")
    assert "(sd1, " in line and "tensors merged" in line, line
    out = root / "ckpt" / "merged.safetensors"
    from lib_lora.fileio import read_metadata
    recipe = json.loads(read_metadata(out)["lora_studio_merge"])
    weights = recipe["block_weights"]
    assert weights["OUT03"] == 0.9 and weights["OUT02"] == 0.5, weights
    assert recipe["inputs"]["A"]["file"] == "alpha.safetensors"
    # the same name again without "Replace the output file": one line, the file is kept
    before = out.stat().st_mtime_ns
    B.click(drv, "lora_studio_merge_run")
    msg = B.wait_text(drv, "lora_studio_merge_status", "already exists", timeout=30)
    assert "Replace the output file" in msg and out.stat().st_mtime_ns == before
