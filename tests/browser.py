"""Headless Chromium + the standalone app in a subprocess, for the UI tests (no mocks: the real app, a real browser).

    app = start_app(tmp_path, ["--lora-dir", str(lora_dir)])      # free port on 127.0.0.1
    drv = start_browser(tmp_path)
    drv.get(app.url); ...; app.stop(); drv.quit()

Gradio 3.41 DOM helpers address components by elem_id.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1400,1100"]


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not (os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return "chromium is not installed (apt-get install chromium chromium-driver)"
    if not (os.path.exists(CHROMEDRIVER) and os.access(CHROMEDRIVER, os.X_OK)):
        return "chromedriver is not installed (apt-get install chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed in this environment (pip install selenium)"
    return None


def pytestmarks() -> list:
    """A browser test module's `pytestmark`: marked `browser`, and skipped with the reason when Chromium is missing."""
    import pytest
    missing = chromium_missing()
    return [pytest.mark.browser] + ([pytest.mark.skip(reason=f"browser tests need Chromium: {missing}")]
                                    if missing else [])


def artifacts_dir() -> Path:
    d = Path(os.environ.get("ARTIFACTS_DIR") or REPO / "artifacts")
    d.mkdir(parents=True, exist_ok=True)
    return d


def free_port() -> int:
    """A bindable port below the kernel's ephemeral range (32768+), so chromedriver's own random ports
    cannot take it while the app is still importing."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))   # free on every interface (the --listen app binds 0.0.0.0)
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class App:
    def __init__(self, workdir: Path, args: list[str], port: int | None = None, python: str | None = None):
        self.workdir, self.args, self.python = Path(workdir), list(args), python or sys.executable
        self._spawn(port or free_port())

    def _spawn(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}/"
        self.log = self.workdir / f"app-{port}.log"
        env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", PYTHONPATH=str(REPO),
                   NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
        env.pop("DISPLAY", None)
        with open(self.log, "wb") as fh:
            self.proc = subprocess.Popen(
                [self.python, "-m", "lib_lora", "ui", *self.args, "--port", str(port), "--no-browser"],
                cwd=str(self.workdir), env=env, stdout=fh, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def output_with(self, text: str, timeout: float = 20.0) -> str:
        """The log once it contains `text` (the app prints its start-up line just after the server answers),
        or the log as it is after `timeout`."""
        end = time.monotonic() + timeout
        while text not in self.output() and time.monotonic() < end and self.proc.poll() is None:
            time.sleep(0.1)
        return self.output()

    def wait_ready(self, timeout: float = 40.0) -> None:
        end = min(time.monotonic() + timeout, DEADLINE)
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                if "cannot serve on port" in self.output():   # someone took the port meanwhile: new one
                    self._spawn(free_port())
                    continue
                raise RuntimeError(f"app exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url + "config", timeout=2) as r:
                    if r.status == 200:
                        return
            except urllib.error.HTTPError as exc:
                if exc.code == 401:   # up, and asking for the login (--auth)
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"app did not answer within {timeout:.0f} s:\n{self.output()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_app(workdir: Path, args: list[str], port: int | None = None, python: str | None = None) -> App:
    """`python -m lib_lora ui ARGS --port P --no-browser` in `workdir` (an argument list, never a shell).
    `python`: another interpreter (e.g. one with Gradio 4 installed), default this one."""
    return App(workdir, args, port, python)


@contextlib.contextmanager
def session(workdir: Path, args: list[str], seconds: float):
    """`(app, driver)` for one test module: the standalone app on `args` and a browser, both stopped after;
    the module's time budget (DEADLINE) is `seconds` from now."""
    global DEADLINE
    DEADLINE = time.monotonic() + seconds
    app = start_app(workdir, args)
    drv = None
    try:
        drv = start_browser(workdir)
        app.wait_ready()
        yield app, drv
    finally:
        if drv is not None:
            drv.quit()
        app.stop()
        DEADLINE = float("inf")


def start_browser(workdir: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = Path(workdir) / "chromium-profile"
    profile.mkdir(parents=True, exist_ok=True)
    for flag in CHROME_FLAGS + [f"--user-data-dir={profile}"]:
        opts.add_argument(flag)
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    drv.set_page_load_timeout(30)
    return drv


# ---- Gradio 3.41 DOM helpers ----------------------------------------------------------------------


# Whole-run budget (monotonic time); every wait stops at it. Set by the test fixture.
DEADLINE = float("inf")


def wait_for(fn, timeout: float = 10.0, what: str = "condition", interval: float = 0.1):
    end = min(time.monotonic() + timeout, DEADLINE)
    last = None
    while time.monotonic() < end:
        try:
            last = fn()
            if last:
                return last
        except Exception as exc:  # stale elements while Gradio re-renders
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what} (last: {last!r})")


def css(drv, selector: str):
    from selenium.webdriver.common.by import By
    return drv.find_element(By.CSS_SELECTOR, selector)


def css_all(drv, selector: str):
    from selenium.webdriver.common.by import By
    return drv.find_elements(By.CSS_SELECTOR, selector)


def open_tab(drv, label: str) -> None:
    def click():
        for b in css_all(drv, "div.tab-nav button"):
            if b.text.strip() == label:
                b.click()
                return True
        return False
    wait_for(click, what=f"tab button {label!r}")


def text_of(drv, elem_id: str) -> str:
    return css(drv, f"#{elem_id}").text


def wait_text(drv, elem_id: str, needle: str, timeout: float = 10.0) -> str:
    return wait_for(lambda: needle in text_of(drv, elem_id) and text_of(drv, elem_id), timeout,
                    what=f"{needle!r} in #{elem_id}")


def set_textbox(drv, elem_id: str, text: str) -> None:
    box = css(drv, f"#{elem_id} textarea, #{elem_id} input")
    box.clear()
    box.send_keys(text)


def set_number(drv, elem_id: str, value: str) -> None:
    """Type `value` into a gr.Slider's / gr.Number's number box and leave it (Tab), as a user does."""
    from selenium.webdriver.common.keys import Keys
    box = css(drv, f"#{elem_id} input[type=number]")
    drv.execute_script("arguments[0].scrollIntoView({block: 'center'});", box)
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(value, Keys.TAB)


def textbox_value(drv, elem_id: str) -> str:
    return css(drv, f"#{elem_id} textarea, #{elem_id} input").get_attribute("value")


def click(drv, elem_id: str) -> None:
    el = css(drv, f"#{elem_id}")
    drv.execute_script("arguments[0].scrollIntoView({block: 'center'});", el)
    el.click()


def choose(drv, elem_id: str, value: str) -> None:
    """Pick `value` in a gr.Dropdown: open the list, click the option with that exact text."""
    inp = css(drv, f"#{elem_id} input")
    drv.execute_script("arguments[0].scrollIntoView({block: 'center'});", inp)
    inp.click()

    def pick():
        for li in css_all(drv, f"#{elem_id} ul.options li"):
            if li.text.strip() == value:
                li.click()
                return True
        return False
    wait_for(pick, what=f"option {value!r} in #{elem_id}")


def screenshot(drv, name: str) -> Path:
    path = artifacts_dir() / name
    drv.save_screenshot(str(path))
    return path


# ---- a LoRA whose block norms are known ------------------------------------------------------------

BIG_BLOCK = "OUT03"
LORA_BLOCKS = ("BASE", "IN01", "M00", "OUT03")


def _pick(layer: str) -> bool:
    return ("attn2.to_k" in layer and any(b in layer for b in ("input_blocks.1.", "middle_block.",
                                                                "output_blocks.3."))) \
        or layer.endswith("encoder.layers.0.self_attn.q_proj")


def write_block_lora(path) -> dict:
    """Kohya SD1 LoRA with one module in BASE, IN01, M00 and OUT03 (OUT03's up scaled ×20).

    Returns {block: expected Frobenius norm of ΔW = up @ down * alpha / rank}, computed here with torch.
    """
    import torch
    from safetensors.torch import save_file

    from tests.factory import make_lora_with_targets

    sd, md, targets = make_lora_with_targets("sd15", family="kohya", algo="lora", rank=4, layers=_pick)
    block_of = {"input_blocks.1.": "IN01", "middle_block.": "M00", "output_blocks.3.": "OUT03", "encoder.": "BASE"}
    norms = {}
    for module, (layer, _qkv) in targets.items():
        block = next(b for k, b in block_of.items() if k in layer)
        if block == BIG_BLOCK:
            sd[f"{module}.lora_up.weight"] = sd[f"{module}.lora_up.weight"] * 20
        up, down = sd[f"{module}.lora_up.weight"].double(), sd[f"{module}.lora_down.weight"].double()
        scale = float(sd[f"{module}.alpha"]) / down.shape[0]
        norms[block] = float(torch.linalg.matrix_norm(up.flatten(1) @ down.flatten(1)) * scale)
    save_file(sd, str(path), metadata=md)
    return norms


def _row_cell(drv, elem_id: str, row_name: str, col: int):
    for r in css_all(drv, f"#{elem_id} tbody tr"):
        cells = r.find_elements("css selector", "td")
        if cells and cells[0].text.strip() == row_name:
            return cells[col]
    return None


def click_table_cell(drv, elem_id: str, row_name: str, col: int) -> None:
    """Click cell `col` of the gr.Dataframe row whose first cell is `row_name`."""
    def go():
        cell = _row_cell(drv, elem_id, row_name, col)
        if cell is None:
            return False
        drv.execute_script("arguments[0].scrollIntoView({block: 'center'});", cell)
        cell.click()
        return True
    wait_for(go, what=f"row {row_name!r} in #{elem_id}")


def edit_table_cell(drv, elem_id: str, row_name: str, col: int, text: str) -> None:
    """Type `text` into a gr.Dataframe cell (double-click opens the editor, Enter commits)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    def go():
        cell = _row_cell(drv, elem_id, row_name, col)
        if cell is None:
            return False
        drv.execute_script("arguments[0].scrollIntoView({block: 'center'});", cell)
        ActionChains(drv).double_click(cell).perform()
        return True
    wait_for(go, what=f"row {row_name!r} in #{elem_id}")
    box = wait_for(lambda: css_all(drv, f"#{elem_id} td input"), what="the cell editor")[0]
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(text, Keys.ENTER)
    wait_for(lambda: (_row_cell(drv, elem_id, row_name, col).text.strip() == text), what="the edited cell")


def click_text(drv, text: str) -> None:
    """Click the first visible element whose own text is `text` (accordion headers, labels)."""
    from selenium.webdriver.common.by import By

    def go():
        for el in drv.find_elements(By.XPATH, f"//*[normalize-space(text())={text!r}]"):
            if el.is_displayed():
                drv.execute_script("arguments[0].scrollIntoView({block: 'center'});", el)
                el.click()
                return True
        return False
    wait_for(go, what=f"an element with text {text!r}")
