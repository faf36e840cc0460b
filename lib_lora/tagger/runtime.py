"""onnxruntime facts: import with a helpful message, version checks against the model's opsets, and the
execution-provider choice and verification (a requested GPU that cannot be used is an error)."""

from __future__ import annotations

from lib_lora.errors import LoraStudioError

# User-facing provider choices → onnxruntime names. "auto" takes the first present in AUTO_ORDER.
PROVIDERS = {
    "cuda": "CUDAExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "directml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
PROVIDER_CHOICES = ("auto",) + tuple(PROVIDERS)
AUTO_ORDER = ["CUDAExecutionProvider", "ROCMExecutionProvider", "DmlExecutionProvider",
              "CoreMLExecutionProvider", "CPUExecutionProvider"]
CPU = "CPUExecutionProvider"
V3_MIN_ORT = (1, 17)


class ProviderError(LoraStudioError):
    """The requested execution provider cannot run."""


class RuntimeTooOld(LoraStudioError):
    """The installed onnxruntime cannot load this model's opsets."""


def import_ort():
    try:
        import onnxruntime as ort
    except ImportError:
        raise LoraStudioError("onnxruntime is not installed: run `pip install onnxruntime` "
                              "(or onnxruntime-gpu for CUDA) in this Python environment.") from None
    return ort


def version_tuple(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def ort_packages() -> list[str]:
    """Installed onnxruntime distributions: two flavours side by side break the GPU provider."""
    from importlib.metadata import distributions
    names = set()
    for d in distributions():
        name = (d.metadata.get("Name") or "").lower()
        if name.startswith("onnxruntime") and name not in ("onnxruntime-extensions",):
            names.add(f"{name} {d.version}")
    return sorted(names)


# --- the model's opset imports, read from the protobuf without loading the (large) graph -------------

def _varint(fh) -> int | None:
    shift = result = 0
    while True:
        b = fh.read(1)
        if not b:
            return None
        result |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return result
        shift += 7


def _parse_opset(buf: bytes) -> tuple[str, int]:
    import io
    fh, domain, version = io.BytesIO(buf), "", 0
    while True:
        key = _varint(fh)
        if key is None:
            return domain, version
        field, wire = key >> 3, key & 7
        if wire == 0:
            v = _varint(fh)
            if field == 2:
                version = v
        elif wire == 2:
            data = fh.read(_varint(fh))
            if field == 1:
                domain = data.decode("utf-8", "replace")
        elif wire == 1:
            fh.read(8)
        elif wire == 5:
            fh.read(4)
        else:
            return domain, version


def read_opsets(model_path) -> dict[str, int]:
    """ModelProto.opset_import (field 8) → {domain: version}; the graph (field 7) is skipped by seeking."""
    out: dict[str, int] = {}
    with open(model_path, "rb") as fh:
        while True:
            key = _varint(fh)
            if key is None:
                break
            field, wire = key >> 3, key & 7
            if wire == 0:
                _varint(fh)
            elif wire == 2:
                n = _varint(fh)
                if n is None:
                    break
                if field == 8:
                    domain, version = _parse_opset(fh.read(n))
                    out[domain or "ai.onnx"] = version
                else:
                    fh.seek(n, 1)
            elif wire == 1:
                fh.seek(8, 1)
            elif wire == 5:
                fh.seek(4, 1)
            else:
                break  # not a protobuf we understand: let onnxruntime report it
    return out


def required_runtime(opsets: dict[str, int]) -> tuple[tuple[int, ...], str] | None:
    """Minimum onnxruntime for these opsets (the WD14 facts we know), with the reason."""
    if opsets.get("ai.onnx.ml", 0) >= 4:
        return V3_MIN_ORT, "it declares ai.onnx.ml opset 4 (WD14 v3 models)"
    if opsets.get("ai.onnx", 0) >= 20:
        return V3_MIN_ORT, f"it uses ONNX opset {opsets['ai.onnx']}"
    return None


def check_runtime(model_path, ort_version: str | None = None) -> None:
    if ort_version is None:
        ort_version = import_ort().__version__
    need = required_runtime(read_opsets(model_path))
    if need and version_tuple(ort_version) < need[0]:
        want = ".".join(map(str, need[0]))
        raise RuntimeTooOld(f"{model_path} needs onnxruntime ≥ {want} because {need[1]}; this environment has "
                            f"{ort_version}: run `pip install -U \"onnxruntime>={want}\"` (or onnxruntime-gpu).")


# --- providers ---------------------------------------------------------------------------------------

def plan_providers(choice: str, available: list[str]) -> tuple[list[str], bool]:
    """(providers to pass to the session, strict). Explicit choices are strict: no silent fallback."""
    choice = (choice or "auto").lower()
    if choice == "auto":
        first = next((p for p in AUTO_ORDER if p in available), CPU)
        return ([first, CPU] if first != CPU else [CPU]), False
    if choice not in PROVIDERS:
        raise ProviderError(f"provider '{choice}' is unknown; use one of {', '.join(PROVIDER_CHOICES)}.")
    name = PROVIDERS[choice]
    if name not in available:
        raise ProviderError(
            f"{name} was requested but this onnxruntime ({', '.join(ort_packages()) or 'unknown package'}) offers "
            f"only {', '.join(available)}; install the matching onnxruntime build (onnxruntime-gpu for CUDA, "
            f"onnxruntime-directml for DirectML) or choose provider 'auto' or 'cpu'.")
    return ([name, CPU] if name != CPU else [CPU]), True


def fallback_cause() -> str:
    pkgs = ort_packages()
    if len(pkgs) > 1:
        return f"several onnxruntime packages are installed ({', '.join(pkgs)}): uninstall all but one"
    return ("its libraries failed to load (CUDA/cuDNN versions must match this onnxruntime build; "
            "see the console for onnxruntime's own message)")


def verify_providers(requested: list[str], active: list[str], strict: bool) -> str | None:
    """Compare what the session runs on with what was asked. Strict → error; auto → a loud warning."""
    wanted = requested[0]
    if wanted in active:
        return None
    msg = f"{wanted} could not be used and onnxruntime fell back to {', '.join(active) or 'nothing'}: {fallback_cause()}"
    if strict:
        raise ProviderError(msg + "; or choose provider 'cpu'.")
    return "WARNING: " + msg + "."


def short_name(provider: str) -> str:
    return provider.replace("ExecutionProvider", "") if provider else "?"

