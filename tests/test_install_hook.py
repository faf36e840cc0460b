"""install.py, the WebUI's installer hook, run against a recording `launch` module: it adds onnxruntime and
lycoris-lora only when missing, and the lycoris line that imports on the WebUI's torch (3.x below 2.3)."""

from __future__ import annotations

import importlib.util
import runpy
import sys
import types

import pytest

from tests.paths import REPO


def run_hook(monkeypatch, missing: set, torch_version: str) -> list:
    calls = []
    launch = types.ModuleType("launch")
    launch.is_installed = lambda name: name not in missing
    launch.run_pip = lambda args, desc: calls.append(args)
    monkeypatch.setitem(sys.modules, "launch", launch)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in missing else real(name, *a))
    import torch
    monkeypatch.setattr(torch, "__version__", torch_version)
    runpy.run_path(str(REPO / "install.py"))
    return calls


@pytest.mark.parametrize("version, want", [("2.1.2+cu121", 'install "lycoris-lora>=3.1,<3.2"'),
                                           ("2.3.0", 'install "lycoris-lora>=3.1"')])
def test_missing_packages_are_added_with_the_lycoris_line_for_this_torch(monkeypatch, version, want):
    flavours = {"onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino",
                "onnxruntime-silicon", "ort-nightly", "ort-nightly-gpu"}
    from importlib.metadata import PackageNotFoundError, version as installed
    try:
        keep = f' "protobuf=={installed("protobuf")}"'     # the WebUI's protobuf stays (A1111 pins 3.20.0)
    except PackageNotFoundError:
        keep = ""
    assert run_hook(monkeypatch, flavours | {"lycoris"}, version) == ["install onnxruntime" + keep, want]


def test_nothing_is_installed_when_present(monkeypatch):
    assert run_hook(monkeypatch, set(), "2.1.2") == []
