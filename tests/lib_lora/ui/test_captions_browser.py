"""The caption browser in a real headless Chromium (the standalone app, Tagger tab → Captions): open a
folder, pick a thumbnail and edit its caption, bulk replace with a preview, undo."""

from __future__ import annotations


import pytest
from PIL import Image

from tests import browser as B

pytestmark = B.pytestmarks()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("capapp")
    images = root / "images"
    ds = images / "set"
    ds.mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (32, 24), (60 * i, 100, 200)).save(ds / f"{i}.png")
        (ds / f"{i}.txt").write_bytes(b"1girl, long_hair, smile" if i % 2 == 0 else b"solo, long hair\n")
    (root / "TM").mkdir()
    with B.session(root, ["--image-dir", str(images), "--tagger-models-dir", str(root / "TM")], 150) as (app, drv):
        yield {"ds": ds, "app": app, "drv": drv}


def test_open_edit_bulk_replace_undo(env):
    drv, ds = env["drv"], env["ds"]
    before = {p.name: p.read_bytes() for p in ds.glob("*.txt")}
    drv.get(env["app"].url)
    B.open_tab(drv, "Tagger")
    B.open_tab(drv, "Captions")
    B.set_textbox(drv, "lora_studio_captions_folder", str(ds))
    B.click(drv, "lora_studio_captions_open")
    B.wait_text(drv, "lora_studio_captions_status", "4 images, 4 with a caption file")
    B.wait_for(lambda: len(B.css_all(drv, "#lora_studio_captions_gallery img")) == 4, what="4 thumbnails")
    assert "long_hair" in B.text_of(drv, "lora_studio_captions_freq").replace(" ", "_") or \
        "long hair" in B.text_of(drv, "lora_studio_captions_freq")

    # Pick the second thumbnail: its caption goes into the editor; edit and save it.
    thumbs = B.css_all(drv, "#lora_studio_captions_gallery button.thumbnail-item, "
                            "#lora_studio_captions_gallery .thumbnail-item")
    drv.execute_script("arguments[0].scrollIntoView({block: 'center'});", thumbs[1])
    thumbs[1].click()
    B.wait_for(lambda: B.textbox_value(drv, "lora_studio_captions_editor") == "solo, long hair",
               what="the picked caption in the editor")
    assert B.textbox_value(drv, "lora_studio_captions_file") == "1.png"
    B.set_textbox(drv, "lora_studio_captions_editor", "solo, long hair, red scarf")
    B.click(drv, "lora_studio_captions_save")
    B.wait_text(drv, "lora_studio_captions_result", "Saved 1.txt")
    assert (ds / "1.txt").read_bytes() == b"solo, long hair, red scarf\n"
    edited = {p.name: p.read_bytes() for p in ds.glob("*.txt")}

    # Bulk replace: preview first (files untouched), then apply, then undo.
    B.set_textbox(drv, "lora_studio_captions_tag", "long hair")
    B.set_textbox(drv, "lora_studio_captions_repl", "ponytail")
    B.click(drv, "lora_studio_captions_preview")
    text = B.wait_text(drv, "lora_studio_captions_result", "4 caption files would change")
    assert "0.txt: 1girl, long_hair, smile → 1girl, ponytail, smile" in text
    assert {p.name: p.read_bytes() for p in ds.glob("*.txt")} == edited
    B.click(drv, "lora_studio_captions_apply")
    B.wait_text(drv, "lora_studio_captions_result", "4 caption files changed")
    assert (ds / "0.txt").read_bytes() == b"1girl, ponytail, smile"
    assert (ds / "1.txt").read_bytes() == b"solo, ponytail, red scarf\n"
    B.wait_for(lambda: "ponytail" in B.text_of(drv, "lora_studio_captions_freq"), what="the frequency refresh")
    B.click(drv, "lora_studio_captions_undo")
    B.wait_text(drv, "lora_studio_captions_result", "undo of replace")
    assert {p.name: p.read_bytes() for p in ds.glob("*.txt")} == edited
    assert edited != before
    B.screenshot(drv, "captions_browser.png")
