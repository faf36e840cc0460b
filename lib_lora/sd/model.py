"""SDModel: an SD1 or SDXL model (U-Net, text encoders, VAE) whose state_dict keys are the single-file
checkpoint's, built at random (`build_model`) or loaded from a .safetensors checkpoint (`load_model`)."""

from __future__ import annotations

import math
import os

import torch
from torch import nn

from lib_lora.errors import LoraStudioError

from . import schedule
from .clip import CLIPTextModel, Holder, OpenCLIPText
from .tokenizer import default_tokenizer
from .unet import UNetModel, timestep_embedding
from .vae import AutoencoderKL

PARTS = ("unet", "te", "vae")
SCALE_FACTOR = {"sd1": 0.18215, "sdxl": 0.13025}
SIZE_EMBED_DIM = 256  # SDXL: each of the six size/crop numbers as a 256-d sinusoidal embedding
TE_ROOT = {"sd1": "cond_stage_model.", "sdxl": "conditioner."}


def _clip(width, layers, act="quick_gelu", heads=None):
    return {"vocab": 49408, "width": width, "positions": 77, "layers": layers, "heads": heads or max(1, width // 64),
            "act": act}


def config(arch: str, size: str = "full") -> dict:
    """Configuration of one family at full size or tiny (same module names and counts, small widths)."""
    if arch not in SCALE_FACTOR:
        raise LoraStudioError(f"unknown model family '{arch}': use sd1 or sdxl")
    if size not in ("full", "tiny"):
        raise LoraStudioError(f"unknown model size '{size}': use full or tiny")
    tiny = size == "tiny"
    mc = 32 if tiny else 320
    vae = {"ch": 32 if tiny else 128, "ch_mult": (1, 2, 4, 4), "num_res_blocks": 2, "z": 4}
    if arch == "sd1":
        te = [_clip(64 if tiny else 768, 12)]
        unet = {"model_channels": mc, "channel_mult": (1, 2, 4, 4), "num_res_blocks": 2, "depths": (1, 1, 1, 0),
                "mid_depth": 1, "context_dim": te[0]["width"], "num_heads": 8, "linear": False, "adm_in": 0}
    else:
        te = [_clip(64 if tiny else 768, 12), dict(_clip(64 if tiny else 1280, 32, act="gelu"), proj=64 if tiny else 1280)]
        unet = {"model_channels": mc, "channel_mult": (1, 2, 4), "num_res_blocks": 2, "depths": (0, 2, 10),
                "mid_depth": 10, "context_dim": te[0]["width"] + te[1]["width"], "head_dim": 64, "linear": True,
                "adm_in": te[1]["proj"] + 6 * SIZE_EMBED_DIM}
    return {"unet": unet, "te": te, "vae": vae}


class SDModel(nn.Module):
    """`.arch` ("sd1" | "sdxl"), `.unet`, `.text_encoders` (list), `.vae`, `.scale_factor`; the parts not
    built/loaded are None. `state_dict()` keys are the checkpoint's."""

    def __init__(self, arch: str, cfg: dict, parts=PARTS):
        super().__init__()
        bad = set(parts) - set(PARTS)
        if bad:
            raise LoraStudioError(f"unknown model part(s) {sorted(bad)}: use {', '.join(PARTS)}")
        self.arch = arch
        self.cfg = cfg
        self.parts = tuple(p for p in PARTS if p in parts)
        self.scale_factor = SCALE_FACTOR[arch]
        if "unet" in parts:
            self.model = Holder(diffusion_model=UNetModel(cfg["unet"]))
        if "te" in parts:
            if arch == "sd1":
                self.cond_stage_model = Holder(transformer=CLIPTextModel(cfg["te"][0]))
            else:
                self.conditioner = Holder(embedders=nn.ModuleList([
                    Holder(transformer=CLIPTextModel(cfg["te"][0])), Holder(model=OpenCLIPText(cfg["te"][1]))]))
        if "vae" in parts:
            self.first_stage_model = AutoencoderKL(cfg["vae"])
        if arch == "sd1" and "unet" in parts:  # SD1 checkpoints carry ldm's DDPM buffers at the top level
            for name, value in schedule.ldm_buffers().items():
                self.register_buffer(name, value)

    # ------------------------------------------------------------ parts
    @property
    def unet(self) -> UNetModel | None:
        return self.model.diffusion_model if "unet" in self.parts else None

    @property
    def text_encoders(self) -> list:
        if "te" not in self.parts:
            return []
        if self.arch == "sd1":
            return [self.cond_stage_model.transformer]
        return [self.conditioner.embedders[0].transformer, self.conditioner.embedders[1].model]

    @property
    def vae(self) -> AutoencoderKL | None:
        return self.first_stage_model if "vae" in self.parts else None

    @property
    def context_dim(self) -> int:
        return self.cfg["unet"]["context_dim"]

    # ------------------------------------------------------------ text
    def tokenize(self, prompts: list[str], max_length: int = 75) -> torch.Tensor:
        """Token ids (B, max_length // 75, 77): each 75-token chunk wrapped in BOS … EOS, padded with EOS, as
        sd-scripts splits 150/225-token captions."""
        return tokenize(prompts, max_length)

    def encode_text(self, prompts, clip_skip: int = 1, max_length: int = 75):
        """(context (B, 77 or max_length + 2, context_dim), pooled (B, proj) for SDXL else None).

        SD1: the last layer's states, or with clip_skip=k the k-th from last, through the final layer norm.
        SDXL: both encoders' penultimate states (no final norm) concatenated; pooled from encoder 2's first
        chunk. `prompts` may also be the ids `tokenize` returned."""
        if "te" not in self.parts:
            raise LoraStudioError("this model was loaded without its text encoders: load it with parts including 'te'")
        ids = prompts if torch.is_tensor(prompts) else self.tokenize(list(prompts), max_length)
        if ids.dim() == 2:
            ids = ids[:, None]
        b, n, length = ids.shape
        tes = self.text_encoders
        device = tes[0].text_model.embeddings.token_embedding.weight.device
        flat = ids.reshape(b * n, length).to(device)
        if self.arch == "sd1":
            te = tes[0]
            states = te.hidden_states(flat)
            h = te.final_norm(states[-max(1, int(clip_skip))])
            return _join_chunks(h, b, n), None
        h1 = tes[0].hidden_states(flat)[-2]
        ids2 = _pad_after_eos(flat, default_tokenizer().eos_id, 0)
        states2 = tes[1].hidden_states(ids2)
        h2 = states2[-2]
        pooled = tes[1].pooled(states2[-1], ids2).reshape(b, n, -1)[:, 0]
        context = torch.cat([_join_chunks(h1, b, n), _join_chunks(h2, b, n)], dim=-1)
        return context, pooled

    def sdxl_vector(self, pooled: torch.Tensor, original_size=(1024, 1024), crop=(0, 0), target_size=(1024, 1024)):
        """SDXL's y: pooled text embedding + sinusoidal embeddings of (orig h, w, crop top, left, target h, w).
        Sizes may be (h, w) tuples shared by the batch or (B, 2) tensors."""
        b = pooled.shape[0]
        cols = []
        for value in (original_size, crop, target_size):
            t = torch.as_tensor(value, dtype=torch.float32, device=pooled.device)
            if t.dim() == 1:
                t = t[None].expand(b, 2)
            cols.append(t)
        nums = torch.cat(cols, dim=1)  # (B, 6)
        emb = timestep_embedding(nums.reshape(-1), SIZE_EMBED_DIM).reshape(b, 6 * SIZE_EMBED_DIM)
        return torch.cat([pooled, emb.to(pooled.dtype)], dim=1)

    # ------------------------------------------------------------ latents
    def encode_latents(self, images: torch.Tensor, sample: bool = True, generator=None) -> torch.Tensor:
        """Images in [-1, 1] (B, 3, H, W) → scaled latents: a draw from the VAE's posterior (sd-scripts'
        `latent_dist.sample()`), or its mean with sample=False, times `scale_factor`."""
        if "vae" not in self.parts:
            raise LoraStudioError("this model was loaded without its VAE: load it with parts including 'vae'")
        mean, logvar = self.vae.encode(images)
        if sample:
            noise = torch.randn(mean.shape, generator=generator, dtype=torch.float32).to(mean.device, mean.dtype)
            mean = mean + torch.exp(0.5 * logvar) * noise
        return mean * self.scale_factor

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents → images in [-1, 1] (not clamped)."""
        return self.vae.decode(latents / self.scale_factor)

    def set_gradient_checkpointing(self, on: bool = True) -> None:
        if self.unet is not None:
            self.unet.set_gradient_checkpointing(on)


def tokenize(prompts: list[str], max_length: int = 75) -> torch.Tensor:
    if max_length not in (75, 150, 225):
        raise LoraStudioError(f"max token length {max_length} is not supported: use 75, 150 or 225")
    tok = default_tokenizer()
    n = max_length // 75
    rows = []
    for prompt in prompts:
        ids = tok(str(prompt), max_length + 2)
        chunks = []
        for i in range(n):
            chunk = [ids[0]] + ids[1 + 75 * i: 76 + 75 * i] + [ids[-1]]
            chunks.append(chunk)
        rows.append(chunks)
    return torch.tensor(rows, dtype=torch.long)


def _pad_after_eos(ids: torch.Tensor, eos: int, pad: int) -> torch.Tensor:
    """OpenCLIP's padding (0 after the end token) from CLIP-L's (end token repeated), per 77-token chunk."""
    is_eos = ids == eos
    is_eos[:, 0] = False
    after = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
    return ids.masked_fill(after, pad)


def _join_chunks(h: torch.Tensor, b: int, n: int) -> torch.Tensor:
    """(B·n, 77, D) → (B, 75·n + 2, D): first BOS, each chunk's 75 inner states, last chunk's end state."""
    h = h.reshape(b, n, h.shape[1], h.shape[2])
    if n == 1:
        return h[:, 0]
    inner = h[:, :, 1:-1].reshape(b, -1, h.shape[-1])
    return torch.cat([h[:, 0, :1], inner, h[:, -1, -1:]], dim=1)


def _init_weights(model: nn.Module, seed: int) -> None:
    """Deterministic random weights small enough that a deep random model's outputs stay finite."""
    g = torch.Generator().manual_seed(int(seed))
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            fan_in = p[0].numel()
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 / math.sqrt(fan_in)))
        elif name.endswith("logit_scale"):
            continue
        elif name.endswith("bias") or "norm" in name.split(".")[-2] or name.split(".")[-2].startswith("ln"):
            with torch.no_grad():
                p.fill_(0.0 if name.endswith("bias") else 1.0)
        else:
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)


def build_model(arch: str, size: str = "tiny", seed: int = 0, dtype=torch.float32, device=None,
                parts=PARTS) -> SDModel:
    """A random SD1/SDXL model ("full" = real sizes, "tiny" = same names and block counts, small widths).
    On device "meta" no memory is used (key/shape checks). Parameters are frozen (requires_grad False),
    in eval mode."""
    cfg = config(arch, size)
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "meta":
        with torch.device("meta"):
            model = SDModel(arch, cfg, parts)
    else:
        model = SDModel(arch, cfg, parts)
        _init_weights(model, seed)
        model.to(device=device)
    _cast(model, dtype)
    return model.requires_grad_(False).eval()


def _cast(model: nn.Module, dtype) -> None:
    """Floating parameters to dtype; the schedule buffers and position ids keep theirs."""
    for p in model.parameters():
        if p.is_floating_point():
            p.data = p.data.to(dtype)


def save_model(model: SDModel, path, overwrite: bool = False, metadata: dict | None = None) -> str:
    """The model as a single-file checkpoint (atomic)."""
    from lib_lora.fileio import atomic_save_safetensors

    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    return atomic_save_safetensors(tensors, os.fspath(path), metadata=metadata, overwrite=overwrite)
