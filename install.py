"""Run by AUTOMATIC1111's launcher on every start (separate process, `import launch` works).

Adds only what the WebUI lacks: onnxruntime for the tagger, lycoris-lora for the Train tab (3.x on torch < 2.3:
4.x needs a newer torch). Never installs torch, gradio or numpy, and never a second onnxruntime flavour
(onnxruntime-gpu / -directml / -openvino users keep theirs).
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


def lycoris_requirement() -> str:
    """lycoris-lora 4.x calls torch.compiler.is_compiling (torch >= 2.3); 3.1.x imports on torch 2.1.2."""
    try:
        import torch
        major, minor = (int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    except Exception:                 # no usable torch yet: the older line is the safe one
        return "lycoris-lora>=3.1,<4"
    return "lycoris-lora>=3.1" if (major, minor) >= (2, 3) else "lycoris-lora>=3.1,<4"


if importlib.util.find_spec("lycoris") is None:
    launch.run_pip(f'install "{lycoris_requirement()}"', "lycoris-lora for LoRA Studio's Train tab")
