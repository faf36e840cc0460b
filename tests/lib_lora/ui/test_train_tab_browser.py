"""The Training tab's dataset tools in a real headless Chromium over the standalone app: "Prepare a folder"
copies a folder of images into `<repeats>_<concept>` and the dataset picker then shows it; "Tag this folder"
tags it with a setting typed in the Tagger tab (an exclude regex) and shows the validation report after."""

from __future__ import annotations


import pytest
import torch
from PIL import Image

from tests import browser as B
from tests.tagger_models import make_model_dir

pytestmark = B.pytestmarks()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from lib_lora.sd.model import build_model, save_model
    root = tmp_path_factory.mktemp("trainapp")
    lora, ckpt, images, models = root / "lora", root / "ckpt", root / "images", root / "TM"
    for d in (lora, ckpt, images):
        d.mkdir()
    save_model(build_model("sd1", "tiny", seed=0, dtype=torch.float32), ckpt / "tiny.safetensors")
    make_model_dir(models / "tiny", "v3")
    with B.session(root, ["--lora-dir", str(lora), "--checkpoint-dir", str(ckpt), "--image-dir", str(images),
                    "--tagger-models-dir", str(models)], 180) as (app, drv):
        yield {"root": root, "images": images, "app": app, "drv": drv}


def test_prepare_then_tag_with_the_tagger_settings(env):
    drv, images = env["drv"], env["images"]
    raw = images / "raw"
    raw.mkdir()
    for i in range(4):
        Image.new("RGB", (64, 64), (255, 0, 0)).save(raw / f"{i}.png")
    drv.get(env["app"].url)
    B.open_tab(drv, "Tagger")
    B.wait_for(lambda: B.css(drv, "#lora_studio_tagger_model").is_displayed(), what="the Tagger tab")
    B.click_text(drv, "Tag options")
    B.wait_for(lambda: B.css(drv, "#lora_studio_tagger_exclude_regex").is_displayed(), what="the tag options")
    B.set_textbox(drv, "lora_studio_tagger_exclude_regex", ".*theme")       # the tagger's own setting

    B.open_tab(drv, "Training")
    B.click_text(drv, "Prepare a folder (tagged images → <repeats>_<concept>)")
    B.wait_for(lambda: B.css(drv, "#lora_studio_train_prep_src").is_displayed(), what="the prepare section")
    B.set_textbox(drv, "lora_studio_train_prep_src", str(raw))
    B.set_textbox(drv, "lora_studio_train_prep_dest", "prepared")
    B.set_textbox(drv, "lora_studio_train_prep_concept", "redthing")
    B.click(drv, "lora_studio_train_prep_preview")
    plan = B.wait_text(drv, "lora_studio_train_prep_status", "repeats", 20)
    assert "4 images" in plan and not (images / "prepared").exists()
    B.click(drv, "lora_studio_train_prep_run")
    B.wait_text(drv, "lora_studio_train_prep_status", "Prepared", 20)
    folders = [p.name for p in (images / "prepared").iterdir()]
    assert len(folders) == 1 and folders[0].endswith("_redthing")
    B.wait_for(lambda: B.textbox_value(drv, "lora_studio_train_dataset") == "prepared", what="the picked dataset")

    B.choose(drv, "lora_studio_train_checkpoint", "tiny.safetensors")
    B.set_textbox(drv, "lora_studio_train_output_name", "red")
    B.click(drv, "lora_studio_train_tag")
    report = B.wait_text(drv, "lora_studio_train_report", "Tagger: Done", 60)
    assert "4 images tagged" in report and "redthing: 4 images" in report
    caps = [p.read_text() for p in (images / "prepared" / folders[0]).glob("*.txt")]
    assert len(caps) == 4 and all(c and "theme" not in c for c in caps), caps
    B.screenshot(drv, "train_tab_prepare_tag.png")
