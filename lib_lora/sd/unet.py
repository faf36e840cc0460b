"""The SD1/SDXL U-Net with the original (ldm / sgm) module names, so checkpoint keys load by name."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding, cos half first (ldm's order; SDXL's size embeddings use it too)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 (fp16 statistics overflow), as the original code does."""

    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


def _norm(ch: int, eps: float = 1e-5) -> nn.GroupNorm:
    return GroupNorm32(32, ch, eps=eps)


class TimestepEmbedSequential(nn.Sequential):
    def forward(self, x, emb, context=None):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class ResBlock(nn.Module):
    def __init__(self, ch: int, emb_ch: int, out_ch: int):
        super().__init__()
        self.in_layers = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(ch, out_ch, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_ch, out_ch))
        self.out_layers = nn.Sequential(_norm(out_ch), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip_connection = nn.Identity() if out_ch == ch else nn.Conv2d(ch, out_ch, 1)

    def forward(self, x, emb):
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).type(h.dtype)[..., None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.op = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        dtype = x.dtype
        if dtype == torch.bfloat16:  # nearest upsampling had no bf16 kernel in older torch
            x = x.float()
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest").to(dtype))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, context_dim: int | None, heads: int, head_dim: int):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(0.0))

    def forward(self, x, context=None):
        context = x if context is None else context
        b, n, _ = x.shape
        h = self.heads
        q = self.to_q(x).view(b, n, h, -1).transpose(1, 2)
        k = self.to_k(context).view(b, context.shape[1], h, -1).transpose(1, 2)
        v = self.to_v(context).view(b, context.shape[1], h, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x):
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * 4), nn.Dropout(0.0), nn.Linear(dim * 4, dim))

    def forward(self, x):
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, context_dim: int, heads: int, head_dim: int):
        super().__init__()
        self.attn1 = CrossAttention(dim, None, heads, head_dim)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads, head_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.checkpointing = False

    def _forward(self, x, context):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x

    def forward(self, x, context=None):
        if self.checkpointing and self.training and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(self._forward, x, context, use_reentrant=False)
        return self._forward(x, context)


class SpatialTransformer(nn.Module):
    def __init__(self, ch: int, depth: int, context_dim: int, heads: int, head_dim: int, linear: bool):
        super().__init__()
        self.linear = linear
        self.norm = _norm(ch, eps=1e-6)
        self.proj_in = nn.Linear(ch, ch) if linear else nn.Conv2d(ch, ch, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(ch, context_dim, heads, head_dim) for _ in range(depth))
        self.proj_out = nn.Linear(ch, ch) if linear else nn.Conv2d(ch, ch, 1)

    def forward(self, x, context=None):
        b, c, h, w = x.shape
        x_in = x
        x = self.norm(x)
        if not self.linear:
            x = self.proj_in(x)
        x = x.permute(0, 2, 3, 1).reshape(b, h * w, c)
        if self.linear:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context)
        if self.linear:
            x = self.proj_out(x)
        x = x.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous()
        if not self.linear:
            x = self.proj_out(x)
        return x + x_in


class UNetModel(nn.Module):
    """ldm's UNetModel (SD1: conv proj, 8 heads; SDXL: linear proj, 64-wide heads, label_emb for the 2816-d y).

    cfg keys: model_channels, channel_mult, num_res_blocks, depths (per level), mid_depth, context_dim,
    num_heads or head_dim, linear, adm_in (0 = no label_emb)."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = dict(cfg)
        mc = cfg["model_channels"]
        mult = cfg["channel_mult"]
        nres = cfg["num_res_blocks"]
        depths = cfg["depths"]
        ctx = cfg["context_dim"]
        linear = cfg["linear"]
        ted = mc * 4
        self.model_channels = mc

        def heads_of(ch):
            if cfg.get("head_dim"):
                return ch // cfg["head_dim"], cfg["head_dim"]
            return cfg["num_heads"], ch // cfg["num_heads"]

        def attn(ch, depth):
            return SpatialTransformer(ch, depth, ctx, *heads_of(ch), linear)

        self.time_embed = nn.Sequential(nn.Linear(mc, ted), nn.SiLU(), nn.Linear(ted, ted))
        if cfg.get("adm_in"):
            self.label_emb = nn.Sequential(nn.Sequential(nn.Linear(cfg["adm_in"], ted), nn.SiLU(), nn.Linear(ted, ted)))
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(cfg.get("in_channels", 4), mc, 3, padding=1))])
        chans = [mc]
        ch = mc
        for level, m in enumerate(mult):
            for _ in range(nres):
                layers = [ResBlock(ch, ted, m * mc)]
                ch = m * mc
                if depths[level]:
                    layers.append(attn(ch, depths[level]))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                chans.append(ch)
            if level != len(mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                chans.append(ch)
        self.middle_block = TimestepEmbedSequential(ResBlock(ch, ted, ch), attn(ch, cfg["mid_depth"]), ResBlock(ch, ted, ch))
        self.output_blocks = nn.ModuleList()
        for level, m in list(enumerate(mult))[::-1]:
            for i in range(nres + 1):
                layers = [ResBlock(ch + chans.pop(), ted, m * mc)]
                ch = m * mc
                if depths[level]:
                    layers.append(attn(ch, depths[level]))
                if level and i == nres:
                    layers.append(Upsample(ch))
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(mc, cfg.get("out_channels", 4), 3, padding=1))

    def set_gradient_checkpointing(self, on: bool = True) -> None:
        for mod in self.modules():
            if isinstance(mod, BasicTransformerBlock):
                mod.checkpointing = on

    def forward(self, x, timesteps, context, y=None):
        if not torch.is_tensor(timesteps):
            timesteps = torch.tensor([timesteps], device=x.device)
        if timesteps.dim() == 0:
            timesteps = timesteps[None]
        timesteps = timesteps.expand(x.shape[0])
        dtype = self.time_embed[0].weight.dtype
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(dtype))
        if hasattr(self, "label_emb"):
            if y is None:
                raise ValueError("an SDXL U-Net needs the vector y (SDModel.sdxl_vector)")
            emb = emb + self.label_emb(y.to(dtype))
        h = x.to(dtype)
        context = context.to(dtype)
        hs = []
        for block in self.input_blocks:
            h = block(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb, context)
        return self.out(h)
