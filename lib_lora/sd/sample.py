"""Text-to-image with an SDModel: Euler (k-diffusion's discretisation) or DDIM (eta 0) on the DDPM schedule,
classifier-free guidance, SDXL size conditioning. Used for epoch grids and previews in the standalone app."""

from __future__ import annotations

import numpy as np
import torch

from lib_lora.errors import LoraStudioError

from . import schedule

SAMPLERS = ("euler", "ddim")


def _check(model, width: int, height: int, steps: int, sampler: str) -> None:
    if sampler not in SAMPLERS:
        raise LoraStudioError(f"unknown sampler '{sampler}': use {' or '.join(SAMPLERS)}")
    if width % 8 or height % 8 or width < 8 or height < 8:
        raise LoraStudioError(f"image size {width}x{height} is not a multiple of 8: use e.g. 512x512")
    if not 1 <= int(steps) <= 1000:
        raise LoraStudioError(f"{steps} steps: use 1 to 1000")
    missing = [p for p in ("unet", "te", "vae") if p not in model.parts]
    if missing:
        raise LoraStudioError(f"generating needs the whole model; it was loaded without {', '.join(missing)}")


@torch.no_grad()
def generate(model, prompt: str, negative: str = "", *, seed: int, steps: int = 20, cfg: float = 7.0,
             width: int = 512, height: int = 512, sampler: str = "euler", progress=None, clip_skip: int = 1,
             max_length: int = 75):
    """One image (PIL). The same seed gives the same image; `progress(step, steps)` after every step."""
    from PIL import Image

    _check(model, width, height, steps, sampler)
    unet = model.unet
    device = next(unet.parameters()).device
    dtype = next(unet.parameters()).dtype
    ctx, pooled = model.encode_text([prompt, negative], clip_skip=clip_skip, max_length=max_length)
    y = None
    if model.arch == "sdxl":
        y = model.sdxl_vector(pooled, (height, width), (0, 0), (height, width))
    gen = torch.Generator().manual_seed(int(seed))
    noise = torch.randn((1, 4, height // 8, width // 8), generator=gen, dtype=torch.float32).to(device)
    ac = schedule.alphas_cumprod().to(device)

    def eps(x, t):
        t_in = torch.full((2,), float(t), device=device)
        out = unet(torch.cat([x, x]).to(dtype), t_in, ctx, y).float()
        cond, uncond = out.chunk(2)
        return uncond + cfg * (cond - uncond)

    if sampler == "euler":
        x = _euler(eps, noise, ac, steps, progress)
    else:
        x = _ddim(eps, noise, ac, steps, progress)
    image = model.decode_latents(x).float()
    image = ((image[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(image))


def _euler(eps, noise, ac, steps, progress):
    """σ interpolated in log σ at t = linspace(999, 0, steps), then 0; x₀ = noise·σ_max; input scaled by
    1/√(σ²+1) (k-diffusion's Euler on a discrete schedule)."""
    log_sigmas = schedule.sigmas(ac).log()
    ts = torch.linspace(len(ac) - 1, 0, steps, dtype=torch.float64, device=ac.device)
    lo = ts.floor().long()
    hi = (lo + 1).clamp(max=len(ac) - 1)
    w = ts - lo
    sig = torch.cat([((1 - w) * log_sigmas[lo] + w * log_sigmas[hi]).exp(), ts.new_zeros(1)])
    x = noise.double() * sig[0]
    for i in range(steps):
        s = sig[i]
        e = eps((x / (s ** 2 + 1).sqrt()).float(), ts[i].item()).double()
        x = x + e * (sig[i + 1] - s)
        if progress is not None:
            progress(i + 1, steps)
    return x.float()


def _ddim(eps, noise, ac, steps, progress):
    """DDIM, eta 0, on ldm's uniform timesteps (every 1000 // steps, plus one)."""
    c = max(1, len(ac) // steps)
    ts = (torch.arange(0, len(ac), c, device=ac.device)[:steps] + 1).flip(0)
    x = noise.double()
    for i, t in enumerate(ts.tolist()):
        a = ac[t]
        a_prev = ac[ts[i + 1]] if i + 1 < len(ts) else ac.new_tensor(1.0)
        e = eps(x.float(), t).double()
        x0 = (x - (1 - a).sqrt() * e) / a.sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * e
        if progress is not None:
            progress(i + 1, len(ts))
    return x.float()
