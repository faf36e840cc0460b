"""sd-scripts export: every exported key is an argument of the real train_network.py / sdxl_train_network.py
(tests/fixtures/sdscripts_manifest.json, extracted by AST from a recorded sd-scripts commit), its value has the
type, nargs, choices and action sd-scripts declares, and the dataset TOML uses only keys of its schema."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from lib_lora.errors import LoraStudioError
from lib_lora.train import sdscripts
from lib_lora.train.config import config_from_dict, load_dataset_config, read_toml_file
from tests.lib_lora.train.helpers import make_images
from tests.paths import FIXTURES

MANIFEST = json.loads(Path(FIXTURES, "sdscripts_manifest.json").read_text(encoding="utf-8"))


def _int_or_float(text):
    f = float(text)
    return int(f) if f.is_integer() and "." not in str(text) else f


TYPES = {"int": int, "float": float, "str": str, "Path": str, "int_or_float": _int_or_float}


def rebuilt_parser(sdxl: bool) -> argparse.ArgumentParser:
    """sd-scripts' parser, rebuilt from the manifest's facts (flags, type, nargs, choices, action)."""
    p = argparse.ArgumentParser(exit_on_error=False)
    args = dict(MANIFEST["arguments"], **(MANIFEST["sdxl_arguments"] if sdxl else {}))
    for dest, a in args.items():
        kw = {"dest": dest}
        if "action" in a:
            kw["action"] = a["action"]
        else:
            kw["type"] = TYPES[a.get("type", "str")]
            if "nargs" in a:
                kw["nargs"] = a["nargs"]
            if isinstance(a.get("choices"), list):
                kw["choices"] = a["choices"]
        p.add_argument(*a["flags"], **kw)
    return p


def as_cli(values: dict) -> list[str]:
    out = []
    for k, v in values.items():
        if v is True:
            out.append(f"--{k}")
        elif isinstance(v, list):
            out += [f"--{k}", *[str(x) for x in v]]
        else:
            out += [f"--{k}", str(v)]
    return out


def rich_config(tmp_path, **kw):
    data = make_images(tmp_path / "data", repeats=3)
    make_images(tmp_path / "reg", repeats=1, concept="person")
    base = {"pretrained_model_name_or_path": str(tmp_path / "m.safetensors"), "train_data_dir": str(data),
            "reg_data_dir": str(tmp_path / "reg"), "output_dir": str(tmp_path / "out"), "output_name": "toy",
            "caption_extension": ".txt", "resolution": "768,512", "train_batch_size": 2, "enable_bucket": True,
            "bucket_no_upscale": True, "network_dim": 8, "network_alpha": 4, "network_dropout": 0.1,
            "network_args": ["conv_dim=4", "conv_alpha=2", "rank_dropout=0.1", "module_dropout=0.05"],
            "optimizer_type": "adamw8bit", "optimizer_args": ["weight_decay=0.01", "betas=0.9,0.99"],
            "learning_rate": 1e-4, "unet_lr": 1e-4, "text_encoder_lr": 5e-5, "lr_scheduler": "cosine_with_restarts",
            "lr_warmup_steps": 10, "lr_scheduler_num_cycles": 3, "max_train_epochs": 4,
            "gradient_accumulation_steps": 2, "gradient_checkpointing": True, "mixed_precision": "bf16",
            "save_precision": "fp16", "seed": 42, "noise_offset": 0.05, "multires_noise_iterations": 6,
            "multires_noise_discount": 0.3, "min_snr_gamma": 5, "clip_skip": 2, "max_token_length": 225,
            "shuffle_caption": True, "keep_tokens": 1, "caption_dropout_rate": 0.05, "caption_tag_dropout_rate": 0.1,
            "caption_dropout_every_n_epochs": 2, "flip_aug": True, "token_warmup_step": 0.5,
            "save_every_n_epochs": 1, "save_state": True, "logging_dir": str(tmp_path / "logs"),
            "log_with": "tensorboard", "cache_latents": True, "min_timestep": 10, "max_timestep": 900,
            "v_parameterization": True, "training_comment": "hi \"there\"", "network_train_unet_only": False}
    base.update(kw)
    return config_from_dict(base)


def check_values(values: dict, sdxl: bool = False):
    known = dict(MANIFEST["arguments"], **(MANIFEST["sdxl_arguments"] if sdxl else {}))
    unknown = sorted(set(values) - set(known))
    assert unknown == [], f"not sd-scripts arguments: {unknown}"
    # the same values given on sd-scripts' command line parse, and give exactly what the TOML puts in its namespace
    ns = vars(rebuilt_parser(sdxl).parse_args(as_cli(values)))
    for k, v in values.items():
        a = known[k]
        if a.get("action") == "store_true":
            assert v is True, k
            continue
        got = ns[k]
        if k == "text_encoder_lr":
            # nargs="*", but train_network reads a plain float too (what older checkouts need)
            assert isinstance(v, float) and got == [v], k
            continue
        assert got == v and type(got) is type(v), (k, v, got)
        if isinstance(v, list):
            assert all(type(x) is str for x in v), k


def test_export_writes_only_sd_scripts_arguments_with_their_types(tmp_path):
    cfg = rich_config(tmp_path)
    exp = sdscripts.export(cfg, tmp_path / "exp", arch="sd1")
    values = read_toml_file(exp.config_path, "config")
    assert values == exp.values
    check_values(values)
    assert values["network_args"] == ["conv_dim=4", "conv_alpha=2", "rank_dropout=0.1", "module_dropout=0.05"]
    assert values["optimizer_type"] == "AdamW8bit" and values["lr_warmup_steps"] == 10
    assert values["network_alpha"] == 4.0 and isinstance(values["network_alpha"], float)
    assert values["dataset_config"] == exp.dataset_path and values["output_name"] == "toy"
    assert "train_data_dir" not in values and "resolution" not in values     # in the dataset TOML
    # networks.lora reads these network_args keys
    assert {a.split("=")[0] for a in values["network_args"]} <= set(MANIFEST["networks_lora_args"])
    assert exp.argv == ["accelerate", "launch", "--num_cpu_threads_per_process", "1", "train_network.py",
                        "--config_file", exp.config_path]
    # sd-scripts 0.8.x's top-level LoRA+ ratios go where today's sd-scripts reads them: network_args
    cfg = rich_config(tmp_path, loraplus_lr_ratio=16, loraplus_unet_lr_ratio=8,
                      network_args=["conv_dim=4", "loraplus_unet_lr_ratio=8"])
    values = sdscripts.export(cfg, tmp_path / "exp2", arch="sd1").values
    check_values(values)
    assert values["network_args"] == ["conv_dim=4", "loraplus_unet_lr_ratio=8", "loraplus_lr_ratio=16"]


def test_dataset_toml_keys_are_in_sd_scripts_schema_and_round_trip(tmp_path):
    cfg = rich_config(tmp_path)
    exp = sdscripts.export(cfg, tmp_path / "exp", arch="sd1")
    doc = read_toml_file(exp.dataset_path, "dataset")
    sch = MANIFEST["dataset_schema"]
    subset_schema = {**sch["SUBSET_ASCENDABLE_SCHEMA"], **sch["DB_SUBSET_DISTINCT_SCHEMA"],
                     **sch["DB_SUBSET_ASCENDABLE_SCHEMA"], **sch["DO_SUBSET_ASCENDABLE_SCHEMA"]}
    dataset_schema = {**sch["DATASET_ASCENDABLE_SCHEMA"], **sch["SUBSET_ASCENDABLE_SCHEMA"],
                      **sch["DB_SUBSET_ASCENDABLE_SCHEMA"], **sch["DO_SUBSET_ASCENDABLE_SCHEMA"]}

    def typed(schema_text, v):
        t = schema_text.replace("  # required", "")
        if t == "bool":
            return type(v) is bool
        if t == "int":
            return type(v) is int
        if t == "str":
            return type(v) is str
        if t == "float":
            return type(v) is float
        if t == "Any(float, int)":
            return type(v) in (float, int)
        if "scalar_or_twodim" in t:
            return type(v) is int or (isinstance(v, list) and len(v) == 2 and all(type(x) is int for x in v))
        raise AssertionError(f"schema type {t} not handled")

    assert set(doc) == {"datasets"}
    for ds in doc["datasets"]:
        for k, v in ds.items():
            if k == "subsets":
                continue
            assert k in dataset_schema and typed(dataset_schema[k], v), (k, v)
        for sub in ds["subsets"]:
            for k, v in sub.items():
                assert k in subset_schema and typed(subset_schema[k], v), (k, v)
    # both trainers see the same datasets: reading the export back gives the original specs (paths absolute)
    from lib_lora.train.config import dataset_specs
    assert load_dataset_config(exp.dataset_path, cfg) == dataset_specs(cfg)
    subs = doc["datasets"][0]["subsets"]
    assert [(s["num_repeats"], s.get("is_reg", False), s["class_tokens"]) for s in subs] == \
        [(3, False, "toy"), (1, True, "person")]
    assert doc["datasets"][0]["resolution"] == [768, 512]


def test_sdxl_checkpoint_selects_sdxl_train_network(tmp_path):
    import torch
    from safetensors.torch import save_file

    ckpt = tmp_path / "m.safetensors"
    save_file({"conditioner.embedders.1.model.ln_final.weight": torch.zeros(2),
               "model.diffusion_model.out.2.bias": torch.zeros(4)}, str(ckpt))
    cfg = rich_config(tmp_path, v_parameterization=False, clip_skip=None, max_token_length=None)
    exp = sdscripts.export(cfg, tmp_path / "exp", accelerate_args=["--num_processes", "2"])
    assert exp.script == "sdxl_train_network.py"
    assert exp.argv[:5] == ["accelerate", "launch", "--num_processes", "2", "sdxl_train_network.py"]
    check_values(exp.values, sdxl=True)


def test_defaults_are_dropped_where_sd_scripts_has_no_value_for_them(tmp_path):
    """max_token_length 75 is sd-scripts' unset (its choices are 150/225); clip_skip is SD1-only."""
    cfg = rich_config(tmp_path, max_token_length=75, lr_warmup_steps=0.1)
    values = sdscripts.export(cfg, tmp_path / "a", arch="sdxl").values
    assert "max_token_length" not in values and "clip_skip" not in values
    assert values["lr_warmup_steps"] == 0.1
    check_values(values, sdxl=True)


def test_existing_files_are_not_overwritten_and_errors_are_one_line(tmp_path):
    cfg = rich_config(tmp_path)
    sdscripts.export(cfg, tmp_path / "exp", arch="sd1")
    with pytest.raises(LoraStudioError, match="exists; choose another folder"):
        sdscripts.export(cfg, tmp_path / "exp", arch="sd1")
    sdscripts.export(cfg, tmp_path / "exp", arch="sd1", overwrite=True)
    with pytest.raises(LoraStudioError, match="is not a file") as e:      # arch from a missing checkpoint
        sdscripts.export(cfg, tmp_path / "other")
    assert "\n" not in str(e.value)


def test_tqdm_lines_parse_into_step_total_loss_eta():
    import io

    from tqdm import tqdm

    buf = io.StringIO()
    bar = tqdm(range(100), desc="steps", file=buf, smoothing=0, mininterval=0, ascii=False)
    for i in range(12):                       # as train_network.py drives its bar: update, then the postfix
        bar.update(1)
        bar.set_postfix(avr_loss=0.5 / (i + 1))
    bar.close()
    frames = [f for f in buf.getvalue().replace("\n", "\r").split("\r") if f.strip()]
    parsed = [sdscripts.parse_progress(f) for f in frames]
    assert all(p is not None for p in parsed), frames
    step, total, loss, eta = parsed[-1]
    assert (step, total) == (12, 100) and loss == pytest.approx(0.5 / 12, rel=1e-2)
    assert sdscripts.parse_progress("steps:  12%|█▏        | 12/100 [00:10<1:01:15,  1.17s/it, avr_loss=0.123]") \
        == (12, 100, 0.123, 3675.0)
    assert sdscripts.parse_progress("steps:   0%|          | 0/100 [00:00<?, ?it/s]") == (0, 100, None, None)
    assert sdscripts.parse_progress("validating:  50%|##| 1/2 [00:01<00:01, 1.0it/s]") is None


def test_every_config_key_has_its_sd_scripts_argument_of_the_same_kind():
    """A key added to TrainConfig must map to an sd-scripts argument of the same kind (or be written to the
    dataset TOML): the export writes keys under their own names."""
    from lib_lora.options import fields

    kinds = {bool: ("store_true",), int: ("int",), float: ("float", "int_or_float"), str: ("str", "Path"),
             list: ("nargs",)}
    bad = []
    for o in fields(sdscripts.TrainConfig):
        if o.name in sdscripts._DATASET_ONLY:
            continue
        if o.name in sdscripts._AS_NETWORK_ARGS:           # written into network_args, which reads them today
            assert o.name in MANIFEST["networks_lora_args"], o.name
            continue
        a = MANIFEST["arguments"].get(o.name)
        if a is None:
            bad.append(f"{o.name}: not an sd-scripts argument (map it in sdscripts.config_values)")
            continue
        have = a.get("action") or ("nargs" if "nargs" in a and o.kind is list else a.get("type", "str"))
        if o.name == "text_encoder_lr":
            have = "float"                        # nargs="*" of floats; a float is written (see check_values)
        if have not in kinds.get(o.kind, ()):
            bad.append(f"{o.name}: ours {o.kind}, sd-scripts {have}")
    assert bad == []


def test_unsupported_keys_are_accepted_at_sd_scripts_own_defaults(tmp_path):
    """A config sd-scripts wrote itself (--output_config writes every argument) names the keys we do not
    implement at sd-scripts' defaults, e.g. huber_c = 0.1 with loss_type l2: those must load."""
    from lib_lora.train.config import KNOWN_UNSUPPORTED

    bad = []
    for key, ours in KNOWN_UNSUPPORTED.items():
        a = MANIFEST["arguments"].get(key)
        if a is None or a.get("action") == "store_true":
            continue                              # SDXL/network-args only, or a flag whose default is False
        if a.get("default") != ours:
            bad.append(f"{key}: ours {ours!r}, sd-scripts {a.get('default')!r}")
    assert bad == []
    base = {"pretrained_model_name_or_path": "m.safetensors", "train_data_dir": str(make_images(tmp_path / "d")),
            "output_dir": str(tmp_path / "out")}
    cfg = config_from_dict({**base, "loss_type": "l2", "huber_c": 0.1, "huber_schedule": "snr", "huber_scale": 1.0})
    assert cfg.loss_type == "l2"
    with pytest.raises(LoraStudioError, match="huber_c"):
        config_from_dict({**base, "huber_c": 0.2})


@pytest.mark.parametrize("args, says", [([], "no --sd-scripts DIR given"),
                                        (["--sd-scripts", "{tmp}"], "has no train_network.py")])
def test_sd_scripts_bench_says_skipped_without_a_checkout(tmp_path, args, says):
    """The CI has no sd-scripts checkout: bench/train_sdscripts.py must say so in one line and exit 0."""
    import subprocess
    import sys

    bench = Path(__file__).resolve().parents[3] / "bench" / "train_sdscripts.py"
    r = subprocess.run([sys.executable, str(bench), *[a.format(tmp=tmp_path) for a in args]],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout.startswith("skipped: ") and says in r.stdout and len(r.stdout.strip().splitlines()) == 1
