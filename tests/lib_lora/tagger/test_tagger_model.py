"""Model files, ONNX sessions on small real models, provider verification, runtime checks, unload."""

import numpy as np
import pytest

from lib_lora.errors import LoraStudioError
from lib_lora.tagger import model as tm
from lib_lora.tagger import runtime
from tests.tagger_models import NAMES, make_model_dir, reference_probs


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("taggers")
    return {k: make_model_dir(root / k, k) for k in ("v3", "v2")}


def test_reads_io_from_the_model(models):
    v3 = tm.Tagger(tm.resolve_model(str(models["v3"]), models["v3"].parent))
    v2 = tm.Tagger(tm.resolve_model(str(models["v2"] / "model.onnx"), models["v2"].parent))
    assert (v3.input_name, v3.output_name, v3.size, v3.fixed_batch) == ("input", "output", 32, None)
    assert (v2.input_name, v2.output_name, v2.size, v2.fixed_batch) == ("input_1:0", "predictions_sigmoid", 32, 1)
    assert v3.batch_size(8) == 8 and v2.batch_size(8) == 1
    assert v3.provider == "CPUExecutionProvider" and "running on CPU" in v3.describe()
    x = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(v3.infer(x), reference_probs(x), atol=1e-5)
    np.testing.assert_allclose(v2.infer(x), v3.infer(x), atol=1e-5)   # v2 runs the batch one by one
    assert v3.infer(x).shape == (3, len(NAMES))


def test_requested_gpu_that_is_absent_is_an_error(models):
    files = tm.resolve_model(str(models["v3"]), models["v3"].parent)
    with pytest.raises(runtime.ProviderError, match="CUDAExecutionProvider was requested.*choose provider"):
        tm.Tagger(files, provider="cuda")
    with pytest.raises(runtime.ProviderError, match="unknown"):
        tm.Tagger(files, provider="tpu")
    assert tm.Tagger(files, provider="cpu").provider_label == "CPU"


def test_fallback_detection_on_a_real_session(models):
    t = tm.Tagger(tm.resolve_model(str(models["v3"]), models["v3"].parent))
    active = t._session.get_providers()
    asked = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(runtime.ProviderError, match="fell back to CPUExecutionProvider"):
        runtime.verify_providers(asked, active, strict=True)
    assert runtime.verify_providers(asked, active, strict=False).startswith("WARNING: CUDAExecutionProvider")
    assert runtime.verify_providers(["CPUExecutionProvider"], active, strict=True) is None


def test_runtime_version_check_reads_opsets(models):
    assert runtime.read_opsets(models["v3"] / "model.onnx") == {"ai.onnx": 17, "ai.onnx.ml": 4}
    with pytest.raises(runtime.RuntimeTooOld, match="needs onnxruntime ≥ 1.17 .*1.16.3"):
        runtime.check_runtime(models["v3"] / "model.onnx", "1.16.3")
    runtime.check_runtime(models["v2"] / "model.onnx", "1.16.3")       # v2 loads on old runtimes
    runtime.check_runtime(models["v3"] / "model.onnx", "1.17.0")


def test_model_lookup_and_messages(models, tmp_path):
    root = tmp_path / "TaggerModels"
    make_model_dir(root / "wd-vit-tagger-v3", "v3")
    f = tm.resolve_model("wd-vit-tagger-v3", root, allow_download=False)
    assert f.source == "local folder" and f.onnx == root / "wd-vit-tagger-v3" / "model.onnx"
    f = tm.resolve_model("SmilingWolf/wd-vit-tagger-v3", root, allow_download=False)
    assert f.onnx.parent.name == "wd-vit-tagger-v3"
    with pytest.raises(tm.ModelNotFound, match=r"put model.onnx and selected_tags.csv from https://huggingface.co/"
                                               r"SmilingWolf/wd-convnext-tagger-v3 into .*wd-convnext-tagger-v3"):
        tm.resolve_model("wd-convnext-tagger-v3", root, allow_download=False)
    half = tmp_path / "half"
    half.mkdir()
    (half / "model.onnx").write_bytes((models["v3"] / "model.onnx").read_bytes())
    with pytest.raises(tm.ModelNotFound, match="put selected_tags.csv there too"):
        tm.resolve_model(str(half), root)
    with pytest.raises(tm.ModelNotFound, match="neither a folder nor a known model"):
        tm.resolve_model("no-such-model", root)
    assert "wd-vit-tagger-v3" in tm.list_local_models(root)


def test_mismatched_files_and_non_tagger(models, tmp_path):
    d = tmp_path / "mix"
    d.mkdir()
    (d / "model.onnx").write_bytes((models["v3"] / "model.onnx").read_bytes())
    (d / "selected_tags.csv").write_text("tag_id,name,category,count\n1,a,0,1\n")
    with pytest.raises(tm.ModelFormatError, match="from different models"):
        tm.Tagger(tm.resolve_model(str(d), tmp_path))
    (d / "model.onnx").write_bytes(b"\x08\x07garbage")
    with pytest.raises(tm.ModelFormatError, match="cannot be loaded"):
        tm.Tagger(tm.resolve_model(str(d), tmp_path))


def test_session_cache_and_unload(models):
    a = tm.get_tagger(str(models["v3"]), models["v3"].parent, log=lambda m: None)
    assert tm.get_tagger(str(models["v3"]), models["v3"].parent, log=lambda m: None) is a
    assert tm.unload_all() >= 1 and not a.loaded
    with pytest.raises(LoraStudioError, match="unloaded"):
        a.infer(np.zeros((1, 32, 32, 3), np.float32))
    b = tm.get_tagger(str(models["v3"]), models["v3"].parent, log=lambda m: None)
    assert b is not a and b.loaded
    tm.unload_all()


def test_throughput_session_and_auto_batch(models):
    files = tm.resolve_model(str(models["v3"]), models["v3"].parent)
    fast = tm.Tagger(files, throughput=True)
    assert fast._single_threaded and fast._stream_session is fast._session
    assert fast.streams == min(4, tm.cpu_count()) and fast.batch_size(0) == 1 and fast.batch_size(5) == 5
    ui = tm.Tagger(files)
    assert ui._stream_session is None
    x = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(ui.infer_stream(x), fast.infer(x), atol=1e-6)
    assert ui._stream_session is not None and ui._stream_session is not ui._session   # made on first use
    ui.unload()
    assert ui._stream_session is None
    v2 = tm.Tagger(tm.resolve_model(str(models["v2"]), models["v2"].parent), throughput=True)
    assert v2.batch_size(0) == 1 and v2.batch_size(16) == 1


def test_interrupted_download_folder_is_not_an_error(models, tmp_path):
    root = tmp_path / "TM"
    (root / "wd-vit-tagger-v3").mkdir(parents=True)
    (root / "wd-vit-tagger-v3" / "selected_tags.csv").write_text("tag_id,name,category,count\n")
    with pytest.raises(tm.ModelNotFound, match="downloads are off: put model.onnx"):
        tm.resolve_model("wd-vit-tagger-v3", root, allow_download=False)


def _no_download(*a, **k):
    raise AssertionError("huggingface_hub was asked to download although the network is known to be unusable")


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}])
def test_offline_says_where_to_put_the_files_without_trying(tmp_path, monkeypatch, env):
    """Offline, huggingface_hub retries for tens of seconds with tracebacks: say it at once instead."""
    import huggingface_hub
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    real = huggingface_hub.hf_hub_download

    def cache_only(*a, **k):        # the cache lookup (no network) is fine; a real download is not
        if not k.get("local_files_only"):
            _no_download()
        return real(*a, **k)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", cache_only)
    with pytest.raises(tm.ModelNotFound) as e:
        tm.resolve_model("wd-vit-tagger-v3", tmp_path / "TM", allow_download=True, log=lambda m: None)
    msg = str(e.value)
    assert "\n" not in msg and "cannot be downloaded" in msg
    assert f"into {tmp_path / 'TM' / 'wd-vit-tagger-v3'}" in msg and "model.onnx and selected_tags.csv" in msg
    assert ("HF_HUB_OFFLINE is set" in msg) if "HF_HUB_OFFLINE" in env else ("cannot reach 127.0.0.1:9" in msg)


def test_default_model_suits_the_hardware():
    assert tm.default_model(["CPUExecutionProvider"]) == "wd-vit-tagger-v3"
    assert tm.default_model(["CUDAExecutionProvider", "CPUExecutionProvider"]) == "wd-eva02-large-tagger-v3"
    assert tm.default_model() == "wd-vit-tagger-v3"                     # this machine: CPU only


def test_names_only_never_look_in_the_working_directory(models, tmp_path, monkeypatch):
    monkeypatch.chdir(models["v3"].parent)                      # ./v3 is a valid model folder here
    assert tm.resolve_model("v3", tmp_path / "TM", allow_download=False).source == "local folder"
    with pytest.raises(tm.ModelNotFound):
        tm.resolve_model("v3", tmp_path / "TM", allow_download=False, paths=False)
    for bad in ("../v3", "/etc", "~", "./v3", "a/../../v3"):
        with pytest.raises(tm.ModelNotFound, match="not a model name"):
            tm.resolve_model(bad, tmp_path / "TM", allow_download=False, paths=False)
    make_model_dir(tmp_path / "TM" / "mine", "v3")
    assert tm.resolve_model("mine", tmp_path / "TM", paths=False).onnx == tmp_path / "TM" / "mine" / "model.onnx"
