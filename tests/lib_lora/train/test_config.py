"""Training config: sd-scripts' config TOML and dataset TOML, precedence, unsupported keys in one error."""

from __future__ import annotations

import pytest

from lib_lora.errors import LoraStudioError
from lib_lora.options import OptionsError
from lib_lora.train import config as C

# as kohya_ss writes a config for train_network.py (tables are flattened by sd-scripts)
KOHYA_SS = r'''
[model_arguments]
pretrained_model_name_or_path = "/models/anything-v4.safetensors"
v2 = false
v_parameterization = false

[additional_network_arguments]
no_metadata = false
network_module = "networks.lora"
network_dim = 32
network_alpha = 16
network_args = [ "conv_dim=8", "conv_alpha=4",]
network_train_unet_only = false

[optimizer_arguments]
optimizer_type = "AdamW8bit"
learning_rate = 0.0001
unet_lr = 0.0001
text_encoder_lr = 5e-5
max_grad_norm = 1.0
lr_scheduler = "cosine_with_restarts"
lr_warmup_steps = 0
lr_scheduler_num_cycles = 3

[dataset_arguments]
cache_latents = true
debug_dataset = false
vae_batch_size = 1

[training_arguments]
output_dir = "/out"
output_name = "mychar"
save_precision = "fp16"
save_every_n_epochs = 1
train_batch_size = 2
max_token_length = 225
xformers = true
max_train_epochs = 10
max_data_loader_n_workers = 8
persistent_data_loader_workers = true
seed = 1234
gradient_checkpointing = true
gradient_accumulation_steps = 1
mixed_precision = "fp16"
clip_skip = 2
logging_dir = "/logs"
noise_offset = 0.05
min_snr_gamma = 5
color_aug = false

[sample_prompt_arguments]
sample_every_n_epochs = 1
'''


def test_kohya_ss_config_reads_with_every_value(tmp_path):
    text = KOHYA_SS.replace("debug_dataset = false\n", "") + 'train_data_dir = "/data"\nresolution = "512,768"\n'
    text = text.replace("sample_every_n_epochs = 1", "")
    p = tmp_path / "c.toml"
    p.write_text(text)
    cfg = C.load_config(p)
    assert cfg.network_dim == 32 and cfg.network_alpha == 16.0 and cfg.network_args == ["conv_dim=8", "conv_alpha=4"]
    assert cfg.optimizer_type == "AdamW8bit" and cfg.text_encoder_lr == 5e-5 and cfg.lr_scheduler_num_cycles == 3
    assert cfg.max_train_epochs == 10 and cfg.train_batch_size == 2 and cfg.clip_skip == 2
    assert cfg.min_snr_gamma == 5.0 and cfg.noise_offset == 0.05 and cfg.name == "mychar"
    assert C.parse_resolution(cfg.resolution) == (512, 768)


def test_every_unsupported_key_in_one_error(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text(KOHYA_SS + 'train_data_dir = "/d"\ncolor_aug_x = 1\nfull_fp16 = true\nfp8_base = true\n')
    with pytest.raises(LoraStudioError) as e:
        C.load_config(p)
    msg = str(e.value)
    assert "\n" not in msg
    # debug_dataset is unknown, color_aug_x a typo, full_fp16 / fp8_base known but unimplemented and set to a
    # value; color_aug = false asks for nothing and passes; sample_every_n_epochs is implemented
    for k in ("debug_dataset", "color_aug_x", "full_fp16", "fp8_base"):
        assert k in msg
    assert "sample_every_n_epochs" not in msg
    assert "color_aug," not in msg and "remove them" in msg


def test_bad_values_and_cross_checks():
    with pytest.raises(OptionsError) as e:
        C.config_from_dict({"pretrained_model_name_or_path": "m", "train_data_dir": "d", "output_dir": "o",
                            "lr_scheduler": "constant", "lr_warmup_steps": 10})
    assert "constant_with_warmup" in str(e.value)
    with pytest.raises(OptionsError, match="lr_scheduler"):
        C.config_from_dict({"pretrained_model_name_or_path": "m", "train_data_dir": "d", "output_dir": "o",
                            "lr_scheduler": "cosine_annealing"})
    with pytest.raises(OptionsError, match="train_data_dir or dataset_config"):
        C.config_from_dict({"pretrained_model_name_or_path": "m", "output_dir": "o"})
    with pytest.raises(OptionsError, match="optimizer_type 'Adam9000'"):
        C.config_from_dict({"pretrained_model_name_or_path": "m", "train_data_dir": "d", "output_dir": "o",
                            "optimizer_type": "Adam9000"})
    cfg = C.config_from_dict({"pretrained_model_name_or_path": "m", "train_data_dir": "d", "output_dir": "o",
                              "optimizer_type": "adamw", "text_encoder_lr": [1e-5, 2e-5], "resolution": 768})
    assert C.optimizer_name(cfg.optimizer_type) == "AdamW" and cfg.text_encoder_lr == 1e-5
    assert cfg.resolution == "768"


DATASET = r'''
[general]
shuffle_caption = true
caption_extension = ".txt"
keep_tokens = 1

[[datasets]]
resolution = 768
batch_size = 4
enable_bucket = true

  [[datasets.subsets]]
  image_dir = "/img/char"
  num_repeats = 10
  keep_tokens = 2

  [[datasets.subsets]]
  image_dir = "/img/reg"
  is_reg = true
  class_tokens = "girl"

[[datasets]]
  [[datasets.subsets]]
  image_dir = "/img/style"
  caption_extension = ".caption"
'''


def test_dataset_toml_precedence_subset_dataset_general_cli_default(tmp_path):
    cfg = C.config_from_dict({"pretrained_model_name_or_path": "m", "dataset_config": "x", "output_dir": "o",
                              "resolution": "512", "train_batch_size": 3, "flip_aug": True, "dataset_repeats": 2})
    p = tmp_path / "d.toml"
    p.write_text(DATASET)
    a, b = C.load_dataset_config(p, cfg)
    assert a.resolution == (768, 768) and a.batch_size == 4 and a.enable_bucket
    assert b.resolution == (512, 512) and b.batch_size == 3 and not b.enable_bucket       # from the CLI config
    s1, s2 = a.subsets
    assert (s1.num_repeats, s1.keep_tokens, s1.caption_extension, s1.shuffle_caption) == (10, 2, ".txt", True)
    assert (s2.num_repeats, s2.keep_tokens, s2.is_reg, s2.class_tokens) == (2, 1, True, "girl")
    assert s1.flip_aug and s1.class_tokens is None                 # CLI flip_aug; no folder-name parsing
    assert b.subsets[0].caption_extension == ".caption"


def test_dataset_toml_unsupported_keys_listed_together(tmp_path):
    cfg = C.config_from_dict({"pretrained_model_name_or_path": "m", "dataset_config": "x", "output_dir": "o"})
    p = tmp_path / "d.toml"
    p.write_text(DATASET.replace("keep_tokens = 2", "keep_tokens = 2\n  color_aug = true\n  alpha_mask = false")
                 .replace("enable_bucket = true", "enable_bucket = true\nmystery = 3"))
    with pytest.raises(LoraStudioError) as e:
        C.load_dataset_config(p, cfg)
    msg = str(e.value)
    assert "color_aug" in msg and "mystery" in msg and "alpha_mask" not in msg and "\n" not in msg
