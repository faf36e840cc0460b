"""Pieces of the WebUI layer that need no WebUI: library lookup, status route auth (tag text: test_syntax.py)."""

from __future__ import annotations

import base64
import types

import pytest

def test_library_lookup(tmp_path):
    from safetensors.torch import save_file
    import torch
    from lora_studio_webui.library import Library
    (tmp_path / "a").mkdir()
    t = {"w": torch.zeros(1)}
    save_file(t, str(tmp_path / "a" / "StyleOne.safetensors"), metadata={"ss_output_name": "style_one"})
    save_file(t, str(tmp_path / "Two.safetensors"), metadata={"ss_output_name": "dup"})
    save_file(t, str(tmp_path / "Three.safetensors"), metadata={"ss_output_name": "dup"})
    save_file(t, str(tmp_path / "Three-000002.safetensors"))
    lib = Library(lambda: [tmp_path])
    assert lib.find("StyleOne").name == "StyleOne"
    assert lib.find("style_one").name == "StyleOne"            # alias
    assert lib.find("styleone").name == "StyleOne"             # unique case-insensitive stem
    assert lib.find("dup") is None                             # ambiguous alias: only stems resolve it
    assert "'StyleOne'" in lib.not_found_message("StyleOn")
    assert [f.name for f in lib.epoch_siblings(lib.find("Three"))] == ["Three-000002", "Three"]
    save_file(t, str(tmp_path / "Late.safetensors"))           # appears after the first scan: rescan once
    assert lib.find("Late").name == "Late"


def test_status_route_auth(monkeypatch):
    from lora_studio_webui import api, env
    monkeypatch.setattr(env, "cmd_opt", lambda k, d=None: "u:p,v:q" if k == "api_auth" else d)
    ok = "Basic " + base64.b64encode(b"v:q").decode()
    bad = "Basic " + base64.b64encode(b"v:x").decode()
    assert api.authorized(ok) and not api.authorized(bad) and not api.authorized(None)
    monkeypatch.setattr(env, "cmd_opt", lambda k, d=None: d)
    assert api.authorized(None)


def test_status_reports_last_activation():
    from lora_studio_webui import api
    from lib_lora.activate import Activated
    from lib_lora.patcher import ActiveLora, LoraReport
    from lib_lora.syntax import parse_items
    from lib_lora.tag_weights import ResolvedBlocks
    from lora_studio_webui.engine import ENGINE, Activation
    active = ActiveLora(None, 1.0, 0.5, [1.0] * 26)
    ENGINE.last = Activation(loras=[Activated(parse_items(["foo"]), ResolvedBlocks(source="preset face"), active,
                                              "/x", LoraReport("foo", applied=7, active=active))])
    out = api.status()
    assert out["applied"][0]["modules"] == 7 and "path" not in out["applied"][0]
    ENGINE.last = Activation()


def test_ui_tabs_build_inside_webui(tmp_path):
    from tests.fake_webui.harness import FakeWebui
    w = FakeWebui(tmp_path).start()
    try:
        from modules import script_callbacks, shared
        shared.cmd_opts.disable_extension_access = True
        tabs = script_callbacks.ui_tabs_callback()
        assert [(t[1], t[2]) for t in tabs] == [("LoRA Studio", "lora_studio")]
        from lora_studio_webui.tabs import FAILED
        assert "Presets" not in FAILED, FAILED
        from lora_studio_webui.tabs import build_context
        ctx = build_context()
        assert ctx.writes_allowed is False and ctx.presets is not None
        assert ctx.lora_dirs[0] == w.lora_dir
    finally:
        w.close()


def test_ui_config_gives_no_component_another_ones_default(tmp_path):
    """A1111's ui-config.json keys a component by the tab and its label (or a button's text): the first one stores
    its default and every later one with that key gets it. Replaying that rule over our tab changes no value,
    and the LoRA tools' optional ranks stay unset (the Training tab's Rank 32 once leaked into them)."""
    import gradio as gr

    from tests.fake_webui.harness import FakeWebui
    w = FakeWebui(tmp_path).start()
    try:
        from modules import script_callbacks
        block = script_callbacks.ui_tabs_callback()[0][0]
        from lora_studio_webui.tabs import _config_key
        saved, comps = {}, []

        def walk(x):
            if getattr(x, "children", None) is not None:
                for c in x.children:
                    walk(c)
            elif _config_key(x) is not None:
                comps.append(x)
        walk(block)
        before = [getattr(x, "value", None) for x in comps]
        for x in comps:   # A1111 1.10.1 ui_loadsave.add_component's rule for 'value', tab id "lora_studio"
            if getattr(x, "do_not_save_to_config", False) or isinstance(x, gr.Button):
                continue
            key = f"lora_studio/{_config_key(x)}/value"
            if key in saved:
                x.value = saved[key]
            else:
                saved[key] = x.value
        assert [getattr(x, "value", None) for x in comps] == before
        ranks = [x for x in comps if _config_key(x) == "Rank"]
        assert len(ranks) > 1 and all(x.do_not_save_to_config for x in ranks)
        kept = [_config_key(x) for x in comps if not getattr(x, "do_not_save_to_config", False)]
        assert len(kept) == len(set(kept)) and kept     # the rest keeps A1111's saved defaults
    finally:
        w.close()


def test_status_route_on_a_real_fastapi_app(monkeypatch):
    import asyncio

    import httpx
    from fastapi import FastAPI

    from lora_studio_webui import api, env
    app = FastAPI()
    api.on_app_started(None, app)
    api.on_app_started(None, app)                       # app_started runs again after Reload UI: one route
    assert sum(1 for r in app.routes if getattr(r, "path", "") == api.ROUTE) == 1

    def get(auth=None):
        async def go():
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
                return await c.get(api.ROUTE, auth=auth)
        return asyncio.run(go())
    r = get()
    assert r.status_code == 200 and r.json()["applied"] == []
    monkeypatch.setattr(env, "cmd_opt", lambda k, d=None: "u:p" if k == "api_auth" else d)
    assert get().status_code == 401
    assert get(("u", "p")).status_code == 200


def test_forge_gets_a_message_and_no_takeover(tmp_path, monkeypatch, capsys):
    from tests.fake_webui.harness import FakeWebui
    w = FakeWebui(tmp_path)
    sys_modules_key = "modules_forge"
    import sys
    import types
    monkeypatch.setitem(sys.modules, sys_modules_key, types.ModuleType(sys_modules_key))
    try:
        w.start()
        from modules import extra_networks, scripts
        assert getattr(extra_networks.extra_network_registry.get("lora"), "marker", None) is None
        xyz = [d.module for d in scripts.scripts_data if d.script_class.__module__ == "xyz_grid.py"][0]
        assert [o.label for o in xyz.axis_options if o.label.startswith("[LoRA Studio]")] == [
            "[LoRA Studio] LoRA epoch", "[LoRA Studio] LoRA weight"]
        assert "Forge detected" in capsys.readouterr().out
        w.generate("x <lora:foo:1>")                      # our script's process() stays out of the way
    finally:
        w.close()


def test_pasted_block_records_take_only_finite_numbers():
    from lora_studio_webui.infotext import parse_field, restore_prompt
    records = parse_field("a=1,0.1234567,X; b=nan,1; c=inf; d=1e400,1; e=0.5,1e-07")
    assert records == [("e", [0.5, 1e-07])]
    assert restore_prompt("<lora:b:1:face> <lora:e:1:face>", parse_field("b=nan,1; e=0.5,1")) == (
        "<lora:b:1:face> <lora:e:lbw=0.5,1>")


def test_webui_modules_import_no_cycle():
    """No lora_studio_webui module imports (even lazily, inside a function) one that imports it back:
    before, forge.py ↔ handler.py and forge.py → forge_apply.py → infotext.py → forge.py."""
    import ast
    from pathlib import Path

    import lora_studio_webui
    folder = Path(lora_studio_webui.__file__).parent
    graph = {}
    for f in folder.glob("*.py"):
        deps = set()
        for n in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(n, ast.ImportFrom) and n.level == 1:
                deps.update([n.module.split(".")[0]] if n.module else [a.name for a in n.names])
        graph[f.stem] = deps - {f.stem}
    graph.pop("__init__")                     # the registration entry point imports everything, nothing imports it

    def cycle_from(start, node, path):
        for dep in graph.get(node, ()):
            if dep == start:
                return path + [dep]
            if dep not in path:
                found = cycle_from(start, dep, path + [dep])
                if found:
                    return found
        return None

    cycles = [c for m in graph if (c := cycle_from(m, m, [m]))]
    assert not cycles, cycles
