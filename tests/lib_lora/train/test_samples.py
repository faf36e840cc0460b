"""Sample images during training: sd-scripts' prompt file, its timing rules and names; a run with samples
trains exactly the weights of a run without them."""

from __future__ import annotations

import os
import re

import pytest
import torch
from PIL import Image

from lib_lora import fileio
from lib_lora.errors import LoraStudioError
from lib_lora.options import OptionsError
from lib_lora.train import samples as SP
from lib_lora.train.trainer import Trainer
from tests.lib_lora.train.helpers import config, make_images, tiny_model, trainable_model

pytest.importorskip("lycoris")


def test_prompt_file_txt_options_comments(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("# a comment\n\nmasterpiece, toy --n lowres, bad --w 64 --h 128 --s 3 --l 5.5 --d 42 --ss euler\n"
                 "toy only\n")
    a, b = SP.read_prompts(str(f))
    assert (a.prompt, a.negative, a.width, a.height, a.steps, a.scale, a.seed, a.sampler) == \
        ("masterpiece, toy", "lowres, bad", 64, 128, 3, 5.5, 42, "euler")
    assert (b.prompt, b.width, b.height, b.steps, b.scale, b.seed, b.sampler) == ("toy only", 512, 512, 30, 7.5,
                                                                                 None, None)


def test_prompt_file_toml_and_json(tmp_path):
    t = tmp_path / "p.toml"
    t.write_text('[prompt]\nnegative_prompt = "bad"\nwidth = 64\nsample_steps = 4\n\n[[prompt.subset]]\n'
                 'prompt = "toy"\nseed = 3\n\n[[prompt.subset]]\nprompt = "two"\nwidth = 128\n')
    j = tmp_path / "p.json"
    j.write_text('[{"prompt": "toy", "height": 128, "scale": 4, "sample_sampler": "k_euler"}]')
    p, p2 = SP.read_prompts(str(t))
    assert (p.prompt, p.negative, p.width, p.steps, p.seed) == ("toy", "bad", 64, 4, 3)
    assert (p2.prompt, p2.negative, p2.width, p2.steps, p2.seed) == ("two", "bad", 128, 4, None)
    (q,) = SP.read_prompts(str(j))
    assert (q.height, q.scale, q.sampler) == (128, 4.0, "euler")


@pytest.mark.parametrize("text, words", [("toy --w 60", "multiple of 8"), ("toy --s 0", "1 to 1000"),
                                         ("toy --w big", "not a number"), ("toy --ss euler_a", "ddim or euler"),
                                         ("# only a comment\n", "no prompt")])
def test_bad_prompt_file_is_one_clear_line(tmp_path, text, words):
    f = tmp_path / "p.txt"
    f.write_text(text)
    with pytest.raises(LoraStudioError, match=words):
        SP.read_prompts(str(f))


def test_unsupported_sampler_refused_in_config(tmp_path):
    data = make_images(tmp_path / "data")
    with pytest.raises(OptionsError, match="sample_sampler 'euler_a'.*ddim or euler"):
        config(tmp_path, data, sample_prompts=str(tmp_path / "p.txt"), sample_sampler="euler_a")


def test_due_follows_sd_scripts():
    class C:
        sample_prompts, sample_at_first, sample_every_n_epochs, sample_every_n_steps = "p", False, None, 2
    assert SP.due(C, None, 4) and not SP.due(C, None, 3) and not SP.due(C, 1, 4) and not SP.due(C, None, 0)
    C.sample_every_n_epochs = 2          # epochs replace steps
    assert not SP.due(C, None, 4) and SP.due(C, 2, 5) and not SP.due(C, 1, 5)
    C.sample_at_first = True
    assert SP.due(C, None, 0)


def _weights(path):
    return fileio.read_tensors(path)[0]


def test_samples_per_epoch_named_as_sd_scripts_and_training_unchanged(tmp_path):
    data = make_images(tmp_path / "data")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("toy, color1 --n bad --w 64 --h 64 --s 2 --d 7\ntoy --w 64 --h 64 --s 2 --l 3\n")
    common = dict(max_train_epochs=2, network_dropout=0.2, save_every_n_epochs=None)
    plain = Trainer(config(tmp_path / "a", data, **common), model=tiny_model(), log=lambda *_: None).run()
    cfg = config(tmp_path / "b", data, sample_prompts=str(prompts), sample_every_n_epochs=1,
                 sample_sampler="euler", sample_at_first=True, **common)
    res = Trainer(cfg, model=tiny_model(), log=lambda *_: None).run()
    names = sorted(os.path.basename(p) for p in res.samples)
    assert sorted(os.listdir(tmp_path / "b" / "out" / "sample")) == names
    pat = [r"toy_000000_00_\d{14}_7\.png", r"toy_000000_01_\d{14}_2\.png",
           r"toy_e000001_00_\d{14}_7\.png", r"toy_e000001_01_\d{14}_2\.png",
           r"toy_e000002_00_\d{14}_7\.png", r"toy_e000002_01_\d{14}_2\.png"]
    assert len(names) == 6 and all(re.fullmatch(p, n) for p, n in zip(pat, names)), names
    assert Image.open(res.samples[0]).size == (64, 64)
    a, b = _weights(plain.files[-1]), _weights(res.files[-1])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_step_samples_and_model_without_decoder(tmp_path):
    data = make_images(tmp_path / "data")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("toy --w 64 --h 64 --s 1 --d 1\n")
    cfg = config(tmp_path, data, max_train_epochs=1, sample_prompts=str(prompts), sample_every_n_steps=1,
                 save_every_n_epochs=None)
    res = Trainer(cfg, model=tiny_model(), log=lambda *_: None).run()
    # 4 steps in the epoch: a step sample after each step, none for the epoch end (epochs not asked for)
    assert [os.path.basename(p)[:11] for p in res.samples] == ["toy_000001_", "toy_000002_", "toy_000003_",
                                                               "toy_000004_"]
    cfg2 = config(tmp_path / "x", data, sample_prompts=str(prompts), sample_every_n_epochs=1)
    with pytest.raises(LoraStudioError, match="sample_prompts needs the whole model"):
        Trainer(cfg2, model=trainable_model(), log=lambda *_: None).run()
    assert not os.path.exists(tmp_path / "x" / "out")


def test_validation_reports_the_prompt_file(tmp_path):
    from lib_lora.train.dataset import validate

    data = make_images(tmp_path / "data")
    bad = tmp_path / "bad.txt"
    bad.write_text("toy --h 30\n")
    report = validate(config(tmp_path, data, sample_prompts=str(bad), sample_every_n_epochs=1))
    assert any("prompt 1 size 512x30" in p for p in report.problems)
    good = tmp_path / "good.txt"
    good.write_text("toy\n")
    report = validate(config(tmp_path, data, sample_prompts=str(good)))
    assert report.ok and any("no sample image will be made" in w for w in report.warnings)
    report = validate(config(tmp_path, data, sample_prompts=str(tmp_path / "missing.txt")))
    assert any("does not exist" in p for p in report.problems)
