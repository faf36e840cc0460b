"""LBW parity in the fake WebUI: ZYX on a second LoRA, the Original Weights and LoRA block ID axes, and the
Effective Block Analyzer (each cell rewrites only the layers of the block that changed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.fake_webui.harness import LAYERS, POS17

WEBUI_LORAS = (("foo", 1), ("bar", 2))
ONES = ",".join(["1"] * 17)


def axes():
    from modules import scripts
    xyz = [d.module for d in scripts.scripts_data if d.script_class.__module__ == "xyz_grid.py"][0]
    return xyz, {o.label: o for o in xyz.axis_options if o.label.startswith("[LoRA Studio]")}


def presets(tmp_path, text):
    (tmp_path / "user_presets.txt").write_text(text)


def test_zyx_gives_the_second_lora_the_complement(webui, tmp_path):
    presets(tmp_path, "INS:1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0\n")
    webui.generate("x <lora:foo:1:INS> <lora:bar:1:ZYX>")
    from lora_studio_webui.engine import ENGINE
    by_name = {a.tag.name: a.active.blocks for a in ENGINE.last.loras}
    assert [by_name["bar"][s] for s in (0, 2, 3, 5, 6, 13, 25)] == [0, 0, 0, 0, 1, 1, 1]
    assert not any("ZYX" in w for w in ENGINE.last.warnings)
    zyx = webui.weights()
    # the same as writing the complement by hand
    webui.generate("x")
    webui.generate("x <lora:foo:1:INS> <lora:bar:1:0,0,0,0,1,1,1,1,1,1,1,1,1,1,1,1,1>")
    assert all(torch.equal(zyx[k], webui.weight(k)) for k in LAYERS)


def test_zyx_alone_is_one_warning_and_the_lora_is_skipped(webui):
    p, _ = webui.generate("x <lora:bar:1:ZYX>")
    msgs = [c for c in p.comments if "ZYX" in c]
    assert len(msgs) == 1 and "complements another LoRA tag" in msgs[0]


def test_original_weights_axis_sets_and_combines_presets(webui, tmp_path):
    presets(tmp_path, "INS:1,1,1,0,0,0,0,0,0,0,0,0\nMID:1,0,0,0,0,1,0,0,0,0,0,0\nOUTD:1,0,0,0,0,0,1,1,1,0,0,0\n")
    xyz, ours = axes()
    opt = ours["[LoRA Studio] LoRA original weights"]
    assert {"INS", "MID", "OUTD"} <= set(opt.choices())
    p = webui.processing("cat <lora:bar:1> <lora:foo:0.5:XYZ> <lora:bar:1:ZYX>")
    cells = xyz.run_axis(p, opt, ["INS", "MID"])
    assert cells[0][1].prompt == "cat <lora:bar:1> <lora:foo:0.5:lbw=INS> <lora:bar:1:ZYX>"   # the XYZ tag varies
    with pytest.raises(RuntimeError, match="unknown preset 'INX' \\(close: INS"):
        xyz.run_axis(p, opt, ["INX"])
    # X and Y both Original Weights: LBW's combined cell (the second's value dropped where both weigh)
    from copy import copy
    pc = copy(webui.processing("cat <lora:foo:1>"))
    opt.apply(pc, "MID", ["MID"])
    opt.apply(pc, "INS", ["INS"])
    assert pc.prompt == "cat <lora:foo:1:lbw=1,1,1,0,0,1,0,0,0,0,0,0>"


def test_block_id_axis_sets_named_blocks_low_others_kept(webui, tmp_path):
    presets(tmp_path, "HALF:" + ",".join(["0.5"] * 17) + "\n")
    xyz, ours = axes()
    opt = ours["[LoRA Studio] LoRA block ID"]
    cells = xyz.run_axis(webui.processing("cat <lora:foo:1>"), opt, ["IN04-OUT05", "NOT M00", "OUT03=0.5"])
    assert cells[0][1].prompt == "cat <lora:foo:1:lbw=1,1,1,0,0,0,0,0,0,0,0,1,1,1,1,1,1>"
    assert cells[1][1].prompt == "cat <lora:foo:1:lbw=0,0,0,0,0,0,0,1,0,0,0,0,0,0,0,0,0>"
    assert cells[2][1].prompt == "cat <lora:foo:1:lbw=1,1,1,1,1,1,1,1,0.5,1,1,1,1,1,1,1,1>"
    # the tag's own weights are the base (LBW's XYZ base); IN00 is not in 17 values: the list grows to 26,
    # keeping what the 17 values meant (the blocks they leave out stay 0)
    cells = xyz.run_axis(webui.processing("cat <lora:foo:1:HALF>"), opt, ["IN00"])
    assert cells[0][1].prompt == ("cat <lora:foo:1:lbw=0.5,0,0.5,0.5,0,0.5,0.5,0,0.5,0.5,0,0,0,0.5,0,0,0,"
                                  "0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5>")
    with pytest.raises(RuntimeError, match="block 'IN99' is not a block ID"):
        xyz.run_axis(webui.processing("cat <lora:foo:1>"), opt, ["IN99"])


def test_block_id_cells_rewrite_only_the_changed_blocks_layers(webui):
    """The analyzer path: between two cells only the layers of the block that changed are touched."""
    from lora_studio_webui.engine import ENGINE
    webui.generate("x <lora:foo:1:" + ONES + ">")
    xyz, ours = axes()
    opt = ours["[LoRA Studio] LoRA block ID"]
    xyz.run_axis(webui.processing("x <lora:foo:1>"), opt, ["IN01=0.5"])
    rep = ENGINE.last.report
    assert (rep.layers_written, rep.layers_restored, rep.layers_kept) == (1, 0, 5)   # IN01's one layer
    xyz.run_axis(webui.processing("x <lora:foo:1>"), opt, ["IN04=0.5"])
    rep = ENGINE.last.report
    assert (rep.layers_written, rep.layers_restored, rep.layers_kept) == (2, 0, 4)   # IN01 back, IN04 down


def test_effective_block_analyzer_scores_each_block(webui):
    """Render = an image drawn from the live weights during sampling, so the blocks the LoRA touches in this
    model (POS17) score and the others do not."""
    from PIL import Image

    from lora_studio_webui import xyz_blocks
    from modules.processing import process_images

    webui.generate("x")
    w0 = torch.cat([webui.weight(k).flatten()[:64] for k in LAYERS]).float()
    webui.generate("x <lora:foo:1>")
    scale = 127 / (torch.cat([webui.weight(k).flatten()[:64] for k in LAYERS]).float() - w0).abs().max()

    def render(p):
        seen = []
        p.observer = lambda q: seen.append(torch.cat([webui.weight(k).flatten()[:64] for k in LAYERS]))
        process_images(p)
        px = (128 + (seen[-1].float() - w0) * scale).round().clamp(0, 255).to(torch.uint8).numpy()
        return Image.fromarray(np.tile(px.reshape(6, 64, 1), (1, 1, 3)))

    p = webui.processing("x <lora:foo:1>")
    grid, scores, images = xyz_blocks.run_analysis(p, render, low=0.0)
    assert [b for b, _ in scores] == ["BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00", "OUT03",
                                      "OUT04", "OUT05", "OUT06", "OUT07", "OUT08", "OUT09", "OUT10", "OUT11"]
    touched = {["BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00", "OUT03", "OUT04", "OUT05", "OUT06",
                "OUT07", "OUT08", "OUT09", "OUT10", "OUT11"][i] for i in POS17.values()}
    for block, score in scores:
        assert (score > 0) == (block in touched), (block, score)
    assert grid.size == (140 + 3 * 64, 36 + 17 * 6) and len(images) == 18
    assert p.prompt == "x <lora:foo:1>"                 # the user's processing object is not changed


def test_analyzer_script_is_loaded_and_its_ui_builds(webui):
    import gradio as gr
    from modules import scripts
    found = [d.script_class for d in scripts.scripts_data if d.script_class.__name__ == "BlockAnalyzerScript"]
    assert len(found) == 1
    script = found[0]()
    assert script.title() == "LoRA Studio: Effective Block Analyzer" and script.show(False) is True
    with gr.Blocks():
        controls = script.ui(False)
    assert [c.value for c in controls[1:]] == [0.5, 20, False, False]


def test_prompt_sliders_panel_is_built_with_the_formats_and_presets(webui, tmp_path):
    import gradio as gr
    from modules import scripts
    presets(tmp_path, "MINE:" + ",".join(["0.5"] * 17) + "\n")
    cls = [d.script_class for d in scripts.scripts_data if d.script_class.__name__ == "LoraStudioScript"][0]
    with gr.Blocks() as demo:
        assert cls().ui(True) == []
    htmls = [b.value for b in demo.blocks.values() if isinstance(b, gr.HTML) and "data-prompt" in (b.value or "")]
    assert len(htmls) == 1 and 'data-prompt="img2img_prompt"' in htmls[0]   # (the other HTML: the norms chart)
    assert "MINE" in htmls[0] and "OUT11" in htmls[0]
