"""The Tagger tab in a real headless Chromium: a folder run through the tab (model picked from the list,
progress, captions written, frequency table, model status), and a model folder added after start shows up
when the model list is opened (no "Refresh list")."""

from __future__ import annotations

import time

import pytest
from PIL import Image

from tests import browser as B
from tests.tagger_models import make_model_dir

pytestmark = B.pytestmarks()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    B.DEADLINE = time.monotonic() + 150
    root = tmp_path_factory.mktemp("tagapp")
    lora, models = root / "lora", root / "TM"
    lora.mkdir()
    make_model_dir(models / "tiny", "v3")
    app = B.start_app(root, ["--lora-dir", str(lora), "--image-dir", str(lora), "--tagger-models-dir", str(models)])
    drv = None
    try:
        drv = B.start_browser(root)
        app.wait_ready()
        yield {"root": root, "lora": lora, "models": models, "app": app, "drv": drv}
    finally:
        if drv is not None:
            drv.quit()
        app.stop()
        B.DEADLINE = float("inf")


def options(drv, elem_id):
    return drv.execute_script(f"return [...document.querySelectorAll('#{elem_id} ul.options li')]"
                              ".map(li => li.innerText.trim());")


def test_folder_run_through_the_tab(env):
    drv, lora, models = env["drv"], env["lora"], env["models"]
    data = lora / "dataset"                     # the app's configured folders are the allowed roots
    data.mkdir()
    for i in range(3):
        Image.new("RGB", (24, 24), (255, 0, 0) if i else (0, 0, 255)).save(data / f"{i}.png")
    (data / "broken.png").write_bytes(b"not a png")
    drv.get(env["app"].url)
    B.open_tab(drv, "Tagger")
    B.wait_for(lambda: B.css(drv, "#lora_studio_tagger_model").is_displayed(), what="the Tagger tab")
    assert B.textbox_value(drv, "lora_studio_tagger_model") == "tiny"          # the local model, not eva02-large
    assert "No model loaded" in B.text_of(drv, "lora_studio_tagger_status")

    def listed(name):
        """Open the list (closing it first): Gradio 3 shows new choices from the next opening on."""
        drv.execute_script("document.activeElement && document.activeElement.blur();")
        B.css(drv, "#lora_studio_tagger_model input").click()
        time.sleep(0.3)
        return name in options(drv, "lora_studio_tagger_model")

    make_model_dir(models / "added-later", "v3")
    B.open_tab(drv, "Folder")                                              # picking a sub-tab refreshes the list
    B.wait_for(lambda: B.css(drv, "#lora_studio_tagger_folder").is_displayed(), what="the Folder tab")
    time.sleep(1)
    B.wait_for(lambda: listed("added-later"), 3, "the new model in the list", interval=0.5)
    make_model_dir(models / "added-even-later", "v3")                    # opening the list refreshes it too
    B.wait_for(lambda: listed("added-even-later"), 15, "the newer model", interval=0.5)
    B.choose(drv, "lora_studio_tagger_model", "added-later")
    B.wait_for(lambda: B.textbox_value(drv, "lora_studio_tagger_model") == "added-later", what="the pick")

    assert str(lora) in B.text_of(drv, "lora_studio_tagger_roots")
    B.set_textbox(drv, "lora_studio_tagger_folder", str(env["root"]))          # outside: refused, nothing written
    B.click(drv, "lora_studio_tagger_start")
    msg = B.wait_text(drv, "lora_studio_tagger_progress", "Error", 20)
    assert "outside the configured folders" in msg
    B.set_textbox(drv, "lora_studio_tagger_folder", str(data))
    B.click(drv, "lora_studio_tagger_start")
    done = B.wait_text(drv, "lora_studio_tagger_progress", "Done", 40)
    assert "3 images tagged" in done and "1 unreadable" in done
    assert (data / "1.txt").read_text().startswith("red theme") and (data / "0.txt").read_text().startswith("blue")
    B.wait_for(lambda: "Loaded: added-later" in B.text_of(drv, "lora_studio_tagger_status"), 10, "the model status")
    B.wait_for(lambda: "red theme" in B.text_of(drv, "lora_studio_tagger_table"), 10, "the frequency table")
    assert "broken.png" in B.textbox_value(drv, "lora_studio_tagger_log")
    B.screenshot(drv, "tagger_folder_run.png")



def test_a_typed_model_folder_is_used_as_typed(env):
    """A path typed into the model list never becomes `tiny` + path (the list takes only its own names:
    loading then says where a folder goes); the folder box beside it loads exactly the folder typed."""
    drv, models = env["drv"], env["models"]
    make_model_dir(models / "typed", "v3")
    drv.get(env["app"].url)
    B.open_tab(drv, "Tagger")
    B.wait_for(lambda: B.css(drv, "#lora_studio_tagger_model").is_displayed(), what="the Tagger tab")
    B.click(drv, "lora_studio_tagger_unload")        # a model of an earlier test may still be loaded
    B.wait_for(lambda: "nload" in B.text_of(drv, "lora_studio_tagger_status") or
               "No model" in B.text_of(drv, "lora_studio_tagger_status"), 20, "the unload")
    box = B.css(drv, "#lora_studio_tagger_model input")
    box.click()
    box.send_keys(str(models / "tiny"))
    drv.execute_script("document.activeElement && document.activeElement.blur();")
    B.click(drv, "lora_studio_tagger_load")
    # the list's own model, or the message naming the folder box; never a name with the path appended
    B.wait_for(lambda: (lambda t: "Loaded: tiny (local folder)" in t or "box beside it" in t)(
        B.text_of(drv, "lora_studio_tagger_status")), 20, "the load of the listed model or the hint")
    assert str(models / "tiny") not in B.textbox_value(drv, "lora_studio_tagger_model")
    B.set_textbox(drv, "lora_studio_tagger_model_folder", str(models / "typed"))
    B.click(drv, "lora_studio_tagger_load")
    B.wait_text(drv, "lora_studio_tagger_status", "Loaded: typed (local folder)", 20)
    drv.get(env["app"].url)                          # a reloaded page shows what is still in memory
    B.open_tab(drv, "Tagger")
    B.wait_text(drv, "lora_studio_tagger_status", "Loaded: typed (local folder)", 20)
