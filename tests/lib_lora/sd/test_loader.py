"""load_model reads a single-file checkpoint by name and shape, or refuses it in one line."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from lib_lora.errors import LoraStudioError
from lib_lora.sd import build_model, load_model, save_model


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    model = build_model("sd1", "tiny", seed=5)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_model(model, path)
    return model, path


def test_round_trip_equal_weights_and_outputs(tiny_file):
    model, path = tiny_file
    loaded = load_model(path)
    assert loaded.arch == "sd1" and loaded.cfg == model.cfg
    want, got = model.state_dict(), loaded.state_dict()
    assert list(got) == list(want)
    assert all(torch.equal(want[k], got[k]) for k in want)
    with torch.no_grad():
        ctx, _ = loaded.encode_text(["a cat"])
        ctx0, _ = model.encode_text(["a cat"])
        x = torch.randn(1, 4, 8, 8)
        assert torch.equal(ctx, ctx0)
        # the same weights give the same output up to float rounding: loaded weights view the file's memory
        # map at offsets that are not 64-byte aligned, and some CPUs' kernels then sum in another order
        torch.testing.assert_close(loaded.unet(x, torch.tensor([10]), ctx), model.unet(x, torch.tensor([10]), ctx0),
                                   rtol=1e-5, atol=1e-6)


def test_sdxl_round_trip_half_precision(tmp_path):
    model = build_model("sdxl", "tiny", seed=1, dtype=torch.float16)
    path = tmp_path / "xl.safetensors"
    save_model(model, path)
    loaded = load_model(path, dtype=torch.float32, parts=("unet", "te"))
    assert loaded.arch == "sdxl" and loaded.vae is None and len(loaded.text_encoders) == 2
    w = loaded.unet.label_emb[0][0].weight
    assert w.dtype == torch.float32 and torch.equal(w, model.unet.label_emb[0][0].weight.float())


def test_parts_unet_only_and_mapped_weights(tiny_file):
    _, path = tiny_file
    loaded = load_model(path, parts=("unet",))
    assert loaded.text_encoders == [] and loaded.vae is None
    assert all(k.startswith("model.diffusion_model.") or "." not in k for k in loaded.state_dict())
    with pytest.raises(LoraStudioError, match="without its text encoders"):
        loaded.encode_text(["x"])


def test_optional_keys_may_be_absent(tiny_file, tmp_path):
    model, path = tiny_file
    sd = load_file(str(path))
    dropped = {k: v for k, v in sd.items()
               if not k.endswith("position_ids") and k not in ("betas", "alphas_cumprod")}
    dropped["model_ema.decay"] = torch.tensor(0.9999)
    p = tmp_path / "pruned.safetensors"
    save_file(dropped, str(p))
    loaded = load_model(p)
    assert torch.equal(loaded.state_dict()["alphas_cumprod"], model.state_dict()["alphas_cumprod"])
    key = "cond_stage_model.transformer.text_model.embeddings.position_ids"
    assert torch.equal(loaded.state_dict()[key], torch.arange(77)[None])


def test_missing_unexpected_and_shape_errors_are_one_line(tiny_file, tmp_path):
    _, path = tiny_file
    sd = load_file(str(path))
    bad = dict(sd)
    del bad["model.diffusion_model.out.2.weight"]
    bad["model.diffusion_model.extra.weight"] = torch.zeros(2)
    p = tmp_path / "bad.safetensors"
    save_file(bad, str(p))
    with pytest.raises(LoraStudioError) as err:
        load_model(p)
    msg = str(err.value)
    assert "\n" not in msg and "1 missing key(s)" in msg and "out.2.weight" in msg and "1 unexpected" in msg
    bad = dict(sd)
    bad["model.diffusion_model.out.2.weight"] = torch.zeros(4, 32, 1, 1)
    save_file(bad, str(p))
    with pytest.raises(LoraStudioError, match="wrong shape"):
        load_model(p)


def test_not_a_checkpoint_and_pickles(tmp_path):
    p = tmp_path / "lora.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(4, 8)}, str(p))
    with pytest.raises(LoraStudioError, match="not an SD1 or SDXL checkpoint"):
        load_model(p)
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not really")
    with pytest.raises(LoraStudioError, match="not a .safetensors file"):
        load_model(ckpt)
    with pytest.raises(LoraStudioError, match="not found"):
        load_model(tmp_path / "absent.safetensors")
