"""One slow action must not freeze every other button (Gradio 3's queue ran ONE event at a time)."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

pytest.importorskip("gradio")
pytest.importorskip("websockets.sync.client")

from tests import browser as B  # noqa: E402
from tests.faults.test_app_http import fn_index, run_queued  # noqa: E402


def test_a_quick_action_runs_while_a_slow_one_is_busy(tmp_path):
    from lib_lora.ui import app

    (tmp_path / "lora").mkdir()
    ctx = app.build_context([tmp_path / "lora"], [], tmp_path / "tag", presets_file=tmp_path / "p.txt")
    port = B.free_port()
    demo = app.launch(ctx, port=port, open_browser=False, block=False,
                      tabs=[("Slow", "tests.faults.app_slow_tab", "test_slow_tab")])
    try:
        srv = SimpleNamespace(url=f"http://127.0.0.1:{port}/", port=port)
        slow, fast = fn_index(srv, "test_slow"), fn_index(srv, "test_fast")
        done = {}

        def run_slow():
            done["slow"] = run_queued(srv, slow, [])
            done["slow_at"] = time.monotonic()

        t = threading.Thread(target=run_slow)
        t.start()
        time.sleep(1.0)                       # the slow event is running now
        msg = run_queued(srv, fast, [])
        fast_at = time.monotonic()
        t.join(30)
        assert msg["output"]["data"] == ["fast done"]
        assert done["slow"]["output"]["data"] == ["slow done"]
        assert fast_at < done["slow_at"], "the quick action waited for the slow one"
    finally:
        demo.close()
