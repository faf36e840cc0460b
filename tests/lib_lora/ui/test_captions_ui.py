"""Captions section handlers (no browser): browse pages, pick and save, preview → apply → undo, guards."""

import pytest
from PIL import Image

from lib_lora.ui import captions_tab as tab
from lib_lora.ui.context import UiContext


@pytest.fixture
def env(tmp_path):
    root = tmp_path / "images"
    ds = root / "set"
    ds.mkdir(parents=True)
    for i in range(30):
        Image.new("RGB", (40, 20), (i * 8, 0, 0)).save(ds / f"{i:02d}.png")
        (ds / f"{i:02d}.txt").write_bytes(b"1girl, long_hair" + (b", hat" if i % 2 else b"") + b"\n")
    (ds / "broken.png").write_bytes(b"not an image")
    ctx = UiContext(lora_dirs=[], checkpoint_dirs=[], tagger_models_dir=tmp_path / "TM", image_dirs=[root])
    tab._UNDO.clear()
    tab._PLANS.clear()
    return ctx, ds


def test_browse_pages_and_search(env):
    ctx, ds = env
    status, gallery, names, page, rows = tab.browse(ctx, str(ds), False, ".txt", "", 1)
    assert status.startswith("31 images, 30 with a caption file") and "page 1 of 2" in status
    assert len(gallery) == tab.PAGE_SIZE and gallery[0][1] == "00.png: 1girl, long_hair"
    assert gallery[0][0].size[0] <= tab.THUMB
    assert ["1girl", 30] in rows and ["hat", 15] in rows
    _, gallery, names, page, _ = tab.browse(ctx, str(ds), False, ".txt", "", 99)     # clamped to the last page
    assert page == 2 and names[-1] == "broken.png" and gallery[-1][1] == "broken.png: (no caption)"
    status, gallery, names, _, _ = tab.browse(ctx, str(ds), False, ".txt", '"hat"', 1)
    assert "15 match" in status and len(names) == 15 and all(int(n[:2]) % 2 for n in names)


def test_pick_edit_save(env):
    ctx, ds = env
    out = tab.browse_ui(ctx, str(ds), False, ".txt", "", 1)
    assert out[5] == "1girl, long_hair" and out[6]
    name, text, shown = tab.select_index(ctx, str(ds), False, ".txt", "", 1, 3)
    assert name == "03.png" and text == "1girl, long_hair, hat"
    assert tab.save(ctx, str(ds), False, ".txt", name, "1girl, red hat", shown) == "Saved 03.txt."
    assert (ds / "03.txt").read_bytes() == b"1girl, red hat\n"
    # A stale editor (file changed since shown) does not overwrite.
    msg = tab.save(ctx, str(ds), False, ".txt", name, "mine", shown)
    assert msg.startswith("**Error:** 03.txt changed since it was shown")
    assert (ds / "03.txt").read_bytes() == b"1girl, red hat\n"
    # The refresh after saving keeps the picked image.
    assert tab.browse_ui(ctx, str(ds), False, ".txt", "", 1, "03.png")[5] == "1girl, red hat"


def test_preview_apply_undo(env):
    ctx, ds = env
    before = {p.name: p.read_bytes() for p in ds.glob("*.txt")}
    args = (ctx, str(ds), False, ".txt", "replace", "long hair", "short hair")
    assert tab.apply_ui(*args).startswith("**Error:** the change differs from the last preview")
    md = tab.preview(*args)
    assert "30 caption files would change" in md and "`00.txt: 1girl, long_hair → 1girl, short hair`" in md
    # Another preview in between: the apply must match the LAST preview.
    tab.preview(ctx, str(ds), False, ".txt", "remove", "hat", "")
    assert tab.apply_ui(*args).startswith("**Error:** the change differs")
    tab.preview(*args)
    assert tab.apply_ui(*args).startswith("replace 'long hair' with 'short hair': 30 caption files changed")
    assert (ds / "00.txt").read_bytes() == b"1girl, short hair\n"
    assert tab.apply_ui(*args).startswith("**Error:**")            # a preview is good for one apply
    assert tab.undo_ui(ctx, str(ds), False, ".txt").startswith("undo of replace 'long hair'")
    assert {p.name: p.read_bytes() for p in ds.glob("*.txt")} == before
    assert tab.undo_ui(ctx, str(ds), False, ".txt") == "Nothing to undo for this folder."


def test_guards(env, tmp_path):
    ctx, ds = env
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    assert tab.browse_ui(ctx, str(outside), False, ".txt", "", 1)[0].startswith("**Error:** Image folder")
    assert tab.preview(ctx, str(ds / ".." / ".." / "elsewhere"), False, ".txt", "remove", "x", "").startswith(
        "**Error:**")
    assert "not a valid regular expression" in tab.preview(ctx, str(ds), False, ".txt", "exclude regex", "(", "")
    assert "cannot be used" in tab.browse_ui(ctx, str(ds), False, ".py", "", 1)[0]
    tab.preview(ctx, str(ds), False, ".txt", "remove", "hat", "")
    ctx.writes_allowed = False
    for msg in (tab.apply_ui(ctx, str(ds), False, ".txt", "remove", "hat", ""),
                tab.undo_ui(ctx, str(ds), False, ".txt"),
                tab.save(ctx, str(ds), False, ".txt", "00.png", "x", "")):
        assert "Writing files is disabled" in msg
    assert (ds / "01.txt").read_bytes() == b"1girl, long_hair, hat\n"
