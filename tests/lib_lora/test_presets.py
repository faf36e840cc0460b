"""presets.py: shipped presets, LBW file parsing with warnings, lookup, user file editing (docs/spec/blocks.md §7)."""

from __future__ import annotations

import hashlib
import os

import pytest

from lib_lora.errors import LoraStudioError
from lib_lora.presets import DEFAULT_BUILTIN, PresetError, PresetStore, parse_preset_text

# docs/spec/blocks.md §7.1: the published values
SPEC_17 = {
    "NONE": "0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0",
    "ALL": "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1",
    "INS": "1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0",
    "IND": "1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0",
    "INALL": "1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0",
    "MIDD": "1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0",
    "OUTD": "1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0",
    "OUTS": "1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1",
    "OUTALL": "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1",
    "ALL0.5": ",".join(["0.5"] * 17),
    "face": "1,0,0,0,0,0,0,0,0.8,1,1,0.2,0,0,0,0,0",
    "Nface": "1,1,1,1,1,1,0.2,1,0.2,0,0,0.8,1,1,1,1,1",
    "ware": "1,1,1,1,1,0,0.2,0,0.8,1,1,0.2,0,0,0,0,0",
    "pose": "1,0,0,0,0,0,0.2,1,1,1,0,0,0,0,0,0,0",
    "paint": "1,0,0,0,0,0,0,0,0,0,0,0.8,1,1,1,1,1",
    "char": "1,1,1,1,1,0,0,0,1,1,1,1,1,1,1,0,0",
    "back": "1,1,1,1,1,1,0.2,1,0.2,0,0,0.8,1,1,1,0,0",
    "soft": "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1",
}
# SDXL block ← SD1 17-format position of the same width (documented in presets.txt)
XL_FROM_17 = [0, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]


@pytest.fixture()
def store():
    return PresetStore()


def _vals(tokens):
    return [float(t) for t in tokens]


def test_shipped_file_loads_clean(store):
    assert store.warnings == []
    assert len(store.names()) == 36
    for name, spec in SPEC_17.items():
        assert _vals(store.get(name)) == [float(v) for v in spec.split(",")], name


def test_shipped_xl_variants_are_derived(store):
    for name, spec in SPEC_17.items():
        sd1 = spec.split(",")
        xl = store.get(name + "_XL")
        assert len(xl) == 12
        assert _vals(xl) == [float(sd1[p]) for p in XL_FROM_17], name
    assert store.get("ALL_XL") == ["1"] * 12 and store.get("NONE_XL") == ["0"] * 12
    assert store.get("soft") == store.get("OUTALL")  # docs/spec/blocks.md §7.1: soft (REDUCEFIT) = OUTALL


def test_arch_aware_lookup(store):
    assert len(store.get("ALL")) == 17
    assert len(store.get("ALL", arch="sd1")) == 17
    assert len(store.get("ALL", arch="sd2")) == 17
    hit = store.lookup("ALL", arch="sdxl")
    assert hit.name == "ALL_XL" and hit.variant and hit.tokens == ["1"] * 12
    assert store.lookup("face", arch="SDXL").name == "face_XL"
    # explicit _XL is honoured on any arch
    assert len(store.get("ALL_XL", arch="sd1")) == 12
    # case-insensitive + variant, with the case note kept
    hit = store.lookup("outall", arch="sdxl")
    assert hit.name == "OUTALL_XL" and "case differs" in hit.note


def test_user_override_beats_shipped_variant(tmp_path):
    user = tmp_path / "user.txt"
    user.write_text("ALL:" + ",".join(["0.9"] * 17) + "\nmine:" + ",".join(["1"] * 17) + "\n"
                    "mine_XL:" + ",".join(["0.7"] * 20) + "\nxlonly:" + ",".join(["2"] * 12) + "\n")
    s = PresetStore(user_path=user)
    assert s.warnings == []
    assert s.get("ALL", arch="sdxl") == ["0.9"] * 17  # user redefined ALL but not ALL_XL
    assert s.get("mine", arch="sdxl") == ["0.7"] * 20  # user's own 20-value variant
    assert s.get("mine", arch="sd1") == ["1"] * 17
    assert s.get("xlonly", arch="sd1") == ["2"] * 12
    assert s.origin("ALL") == "user" and s.origin("NONE") == "builtin" and s.origin("zzz") is None


def test_case_insensitive_lookup(tmp_path):
    s = PresetStore()
    hit = s.lookup("FACE")
    assert hit.name == "face" and hit.note == "preset 'FACE' matched 'face' (case differs)"
    assert s.lookup("face").note is None
    user = tmp_path / "u.txt"
    user.write_text("FACE:1,0,0,0,0,0,0,0,1,1,1,0,0,0,0,0,0\n")
    s = PresetStore(user_path=user)
    assert s.get("FACE")[8] == "1" and s.get("face")[8] == "0.8"  # exact wins
    assert s.lookup("Face") is None  # ambiguous
    assert set(s.close_matches("Face")) >= {"face", "FACE"}


def test_close_matches(store):
    assert store.close_matches("fcae")[:1] == ["face"]
    assert "OUTALL" in store.close_matches("OUTAL")
    assert store.close_matches("qqqqqqq") == []
    assert len(store.close_matches("ALL", n=3)) <= 3


def test_file_parsing_warnings(tmp_path):
    f = tmp_path / "lbw.txt"
    ones = ",".join(["1"] * 17)
    f.write_text("\ufeff# comment\n"
                 "\n"
                 "   # indented comment\n"
                 f"  good : {ones.replace(',', ' , ')}  \n"       # 4: spaces trimmed
                 "nocolon 1,1,1\n"                                 # 5
                 f"1.5:{ones}\n"                                   # 6 numeric name
                 "short:1,1,1\n"                                   # 7 wrong count
                 "bad:1,1,1,1,1,1,1,1,1,1,1,q\n"                   # 8 bad token
                 f"inline:{ones} # note\n"                         # 9 '#' inside
                 f"flux:{','.join(['1'] * 61)}\n"                  # 10 Flux
                 "letters:R,U,X,X+0.2,X-0.3,1,1,1,1,1,1,1\n"       # 11 ok
                 f"good:{','.join(['0'] * 26)}\n"                  # 12 duplicate
                 f":{ones}\n"                                      # 13 empty name
                 "trail:1,1,1,1,1,1,1,1,1,1,1,1,\n",               # 14 trailing comma
                 encoding="utf-8")
    s = PresetStore(builtin_path=f)
    w = s.warnings
    by_line = {int(x.split(f"{f}:")[1].split(":")[0]): x for x in w}
    assert set(by_line) == {5, 6, 7, 8, 9, 10, 12, 13, 14}
    assert "no ':'" in by_line[5]
    assert "is a number" in by_line[6]
    assert "3 values; accepted counts are 12, 17, 20, 26" in by_line[7]
    assert "value 12: 'q' is not a number" in by_line[8]
    assert "'#' inside a line" in by_line[9]
    assert "Flux" in by_line[10]
    assert "defined again (first at line 4); the later one is used" in by_line[12]
    assert "empty name" in by_line[13]
    assert "value 13: empty value" in by_line[14]
    assert all(x.startswith("preset file ") for x in w)
    assert s.names() == ["letters", "good"]
    assert s.get("good") == ["0"] * 26
    assert s.get("letters")[:5] == ["R", "U", "X", "X+0.2", "X-0.3"]


def test_parse_preset_text_counts():
    text = "\n".join(f"p{n}:" + ",".join(["1"] * n) for n in (11, 12, 13, 17, 20, 25, 26, 27))
    presets, warnings = parse_preset_text(text, "user", "t")
    assert [len(p.tokens) for p in presets] == [12, 17, 20, 26]
    assert len(warnings) == 4


def test_missing_and_unreadable_files(tmp_path):
    s = PresetStore(builtin_path=tmp_path / "nope.txt", user_path=tmp_path / "nope2.txt")
    assert s.names() == [] and s.warnings == []
    bad = tmp_path / "bin.txt"
    bad.write_bytes(b"\xff\xfe\x00bad")
    s = PresetStore(builtin_path=bad)
    assert s.names() == [] and "not UTF-8 text" in s.warnings[0] and "not available" in s.warnings[0]


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_user_edit_save_reload(tmp_path):
    before = _sha(DEFAULT_BUILTIN)
    user = tmp_path / "sub" / "user_presets.txt"
    s = PresetStore(user_path=user)
    s.set("mine", "1, 0.5 ,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1")
    s.set("face", [1.0, 0, 0, 0, 0, 0, 0, 0, 0.5, 1, 1, 0.25, 0, 0, 0, 0, 0])  # override shipped
    s.set("rnd", ["R"] + ["X-0.5"] * 11)
    assert s.get("mine")[:2] == ["1", "0.5"]
    assert s.get("face")[8] == "0.5" and s.origin("face") == "user"
    assert not user.exists()  # nothing written before save()
    assert s.save() == user
    assert _sha(DEFAULT_BUILTIN) == before  # shipped file never rewritten
    # no temp left (the hidden .lock file of fileio.locked stays by design)
    assert [p.name for p in user.parent.iterdir() if not p.name.endswith(".lock")] == ["user_presets.txt"]
    text = user.read_text()
    assert "face:1,0,0,0,0,0,0,0,0.5,1,1,0.25,0,0,0,0,0\n" in text and text.startswith("#")
    s2 = PresetStore(user_path=user)
    assert s2.warnings == []
    assert s2.get("face") == s.get("face") and s2.get("rnd") == ["R"] + ["X-0.5"] * 11
    assert s2.user_names() == ["mine", "face", "rnd"]
    # delete the override → shipped face back; delete a shipped preset → clear error
    s2.delete("face")
    assert s2.get("face")[8] == "0.8"
    with pytest.raises(PresetError, match="shipped with LoRA Studio and cannot be deleted"):
        s2.delete("ALL")
    with pytest.raises(PresetError, match="No preset named"):
        s2.delete("zzz")
    s2.save()
    # edits made outside the app take effect on reload()
    with open(user, "a", encoding="utf-8") as f:
        f.write("later:" + ",".join(["0"] * 12) + "\n")
    s2.reload()
    assert s2.get("later") == ["0"] * 12 and s2.origin("face") == "builtin"
    # reload drops unsaved edits
    s2.set("temp", ["1"] * 12)
    s2.reload()
    assert s2.get("temp") is None


@pytest.mark.parametrize("name, values, match", [
    ("", ["1"] * 17, "empty name"),
    ("0.5", ["1"] * 17, "is a number"),
    ("a,b", ["1"] * 17, "contains ','"),
    ("a=b", ["1"] * 17, "contains '='"),
    ("a#b", ["1"] * 17, "contains '#'"),
    ("ok", ["1"] * 16, "16 values"),
    ("ok", ["1"] * 61, "Flux"),
    ("ok", ["1"] * 16 + ["abc"], "value 17"),
    ("ok", ["1"] * 16 + [float("nan")], "finite"),
])
def test_set_rejects_bad_input(name, values, match):
    s = PresetStore()
    with pytest.raises(PresetError, match=match) as ei:
        s.set(name, values)
    assert isinstance(ei.value, LoraStudioError)
    assert "\n" not in str(ei.value)


def test_save_without_user_file():
    with pytest.raises(PresetError, match="No user preset file"):
        PresetStore().save()


def test_export_import_round_trip(tmp_path):
    s = PresetStore()
    s.set("mine", ["R", "U", "X+0.25"] + ["1"] * 9)
    text = s.export_text()
    assert text.count("\n") == 1 + len(s.names())
    fresh = PresetStore(builtin_path=None)
    names, warnings = fresh.import_text(text)
    assert warnings == [] and names == s.names()
    for n in s.names():
        assert fresh.get(n) == s.get(n)
    # user-only export; importing again replaces with a warning
    only = s.export_text(user_only=True)
    assert only.splitlines()[1:] == ["mine:R,U,X+0.25,1,1,1,1,1,1,1,1,1"]
    names, warnings = fresh.import_text(only, source="clip")
    assert names == ["mine"] and "replaced by the imported one" in warnings[0]
    # imported presets are user presets: saved with the user file
    user = tmp_path / "u.txt"
    fresh.user_path = user
    fresh.save()
    assert PresetStore(builtin_path=None, user_path=user).export_text() == fresh.export_text()
    # selected names
    assert s.export_text(names=["face", "nope"]).splitlines()[1:] == ["face:" + SPEC_17["face"]]


def test_import_reports_bad_lines():
    s = PresetStore()
    names, warnings = s.import_text("ok:" + ",".join(["1"] * 12) + "\nbroken\n", source="paste")
    assert names == ["ok"] and len(warnings) == 1 and "paste:2" in warnings[0]
    assert warnings[0] in s.warnings


def test_user_file_is_lbw_readable(tmp_path):
    """LBW reads lines with 11/16/19/25 commas and no '#': every data line we write qualifies."""
    user = tmp_path / "u.txt"
    s = PresetStore(user_path=user)
    for n in (12, 17, 20, 26):
        s.set(f"p{n}", ["0.5"] * n)
    s.save()
    data = [ln for ln in user.read_text().splitlines() if "#" not in ln]
    assert len(data) == 4
    assert sorted(ln.count(",") for ln in data) == [11, 16, 19, 25]
    assert os.access(user, os.R_OK)


# ---- checkpoint-merge presets (20/25/26 values, shipped editable file) -------------------------------------

def test_shipped_merge_presets_load_clean_and_resolve_for_both_architectures():
    from lib_lora.merge.checkpoint import resolve_weights
    from lib_lora.presets import MergePresetStore, default_merge_store

    store = default_merge_store()
    assert isinstance(store, MergePresetStore) and store.warnings == []
    names = store.names()
    for name in ("ALL_A", "ALL_B", "FLAT_50", "GRAD_V", "GRAD_A", "SMOOTHSTEP", "REVERSE_SMOOTHSTEP", "COSINE",
                 "WRAP08", "MID12_50"):
        assert name in names and f"{name}_XL" in names
        for arch, full in (("sd1", 26), ("sdxl", 20)):
            assert len(resolve_weights(arch, 0.3, name)) == 26
    assert resolve_weights("sd1", 0.3, "ALL_B") == [1.0] * 26
    v = resolve_weights("sd1", 0.3, "GRAD_V", base_alpha=0)
    assert v[0] == 0 and v[1] == 1 and v[13] == 0 and v[25] == 1          # IN00 1, M00 0, OUT11 1
    assert resolve_weights("sd1", 0.3, "GRAD_V")[0] == 0.3                 # 25 values: BASE from alpha
    xl = resolve_weights("sdxl", 0.3, "GRAD_V")
    assert xl[0] == 0.3 and xl[1] == 1 and xl[13] == 0 and xl[22] == 1     # _XL: OUT08 (slot 22) is the end
    sm = resolve_weights("sd1", 0, "SMOOTHSTEP")[1:]
    assert sm == sorted(sm) and sm[0] == 0 and sm[-1] == 1 and sm[12] == 0.5


def test_merge_store_counts_user_file_and_lora_store_unchanged(tmp_path):
    from lib_lora.presets import MergePresetStore, PresetStore, default_merge_store, parse_merge_preset_text

    text = ("M25:" + ",".join(["0.5"] * 25) + "\nM20:" + ",".join(["1"] * 20) + "\nM26:" + ",".join(["0"] * 26) +
            "\nM17:" + ",".join(["1"] * 17) + "\n")
    items, warnings = parse_merge_preset_text(text, "user", "f")
    assert [p.name for p in items] == ["M25", "M20", "M26"] and "17 values" in warnings[0]
    lora_items, lora_warnings = PresetStore._parse(text, "user", "f")
    assert [p.name for p in lora_items] == ["M20", "M26", "M17"] and "25 values" in lora_warnings[0]
    user = tmp_path / "lora" / "lora_studio_merge_presets.txt"
    user.parent.mkdir()
    store = default_merge_store(lora_dir=tmp_path / "lora")
    assert store.user_path == user
    store.set("MINE", [0.1] * 25)
    store.set("GRAD_V", [0.2] * 26)              # overrides the shipped one
    store.save()
    again = MergePresetStore(store.builtin_path, user)
    assert again.get("MINE") == ["0.1"] * 25 and again.get("GRAD_V") == ["0.2"] * 26
    assert again.get("GRAD_V", "sdxl") == ["0.2"] * 26   # the user's NAME wins over the shipped _XL variant
    with pytest.raises(LoraStudioError, match="17 values"):
        store.set("BAD", [1] * 17)
