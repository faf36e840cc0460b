"""Run by AUTOMATIC1111's launcher on every start (separate process, `import launch` works).

Adds only what the WebUI lacks: onnxruntime for the tagger. Never installs torch, gradio or numpy, and never a
second onnxruntime flavour (onnxruntime-gpu / -directml / -openvino users keep theirs).
"""

import importlib.util

import launch

FLAVOURS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino", "onnxruntime-silicon",
            "ort-nightly", "ort-nightly-gpu")


def has_onnxruntime() -> bool:
    if any(launch.is_installed(name) for name in FLAVOURS):
        return True
    return importlib.util.find_spec("onnxruntime") is not None


if not has_onnxruntime():
    launch.run_pip("install onnxruntime", "onnxruntime for LoRA Studio's tagger")
