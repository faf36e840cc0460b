"""The standalone app's live merge in a real headless Chromium: pick model A and load it, generate a preview,
apply B, generate again (another image), move one block slider and apply (only that block rewritten), restore,
generate (the first image again), save what was applied.

Screenshots are kept under artifacts/ (or $ARTIFACTS_DIR).
"""

from __future__ import annotations

import base64
import io
import re

import pytest

from tests import browser as B

pytestmark = B.pytestmarks()

_FETCH = """
const done = arguments[arguments.length - 1];
const img = document.querySelector('#lora_studio_merge_pv_image img');
if (!img) { done(null); return; }
fetch(img.src).then(r => r.arrayBuffer()).then(buf => {
  let s = ''; const b = new Uint8Array(buf);
  for (let i = 0; i < b.length; i++) s += String.fromCharCode(b[i]);
  done(btoa(s));
}).catch(() => done(null));
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    import torch

    from lib_lora.sd.model import build_model, save_model

    root = tmp_path_factory.mktemp("mergeliveapp")
    for sub in ("lora", "ckpt", "tag"):
        (root / sub).mkdir()
    for name, seed in (("alpha", 0), ("beta", 1)):
        save_model(build_model("sd1", "tiny", seed=seed, dtype=torch.float32), root / "ckpt" / f"{name}.safetensors")
    with B.session(root, ["--lora-dir", str(root / "lora"), "--checkpoint-dir", str(root / "ckpt"),
                          "--tagger-models-dir", str(root / "tag")], 240) as (app, drv):
        yield {"root": root, "app": app, "drv": drv}


def _image(drv):
    import numpy as np
    from PIL import Image
    data = drv.execute_async_script(_FETCH)
    assert data, "no preview image"
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))


def _src(drv):
    return drv.execute_script("const i = document.querySelector('#lora_studio_merge_pv_image img');"
                              "return i ? i.src : null;")


def _generate(drv):
    """Press Generate preview and wait for a new image (each one here differs from the one shown before)."""
    old = _src(drv)
    B.click(drv, "lora_studio_merge_pv_run")
    B.wait_for(lambda: _src(drv) not in (None, old), 90, "a new preview image")
    assert "✓ Loaded: alpha.safetensors" in B.text_of(drv, "lora_studio_merge_pv_status")
    return _image(drv)


def test_load_apply_preview_restore_save(env):
    import numpy as np

    drv, root = env["drv"], env["root"]
    drv.set_script_timeout(60)
    drv.get(env["app"].url)
    B.open_tab(drv, "Merge")
    B.choose(drv, "lora_studio_merge_a", "alpha.safetensors")
    B.wait_text(drv, "lora_studio_merge_arch", "SD1: 26 block weights", timeout=30)
    B.click(drv, "lora_studio_merge_live_load")
    B.wait_text(drv, "lora_studio_merge_live_loaded", "Loaded: alpha.safetensors (SD1, cpu, fp32)", timeout=60)
    B.set_textbox(drv, "lora_studio_merge_pv_prompt", "a toy, red")
    B.set_number(drv, "lora_studio_merge_pv_steps", "2")
    B.set_number(drv, "lora_studio_merge_pv_size", "64")
    first = _generate(drv)
    assert first.shape == (64, 64, 3)
    B.choose(drv, "lora_studio_merge_b", "beta.safetensors")
    B.click(drv, "lora_studio_merge_live_apply")
    line = B.wait_text(drv, "lora_studio_merge_live_status", "live merge: weighted", timeout=60)
    assert "nothing was written to disk" in line, line
    B.wait_text(drv, "lora_studio_merge_live_loaded", "live merge: weighted", timeout=30)
    merged = _generate(drv)
    assert not np.array_equal(merged, first)
    B.set_number(drv, "lora_studio_merge_w_IN04", "0.9")         # ticks "Merge per block" by itself
    B.wait_for(lambda: B.css(drv, "#lora_studio_merge_per_block input").is_selected(), 10, "per block ticked")
    B.click(drv, "lora_studio_merge_live_apply")
    line = B.wait_text(drv, "lora_studio_merge_live_status", "blocks ", timeout=60)
    rewritten, total = (int(v) for v in re.search(r"(\d+) of (\d+) tensors rewritten", line).groups())
    assert 0 < rewritten < total, line                            # only IN04's tensors
    B.screenshot(drv, "app_merge_live.png")
    B.click(drv, "lora_studio_merge_live_restore")
    B.wait_text(drv, "lora_studio_merge_live_status", "live merge removed", timeout=30)
    assert np.array_equal(_generate(drv), first)
    # nothing is applied now: Save says so in one line and writes nothing
    B.set_textbox(drv, "lora_studio_merge_out", "tried")
    B.click(drv, "lora_studio_merge_live_save")
    B.wait_text(drv, "lora_studio_merge_live_status", "no live merge to save", timeout=30)
    assert not (root / "ckpt" / "tried.safetensors").exists()
    B.click(drv, "lora_studio_merge_live_apply")
    B.wait_text(drv, "lora_studio_merge_live_status", "live merge: weighted", timeout=60)
    B.click(drv, "lora_studio_merge_live_save")
    B.wait_text(drv, "lora_studio_merge_live_status", "saved the live merge", timeout=60)
    assert (root / "ckpt" / "tried.safetensors").is_file()
