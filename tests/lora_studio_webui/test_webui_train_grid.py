"""The Training tab's epoch grid in the (fake) WebUI: every cell is a WebUI txt2img with the epoch and weight set
by LoRA Studio's X/Y/Z axes, on the run's base checkpoint: kept when it is the loaded one, else overridden per
job (override_settings, restored afterwards, as the WebUI's API does), refused in one line when the WebUI does
not list it."""

from __future__ import annotations

import pytest

from lib_lora.errors import LoraStudioError
from tests.fake_webui.harness import write_lora

WEBUI_LORAS = ()


def _run(webui, base_name):
    meta = {"ss_output_name": "run"}
    if base_name is not None:
        meta["ss_sd_model_name"] = base_name
    return [write_lora(webui, "run-000001", seed=2, **meta), write_lora(webui, "run", seed=3, **meta)]


def _grid(files, checkpoint=None):
    from lora_studio_webui.train_grid import render_grid
    return render_grid(files, [0.5, 1.0], "toy", negative="blurry", seed=3, steps=2, size=64, cfg_scale=5.0,
                       checkpoint=checkpoint)


def test_grid_renders_on_the_runs_base_model_and_gives_the_loaded_one_back(webui):
    from modules import processing, sd_models, shared
    base = webui.add_checkpoint("base.safetensors", loaded=True)
    other = webui.add_checkpoint("other.safetensors", seed=5)
    files = _run(webui, "other.safetensors")
    grid, note = _grid(files, checkpoint="base.safetensors")     # the tab's pick loses to what the run records
    assert grid.size == (150 + 64 * 3, 24 + 64 * 2)
    cells = processing.rendered
    assert [c[2] for c in cells] == [other.title] * 5 and {c[1] for c in cells} == {"blurry"}
    assert [c[0].strip() for c in cells] == ["toy", "toy <lora:run-000001:0.5>", "toy <lora:run-000001:1>",
                                     "toy <lora:run:0.5>", "toy <lora:run:1>"]
    assert sd_models.loads == [other.title]                      # loaded once, kept between the cells
    assert shared.opts.data["sd_model_checkpoint"] == base.title  # the setting is given back after each job
    assert "'other.safetensors'" in note and "'base.safetensors'" in note and "\n" not in note


def test_grid_keeps_the_loaded_model_when_it_is_the_runs(webui):
    from modules import processing, sd_models
    base = webui.add_checkpoint("base.safetensors", loaded=True)
    webui.add_checkpoint("other.safetensors", seed=5)
    _grid(_run(webui, "base.safetensors"), checkpoint="other.safetensors")
    assert sd_models.loads == [] and {c[2] for c in processing.rendered} == {base.title}
    # no name in the files: the tab's pick
    processing.rendered.clear()
    _, note = _grid(_run(webui, None), checkpoint="other.safetensors")
    assert {c[2] for c in processing.rendered} == {"other.safetensors [00000005]"} and "other.safetensors" in note
    _, note = _grid(_run(webui, None))
    assert "does not name its base model" in note


def test_a_base_model_the_webui_does_not_list_is_refused_in_one_line(webui):
    from modules import processing
    webui.add_checkpoint("base.safetensors", loaded=True)
    with pytest.raises(LoraStudioError) as e:
        _grid(_run(webui, "gone.safetensors"), checkpoint="base.safetensors")
    msg = str(e.value)
    assert "'gone.safetensors'" in msg and "'base.safetensors'" in msg and "\n" not in msg
    assert processing.rendered == []
