"""The Python callbacks behind the Presets and LoRAs tabs, without a browser (real files, real store)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

pytest.importorskip("gradio")

from lib_lora.errors import LoraStudioError  # noqa: E402
from lib_lora.presets import DEFAULT_BUILTIN, PresetStore  # noqa: E402
from lib_lora.ui import app, lora_tab  # noqa: E402
from lib_lora.ui import presets_tab as pt  # noqa: E402
from tests.browser import write_block_lora  # noqa: E402

F17 = pt.FORMAT_CHOICES[0]
F12 = next(c for c in pt.FORMAT_CHOICES if c.startswith("12"))
FACE = ["1", "0", "0", "0", "0", "0", "0", "0", "0.8", "1", "1", "0.2", "0", "0", "0", "0", "0"]


def make_ctx(tmp_path: Path, **kw):
    return app.build_context([tmp_path / "lora"], [tmp_path / "ckpt"], tmp_path / "tagger",
                             presets_file=tmp_path / "user_presets.txt", **kw)


@pytest.fixture
def ctx(tmp_path):
    return make_ctx(tmp_path)


@pytest.fixture
def upload(tmp_path, monkeypatch):
    """uploaded(name, text) → the value a File input sends after a real upload: a file in Gradio's upload
    folder (GRADIO_TEMP_DIR/<random>/name), as {"name": path, "is_file": True} with preprocess=False (Gradio 4
    (Forge): its FileData, {"path": path, …})."""
    import secrets
    gradio_tmp = tmp_path / "gradio_uploads"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(gradio_tmp))

    def uploaded(name, text):
        d = gradio_tmp / secrets.token_hex(20)
        d.mkdir(parents=True)
        (d / name).write_text(text, encoding="utf-8")
        from lib_lora.ui.compat import IS_GRADIO_4
        if IS_GRADIO_4:
            return {"path": str(d / name), "orig_name": name, "size": len(text.encode()), "url": None,
                    "mime_type": None, "is_stream": False, "meta": {"_type": "gradio.FileData"}}
        return {"name": str(d / name), "is_file": True, "orig_name": name, "data": None}
    return uploaded


def preset_lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]


def test_table_lists_presets_of_the_chosen_format(ctx):
    df, names, status = pt.load_table(ctx, F17)
    assert list(df.columns)[:3] == ["name", "BASE", "IN01"] and len(df.columns) == 18
    assert df[df["name"] == "face"].values.tolist()[0][1:] == FACE
    assert "ALL_XL" not in names and "face" in names and "17 values" in status
    df12, names12, _ = pt.load_table(ctx, F12)
    assert len(df12.columns) == 13 and "ALL_XL" in names12 and "face" not in names12
    assert df12[df12["name"] == "ALL_XL"].values.tolist()[0][1:] == ["1"] * 12


def test_set_row_adds_replaces_and_validates(ctx):
    df, _, _ = pt.load_table(ctx, F17)
    n0 = len(df)
    df2, msg = pt.set_row(df.values.tolist(), F17, "mine", ",".join(["0.5"] * 17))
    assert len(df2) == n0 + 1 and df2.values.tolist()[-1] == ["mine"] + ["0.5"] * 17 and "Save" in msg
    df3, _ = pt.set_row(df2.values.tolist(), F17, "mine", ",".join(["R"] * 17))
    assert len(df3) == n0 + 1 and df3.values.tolist()[-1][1:] == ["R"] * 17
    _, msg = pt.set_row(df.values.tolist(), F17, "short", "1,1,1")
    assert msg.startswith("⚠") and "3 values" in msg and "needs 17" in msg
    _, msg = pt.set_row(df.values.tolist(), F17, "0.5", ",".join(["1"] * 17))
    assert msg.startswith("⚠") and "number" in msg
    _, msg = pt.set_row(df.values.tolist(), F17, "bad", ",".join(["1"] * 16 + ["abc"]))
    assert msg.startswith("⚠") and "abc" in msg


def test_row_at_fills_the_form_from_a_click(ctx):
    df, _, _ = pt.load_table(ctx, F17)
    i = df["name"].tolist().index("face")
    assert pt.row_at(df.values.tolist(), [i, 4]) == ("face", ",".join(FACE))
    assert pt.row_at(df.values.tolist(), [999, 0]) == ("", "")


def test_save_writes_only_changes_and_takes_effect_at_once(ctx, tmp_path):
    df, names, _ = pt.load_table(ctx, F17)
    rows = df.values.tolist()
    for r in rows:
        if r[0] == "face":
            r[9] = "0.9"           # OUT03
    rows.append(["mine"] + ["1"] * 8 + ["0"] * 9)
    df2, names2, msg = pt.save_table(ctx, rows, F17, names)
    assert not msg.startswith("⚠"), msg
    assert "2 changed" in msg and "mine" in names2
    user = tmp_path / "user_presets.txt"
    assert sorted(preset_lines(user)) == sorted([
        "face:1,0,0,0,0,0,0,0,0.9,1,1,0.2,0,0,0,0,0", "mine:" + ",".join(["1"] * 8 + ["0"] * 9)])
    assert ctx.presets.get("face")[8] == "0.9" and ctx.presets.get("mine") == ["1"] * 8 + ["0"] * 9
    assert "(2 from your presets file)" in pt.load_table(ctx, F17)[2]
    # a fresh store (another process, the WebUI) reads the same
    fresh = PresetStore(DEFAULT_BUILTIN, user)
    assert fresh.get("mine") == ["1"] * 8 + ["0"] * 9 and fresh.get("face")[8] == "0.9"
    # removing the user row deletes it; the shipped face comes back once its override row is gone
    rows2 = [r for r in df2.values.tolist() if r[0] != "mine"]
    _, names3, msg = pt.save_table(ctx, rows2, F17, names2)
    assert "1 removed" in msg and "mine" not in names3 and ctx.presets.get("mine") is None
    assert preset_lines(user) == ["face:1,0,0,0,0,0,0,0,0.9,1,1,0.2,0,0,0,0,0"]


def test_save_refuses_to_delete_a_shipped_preset_and_changes_nothing(ctx, tmp_path):
    df, names, _ = pt.load_table(ctx, F17)
    rows = [r for r in df.values.tolist() if r[0] != "face"]
    rows.append(["new1"] + ["1"] * 17)
    _, names2, msg = pt.save_table(ctx, rows, F17, names)
    assert msg.startswith("⚠") and "'face' is a shipped preset" in msg
    assert names2 == names and not (tmp_path / "user_presets.txt").exists()
    assert ctx.presets.get("new1") is None and ctx.presets.get("face") == FACE


def test_save_reports_bad_rows_and_duplicates(ctx, tmp_path):
    df, names, _ = pt.load_table(ctx, F17)
    rows = df.values.tolist() + [["dup"] + ["1"] * 17, ["dup"] + ["0"] * 17]
    assert "appear twice" in pt.save_table(ctx, rows, F17, names)[2]
    rows = df.values.tolist() + [["holes"] + ["1"] * 15 + ["", ""]]
    msg = pt.save_table(ctx, rows, F17, names)[2]
    assert "holes" in msg and "OUT10, OUT11" in msg
    assert not (tmp_path / "user_presets.txt").exists()


def test_listen_without_allow_writes_refuses_every_write(tmp_path, upload):
    ctx = make_ctx(tmp_path, listen=True, allow_writes=False)
    df, names, _ = pt.load_table(ctx, F17)
    msg = pt.save_table(ctx, df.values.tolist() + [["x1"] + ["1"] * 17], F17, names)[2]
    assert msg.startswith("⚠") and "--allow-writes" in msg and "--listen" in msg
    lbw = upload("lbw.txt", "imp:" + ",".join(["1"] * 17) + "\n")
    assert "--allow-writes" in pt.import_file(ctx, lbw)
    assert not (tmp_path / "user_presets.txt").exists() and ctx.presets.get("x1") is None
    ok = make_ctx(tmp_path, listen=True, allow_writes=True)
    assert not pt.import_file(ok, lbw).startswith("⚠")
    assert preset_lines(tmp_path / "user_presets.txt") == ["imp:" + ",".join(["1"] * 17)]


def test_import_and_export_lbw_file(ctx, tmp_path, upload):
    lbw = upload("lbwpresets.txt", "# comment\nAAA:" + ",".join(["1"] * 17) + "\nBBB:" + ",".join(["0.5"] * 12)
                 + "\nbroken:1,2,3\n")
    msg = pt.import_file(ctx, lbw)
    assert "Imported 2 presets (AAA, BBB)" in msg and "Skipped 1 line(s)" in msg and "line 4" in msg
    assert "broken" not in msg   # lines that are not presets are never quoted
    assert ctx.presets.get("BBB") == ["0.5"] * 12
    assert sorted(preset_lines(tmp_path / "user_presets.txt")) == sorted(
        ["AAA:" + ",".join(["1"] * 17), "BBB:" + ",".join(["0.5"] * 12)])
    path, msg = pt.export_file(ctx)
    text = Path(path).read_text()
    assert Path(path).name == "lbwpresets.txt" and "AAA:" + ",".join(["1"] * 17) in text
    assert "face:" + ",".join(FACE) in text and f"Exported {len(ctx.presets.names())} presets" in msg
    assert pt.import_file(ctx, None).startswith("⚠")


def test_make_tag():
    assert pt.make_tag("sub/my_lora.safetensors", 0.75, "face") == "<lora:my_lora:0.75:face>"
    assert pt.make_tag("x.safetensors", 1.0, "") == "<lora:x:1>"
    assert pt.make_tag("x.safetensors", 0.30000000000000004, "ALL") == "<lora:x:0.3:ALL>"
    assert pt.make_tag("x.safetensors", -1, None) == "<lora:x:-1>"
    assert pt.tag_callback("", 1, "face")[1].startswith("⚠")


def test_lora_listing_and_path_safety(ctx, tmp_path):
    (tmp_path / "lora" / "sub").mkdir()
    write_block_lora(tmp_path / "lora" / "sub" / "b.safetensors")
    (tmp_path / "lora" / "notes.txt").write_text("x")
    (tmp_path / "secret.safetensors").write_bytes(b"x")
    assert lora_tab.list_loras(ctx) == ["sub/b.safetensors"]
    [[name, mb, folder]] = lora_tab.lora_rows(ctx)
    assert name == "sub/b.safetensors" and folder == str(ctx.lora_dirs[0]) and 0 < mb < 1
    for bad in ("../secret.safetensors", str(tmp_path / "secret.safetensors"), "notes.txt"):
        with pytest.raises(LoraStudioError):
            lora_tab.lora_path(ctx, bad)


def test_chart_shows_the_loras_block_norms_and_preset_weights(ctx, tmp_path):
    expected = write_block_lora(tmp_path / "lora" / "blocky.safetensors")
    html, summary = pt.lora_chart(ctx, "blocky.safetensors", "face")
    bars = dict(re.findall(r'class="bar" data-block="(\w+)" data-norm="([^"]+)"', html))
    assert set(bars) == set(expected)
    for block, norm in expected.items():
        assert float(bars[block]) == pytest.approx(norm, rel=1e-4)
    assert max(bars, key=lambda b: float(bars[b])) == "OUT03"
    weights = dict(re.findall(r'class="weight" data-block="(\w+)" data-weight="([^"]+)"', html))
    assert weights["OUT03"] == "0.8" and weights["BASE"] == "1" and weights["M00"] == "0" and len(weights) == 26
    kept = dict(re.findall(r'class="kept" data-block="(\w+)" data-kept="([^"]+)"', html))
    assert float(kept["OUT03"]) == pytest.approx(0.8 * expected["OUT03"], rel=1e-4)
    assert float(kept["M00"]) == 0.0 and float(kept["BASE"]) == pytest.approx(expected["BASE"], rel=1e-4)
    assert "SD1" in summary and "blocky.safetensors" in summary
    html2, _ = pt.lora_chart(ctx, "blocky.safetensors", "")
    assert 'class="weight"' not in html2 and 'class="kept"' not in html2 and 'class="bar"' in html2
    assert pt.lora_chart(ctx, "missing.safetensors", "")[1].startswith("⚠")


def test_letters_in_a_preset_are_not_drawn_as_weights(ctx):
    ctx.presets.set("rnd", ["R"] + ["1"] * 16)
    w = pt.preset_weights(ctx, "rnd", "sd1")
    html = lora_tab.render_bars([1.0] * 26, w)
    assert 'data-block="BASE" data-weight="?"' in html and 'data-kept' in html
    assert w[0] is None and w[2] == 1.0 and w[1] == 0.0   # IN00 is not in the 17 format → 0
    assert pt.preset_weights(ctx, "ALL", "sdxl")[14] == 1.0  # SDXL resolves ALL → ALL_XL (OUT00 listed)
    assert pt.preset_weights(ctx, "ALL", "sd1")[14] == 0.0   # the 17-value ALL leaves OUT00 out


def test_inspect_tab_callback(ctx, tmp_path):
    write_block_lora(tmp_path / "lora" / "blocky.safetensors")
    html, summary, meta = lora_tab.show_lora(ctx, "blocky.safetensors")
    assert 'data-block="OUT03"' in html and "hash" in summary and "ss_network_dim" in meta
    assert lora_tab.show_lora(ctx, "../x.safetensors")[1].startswith("⚠")


def test_import_of_a_file_full_of_bad_lines_lists_only_the_first_few(ctx, tmp_path, upload):
    bad = upload("bad.txt", "".join(f"line{i} without colon\n" for i in range(40)) + "OK1:" + ",".join(["1"] * 12)
                 + "\n")
    msg = pt.import_file(ctx, bad)
    assert "Imported 1 presets (OK1)" in msg and "Skipped 40 line(s)" in msg and "line 1, 2, 3" in msg
    listed = msg[msg.index("(line "):]               # the line numbers (the path before them may hold "11")
    assert "10 …" in listed and "11" not in listed and "without colon" not in msg


# ---- issue 10: presets tab behaviour ------------------------------------------------------------------


def test_deleting_a_shipped_preset_is_refused_at_once(ctx):
    df, _, _ = pt.load_table(ctx, F17)
    table, msg = pt.delete_row(df.values.tolist(), F17, "face", ctx)
    assert msg.startswith("⚠") and "'face' is a shipped preset" in msg
    assert "face" in table["name"].tolist()          # the row stays
    ctx.presets.update({"face": ["0"] * 17})          # a user override of a shipped name may be removed
    df, _, _ = pt.load_table(ctx, F17)
    table, msg = pt.delete_row(df.values.tolist(), F17, "face", ctx)
    assert not msg.startswith("⚠") and "shipped values" in msg


def test_case_twin_row_is_refused_when_set(ctx):
    df, _, _ = pt.load_table(ctx, F17)
    _, msg = pt.set_row(df.values.tolist(), F17, "all", ",".join(["1"] * 17), ctx)
    assert msg.startswith("⚠") and "only by case" in msg and "'ALL'" in msg
    rows = df.values.tolist() + [["mine"] + ["1"] * 17]
    _, msg = pt.set_row(rows, F17, "MINE", ",".join(["1"] * 17), ctx)
    assert msg.startswith("⚠") and "'mine'" in msg


def test_two_tabs_saving_keep_each_others_changes(tmp_path):
    """Tab A and tab B load the table; A edits `face` and saves; B adds a row and saves from its stale
    table: A's edit survives (B's save is a diff against what B loaded, merged under a lock)."""
    a, b = make_ctx(tmp_path), make_ctx(tmp_path)      # two processes (or two tabs) on one file
    df_a, orig_a, _ = pt.load_table(a, F17)
    df_b, orig_b, _ = pt.load_table(b, F17)
    rows_a = df_a.values.tolist()
    next(r for r in rows_a if r[0] == "face")[9] = "0.9"
    assert not pt.save_table(a, rows_a, F17, orig_a)[2].startswith("⚠")
    rows_b = df_b.values.tolist() + [["from_b"] + ["1"] * 17]
    msg = pt.save_table(b, rows_b, F17, orig_b)[2]
    assert "1 changed, 0 removed" in msg
    lines = preset_lines(tmp_path / "user_presets.txt")
    assert "face:1,0,0,0,0,0,0,0,0.9,1,1,0.2,0,0,0,0,0" in lines and any(ln.startswith("from_b:") for ln in lines)


def test_reload_and_format_switch_do_not_drop_unsaved_rows_silently(ctx):
    df, orig, _ = pt.load_table(ctx, F17)
    rows = df.values.tolist() + [["draft"] + ["1"] * 17]
    assert pt.unsaved_count(rows, orig) == 1 and pt.unsaved_count(df.values.tolist(), orig) == 0
    table, orig2, msg, armed = pt.reload_store(ctx, F17, rows, orig, False)
    assert msg.startswith("⚠") and "1 unsaved row" in msg and armed is True
    assert set(table) == {"__type__"}              # an empty update: the table is left as it is
    table, _, msg, armed = pt.reload_store(ctx, F17, rows, orig, armed)   # pressed again: discard
    assert "Reloaded" in msg and "draft" not in table["name"].tolist() and armed is False
    # switching format with a draft: the dropdown goes back and the draft stays
    out = pt.change_format(ctx, F12, rows, orig)
    assert "unsaved" in out[2] and out[3]["value"] == F17 and set(out[0]) == {"__type__"}
    out = pt.change_format(ctx, F12, df.values.tolist(), orig)   # nothing unsaved: switch
    assert len(out[0].columns) == 13


def test_sdxl_chart_is_labelled_with_sdxl_blocks(ctx):
    norms = [1.0] * 26
    sd1 = lora_tab.render_bars(norms, arch="sd1")
    sdxl = lora_tab.render_bars(norms, arch="sdxl")
    assert ">IN11<" in sd1 and ">OUT11<" in sd1
    labels = re.findall(r'rotate\([^)]*\)" fill="#444">(\w+)<', sdxl)
    assert labels == ["BASE"] + [f"IN{i:02d}" for i in range(9)] + ["M00"] + [f"OUT{i:02d}" for i in range(9)]
    w = pt.preset_weights(ctx, "ALL", "sdxl")
    with_w = lora_tab.render_bars(norms, w, arch="sdxl")
    assert 'data-block="OUT09"' not in with_w and 'data-block="IN11"' not in with_w


def test_a_lora_linked_into_the_folder_is_listed_and_inspected(ctx, tmp_path):
    """A link the user put in the LoRA folder (to a file elsewhere) is the user's choice: listed, and
    picking it works (before: listed, then 'not found' because the check resolved the link first)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_block_lora(elsewhere / "real.safetensors")
    (tmp_path / "lora").mkdir(exist_ok=True)
    os.symlink(elsewhere / "real.safetensors", tmp_path / "lora" / "linked.safetensors")
    assert "linked.safetensors" in lora_tab.list_loras(ctx)
    html, summary, _ = lora_tab.show_lora(ctx, "linked.safetensors")
    assert not summary.startswith("⚠"), summary
    assert 'data-block="OUT03"' in html
    # but a request naming the target directly (outside the folder) is still refused
    assert lora_tab.show_lora(ctx, str(elsewhere / "real.safetensors"))[1].startswith("⚠")
    # a linked folder is listed too (the WebUI lists it), and a link loop does not hang the listing
    os.symlink(elsewhere, tmp_path / "lora" / "linked_dir")
    os.symlink(tmp_path / "lora", tmp_path / "lora" / "loop")
    names = lora_tab.list_loras(ctx)
    assert "linked_dir/real.safetensors" in names and len(names) < 10
    assert not lora_tab.show_lora(ctx, "linked_dir/real.safetensors")[1].startswith("⚠")


def test_import_keeps_the_tables_unsaved_rows(ctx, upload):
    """Import saves at once and shows the file's presets; rows added, edited or deleted in the table and
    not saved yet stay as they were (still unsaved), instead of vanishing with the table's reload."""
    df, orig, _ = pt.load_table(ctx, F17)
    rows = df.values.tolist()
    next(r for r in rows if r[0] == "face")[1] = "0.25"                 # edited
    rows = [r for r in rows if r[0] != "pose"] + [["draft"] + ["1"] * 17]  # deleted, added
    assert pt.unsaved_count(rows, orig) == 3
    msg = pt.import_file(ctx, upload("lbwpresets.txt", "IMP:" + ",".join(["0.5"] * 17) + "\n"))
    assert msg.startswith("Imported 1 presets")
    table, orig2 = pt.after_import(ctx, F17, rows, orig)
    got = {r[0]: r[1:] for r in table.values.tolist()}
    assert got["IMP"] == ["0.5"] * 17 and got["draft"] == ["1"] * 17 and got["face"][0] == "0.25"
    assert "pose" not in got and pt.unsaved_count(table.values.tolist(), orig2) == 3
    assert "IMP" in orig2 and "draft" not in orig2


# ---- elemental presets editor ------------------------------------------------------------------------

ELEM_FILE = "user_elempresets.txt"   # beside user_presets.txt (presets.elemental_user_path)


def test_elemental_editor_saves_loads_and_prompts_use_it_at_once(ctx, tmp_path):
    from lib_lora import syntax, tag_weights
    assert "ATTNDEEPON" in pt.element_names(ctx)
    name, text, status = pt.element_load(ctx, "ATTNDEEPON")
    assert (name, text) == ("ATTNDEEPON", "IN05-OUT05:attn:1") and "shipped" in status
    upd, msg = pt.element_save(ctx, "deep attn", "IN05-OUT05:attn:0.5\nNOT M00:ff:0")
    assert not msg.startswith("⚠") and "lbwe=deep attn" in msg and "deep attn" in upd["choices"]
    body = (tmp_path / ELEM_FILE).read_text()
    assert "deep attn:IN05-OUT05:attn:0.5,NOT M00:ff:0\n" in body
    res = tag_weights.resolve_elements(syntax.parse_params(["n", "1"], {"lbwe": "deep attn"}), ctx.presets)
    assert res.problem is None and [e.ratio for e in res.entries] == [0.5, 0.0]
    assert pt.element_load(ctx, "deep attn")[1] == "IN05-OUT05:attn:0.5\nNOT M00:ff:0"


def test_elemental_editor_bad_entry_is_one_line_naming_it_and_nothing_is_written(ctx, tmp_path):
    _, msg = pt.element_save(ctx, "bad", "IN05-OUT05:attn:0.5\nIN05-OUT99:attn:1")
    assert msg.startswith("⚠") and "\n" not in msg
    assert "entry 2" in msg and "OUT99" in msg and "fix that line" in msg
    _, msg = pt.element_save(ctx, "bad", "IN05:attn")
    assert "entry 1" in msg and "expected blocks:elements:ratio" in msg
    _, msg = pt.element_save(ctx, "a:b", "IN05:attn:1")
    assert msg.startswith("⚠") and "name" in msg
    _, msg = pt.element_save(ctx, "attndeepon", "IN05:attn:1")
    assert "only by case" in msg
    assert not (tmp_path / ELEM_FILE).exists() and ctx.presets.elemental.get("bad") is None


def test_elemental_editor_delete_rules_and_listen_gate(ctx, tmp_path):
    _, msg = pt.element_delete(ctx, "ATTNDEEPON")
    assert msg.startswith("⚠") and "shipped" in msg
    pt.element_save(ctx, "ATTNDEEPON", "IN05-OUT05:attn:0.25")      # a user copy overrides the shipped one
    assert ctx.presets.elemental.get("ATTNDEEPON") == ["IN05-OUT05:attn:0.25"]
    _, msg = pt.element_delete(ctx, "ATTNDEEPON")
    assert "shipped one of that name is used again" in msg
    assert ctx.presets.elemental.get("ATTNDEEPON") == ["IN05-OUT05:attn:1"]
    locked = make_ctx(tmp_path, listen=True, allow_writes=False)
    assert "--allow-writes" in pt.element_save(locked, "x", "IN05:attn:1")[1]
    assert locked.presets.elemental.get("x") is None


def test_two_tabs_saving_elemental_presets_keep_each_others(tmp_path):
    a, b = make_ctx(tmp_path), make_ctx(tmp_path)
    assert not pt.element_save(a, "from_a", "IN05:attn:1")[1].startswith("⚠")
    assert not pt.element_save(b, "from_b", "OUT03:ff:0")[1].startswith("⚠")   # b never re-read the file
    body = (tmp_path / ELEM_FILE).read_text()
    assert "from_a:IN05:attn:1" in body and "from_b:OUT03:ff:0" in body
    assert not [f for f in os.listdir(tmp_path) if "tmp" in f]   # written by rename, no leftovers
