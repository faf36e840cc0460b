"""javascript/lora_studio.js in real headless Chromium: Ctrl+Up/Down on a block-weighted tag changes the
multiplier and keeps the block list, and the WebUI's own (bubbling) handler never sees the key."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tests.paths import REPO

ROOT = REPO

PAGE = """<!doctype html><html><body>
<div id="txt2img_toprow"><div id="txt2img_prompt"><textarea id="t"></textarea></div></div>
<script>var opts = {keyedit_precision_extra: 0.05}; var updated = 0; var webuiSaw = 0;
function updateInput(t) { updated++; }
addEventListener('keydown', function() { webuiSaw++; });  // stands for the WebUI's bubbling listener
</script><script src="SCRIPT"></script></body></html>"""


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("chromium / chromedriver not installed (Debian packages chromium, chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    o = webdriver.ChromeOptions()
    o.binary_location = shutil.which("chromium")
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              f"--user-data-dir={tmp_path_factory.mktemp('chrome')}"):
        o.add_argument(a)
    d = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=o)
    page = tmp_path_factory.mktemp("page") / "index.html"
    page.write_text(PAGE.replace("SCRIPT", (ROOT / "javascript" / "lora_studio.js").as_uri()))
    d.get(page.as_uri())
    yield d
    d.quit()


def press(driver, text, pos, key="ArrowUp"):
    return driver.execute_script(
        "var t = document.getElementById('t'); t.value = arguments[0]; t.focus(); t.setSelectionRange(arguments[1], arguments[1]);"
        "webuiSaw = 0; updated = 0;"
        "t.dispatchEvent(new KeyboardEvent('keydown', {key: arguments[2], ctrlKey: true, bubbles: true, composed: true}));"
        "return [t.value, webuiSaw, updated];", text, pos, key)


def test_block_list_survives_and_multiplier_moves(driver):
    tag = "a cat <lora:hina:0.75:1,1,1,1,1,1,1,1.5,1,1,1,1,1,1,1,1,1> b"
    value, saw, updated = press(driver, tag, tag.index("hina") + 2)
    assert value == "a cat <lora:hina:0.8:1,1,1,1,1,1,1,1.5,1,1,1,1,1,1,1,1,1> b"
    assert (saw, updated) == (0, 1)                    # the WebUI's handler did not also edit it


def test_preset_and_named_forms(driver):
    assert press(driver, "<lora:x:0.8:face>", 3, "ArrowDown")[0] == "<lora:x:0.75:face>"
    assert press(driver, "<lyco:x:1:0.6:OUTALL>", 3)[0] == "<lyco:x:1.05:0.65:OUTALL>"
    assert press(driver, "<lora:x:1.0:lbw=face:x=0.3>", 3)[0] == "<lora:x:1.05:lbw=face:x=0.3>"


def test_plain_numeric_tags_and_other_text_are_left_to_the_webui(driver):
    for text, pos in (("<lora:x:0.8>", 3), ("<lora:x:1:0.6>", 3), ("(cat:1.2) dog", 2), ("<hypernet:h:0.5:face>", 3)):
        value, saw, updated = press(driver, text, pos)
        assert (value, saw, updated) == (text, 1, 0), json.dumps([text, value])
