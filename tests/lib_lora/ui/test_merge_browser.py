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


def _result(drv, elem_id):
    """The tool's result line once it has one (✓ or ⚠), else None."""
    text = B.text_of(drv, elem_id)
    return text if text.startswith(("✓", "⚠")) else None


def test_lora_tools_run_with_the_optional_numbers_left_as_shown(env):
    """Gradio 3 shows an unset number (Conv rank, Clamp quantile, Parameter) as 0 and sends 0: the tools read
    that as unset, so Resize and Extract run with only the files, the rank and the output name given."""
    from tests.factory import write_lora
    drv, root = env["drv"], env["root"]
    write_lora(root / "lora" / "small.safetensors", rank=8)
    drv.get(env["app"].url)                                  # the page load lists the new LoRA
    B.open_tab(drv, "Merge")
    B.open_tab(drv, "LoRA tools")
    B.open_tab(drv, "Resize")
    assert B.css(drv, "#lora_studio_merge_resize_conv_rank input").get_attribute("value") == "0"
    B.choose(drv, "lora_studio_merge_resize_src", "small.safetensors")
    B.set_number(drv, "lora_studio_merge_resize_rank", "4")
    B.set_textbox(drv, "lora_studio_merge_resize_out", "resized")
    B.click(drv, "lora_studio_merge_resize_run")
    line = B.wait_for(lambda: _result(drv, "lora_studio_merge_resize_status"), 60, "the resize line")
    assert line.startswith("✓ wrote") and (root / "lora" / "resized.safetensors").is_file(), line
    B.open_tab(drv, "Extract")
    B.choose(drv, "lora_studio_merge_extract_base", "alpha.safetensors")
    B.choose(drv, "lora_studio_merge_extract_tuned", "beta.safetensors")
    B.set_number(drv, "lora_studio_merge_extract_rank", "4")
    B.set_textbox(drv, "lora_studio_merge_extract_out", "extracted")
    B.click(drv, "lora_studio_merge_extract_run")
    line = B.wait_for(lambda: _result(drv, "lora_studio_merge_extract_status"), 120, "the extract line")
    B.screenshot(drv, "app_lora_tools_extract.png")
    assert line.startswith("✓ wrote"), line
    from lib_lora.fileio import read_metadata
    md = json.loads(read_metadata(root / "lora" / "extracted.safetensors")["lora_studio_extracted"])
    assert md["conv_rank"] is None and md["clamp_quantile"] is None, md
