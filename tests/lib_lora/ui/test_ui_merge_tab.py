"""Merge tab without a browser: it builds in the installed Gradio, its handlers write exactly what the CLI
writes, bad input is one line with nothing written, Cancel leaves no file, presets fill the sliders, the
LoRA tools run through their options, and the live-merge buttons follow UiContext.live_merge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("gradio")

from lib_lora import fileio  # noqa: E402
from lib_lora.__main__ import main  # noqa: E402
from lib_lora.blocks import BLOCK_NAMES, FORMATS  # noqa: E402
from lib_lora.errors import LoraStudioError  # noqa: E402
from lib_lora.ui import app, merge_tab as mt  # noqa: E402
from tests.checkpoints import write_checkpoint  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mergetab")
    ck, lo = tmp / "ckpt", tmp / "lora"
    ck.mkdir()
    lo.mkdir()
    for name, seed in (("a", 1), ("b", 2), ("c", 3)):
        write_checkpoint(ck / f"{name}.safetensors", seed=seed)
    write_checkpoint(ck / "xl.safetensors", "sdxl", scale=32, seed=4)
    return tmp


@pytest.fixture
def ctx(folders, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    c = app.build_context([folders / "lora"], [out, folders / "ckpt"], tmp_path / "tagger")
    return c


def _run(ctx, a="a.safetensors", b="b.safetensors", c="", mode="weighted", alpha=0.3, per_block=False,
         dtype=mt.AS_INPUT, out="m", overwrite=False, values=None, progress=None, jobs=None, discard="", vae=None):
    values = values if values is not None else [0.5] * 26
    return mt.run_merge(ctx, jobs or mt.Jobs(), a, b, c, mode, alpha, per_block, dtype, out, overwrite, *values,
                        progress=progress, discard=discard, vae=vae)


def _one_line(msg: str) -> str:
    assert msg.startswith("⚠ ") and "\n" not in msg and "Traceback" not in msg, msg
    return msg


def test_tab_builds_in_the_app(ctx):
    demo = app.create_app(ctx, tabs=[("Merge", "lib_lora.ui.merge_tab", "lora_studio_tab_merge")])
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    need = {"lora_studio_merge_a", "lora_studio_merge_b", "lora_studio_merge_c", "lora_studio_merge_mode",
            "lora_studio_merge_alpha", "lora_studio_merge_preset", "lora_studio_merge_preset_apply",
            "lora_studio_merge_diagram", "lora_studio_merge_out", "lora_studio_merge_dtype",
            "lora_studio_merge_overwrite", "lora_studio_merge_run", "lora_studio_merge_cancel",
            "lora_studio_merge_status", "lora_studio_merge_live_load", "lora_studio_merge_live_apply",
            "lora_studio_merge_pv_run"}
    need |= {f"lora_studio_merge_w_{n}" for n in BLOCK_NAMES}
    need |= {f"lora_studio_merge_{t.key}_run" for t in mt.TOOLS}
    assert need <= ids, need - ids
    assert "lora_studio_merge_live_unavailable" not in ids    # the app loads model A itself (merge_live)
    ctx.live_merge = ctx.loaded_model = None                  # a host without a model: no live buttons
    demo = app.create_app(ctx, tabs=[("Merge", "lib_lora.ui.merge_tab", "lora_studio_tab_merge")])
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    assert "lora_studio_merge_live_unavailable" in ids and "lora_studio_merge_live_apply" not in ids


def test_models_are_listed_from_the_checkpoint_folders_only(ctx, folders):
    assert list(mt.checkpoint_choices(ctx)) == ["a.safetensors", "b.safetensors", "c.safetensors", "xl.safetensors"]
    assert "not in the checkpoint list" in _one_line(_run(ctx, b=str(folders / "ckpt" / "b.safetensors")))
    assert "not in the checkpoint list" in _one_line(_run(ctx, b="../ckpt/b.safetensors"))


def test_merge_through_the_tab_writes_the_cli_file(ctx, tmp_path):
    values = [round(0.04 * i, 2) for i in range(26)]
    line = _run(ctx, mode="add-diff", c="c.safetensors", alpha=0.7, per_block=True, dtype="fp32", values=values)
    assert line.startswith("✓ wrote ") and "(sd1, " in line and "tensors merged" in line, line
    ui_file = tmp_path / "out" / "m.safetensors"
    ck = ctx.checkpoint_dirs[1]
    cli_file = tmp_path / "cli.safetensors"
    assert main(["merge", "--a", str(ck / "a.safetensors"), "--b", str(ck / "b.safetensors"), "--c",
                 str(ck / "c.safetensors"), "--mode", "add-diff", "--alpha", "0.7", "--dtype", "fp32",
                 "--block-weights", ",".join(map(str, values)), "--out", str(cli_file), "--quiet"]) == 0
    assert ui_file.read_bytes() == cli_file.read_bytes()
    recipe = json.loads(fileio.read_metadata(ui_file)["lora_studio_merge"])
    assert recipe["block_weights"]["IN03"] == pytest.approx(0.16) and recipe["mode"] == "add-diff"


def test_alpha_only_is_the_cli_without_block_weights(ctx, tmp_path):
    assert _run(ctx, alpha=0.25, values=[9.0] * 26).startswith("✓ ")      # sliders ignored when not per block
    cli_file = tmp_path / "cli.safetensors"
    ck = ctx.checkpoint_dirs[1]
    assert main(["merge", "--a", str(ck / "a.safetensors"), "--b", str(ck / "b.safetensors"), "--mode", "weighted",
                 "--alpha", "0.25", "--out", str(cli_file), "--quiet"]) == 0
    assert (tmp_path / "out" / "m.safetensors").read_bytes() == cli_file.read_bytes()


def test_discard_field_is_the_cli_flag(ctx, tmp_path):
    line = _run(ctx, alpha=0.25, out="d", discard=" first_stage_model\\.decoder ")
    assert line.startswith("✓ ") and "keys discarded (matching first_stage_model\\.decoder)" in line, line
    cli_file = tmp_path / "cli.safetensors"
    ck = ctx.checkpoint_dirs[1]
    assert main(["merge", "--a", str(ck / "a.safetensors"), "--b", str(ck / "b.safetensors"), "--mode", "weighted",
                 "--alpha", "0.25", "--discard", "first_stage_model\\.decoder", "--out", str(cli_file),
                 "--quiet"]) == 0
    assert (tmp_path / "out" / "d.safetensors").read_bytes() == cli_file.read_bytes()
    assert not any(k.startswith("first_stage_model.decoder") for k in fileio.read_safetensors_header(cli_file)[1])


@pytest.mark.parametrize("kw,match", [
    ({"b": ""}, "Pick model B"),
    ({"a": ""}, "Pick model A"),
    ({"mode": "add-diff"}, "needs a third model"),
    ({"b": "xl.safetensors"}, "is SD1 but model B"),
    ({"out": ""}, "Type a name for the output"),
    ({"out": "../escape"}, "contains '..'"),
    ({"per_block": True, "values": [float("nan")] * 26}, "not a finite number"),
    ({"discard": "[ema"}, "not a regular expression"),
])
def test_bad_input_is_one_line_and_writes_nothing(ctx, tmp_path, kw, match):
    msg = _one_line(_run(ctx, **kw))
    assert match in msg, msg
    assert not any((tmp_path / "out").iterdir())


def test_existing_output_is_kept_unless_replace_is_ticked(ctx, tmp_path):
    target = tmp_path / "out" / "m.safetensors"
    target.write_bytes(b"keep me")
    msg = _one_line(_run(ctx))
    assert "already exists" in msg and "Replace the output file" in msg
    assert target.read_bytes() == b"keep me"
    assert _run(ctx, overwrite=True).startswith("✓ ")
    assert target.read_bytes() != b"keep me"


def test_writes_blocked_by_the_listen_gate(ctx, tmp_path):
    ctx.writes_allowed = False
    assert "disabled" in _one_line(_run(ctx))
    assert not (tmp_path / "out" / "m.safetensors").exists()


def test_cancel_stops_the_merge_and_leaves_no_file(ctx, tmp_path):
    jobs = mt.Jobs()
    calls = []

    def progress(frac, desc=""):
        calls.append(desc)
        jobs.cancel_all()        # the user presses Cancel while the bar moves

    msg = _one_line(_run(ctx, jobs=jobs, progress=progress))
    assert "Cancelled" in msg and calls and "ETA" in calls[0]
    assert not any((tmp_path / "out").iterdir())
    assert jobs.cancel_all() == "Nothing is running."


def test_progress_reports_bytes_with_an_eta(ctx):
    seen = []
    assert _run(ctx, progress=lambda frac, desc="": seen.append((frac, desc))).startswith("✓ ")
    assert seen and seen[-1][0] == 1.0 and seen[-1][1].startswith("merge: ") and "ETA" in seen[-1][1]


def test_arch_from_model_a_sets_the_sliders_and_presets(ctx):
    arch, line = mt.arch_of_a(ctx, "xl.safetensors")
    assert arch == "sdxl" and "SDXL: 20 block weights" in line
    assert sum(mt.slider_visibility("sdxl")) == 20 and sum(mt.slider_visibility("sd1")) == 26
    arch, line = mt.arch_of_a(ctx, "a.safetensors")
    assert arch == "sd1" and "26 block weights" in line
    store = mt.merge_store(ctx)
    store.set("mymerge26", ",".join(["0"] + ["1"] * 25))
    store.set("mymerge20", ",".join(["1"] * 20))
    try:                                   # a merge-preset store may refuse letters outright
        store.set("letters26", ",".join(["R"] * 26))
    except LoraStudioError:
        pass
    assert "mymerge26" in mt.merge_presets(ctx, "sd1") and "mymerge26" not in mt.merge_presets(ctx, "sdxl")
    assert "mymerge20" in mt.merge_presets(ctx, "sdxl") and "letters26" not in mt.merge_presets(ctx, "sd1")
    vec = mt.preset_vector(ctx, "mymerge26", "sd1", 0.5)
    assert vec == [0.0] + [1.0] * 25
    vec = mt.preset_vector(ctx, "mymerge20", "sdxl", 0.5)
    assert [vec[i] for i in FORMATS[20]] == [1.0] * 20
    assert mt.block_text("sdxl", vec) == ",".join(["1"] * 20)


def test_diagram_shows_the_weights_per_block(ctx):
    svg = mt.diagram("sd1", 0.5, True, *[0.1 * (i % 10) for i in range(26)])
    assert svg.startswith("<svg") and 'data-block="OUT11"' in svg
    svg = mt.diagram("sdxl", 0.5, False, *[0.5] * 26)
    assert 'data-block="IN09"' not in svg and 'data-block="IN08"' in svg


def test_live_buttons_say_why_without_a_loaded_model(ctx):
    from lib_lora.ui import merge_live
    assert mt.live_restore(ctx) == f"⚠ {merge_live.NO_MODEL}"       # the app: model A not loaded yet
    ctx.live_merge = ctx.loaded_model = None                          # a host without a model
    assert mt.live_restore(ctx) == f"⚠ {mt.LIVE_UNAVAILABLE}"
    assert merge_live.load_a(ctx, "a.safetensors") == f"⚠ {mt.LIVE_UNAVAILABLE}"


class _Recorder:
    """Stands for the loaded model's live merge (its own tests are the live-merge module's): records what the
    tab passes through the documented interface."""

    def __init__(self):
        self.calls = []

    def apply(self, **kw):
        self.calls.append(("apply", kw))
        kw["progress"](1, 2)
        return "applied"

    def restore(self):
        self.calls.append(("restore", {}))
        return "restored"

    def save(self, out, **kw):
        self.calls.append(("save", {"out": out, **kw}))
        return f"saved {out}"


def test_live_buttons_call_the_live_merge_under_the_queue_lock(ctx, tmp_path):
    live, locked = _Recorder(), []
    ctx.live_merge = lambda: live
    ctx.wrap_gpu_call = lambda fn: (lambda *a: (locked.append(fn), fn(*a))[1])
    jobs = mt.Jobs()
    msg = mt.live_apply(ctx, jobs, "b.safetensors", "", "weighted", 0.4, True, "a.safetensors", *[0.2] * 26)
    assert msg == "✓ applied"
    kw = live.calls[0][1]
    assert kw["b"].endswith("b.safetensors") and kw["c"] is None and kw["alpha"] == 0.4
    assert kw["block_weights"] == ",".join(["0.2"] * 26) and kw["cancel"]() is False
    assert mt.live_restore(ctx) == "✓ restored"
    assert "contains '..'" in _one_line(mt.live_save(ctx, jobs, "fp16", "../x", False))
    msg = mt.live_save(ctx, jobs, "fp16", "live", False)
    assert msg == f"✓ saved {tmp_path / 'out' / 'live.safetensors'}"
    assert live.calls[-1][1]["dtype"] == "fp16" and len(locked) == 3
    (tmp_path / "out" / "live.safetensors").write_bytes(b"x")
    assert "already exists" in _one_line(mt.live_save(ctx, jobs, None, "live", False))


def test_an_unexpected_failure_is_one_line_too(ctx, capsys):
    class Broken:
        def restore(self):
            raise AttributeError("'partial' object has no attribute 'reshape'")

    ctx.live_merge = lambda: Broken()
    msg = _one_line(mt.live_restore(ctx))
    assert "AttributeError" in msg and "console" in msg
    assert "Traceback" in capsys.readouterr().err          # the details go to the console


def test_refresh_callbacks_run_after_a_write(ctx):
    seen = []
    ctx.refresh_checkpoints = lambda: seen.append("ckpt")
    assert _run(ctx).startswith("✓ ") and seen == ["ckpt"]
    ctx.refresh_checkpoints = lambda: 1 / 0
    msg = _run(ctx, out="m2")
    assert msg.startswith("✓ ") and "could not be refreshed" in msg



def _clicked(dep, button) -> bool:
    """Whether a config dependency is `button`'s click: Gradio 3 lists targets and the trigger apart, Gradio 4
    (Forge) as (target, trigger) pairs."""
    if dep.get("trigger") == "click" and dep["targets"] == [button]:
        return True
    return [tuple(t) for t in dep["targets"] if isinstance(t, (list, tuple))] == [(button, "click")]


def test_run_buttons_show_progress_in_their_status_line_only(ctx):
    """Gradio draws an event's progress over each of its outputs: the buttons that write output the status line
    alone (the bar drawn over the "Replace the output file" box hid its label), and a step after the run
    clears that box."""
    demo = app.create_app(ctx, tabs=[("Merge", "lib_lora.ui.merge_tab", "lora_studio_tab_merge")])
    ids = {getattr(b, "elem_id", None): i for i, b in demo.blocks.items()}
    deps = demo.get_config_file()["dependencies"]
    runs = [("run", "status", "overwrite"), ("live_save", "live_status", "overwrite")]
    runs += [(f"{t.key}_run", f"{t.key}_status", f"{t.key}_overwrite") for t in mt.TOOLS]
    for button, status, box in runs:
        button, status, box = (ids[f"lora_studio_merge_{n}"] for n in (button, status, box))
        index, run = next((i, d) for i, d in enumerate(deps) if _clicked(d, button))
        assert run["outputs"] == [status], run["outputs"]
        after = [d for d in deps if d["trigger_after"] == index]
        assert any(d["outputs"] == [box] and d["show_progress"] == "hidden" for d in after), after
    assert mt.untick() is False


# ---- LoRA tools -----------------------------------------------------------------------------------------


def test_extract_and_resize_through_the_tools(ctx, tmp_path):
    jobs = mt.Jobs()
    lora_dir = ctx.lora_dirs[0]
    msg = mt.run_tool(ctx, jobs, "extract", {"base": "a.safetensors", "tuned": "b.safetensors"}, {},
                      [8, None, None, 0.0], "extracted", False)
    assert msg.startswith("✓ wrote ") and (lora_dir / "extracted.safetensors").is_file(), msg
    msg = mt.run_tool(ctx, jobs, "resize", {"src": "extracted.safetensors"}, {}, [2, None, "none", None],
                      "small", False)
    assert msg.startswith("✓ wrote ") and "ss_network_dim 2" in msg, msg
    cli = tmp_path / "cli_small.safetensors"
    assert main(["resize", str(lora_dir / "extracted.safetensors"), "--rank", "2", "--out", str(cli),
                 "--quiet"]) == 0
    from safetensors.torch import load_file
    import torch
    got, want = load_file(str(lora_dir / "small.safetensors")), load_file(str(cli))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    # bad input: one line, nothing written
    msg = _one_line(mt.run_tool(ctx, jobs, "resize", {"src": ""}, {}, [2, None, "none", None], "x", False))
    assert "Pick the lora file" in msg
    msg = _one_line(mt.run_tool(ctx, jobs, "resize", {"src": "small.safetensors"}, {}, [2, None, "none", None],
                                "small", False))
    assert "already exists" in msg
    msg = _one_line(mt.run_tool(ctx, jobs, "merge_loras", {"lora_dir": str(lora_dir)}, {"tags": "no tags"},
                                ["concat", None, None, None, 0], "merged", False))
    assert "LoRA tags" in msg and not (lora_dir / "merged.safetensors").exists()


def test_merge_loras_and_bake_lora_through_the_tools(ctx):
    jobs = mt.Jobs()
    lora_dir = ctx.lora_dirs[0]
    if not (lora_dir / "extracted.safetensors").exists():
        mt.run_tool(ctx, jobs, "extract", {"base": "a.safetensors", "tuned": "b.safetensors"}, {},
                    [8, None, None, 0.0], "extracted", False)
    msg = mt.run_tool(ctx, jobs, "merge_loras", {"lora_dir": str(lora_dir)},
                      {"tags": "<lora:extracted:0.5> <lora:extracted:0.25>"},
                      ["concat", None, None, None, 0], "both", False)
    assert msg.startswith("✓ wrote ") and "2 LoRAs" in msg, msg
    msg = mt.run_tool(ctx, jobs, "bake_lora", {"lora_dir": str(lora_dir)}, {"prompt": "<lora:extracted:0.5>"},
                      [0], "baked", False)
    assert msg.startswith("✓ wrote ") and (lora_dir / "baked.safetensors").is_file(), msg
    msg = _one_line(mt.run_tool(ctx, jobs, "bake_lora", {"lora_dir": "/etc"}, {"prompt": "<lora:x:1>"}, [0],
                                "x", False))
    assert "not a configured LoRA folder" in msg



def test_tools_read_zero_as_unset_for_optional_numbers(ctx):
    """What Gradio 3 sends for the untouched Conv rank / Clamp quantile / Parameter (its Number and Slider show
    None as 0): the tools run as if they were not set, as the CLI does without the flags."""
    jobs = mt.Jobs()
    lora_dir = ctx.lora_dirs[0]
    msg = mt.run_tool(ctx, jobs, "extract", {"base": "a.safetensors", "tuned": "b.safetensors"}, {},
                      [8, 0, 0, 0.01], "zeros", False)
    assert msg.startswith("✓ wrote "), msg
    recipe = json.loads(fileio.read_metadata(lora_dir / "zeros.safetensors")["lora_studio_extracted"])
    assert recipe["conv_rank"] is None and recipe["clamp_quantile"] is None, recipe
    msg = mt.run_tool(ctx, jobs, "resize", {"src": "zeros.safetensors"}, {}, [2, 0, "none", 0], "zeros2", False)
    assert msg.startswith("✓ wrote ") and "ss_network_dim 2" in msg, msg
    msg = mt.run_tool(ctx, jobs, "merge_loras", {"lora_dir": str(lora_dir)}, {"tags": "<lora:zeros:0.5>"},
                      ["concat", 0, 0, 0, 0], "zeros3", False)
    assert msg.startswith("✓ wrote "), msg
    msg = _one_line(mt.run_tool(ctx, jobs, "resize", {"src": "zeros.safetensors"}, {}, [2, 0, "sv_fro", 0],
                                "zeros4", False))
    assert "needs --param" in msg                        # unset, not "0 is out of range"


# ---- the other Gradio and the WebUI ---------------------------------------------------------------------


_BUILD = """
import sys
from pathlib import Path
from lib_lora.ui import app
tmp = Path(sys.argv[1])
ctx = app.build_context([tmp / "l"], [tmp / "c"], tmp / "t")
ctx.live_merge = lambda: None
demo = app.create_app(ctx, tabs=[("Merge", "lib_lora.ui.merge_tab", "lora_studio_tab_merge")])
ids = [getattr(b, "elem_id", None) or "" for b in demo.blocks.values()]
print(sum(i.startswith("lora_studio_merge_w_") for i in ids), "lora_studio_merge_live_apply" in ids,
      "lora_studio_merge_bake_run" in ids)
"""


def test_tab_builds_under_gradio_4(tmp_path):
    import os
    import subprocess

    from tests.paths import REPO
    py4 = os.environ.get("LORA_STUDIO_GRADIO4_PYTHON")
    if not py4:
        pytest.skip("set LORA_STUDIO_GRADIO4_PYTHON to a python with gradio 4 installed")
    r = subprocess.run([py4, "-c", _BUILD, str(tmp_path)], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(REPO), GRADIO_ANALYTICS_ENABLED="False"))
    assert r.returncode == 0 and r.stdout.split() == ["26", "True", "True"], r.stdout + r.stderr
    assert "unavailable" not in r.stderr, r.stderr


def test_webui_hands_its_checkpoint_list_and_refresh_to_the_tab(tmp_path, folders):
    from types import SimpleNamespace

    from tests.fake_webui.harness import FakeWebui
    w = FakeWebui(tmp_path).start()
    from modules import script_callbacks, sd_models
    try:
        listed = {"x": SimpleNamespace(name="sub/b.safetensors", filename=str(folders / "ckpt" / "b.safetensors")),
                  "y": SimpleNamespace(name="old.ckpt", filename=str(tmp_path / "old.ckpt"))}
        refreshed = []
        sd_models.checkpoints_list = listed
        sd_models.list_models = lambda: refreshed.append(True)
        tabs = script_callbacks.ui_tabs_callback()
        assert tabs
        from lora_studio_webui.tabs import FAILED, build_context
        assert "Merge" not in FAILED, FAILED
        ctx = build_context()
        assert mt.checkpoint_choices(ctx) == {"sub/b.safetensors": folders / "ckpt" / "b.safetensors"}
        assert mt.checkpoint_path(ctx, "sub/b.safetensors", "B").endswith("b.safetensors")
        ctx.refresh_checkpoints()
        assert refreshed == [True]
        # the VAE picker: the WebUI's VAE list, rescanned each time it is read (a file added shows on Refresh)
        from modules import paths, sd_vae
        vae_dir = Path(paths.data_path) / "models" / "VAE"
        vae_dir.mkdir(parents=True, exist_ok=True)
        (vae_dir / "kl-f8.safetensors").write_bytes(b"")
        (vae_dir / "old.pt").write_bytes(b"")
        assert mt.vae_names(ctx) == [mt.MERGED_VAE, "kl-f8.safetensors"] and sd_vae.refreshes
        from lib_lora.ui.merge_run import vae_path
        assert vae_path(ctx, "kl-f8.safetensors") == str(vae_dir / "kl-f8.safetensors")
        assert vae_path(ctx, mt.MERGED_VAE) is None
    finally:
        for attr in ("checkpoints_list", "list_models"):
            sd_models.__dict__.pop(attr, None)
        w.close()


def test_app_checkpoint_folders(tmp_path, monkeypatch):
    from lib_lora.__main__ import build_parser
    from lib_lora.cli import ui as cli_ui
    from lib_lora.options import AppOptions, from_args

    monkeypatch.chdir(tmp_path)

    def ctx_of(*argv):
        return cli_ui.build_context(from_args(AppOptions, build_parser().parse_args(["ui", *argv])))

    assert ctx_of().checkpoint_dirs == []                  # no default folder here: none invented
    assert not (tmp_path / "models" / "Stable-diffusion").exists()
    with pytest.raises(LoraStudioError, match="--checkpoint-dir 'nope' does not exist"):
        ctx_of("--checkpoint-dir", "nope")
    (tmp_path / "models" / "Stable-diffusion").mkdir(parents=True)
    assert [p.name for p in ctx_of().checkpoint_dirs] == ["Stable-diffusion"]
    bare = app.build_context([tmp_path / "l"], [], tmp_path / "t")
    msg = _one_line(mt.run_merge(bare, mt.Jobs(), "a", "b", "", "weighted", 0.5, False, mt.AS_INPUT, "x", False,
                                 *[0.5] * 26))
    assert msg == f"⚠ {mt.NO_CHECKPOINT_DIR}"


def test_live_buttons_with_the_real_live_merge(ctx, folders, tmp_path):
    live_module = pytest.importorskip("lib_lora.merge.live")     # the live-merge core, where this build has it
    import torch
    from safetensors.torch import load_file

    tensors = load_file(str(folders / "ckpt" / "a.safetensors"))
    before = {k: v.clone() for k, v in tensors.items()}
    live = live_module.LiveMerge(tensors, name="a.safetensors")
    ctx.live_merge = lambda: live
    jobs = mt.Jobs()
    msg = mt.live_apply(ctx, jobs, "b.safetensors", "", "weighted", 0.3, True, "a.safetensors", *[0.3] * 26)
    assert msg.startswith("✓ ") and "\n" not in msg, msg
    key = "model.diffusion_model.input_blocks.1.1.proj_in.weight"
    assert not torch.equal(tensors[key], before[key])
    msg = mt.live_save(ctx, jobs, mt.AS_INPUT, "live", False)
    assert msg.startswith("✓ ") and (tmp_path / "out" / "live.safetensors").is_file(), msg
    assert "already exists" in _one_line(mt.live_save(ctx, jobs, mt.AS_INPUT, "live", False))
    assert mt.live_restore(ctx).startswith("✓ ")
    assert all(torch.equal(tensors[k].view(torch.uint8) if tensors[k].is_floating_point() else tensors[k],
                           before[k].view(torch.uint8) if before[k].is_floating_point() else before[k])
               for k in tensors)
    assert "third model" in _one_line(mt.live_apply(ctx, jobs, "b.safetensors", "", "add-diff", 0.3, False,
                                                    "a.safetensors", *[0.3] * 26))


def test_bake_into_a_checkpoint_through_the_tools_equals_the_cli(ctx, tmp_path):
    jobs = mt.Jobs()
    lora_dir = ctx.lora_dirs[0]
    if not (lora_dir / "extracted.safetensors").exists():
        mt.run_tool(ctx, jobs, "extract", {"base": "a.safetensors", "tuned": "b.safetensors"}, {},
                    [8, None, None, 0.0], "extracted", False)
    seen = []
    msg = mt.run_tool(ctx, jobs, "bake", {"base": "a.safetensors", "lora_dir": str(lora_dir)},
                      {"prompt": "a photo <lora:extracted:0.5>"}, [mt.AS_INPUT, 0, False], "baked", False,
                      progress=lambda frac, desc="": seen.append(desc))
    assert msg.startswith("✓ wrote ") and "1 LoRAs" in msg, msg
    assert {d.split(":")[0] for d in seen} >= {"merge", "write"}   # the streamed bake's two phases
    ui_file = tmp_path / "out" / "baked.safetensors"
    cli_file = tmp_path / "cli_baked.safetensors"
    assert main(["bake", "--base", str(ctx.checkpoint_dirs[1] / "a.safetensors"), "--prompt",
                 "a photo <lora:extracted:0.5>", "--lora-dir", str(lora_dir), "--out", str(cli_file),
                 "--quiet"]) == 0
    assert ui_file.read_bytes() == cli_file.read_bytes()


def test_a_vae_from_the_vae_folder_is_baked_as_the_cli_bakes_it(ctx, tmp_path):
    """Standalone: the VAE picker lists the `VAE` folder beside the checkpoint folder; the pick is --vae."""
    from safetensors.torch import load_file, save_file

    ck = ctx.checkpoint_dirs[1]
    vae_dir = ck.parent / "VAE"
    vae_dir.mkdir(exist_ok=True)
    b = load_file(str(ck / "b.safetensors"))
    vae = {k[len("first_stage_model."):]: v for k, v in b.items() if k.startswith("first_stage_model.")}
    save_file(vae, str(vae_dir / "my.vae.safetensors"))
    assert mt.vae_names(ctx) == [mt.MERGED_VAE, "my.vae.safetensors"]
    line = _run(ctx, alpha=0.25, out="v", vae="my.vae.safetensors")
    assert line.startswith("✓ ") and "VAE from my.vae.safetensors" in line, line
    cli_file = tmp_path / "cli.safetensors"
    assert main(["merge", "--a", str(ck / "a.safetensors"), "--b", str(ck / "b.safetensors"), "--mode", "weighted",
                 "--alpha", "0.25", "--vae", str(vae_dir / "my.vae.safetensors"), "--out", str(cli_file),
                 "--quiet"]) == 0
    assert (tmp_path / "out" / "v.safetensors").read_bytes() == cli_file.read_bytes()
    assert "not in the VAE list" in _one_line(_run(ctx, out="w", vae="../b.safetensors"))
    assert _run(ctx, out="x", vae=mt.MERGED_VAE).startswith("✓ ")     # the default: merged with BASE
