"""Dataset: buckets as sd-scripts forms them, step counts, the validation report, caption processing,
"prepare a folder"."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from PIL import Image

from lib_lora.errors import LoraStudioError
from lib_lora.train import config as C
from lib_lora.train import dataset as D

GOLDEN = json.loads((Path(__file__).parent / "bucket_golden.json").read_text())


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=lambda c: f"{c['res']}-{c['steps']}-nu{c['no_upscale']}")
def test_buckets_equal_sd_scripts(case):
    """Golden values recorded by running sd-scripts' BucketManager (main, 2026-02) on 78 image sizes."""
    spec = C.DatasetSpec(resolution=tuple(case["res"]), enable_bucket=True, min_bucket_reso=case["min"],
                         max_bucket_reso=case["max"], bucket_reso_steps=case["steps"],
                         bucket_no_upscale=case["no_upscale"])
    bm = D.Buckets(spec)
    if not case["no_upscale"]:
        assert [list(r) for r in bm.predefined] == case["predefined"]
    for (w, h), (reso, resized) in zip(GOLDEN["sizes"], case["out"]):
        got = bm.select(w, h)
        assert [list(got[0]), list(got[1])] == [reso, resized], (w, h)


def test_bucket_range_is_rounded_and_checked():
    assert D.adjust_bucket_range((512, 512), 300, 1000, 64) == (256, 1024)
    with pytest.raises(LoraStudioError, match="min_bucket_reso"):
        D.adjust_bucket_range((512, 512), 640, 1024, 64)


def img(path: Path, size=(96, 64), color=(200, 10, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def cfg_for(root, **kw):
    base = {"pretrained_model_name_or_path": "m", "train_data_dir": str(root), "output_dir": "o",
            "caption_extension": ".txt", "resolution": "64"}
    base.update(kw)
    return C.config_from_dict(base)


def test_step_count_as_sd_scripts(tmp_path):
    # 20 images × 10 repeats, batch 2, 5 epochs, one bucket → 100 batches per epoch, 500 steps
    for i in range(20):
        img(tmp_path / "10_sks dog" / f"{i:02d}.png", (64, 64))
    rep = D.validate(cfg_for(tmp_path, train_batch_size=2, max_train_epochs=5))
    assert rep.ok, rep.problems
    assert rep.steps == {"train_images": 200, "reg_images": 0, "batches_per_epoch": 100, "steps_per_epoch": 100,
                         "epochs": 5, "max_train_steps": 500}
    rep = D.validate(cfg_for(tmp_path, train_batch_size=3, gradient_accumulation_steps=4, max_train_steps=1000))
    # ⌈200/3⌉ = 67 batches, ⌈67/4⌉ = 17 steps per epoch, ⌈1000/17⌉ = 59 epochs
    assert (rep.steps["batches_per_epoch"], rep.steps["steps_per_epoch"], rep.steps["epochs"],
            rep.steps["max_train_steps"]) == (67, 17, 59, 1000)
    # accelerate with 2 processes: E·⌈B / 2 / GA⌉
    assert D.validate(cfg_for(tmp_path, max_train_epochs=3), num_processes=2).steps["max_train_steps"] == 300


def test_reg_images_fill_round_robin_to_the_train_count(tmp_path):
    for i in range(5):
        img(tmp_path / "train" / "2_char" / f"{i}.png", (64, 64))
    for i in range(3):
        img(tmp_path / "reg" / "1_person" / f"r{i}.png", (64, 64))
    rep = D.validate(cfg_for(tmp_path / "train", reg_data_dir=str(tmp_path / "reg"), max_train_epochs=1))
    assert rep.ok, rep.problems
    ds = rep.datasets[0]
    assert ds.num_train_images == 10 and ds.num_reg_images == 3
    reg = [i for i in ds.items if i.subset.is_reg]
    assert sorted(i.repeats for i in reg) == [3, 3, 4]           # 10 reg samples: round robin
    assert rep.steps["batches_per_epoch"] == 20


def test_report_lists_every_problem(tmp_path):
    root = tmp_path / "data"
    c = root / "5_chara"
    img(c / "good.png")
    (c / "good.txt").write_text("1girl, red hair, smile\n")
    img(c / "nocap.png")                                            # concept name used (a note)
    img(c / "empty.png")
    (c / "empty.txt").write_bytes(b"")                              # 0 bytes: sd-scripts stops
    img(c / "blank.png")
    (c / "blank.txt").write_text("\n\nsecond line")                # empty first line
    img(c / "latin.png")
    (c / "latin.txt").write_bytes("café, 1girl".encode("latin-1"))  # not UTF-8
    (c / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")  # unreadable
    img(c / "tiny.png", (32, 32))
    img(c / "same.png")
    img(c / "same.jpg")                                             # same stem
    (root / "notes").mkdir()                                        # not <repeats>_<concept>: skipped
    (root / "3_empty").mkdir()                                      # no images
    rep = D.validate(cfg_for(root, enable_bucket=True, min_bucket_reso=64, max_bucket_reso=128,
                             bucket_reso_steps=64, max_train_epochs=1))
    text = "\n".join(rep.problems)
    assert not rep.ok
    for what in ("'" + str(c / "empty.txt") + "' is empty", "empty first line", "is not UTF-8", "broken.png",
                 "tiny.png' is 32x32", "same.jpg, same.png", "3_empty' holds no images"):
        assert what in text, what
    assert any("notes" in w for w in rep.warnings)
    assert any("train as \"chara\"" in n for n in rep.notes)
    assert rep.concepts[0]["missing_captions"] == 6   # nocap, latin, broken, tiny, same.png, same.jpg
    with pytest.raises(LoraStudioError) as e:
        rep.raise_if_blocked()
    assert "problems" in str(e.value) and "broken.png" in str(e.value)
    out = rep.format()
    assert "5_chara" in out and "x 5 repeats" in out and "Buckets" in out and "red hair (1)" in out
    freq = rep.tag_frequency()["5_chara"]
    assert freq["1girl"] == 1 and freq["chara"] == 6


def test_caption_processing_is_deterministic_and_keeps_tokens():
    sub = C.SubsetSpec(image_dir="x", shuffle_caption=True, keep_tokens=2, caption_tag_dropout_rate=0.3)
    cap = "sks, 1girl, a, b, c, d, e, f, g"
    out1 = [D.process_caption(cap, sub, random.Random(5), epoch=1) for _ in range(3)]
    out2 = [D.process_caption(cap, sub, random.Random(5), epoch=1) for _ in range(3)]
    assert out1 == out2
    rng = random.Random(1)
    seen = [D.process_caption(cap, sub, rng, epoch=1) for _ in range(30)]
    assert all(s.startswith("sks, 1girl") for s in seen) and len(set(seen)) > 5
    assert any(len(s.split(", ")) < 9 for s in seen)          # some tags dropped
    sep = C.SubsetSpec(image_dir="x", shuffle_caption=True, keep_tokens_separator="|||")
    assert D.process_caption("a, b ||| c, d", sep, random.Random(0), 1).startswith("a, b, ")
    every = C.SubsetSpec(image_dir="x", caption_dropout_every_n_epochs=2)
    assert D.process_caption("a, b", every, random.Random(0), epoch=2) == ""
    assert D.process_caption("a, b", every, random.Random(0), epoch=3) == "a, b"
    warm = C.SubsetSpec(image_dir="x", token_warmup_step=10, token_warmup_min=1)
    assert D.process_caption("a, b, c, d, e", warm, random.Random(0), 1, step=0) == "a"
    assert D.process_caption("a, b, c, d, e", warm, random.Random(0), 1, step=10) == "a, b, c, d, e"


def test_prepare_folder_copies_with_repeats_for_target_steps(tmp_path):
    src = tmp_path / "tagged"
    for i in range(8):
        img(src / f"{i}.png")
        (src / f"{i}.txt").write_text("x")
    dest = D.prepare_folder(str(src), str(tmp_path / "train"), "my char", target_steps=400, epochs=5)
    assert Path(dest).name == "10_my char" and len(list(Path(dest).iterdir())) == 16
    with pytest.raises(LoraStudioError, match="already holds"):
        D.prepare_folder(str(src), str(tmp_path / "train"), "my char", target_steps=400, epochs=5, mode="link")
    dest2 = D.prepare_folder(str(src), str(tmp_path / "t2"), "c", target_steps=16, mode="link")
    assert Path(dest2).name == "2_c" and (Path(dest2) / "0.png").stat().st_nlink == 2
