"""javascript/lora_studio_sliders.js in real headless Chromium: the tag under the cursor shows as sliders
(17/26/12/20, preset values, letters kept) and moving a slider writes the list back into the tag."""

from __future__ import annotations

import shutil

import pytest

from lib_lora.presets import PresetStore
from tests.paths import REPO

PAGE = """<!doctype html><html><body>
<div id="txt2img_prompt"><textarea id="t"></textarea></div>
PANEL
<div id="lora_studio_sliders_txt2img_req"><textarea></textarea></div>
<button id="lora_studio_sliders_txt2img_go"
 onclick="requests.push(document.querySelector('#lora_studio_sliders_txt2img_req textarea').value)"></button>
<script>var updated = 0, requests = []; function updateInput(t) { updated++; }</script>
<script src="SCRIPT"></script></body></html>"""


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("chromium / chromedriver not installed (Debian packages chromium, chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from lora_studio_webui.block_sliders import panel_html
    o = webdriver.ChromeOptions()
    o.binary_location = shutil.which("chromium")
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              f"--user-data-dir={tmp_path_factory.mktemp('chrome')}"):
        o.add_argument(a)
    d = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=o)
    page = tmp_path_factory.mktemp("page") / "index.html"
    page.write_text(PAGE.replace("PANEL", panel_html("txt2img_prompt", PresetStore()))
                    .replace("SCRIPT", (REPO / "javascript" / "lora_studio_sliders.js").as_uri()))
    d.get(page.as_uri())
    yield d
    d.quit()


def click_at(driver, text, pos):
    """Put `text` in the prompt, the cursor at `pos`, click; → (head text, [(block, value, disabled)])."""
    return driver.execute_script(
        "var t = document.getElementById('t'); t.value = arguments[0]; t.focus();"
        "t.setSelectionRange(arguments[1], arguments[1]); t.dispatchEvent(new MouseEvent('click'));"
        "var p = document.querySelector('.lora-studio-sliders');"
        "return [p.querySelector('.lora-studio-sliders-head').textContent,"
        "  Array.from(p.querySelectorAll('.lora-studio-sliders-body input')).map("
        "    i => [i.dataset.block, i.disabled ? i.dataset.token : i.value, i.disabled])];", text, pos)


def slide(driver, block, value):
    return driver.execute_script(
        "var i = document.querySelector('.lora-studio-sliders-body input[data-block=\"' + arguments[0] + '\"]');"
        "updated = 0; i.value = arguments[1]; i.dispatchEvent(new Event('input'));"
        "return [document.getElementById('t').value, updated];", block, value)


def test_list_tag_shows_17_sliders_and_a_slider_writes_the_list_back(driver):
    text = "a cat <lora:hina:0.8:1,1,1,1,1,1,1,0.5,1,1,1,1,1,1,1,1,R> b"
    head, sliders = click_at(driver, text, text.index("hina") + 1)
    assert head == "hina" and len(sliders) == 17
    assert sliders[0][0] == "BASE" and sliders[7] == ["M00", "0.5", False]
    assert sliders[16] == ["OUT11", "R", True]                  # a letter is kept, not drawn as a weight
    value, updated = slide(driver, "OUT03", "0.25")
    assert value == "a cat <lora:hina:0.8:1,1,1,1,1,1,1,0.5,0.25,1,1,1,1,1,1,1,R> b" and updated == 1


def test_preset_named_and_plain_tags(driver):
    head, sliders = click_at(driver, "<lora:x:1:lbw=ALL_XL:x=0.5>", 3)
    assert head == "x (preset ALL_XL)" and [s[0] for s in sliders][:3] == ["BASE", "IN04", "IN05"]
    assert len(sliders) == 12
    assert slide(driver, "IN05", "0")[0] == "<lora:x:1:lbw=1,1,0,1,1,1,1,1,1,1,1,1:x=0.5>"
    head, sliders = click_at(driver, "<lora:plain:0.7> z", 3)
    assert head == "plain" and len(sliders) == 17 and all(s[1] == "1" for s in sliders)
    assert slide(driver, "BASE", "0")[0] == "<lora:plain:0.7:lbw=0,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1> z"
    head, sliders = click_at(driver, "<lyco:full:1:0.5:" + ",".join(["1"] * 26) + ">", 3)
    assert len(sliders) == 26 and sliders[1][0] == "IN00"
    head, sliders = click_at(driver, "no tag here", 3)
    assert "Put the cursor" in head and sliders == []


def test_format_choice_gives_a_plain_tag_a_list_of_that_size(driver):
    click_at(driver, "<lora:plain:0.7>", 3)
    value = driver.execute_script(
        "var f = document.querySelector('.lora-studio-sliders-format'); f.value = '26';"
        "f.dispatchEvent(new Event('change')); return document.getElementById('t').value;")
    assert value == "<lora:plain:0.7:lbw=" + ",".join(["1"] * 26) + ">"
    assert len(click_at(driver, value, 3)[1]) == 26
    driver.execute_script("document.querySelector('.lora-studio-sliders').dataset.chosen = '17';")


def test_norms_preview_is_requested_once_per_change(driver):
    """The sliders ask the server for the norms chart (hidden textbox + button), debounced, for the LoRA under
    the cursor and the values shown; the same request is not sent twice."""
    import json
    import time
    driver.execute_script("requests.length = 0;")
    click_at(driver, "<lora:blocky:1:lbw=1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1>", 3)
    slide(driver, "OUT03", "0.25")
    slide(driver, "OUT03", "0.5")            # within the debounce: only the last is sent
    time.sleep(0.6)
    sent = [json.loads(r) for r in driver.execute_script("return requests;")]
    assert sent == [{"name": "blocky", "values": ["1"] * 8 + ["0.5"] + ["1"] * 8}]
    click_at(driver, "<lora:blocky:1:lbw=1,1,1,1,1,1,1,1,0.5,1,1,1,1,1,1,1,1>", 3)
    time.sleep(0.6)
    assert len(driver.execute_script("return requests;")) == 1   # unchanged: not asked again
