"""Tagger tab callbacks (no browser): single image, folder generator, write guard, unload, GPU lock glue."""

import pytest
from PIL import Image

from lib_lora.errors import LoraStudioError
from lib_lora.tagger.model import unload_all
from lib_lora.ui import tagger_tab as tab
from lib_lora.ui.context import UiContext
from tests.tagger_models import make_model_dir

DEFAULT_OPTS = [0.35, 0.85, False, False, True, False, "confidence", True, False, "none", 0, "", "", ""]


@pytest.fixture
def ctx(tmp_path):
    make_model_dir(tmp_path / "TM" / "tiny", "v3")
    c = UiContext(lora_dirs=[tmp_path / "lora"], checkpoint_dirs=[], tagger_models_dir=tmp_path / "TM")
    c.image_dirs = [tmp_path]
    yield c
    unload_all()


def test_single_image_bars_and_ratings(ctx):
    assert tab.model_choices(ctx)[0] == "tiny"
    img = Image.new("RGBA", (30, 20), (255, 0, 0, 255))
    caption, general, chars, ratings, status = tab.tag_single(ctx, img, "tiny", "", "auto", False, *DEFAULT_OPTS)
    assert caption.startswith("red theme, white background") and general["red theme"] > 0.9
    assert chars == {} and set(ratings) == {"general", "sensitive", "questionable", "explicit"}
    assert "running on CPU" in status
    opts = DEFAULT_OPTS[:]
    opts[12] = "trigger"                                            # prepend
    assert tab.tag_single(ctx, img, "tiny", "", "auto", False, *opts)[0].startswith("trigger, red theme")
    assert tab.tag_single(ctx, None, "tiny", "", "auto", False, *DEFAULT_OPTS)[4].startswith("**Error:** Drop an image")
    err = tab.tag_single(ctx, img, "tiny", "", "cuda", False, *DEFAULT_OPTS)[4]
    assert "CUDAExecutionProvider was requested" in err
    assert tab.unload().startswith("Unloaded 1 model") and tab.unload() == "No model was loaded."


def test_folder_run_yields_progress_and_frequency_table(ctx, tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(5):
        Image.new("RGB", (16, 16), (0, 0, 255)).save(d / f"{i}.png")
    (d / "x.png").write_bytes(b"broken")
    out = list(tab.run_folder_ui(ctx, "tiny", "", "auto", False, str(d), False, "skip", ".txt", "", 2, True, True,
                                 *DEFAULT_OPTS))
    final_md, rows, log, status = out[-1]
    assert final_md.startswith("**Done:** 5 images tagged") and "1 unreadable" in final_md
    assert status.startswith("No model loaded (unloaded after the run)")
    assert ["blue theme", 5] in rows and "x.png" in log and "Unloaded 1 model" in log
    assert len(list(d.glob("*.txt"))) == 5 and len(list(d.glob("*.json"))) == 5
    assert tab.progress_text(None) == "Starting…"


def test_writes_blocked_and_bad_folder(ctx, tmp_path):
    ctx.writes_allowed = False
    out = list(tab.run_folder_ui(ctx, "tiny", "", "auto", False, str(tmp_path), False, "skip", ".txt", "", 8, False,
                                 False, *DEFAULT_OPTS))
    assert len(out) == 1 and "Writing files is disabled" in out[0][0]
    ctx.writes_allowed = True
    out = list(tab.run_folder_ui(ctx, "tiny", "", "auto", False, str(tmp_path / "none"), False, "skip", ".txt", "",
                                 8, False, False, *DEFAULT_OPTS))
    assert "does not exist" in out[0][0]
    assert tab.cancel_all() == "Nothing is running."


class FakeGpuTagger:
    is_gpu = True


def test_gpu_section_survives_a_webui_style_wrapper(ctx):
    calls = []

    def webui_wrap(fn):            # like A1111's wrap_gradio_gpu_call: stats added, errors swallowed
        def f(*a):
            calls.append("lock")
            try:
                res = list(fn(*a))
            except Exception as e:
                res = [f"<div class='error'>{e}</div>"]
            res[-1] += "<div class='performance'>Time taken: 0.1 s</div>"
            return tuple(res)
        return f

    ctx.wrap_gpu_call = webui_wrap
    assert tab.gpu_section(ctx, FakeGpuTagger(), lambda: 42) == 42 and calls == ["lock"]
    with pytest.raises(LoraStudioError, match="boom"):
        tab.gpu_section(ctx, FakeGpuTagger(), lambda: (_ for _ in ()).throw(LoraStudioError("boom")))
    cpu = type("Cpu", (), {"is_gpu": False})()
    assert tab.gpu_section(ctx, cpu, lambda: 7) == 7 and calls == ["lock", "lock"]   # CPU: no lock


def test_build_creates_the_tab(ctx):
    import gradio as gr
    with gr.Blocks() as demo:
        tab.build(ctx)
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    assert {"lora_studio_tagger_model", "lora_studio_tagger_cancel", "lora_studio_tagger_table",
            "lora_studio_tagger_unload", "lora_studio_tagger_general"} <= ids
    assert "0.2682" in tab.threshold_hint("wd-convnext-tagger-v3") and tab.threshold_hint("tiny") == ""


def run(ctx, folder, model="tiny", model_folder="", ext=".txt", out="", opts=DEFAULT_OPTS, existing="skip"):
    return list(tab.run_folder_ui(ctx, model, model_folder, "auto", False, str(folder), False, existing, ext, out, 0,
                                  False, False, *opts))


def test_status_names_the_model_after_a_folder_run(ctx, tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    Image.new("RGB", (16, 16), (0, 0, 255)).save(d / "a.png")
    out = run(ctx, d)
    assert all(o[3] != "No model loaded." for o in out)
    assert out[-1][3].startswith("Loaded: tiny (local folder)") and "running on CPU" in out[-1][3]


def test_new_model_folder_is_listed_on_focus(ctx, tmp_path):
    shown = tab.model_choices(ctx)
    upd, same = tab.refresh_choices(ctx, shown)
    assert "choices" not in upd and same == shown                   # unchanged: nothing sent
    make_model_dir(tmp_path / "TM" / "added-later", "v3")
    upd, now = tab.refresh_choices(ctx, shown)
    assert "added-later" in upd["choices"] and now == upd["choices"]


def test_default_model_is_local_else_the_cpu_one(ctx, tmp_path):
    assert tab.default_choice(ctx, tab.model_choices(ctx)) == "tiny"
    empty = UiContext(lora_dirs=[tmp_path], checkpoint_dirs=[], tagger_models_dir=tmp_path / "none")
    assert tab.default_choice(empty, tab.model_choices(empty)) == "wd-vit-tagger-v3"   # not eva02-large on CPU


def test_typed_model_folder_inside_the_models_folder(ctx, tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    Image.new("RGB", (16, 16), (0, 0, 255)).save(d / "a.png")
    out = run(ctx, d, model="wd-eva02-large-tagger-v3", model_folder=str(tmp_path / "TM" / "tiny"))
    assert out[-1][0].startswith("**Done:** 1 images tagged"), out[-1]


def test_regex_replace_weights_controls(ctx):
    """The `tag` command's --exclude-regex, --replace and --weights as tab controls (one rule per line)."""
    img = Image.new("RGB", (30, 20), (255, 0, 0))
    plain = tab.tag_single(ctx, img, "tiny", "", "auto", False, *DEFAULT_OPTS)[0]
    assert "white background" in plain and "red theme" in plain
    opts = DEFAULT_OPTS + ["white.*\n.*theme{1,2}", "", False]          # a regex holding a comma
    caption = tab.tag_single(ctx, img, "tiny", "", "auto", False, *opts)[0]
    assert "white background" not in caption and "theme" not in caption and caption
    opts = DEFAULT_OPTS + ["", "red_theme=crimson, scarlet\nwhite background=", True]
    caption = tab.tag_single(ctx, img, "tiny", "", "auto", False, *opts)[0]
    assert caption.startswith("(crimson:1.00), (scarlet:1.00), ") and "white background" not in caption
    assert "(:" not in caption and all(t.startswith("(") and t.endswith(")") for t in caption.split(", "))
    bad = tab.tag_single(ctx, img, "tiny", "", "auto", False, *(DEFAULT_OPTS + ["", "no equals sign", False]))
    assert bad[4] == "**Error:** replace rule 'no equals sign' must look like OLD=NEW."
    bad = tab.tag_single(ctx, img, "tiny", "", "auto", False, *(DEFAULT_OPTS + ["(", "", False]))
    assert bad[4].startswith("**Error:** exclude pattern '(' is not a valid regular expression")
