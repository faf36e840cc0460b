"""Training tab tools on real files and real Gradio: host-aware defaults (mixed precision, token length) in the
built tab, "Prepare a folder" (plan, write gate, folders inside the roots, the picker then shows the result),
"Tag this folder" (the tagger tab's settings, a real ONNX tagger, the validation report after), and the
compare button's dispatch to a host that renders the grid."""

from __future__ import annotations

import os

import pytest
import torch

from lib_lora.tagger.model import unload_all
from lib_lora.ui import train_tab as T
from lib_lora.ui.context import UiContext
from tests.lib_lora.train.helpers import make_images
from tests.lib_lora.ui.test_ui_train_tab import ckpt_file, values  # noqa: F401  (ckpt_file: a fixture)
from tests.tagger_models import make_model_dir

pytest.importorskip("lycoris")


@pytest.fixture
def ctx(tmp_path, ckpt_file):
    (tmp_path / "lora").mkdir()
    make_images(tmp_path / "images" / "set1", repeats=1)
    make_model_dir(tmp_path / "tm" / "tiny", "v3")
    yield UiContext(lora_dirs=[tmp_path / "lora"], checkpoint_dirs=[ckpt_file], tagger_models_dir=tmp_path / "tm",
                    image_dirs=[tmp_path / "images"])
    unload_all()


def _component(demo, elem_id):
    found = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == elem_id]
    assert len(found) == 1, elem_id
    return found[0]


def test_host_defaults_follow_the_device():
    vals, notes = T.host_defaults(cuda=False, bf16=False)
    assert vals == {"mixed_precision": "no", "max_token_length": 75}
    assert "no CUDA GPU" in notes["mixed_precision"] and "Default here: 75" in notes["max_token_length"]
    assert T.host_defaults(cuda=True, bf16=False)[0] == {"mixed_precision": "fp16", "max_token_length": 225}
    assert T.host_defaults(cuda=True, bf16=True)[0] == {"mixed_precision": "bf16", "max_token_length": 225}
    if not torch.cuda.is_available():          # this machine: a CPU
        assert T.default_values()["mixed_precision"] == "no" and T.default_values()["max_token_length"] == 75
    assert T.default_values(cuda=True, bf16=False)["mixed_precision"] == "fp16"


def test_built_tab_shows_the_host_defaults_and_a_loaded_config_keeps_its_value(ctx):
    import gradio as gr
    with gr.Blocks() as demo:
        T.build(ctx)
    mp = _component(demo, "lora_studio_train_mixed_precision")
    tokens = _component(demo, "lora_studio_train_max_token_length")
    want = T.host_defaults()[0]
    assert mp.value == want["mixed_precision"] and "Default here" in (mp.info or "")
    assert "Default here" in (tokens.info or "")
    # a value the user set is not changed: a saved fp16 / 225 config loads as fp16 / 225 on this host
    v = values(mixed_precision="fp16", max_token_length=225)
    assert T.save_config(ctx, "fp", "set1", "tiny.safetensors", "fp", v)[0].startswith("✓")
    loaded = T.load_config_values(ctx, "fp")[4]
    assert loaded[T.SHOWN.index("mixed_precision")] == "fp16"
    assert loaded[T.SHOWN.index("max_token_length")] == 225
    # a dropdown left empty (a config without the key) is sd-scripts' default, not an error
    v[T.SHOWN.index("max_token_length")] = ""
    assert T.build_config(ctx, "set1", "tiny.safetensors", "fp", v).max_token_length is None


def _untagged(folder, n=3):
    from PIL import Image
    folder.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (64, 64), (0, 0, 255)).save(folder / f"p{i}.png")
        (folder / f"p{i}.txt").write_text(f"blue, pic{i}")


def test_prepare_a_folder_plans_writes_and_points_the_picker(ctx, tmp_path):
    src = tmp_path / "images" / "raw"
    _untagged(src, 4)
    args = (str(src), "mine", "bluething", 400, 10, 2, 1, "copy")
    text = T.preview_prepare(ctx, *args)
    # 400 steps × batch 2 / (4 images × 10 epochs) = 20 repeats; 4 × 20 / 2 × 10 = 400 steps
    assert "20 repeats" in text and "400 steps" in text and "20_bluething" in text
    assert not (tmp_path / "images" / "mine").exists()                 # the plan writes nothing
    ctx.writes_allowed = False
    line, name = T.run_prepare(ctx, *args)
    assert "Writing files is disabled" in line and name is None and not (tmp_path / "images" / "mine").exists()
    ctx.writes_allowed = True
    line, name = T.run_prepare(ctx, *args)
    assert line.startswith("✓") and name == "mine" and "mine" in T.list_datasets(ctx)
    dest = tmp_path / "images" / "mine" / "20_bluething"
    assert sorted(os.listdir(dest)) == sorted(os.listdir(src))
    assert (dest / "p0.txt").read_text() == "blue, pic0"
    line, name = T.run_prepare(ctx, *args)                              # existing files are never replaced
    assert "already holds" in line and name is None
    md, ok = T.validate_run(ctx, name or "mine", "tiny.safetensors", "toy", values())
    assert ok and "20_bluething: 4 images x 20 repeats" in md, md
    for bad_src, bad_dest in ((str(tmp_path / "lora"), "x"), (str(src), "/etc/x"), (str(src), "../x")):
        line = T.run_prepare(ctx, bad_src, bad_dest, "c", 100, 1, 1, 1, "copy")[0]
        assert line.startswith("⚠") and "\n" not in line
    assert "must be a plain folder name" in T.preview_prepare(ctx, str(src), "m2", "a/b", 100, 1, 1, 1, "copy")
    assert "whole number" in T.preview_prepare(ctx, str(src), "m2", "c", "x", 1, 1, 1, "copy")


def test_tag_this_folder_uses_the_tagger_settings_then_validates(ctx, tmp_path):
    folder = tmp_path / "images" / "set1" / "1_toy"
    for f in folder.glob("*.txt"):
        f.unlink()
    md, ok = T.validate_run(ctx, "set1", "tiny.safetensors", "toy", values())
    settings = T.tagger_defaults(ctx)
    assert settings[0] == "tiny"
    settings[6 + 12] = "toytrigger"                                      # the tagger's "Prepend tags"
    out = list(T.tag_dataset(ctx, "set1", ".txt", settings, ("tiny.safetensors", "toy", values(), {})))
    assert out[-1].startswith("Tagger: **Done:** 8 images tagged") and "ready to train" in out[-1]
    assert all((folder / f"img{i}.txt").read_text().startswith("toytrigger, ") for i in range(8))
    ctx.writes_allowed = False
    out = list(T.tag_dataset(ctx, "set1", ".txt", settings, ("tiny.safetensors", "toy", values(), {})))
    assert len(out) == 1 and "Writing files is disabled" in out[0]
    assert T.tag_dataset(ctx, "nope", ".txt", settings, ()).__next__().startswith("⚠")


def test_tag_button_reads_the_tagger_tab_components_in_one_page(ctx):
    import gradio as gr

    from lib_lora.ui import tagger_tab
    with gr.Blocks() as demo:
        with gr.Tab("Tagger"):
            tagger_tab.build(ctx)
        with gr.Tab("Training"):
            T.build(ctx)
    assert ctx.tagger_settings and len(ctx.tagger_settings) == 6 + len(tagger_tab.OPTION_FIELDS)
    tag_btn = _component(demo, "lora_studio_train_tag")
    model = _component(demo, "lora_studio_tagger_model")
    deps = [d for d in demo.config["dependencies"] if tag_btn._id in [t[0] if isinstance(t, (list, tuple)) else t
                                                                       for t in d["targets"]]]
    assert len(deps) == 1 and model._id in deps[0]["inputs"]


def test_compare_goes_to_a_host_that_renders(ctx, tmp_path):
    (tmp_path / "lora" / "run-000001.safetensors").write_bytes(b"")
    (tmp_path / "lora" / "run.safetensors").write_bytes(b"")
    from PIL import Image
    calls = []

    class Host:          # the WebUI host's interface (lora_studio_webui.train_host.SubprocessHost.render_grid)
        def __call__(self, run, cancel):
            raise AssertionError

        def render_grid(self, files, ws, prompt, **kw):
            calls.append(([f.name for f in files], ws, prompt, kw["seed"]))
            return Image.new("RGB", (8, 8)), "note"

    ctx.train_host = Host()
    line, grid = T.compare_run(ctx, "tiny.safetensors", "run", "0.5, 1", "toy", seed=7, steps=2, size=64)
    assert line.startswith("✓") and line.endswith("note") and grid.size == (8, 8)
    assert calls == [(["run-000001.safetensors", "run.safetensors"], [0.5, 1.0], "toy", 7)]
    assert T.compare_run(ctx, "tiny.safetensors", "run", "0.5", "")[0].startswith("⚠")


def test_compare_button_passes_the_negative_prompt_and_cfg_through_gradio(ctx, tmp_path):
    """The built tab's "Compare epochs" inputs, run through Gradio's own request processing: the negative prompt
    and the CFG scale reach the host's render_grid (and the standalone renderer takes the same names)."""
    import asyncio

    import gradio as gr
    from PIL import Image
    (tmp_path / "lora" / "run.safetensors").write_bytes(b"")
    calls = []

    class Host:
        def __call__(self, run, cancel):
            raise AssertionError

        def render_grid(self, files, ws, prompt, **kw):
            calls.append((prompt, kw["negative"], kw["cfg_scale"], kw["steps"], kw["size"], kw["checkpoint"]))
            return Image.new("RGB", (8, 8)), ""

    ctx.train_host = Host()
    with gr.Blocks() as demo:
        T.build(ctx)
    demo.queue()            # the progress tracker lives on the queue, as in the app
    btn = _component(demo, "lora_studio_train_cmp_run_btn")
    (fn_index, dep), = [(i, d) for i, d in enumerate(demo.config["dependencies"]) if btn._id in
                        [t[0] if isinstance(t, (list, tuple)) else t for t in d["targets"]]]
    by_id = {_component(demo, f"lora_studio_train_{n}")._id: n for n in
             ("cmp_run", "cmp_weights", "cmp_seed", "cmp_prompt", "cmp_negative", "cmp_steps", "cmp_cfg", "cmp_size",
              "checkpoint")}
    assert [by_id.get(i) for i in dep["inputs"]] == ["cmp_run", "cmp_weights", "cmp_seed", "cmp_prompt",
                                                      "cmp_negative", "cmp_steps", "cmp_cfg", "cmp_size", "checkpoint"]
    inputs = ["run", "0.5, 1", 7, "toy", "blurry, lowres", 3, 4.5, 64, "tiny.safetensors"]
    out = asyncio.run(demo.process_api(fn_index, inputs, state={}))
    assert out["data"][0].startswith("✓"), out["data"][0]
    assert calls == [("toy", "blurry, lowres", 4.5, 3, 64, "tiny.safetensors")]


def test_prepare_counts_batches_per_bucket_as_the_validation_report(ctx, tmp_path):
    """3 square and 3 wide (3:1) images at 128 px with buckets on are two buckets; sd-scripts makes whole
    batches per bucket, so 3 repeats at batch 2 are ⌈9/2⌉ + ⌈9/2⌉ = 10 steps, not 18/2 = 9 as one bucket."""
    from PIL import Image
    src = tmp_path / "images" / "mixed"
    src.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (64, 64), (0, 0, 255)).save(src / f"sq{i}.png")
        Image.new("RGB", (192, 64), (255, 0, 0)).save(src / f"wide{i}.png")
    extra = {"min_bucket_reso": 64, "max_bucket_reso": 256}
    for bucket, dest, want in ((True, "mixb", 10), (False, "mix1", 9)):
        args = (str(src), dest, "mix", 9, 1, 2, 1, "copy", "128", bucket, extra)
        plan = T.prepare_plan(ctx, *args)
        assert plan["repeats"] == 3 and plan["steps"] == want
        assert sorted(plan["buckets"]) == ([3, 3] if bucket else [6])
        assert f"**{want} steps**" in T.preview_prepare(ctx, *args)
        line, name = T.run_prepare(ctx, *args)
        assert line.startswith("✓") and name == dest, line
        v = values(resolution="128", enable_bucket=bucket, train_batch_size=2, max_train_epochs=1)
        md, ok = T.validate_run(ctx, name, "tiny.safetensors", "toy", v, extra)
        assert ok and f"{want} steps in all" in md, md
    # a target between counts: the closest reachable one (repeats 1 → 4 steps, 2 → 6 steps)
    plan = T.prepare_plan(ctx, str(src), "x", "mix", 5, 1, 2, 1, "copy", "128", True, extra)
    assert (plan["repeats"], plan["steps"]) == (1, 4)
    # a bucket range that does not fit the resolution is its one-line error, not "no images"
    line = T.preview_prepare(ctx, str(src), "x", "mix", 9, 1, 2, 1, "copy", "128", True, {})
    assert line.startswith("⚠") and "min_bucket_reso 256" in line and "\n" not in line
