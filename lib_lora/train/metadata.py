"""The metadata of a trained LoRA file as sd-scripts writes it: the `ss_*` keys of train_network.py (the run, its
datasets and tag frequencies, the base model's hashes) and the `modelspec.*` keys; `MINIMUM` what `no_metadata`
keeps."""

from __future__ import annotations

import json
import os
import time

from lib_lora import fileio
from lib_lora.arch import SS_BASE_MODEL_VERSION
from lib_lora.train.config import TrainConfig, parse_resolution

MODELSPEC_ARCH = {"sd1": "stable-diffusion-v1/lora", "sd2": "stable-diffusion-v2-512/lora",
                  "sdxl": "stable-diffusion-xl-v1-base/lora"}
TRAINER_VERSION = "lora-studio"


def model_hashes(path: str | None) -> dict:
    """The base model's hashes under sd-scripts' keys (none for a Hugging Face id or a missing file)."""
    if not path or not os.path.isfile(path):
        return {}
    return {"ss_sd_model_hash": fileio.legacy_hash(path), "ss_new_sd_model_hash": fileio.file_sha256(path)}


def training_metadata(cfg: TrainConfig, report, net, opt_desc, seed, session_id, started_at, total_steps, epochs,
                      batches_per_epoch, world, arch, te_lr, unet_lr, warm) -> dict:
    """The `ss_*` metadata of the run's files, as sd-scripts' train_network.py writes them (values as strings)."""
    ds0 = report.datasets[0]
    v = cfg.v_parameterization
    md = {
        "ss_session_id": session_id, "ss_training_started_at": started_at, "ss_output_name": cfg.name,
        "ss_learning_rate": cfg.learning_rate, "ss_text_encoder_lr": te_lr, "ss_unet_lr": unet_lr,
        "ss_num_train_images": report.steps["train_images"], "ss_num_reg_images": report.steps["reg_images"],
        "ss_num_validation_images": 0, "ss_num_batches_per_epoch": batches_per_epoch, "ss_num_epochs": epochs,
        "ss_gradient_checkpointing": cfg.gradient_checkpointing,
        "ss_gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "ss_max_train_steps": total_steps, "ss_lr_warmup_steps": warm, "ss_lr_scheduler": cfg.lr_scheduler,
        "ss_network_module": cfg.network_module, "ss_network_dim": net.spec.dim,
        "ss_network_alpha": net.spec.alpha, "ss_network_dropout": cfg.network_dropout,
        "ss_mixed_precision": cfg.mixed_precision, "ss_full_fp16": False, "ss_v2": False,
        "ss_base_model_version": SS_BASE_MODEL_VERSION[arch] + ("_v" if v and arch != "sdxl" else ""),
        "ss_clip_skip": cfg.clip_skip, "ss_max_token_length": cfg.max_token_length,
        "ss_cache_latents": cfg.cache_latents or cfg.cache_latents_to_disk, "ss_seed": seed, "ss_lowram": cfg.lowram,
        "ss_noise_offset": cfg.noise_offset, "ss_multires_noise_iterations": cfg.multires_noise_iterations,
        "ss_multires_noise_discount": cfg.multires_noise_discount, "ss_adaptive_noise_scale": None,
        "ss_zero_terminal_snr": False, "ss_training_comment": cfg.training_comment,
        "ss_sd_scripts_commit_hash": TRAINER_VERSION, "ss_optimizer": opt_desc,
        "ss_max_grad_norm": cfg.max_grad_norm, "ss_caption_dropout_rate": cfg.caption_dropout_rate,
        "ss_caption_dropout_every_n_epochs": cfg.caption_dropout_every_n_epochs,
        "ss_caption_tag_dropout_rate": cfg.caption_tag_dropout_rate, "ss_face_crop_aug_range": None,
        "ss_prior_loss_weight": cfg.prior_loss_weight, "ss_min_snr_gamma": cfg.min_snr_gamma,
        "ss_scale_weight_norms": cfg.scale_weight_norms, "ss_ip_noise_gamma": None,
        "ss_debiased_estimation": False, "ss_noise_offset_random_strength": False,
        "ss_ip_noise_gamma_random_strength": False, "ss_loss_type": cfg.loss_type, "ss_huber_schedule": "snr",
        "ss_huber_scale": 1.0, "ss_huber_c": 0.1, "ss_fp8_base": False, "ss_fp8_base_unet": False,
        "ss_validation_seed": None, "ss_validation_split": 0.0, "ss_max_validation_steps": None,
        "ss_validate_every_n_epochs": None, "ss_validate_every_n_steps": None,
        "ss_resize_interpolation": None,
    }
    if cfg.dataset_config:
        md["ss_datasets"] = json.dumps([{
            "is_dreambooth": True, "batch_size_per_device": d.spec.batch_size,
            "num_train_images": d.num_train_images, "num_reg_images": d.num_reg_images,
            "resolution": list(d.spec.resolution), "enable_bucket": d.spec.enable_bucket,
            "min_bucket_reso": d.min_bucket_reso, "max_bucket_reso": d.max_bucket_reso,
            "tag_frequency": d.tag_frequency, "bucket_info": d.bucket_info(), "resize_interpolation": None,
            "subsets": [{"img_count": d.img_count.get(s.image_dir, 0), "num_repeats": s.num_repeats,
                         "color_aug": False, "flip_aug": s.flip_aug, "random_crop": s.random_crop,
                         "shuffle_caption": s.shuffle_caption, "keep_tokens": s.keep_tokens,
                         "keep_tokens_separator": s.keep_tokens_separator,
                         "secondary_separator": s.secondary_separator, "enable_wildcard": False,
                         "caption_prefix": s.caption_prefix, "caption_suffix": s.caption_suffix,
                         "resize_interpolation": None,
                         "image_dir": os.path.basename(os.path.normpath(s.image_dir)),
                         "class_tokens": s.class_tokens, "is_reg": s.is_reg} for s in d.subsets],
        } for d in report.datasets])
        md["ss_tag_frequency"] = json.dumps(report.tag_frequency())
        md["ss_dataset_dirs"] = json.dumps(_dirs(report, False))
    else:
        md.update({
            "ss_batch_size_per_device": cfg.train_batch_size,
            "ss_total_batch_size": cfg.train_batch_size * world * cfg.gradient_accumulation_steps,
            "ss_resolution": "(%d, %d)" % ds0.spec.resolution, "ss_color_aug": False,
            "ss_flip_aug": cfg.flip_aug, "ss_random_crop": cfg.random_crop,
            "ss_shuffle_caption": cfg.shuffle_caption, "ss_enable_bucket": ds0.spec.enable_bucket,
            "ss_bucket_no_upscale": ds0.spec.bucket_no_upscale, "ss_min_bucket_reso": ds0.min_bucket_reso,
            "ss_max_bucket_reso": ds0.max_bucket_reso, "ss_keep_tokens": cfg.keep_tokens,
            "ss_dataset_dirs": json.dumps(_dirs(report, False)),
            "ss_reg_dataset_dirs": json.dumps(_dirs(report, True)),
            "ss_tag_frequency": json.dumps(ds0.tag_frequency), "ss_bucket_info": json.dumps(ds0.bucket_info()),
        })
    if cfg.network_args:
        md["ss_network_args"] = net.metadata_args()
    src = cfg.pretrained_model_name_or_path
    md.update(model_hashes(src))
    md["ss_sd_model_name"] = os.path.basename(src) if os.path.exists(src) else src
    return {k: ("None" if v is None else str(v)) for k, v in md.items()}

def modelspec(cfg: TrainConfig, arch: str, name: str) -> dict:
    """The `modelspec.*` keys sd-scripts adds to a LoRA (Stability AI's model spec 1.0.1)."""
    res = parse_resolution(cfg.resolution)
    return {"modelspec.sai_model_spec": "1.0.1", "modelspec.architecture": MODELSPEC_ARCH[arch],
            "modelspec.implementation": "https://github.com/Stability-AI/generative-models" if arch == "sdxl"
            else "diffusers",
            "modelspec.title": name, "modelspec.resolution": f"{res[0]}x{res[1]}",
            "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "modelspec.prediction_type": "v" if cfg.v_parameterization else "epsilon",
            **({"modelspec.encoder_layer": str(cfg.clip_skip)} if cfg.clip_skip else {})}


MINIMUM = ("ss_v2", "ss_base_model_version", "ss_network_module", "ss_network_dim", "ss_network_alpha",
            "ss_network_args")


def _dirs(report, reg: bool) -> dict:
    return {os.path.basename(os.path.normpath(c["dir"])): {"n_repeats": c["repeats"], "img_count": c["images"]}
            for c in report.concepts if c["is_reg"] == reg}
