"""Run by AUTOMATIC1111's launcher on every start (separate process, `import launch` works).

Adds only what the WebUI lacks: onnxruntime for the tagger, lycoris-lora for the Training tab. Never installs
torch, gradio or numpy, never replaces the WebUI's protobuf, and never a second onnxruntime flavour (onnxruntime-gpu / -directml / -openvino users
keep theirs). lycoris-lora's requirements (torch, einops, tqdm, numpy, safetensors) are WebUI pins already
and toml is new, so nothing the WebUI pins changes; 4.x needs torch >= 2.3 (torch.compiler.is_compiling), A1111 v1.10.1 pins
torch 2.1.2, hence 3.1.x there.
"""

import importlib.util

import launch

FLAVOURS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino", "onnxruntime-silicon",
            "ort-nightly", "ort-nightly-gpu")


def has_onnxruntime() -> bool:
    if any(launch.is_installed(name) for name in FLAVOURS):
        return True
    return importlib.util.find_spec("onnxruntime") is not None


def kept(name: str) -> str:
    """`"name==version"` of an installed package, for the pip line: pip then picks the onnxruntime that works with
    it instead of replacing it (recent onnxruntime asks for protobuf >= 4.25.8 while the WebUI pins 3.20.0, which
    onnxruntime only needs for its tools, not for running a model); "" when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return f' "{name}=={version(name)}"'
    except PackageNotFoundError:
        return ""


if not has_onnxruntime():
    launch.run_pip("install onnxruntime" + kept("protobuf"), "onnxruntime for LoRA Studio's tagger")


def lycoris_spec() -> str:
    try:
        import torch
        major, minor = (int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    except Exception:  # noqa: BLE001 — unknown torch: the series that imports on the oldest pins
        return "lycoris-lora>=3.1,<3.2"
    return "lycoris-lora>=3.1,<3.2" if (major, minor) < (2, 3) else "lycoris-lora>=3.1"


if importlib.util.find_spec("lycoris") is None:
    # run_pip hands the line to a shell: the version range is quoted (its "<" would redirect)
    launch.run_pip(f"install \"{lycoris_spec()}\"", "lycoris-lora for LoRA Studio's training")

