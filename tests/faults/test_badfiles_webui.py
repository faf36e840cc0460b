"""Bad LoRA files inside the fake AUTOMATIC1111 (tests/fake_webui): a file with a malformed header in the LoRA
folder and a LoRA with NaN in one module. The other LoRAs of the prompt apply; the bad file gets one
warning; the model never holds NaN."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.fake_webui.harness import LAYERS, FakeWebui, write_lora
from tests.faults.test_badfiles_metadata import rewrite_header


@pytest.fixture
def webui(tmp_path):
    w = FakeWebui(tmp_path)
    foo = write_lora(w, "foo", seed=1)
    write_lora(w, "bar", seed=2)
    rewrite_header(foo, w.lora_dir / "metalist.safetensors", lambda h: {**h, "__metadata__": ["a", "b"]})
    sd = load_file(str(foo))
    victim = sorted(k for k in sd if k.endswith(".lora_up.weight"))[0]
    sd[victim][0, 0] = float("nan")
    save_file(sd, str(w.lora_dir / "nan.safetensors"), metadata={"ss_output_name": "nan"})
    w.victim = victim[: -len(".lora_up.weight")]
    w.start()
    yield w
    w.close()


def lines_about(p, word):
    return [c for c in p.comments if word in c]


def test_bad_header_in_the_folder_does_not_stop_other_loras(webui):
    base = webui.weights()
    p, _ = webui.generate("x <lora:foo:1>")                     # the prompt never names the bad file
    assert all(not torch.equal(webui.weight(k), base[k]) for k in LAYERS)
    assert not lines_about(p, "internal error")
    webui.generate("x")
    p, _ = webui.generate("x <lora:metalist:1> <lora:bar:1>")   # named: one line for it, bar applies
    assert len(lines_about(p, "metalist")) == 1 and "malformed header" in lines_about(p, "metalist")[0]
    assert not lines_about(p, "internal error")
    assert all(not torch.equal(webui.weight(k), base[k]) for k in LAYERS)


def test_nan_module_is_left_out_and_reported_once(webui):
    base = webui.weights()
    webui.generate("x <lora:bar:1>")
    bar_only = webui.weights()
    webui.generate("x")
    p, _ = webui.generate("x <lora:nan:1> <lora:bar:1>")
    assert all(bool(torch.isfinite(webui.weight(k)).all()) for k in LAYERS)
    about = lines_about(p, "`nan`")
    assert len(about) == 1 and "NaN/Inf" in about[0] and webui.victim in about[0]
    assert not lines_about(p, "internal error")
    changed_by_nan = [k for k in LAYERS if not torch.equal(webui.weight(k), bar_only[k])]
    assert len(changed_by_nan) == len(LAYERS) - 1                # every layer but the damaged module's
    webui.generate("x")
    assert all(torch.equal(webui.weight(k), base[k]) for k in LAYERS)   # restored bit-exact
