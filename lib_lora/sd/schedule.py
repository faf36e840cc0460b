"""The DDPM noise schedule SD1/SDXL were trained with (scaled-linear betas 0.00085..0.012, 1000 steps) and
what a trainer derives from it: noising, the v target, SNR and min-SNR weights. Computed in float64."""

from __future__ import annotations

import functools

import numpy as np
import torch

NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 0.00085
BETA_END = 0.012


def betas(n: int = NUM_TRAIN_TIMESTEPS, start: float = BETA_START, end: float = BETA_END) -> np.ndarray:
    """Scaled linear: linear in sqrt(beta), squared (float64)."""
    return np.linspace(start ** 0.5, end ** 0.5, n, dtype=np.float64) ** 2


@functools.lru_cache(maxsize=4)
def _alphas_cumprod(n: int, start: float, end: float) -> np.ndarray:
    out = np.cumprod(1.0 - betas(n, start, end))
    out.flags.writeable = False
    return out


def alphas_cumprod(n: int = NUM_TRAIN_TIMESTEPS, start: float = BETA_START, end: float = BETA_END) -> torch.Tensor:
    """ᾱ_t for t = 0…n-1 (float64 tensor)."""
    return torch.from_numpy(_alphas_cumprod(n, start, end).copy())


def ldm_buffers() -> dict[str, torch.Tensor]:
    """The schedule tensors an SD1 checkpoint stores beside the U-Net (ldm's DDPM buffers, float32)."""
    b = betas()
    ac = np.cumprod(1.0 - b)
    prev = np.append(1.0, ac[:-1])
    post_var = b * (1.0 - prev) / (1.0 - ac)
    values = {
        "betas": b, "alphas_cumprod": ac, "alphas_cumprod_prev": prev,
        "sqrt_alphas_cumprod": np.sqrt(ac), "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
        "log_one_minus_alphas_cumprod": np.log(1.0 - ac), "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1), "posterior_variance": post_var,
        "posterior_log_variance_clipped": np.log(np.maximum(post_var, 1e-20)),
        "posterior_mean_coef1": b * np.sqrt(prev) / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - prev) * np.sqrt(1.0 - b) / (1.0 - ac),
    }
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in values.items()}


def _gather(values: torch.Tensor, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t] shaped to broadcast over `like` (batch first), in like's dtype."""
    out = values.to(timesteps.device)[timesteps.long()]
    return out.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def add_noise(latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
              ac: torch.Tensor | None = None) -> torch.Tensor:
    """x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε."""
    ac = alphas_cumprod() if ac is None else ac
    return _gather(ac.sqrt(), timesteps, latents) * latents + _gather((1 - ac).sqrt(), timesteps, latents) * noise


def v_target(latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
             ac: torch.Tensor | None = None) -> torch.Tensor:
    """v = √ᾱ_t·ε − √(1−ᾱ_t)·x₀ (the v-prediction target)."""
    ac = alphas_cumprod() if ac is None else ac
    return _gather(ac.sqrt(), timesteps, latents) * noise - _gather((1 - ac).sqrt(), timesteps, latents) * latents


def snr(timesteps: torch.Tensor, ac: torch.Tensor | None = None) -> torch.Tensor:
    """SNR_t = ᾱ_t / (1 − ᾱ_t) (float64, shape of timesteps)."""
    ac = alphas_cumprod() if ac is None else ac
    a = ac.to(timesteps.device)[timesteps.long()]
    return a / (1 - a)


def min_snr_weight(timesteps: torch.Tensor, gamma: float, v_prediction: bool = False,
                   ac: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample loss weight of min-SNR-γ: min(SNR, γ)/SNR (ε) or min(SNR, γ)/(SNR + 1) (v); float32."""
    s = snr(timesteps, ac)
    w = torch.clamp(s, max=gamma) / ((s + 1) if v_prediction else s)
    return w.float()


def zero_terminal_snr(ac: torch.Tensor) -> torch.Tensor:
    """ᾱ rescaled so the last step has SNR 0 (Lin et al. 2023): shift and scale √ᾱ to end at 0, keep the first."""
    s = ac.sqrt()
    first, last = s[0].clone(), s[-1].clone()
    s = (s - last) * first / (first - last)
    return s ** 2


def sigmas(ac: torch.Tensor | None = None) -> torch.Tensor:
    """k-diffusion's σ_t = √((1 − ᾱ_t)/ᾱ_t)."""
    ac = alphas_cumprod() if ac is None else ac
    return ((1 - ac) / ac).sqrt()
