"""The Training tab's epoch grid in the (fake) WebUI: every cell is a WebUI txt2img with the epoch and weight set
by LoRA Studio's X/Y/Z axes, on the run's base checkpoint: kept when it is the loaded one, else overridden per
job (override_settings, restored afterwards, as the WebUI's API does); a recorded model the WebUI does not list
falls back to the tab's pick (or the loaded model), said in the note."""

from __future__ import annotations

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


def test_a_base_model_the_webui_does_not_list_falls_back_to_the_pick_and_says_so(webui):
    from modules import processing, sd_models
    base = webui.add_checkpoint("base.safetensors", loaded=True)
    other = webui.add_checkpoint("other.safetensors", seed=5)
    _, note = _grid(_run(webui, "gone.safetensors"))            # nothing picked: the loaded model
    assert {c[2] for c in processing.rendered} == {base.title} and sd_models.loads == []
    assert "'gone.safetensors'" in note and "WebUI's model 'base.safetensors'" in note
    processing.rendered.clear()
    _, note = _grid(_run(webui, "gone.safetensors"), checkpoint="other.safetensors")
    assert {c[2] for c in processing.rendered} == {other.title} and sd_models.loads == [other.title]
    assert "'gone.safetensors'" in note and "'other.safetensors'" in note and "\n" not in note


def test_a_second_grid_while_the_first_ones_model_is_still_loaded_renders_on_the_run_model_again(webui):
    """After a grid the run's model stays loaded, but a job without an override loads the setting's model: the
    second grid must ask for the run's model again, and a grid on the setting's model must name that one."""
    from modules import processing, shared
    base = webui.add_checkpoint("base.safetensors", loaded=True)
    other = webui.add_checkpoint("other.safetensors", seed=5)
    files = _run(webui, "other.safetensors")
    _grid(files)
    assert shared.sd_model.sd_checkpoint_info is other       # still loaded: the WebUI reloads at its next job
    processing.rendered.clear()
    _, note = _grid(files)
    assert {c[2] for c in processing.rendered} == {other.title}
    assert "instead of 'base.safetensors'" in note
    processing.rendered.clear()
    _, note = _grid(_run(webui, None))
    assert {c[2] for c in processing.rendered} == {base.title} and "WebUI's model 'base.safetensors'" in note
