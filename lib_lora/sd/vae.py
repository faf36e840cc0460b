"""The KL autoencoder (`first_stage_model.*`) with ldm's module names: encoder/decoder, mid attention."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .unet import GroupNorm32, Upsample  # the same module and key names (`conv`) in both


def _norm(ch: int) -> nn.GroupNorm:
    return GroupNorm32(32, ch, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, ch: int, out: int):
        super().__init__()
        self.norm1 = _norm(ch)
        self.conv1 = nn.Conv2d(ch, out, 3, padding=1)
        self.norm2 = _norm(out)
        self.conv2 = nn.Conv2d(out, out, 3, padding=1)
        if ch != out:
            self.nin_shortcut = nn.Conv2d(ch, out, 1)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.norm = _norm(ch)
        self.q = nn.Conv2d(ch, ch, 1)
        self.k = nn.Conv2d(ch, ch, 1)
        self.v = nn.Conv2d(ch, ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        n = self.norm(x)
        q, k, v = (m(n).reshape(b, 1, c, h * w).transpose(2, 3) for m in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v).transpose(2, 3).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric padding, as the original


class Mid(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.block_1 = ResnetBlock(ch, ch)
        self.attn_1 = AttnBlock(ch)
        self.block_2 = ResnetBlock(ch, ch)

    def forward(self, x):
        return self.block_2(self.attn_1(self.block_1(x)))


class Level(nn.Module):
    def __init__(self, blocks, sample=None, name=""):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList()
        if sample is not None:
            self.add_module(name, sample)


class Encoder(nn.Module):
    def __init__(self, ch: int, mult, nres: int, z: int):
        super().__init__()
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        self.down = nn.ModuleList()
        cin = ch
        for i, m in enumerate(mult):
            blocks = []
            for _ in range(nres):
                blocks.append(ResnetBlock(cin, ch * m))
                cin = ch * m
            last = i == len(mult) - 1
            self.down.append(Level(blocks, None if last else Downsample(cin), "downsample"))
        self.mid = Mid(cin)
        self.norm_out = _norm(cin)
        self.conv_out = nn.Conv2d(cin, 2 * z, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, ch: int, mult, nres: int, z: int):
        super().__init__()
        cin = ch * mult[-1]
        self.conv_in = nn.Conv2d(z, cin, 3, padding=1)
        self.mid = Mid(cin)
        levels = []
        for i in reversed(range(len(mult))):
            blocks = []
            for _ in range(nres + 1):
                blocks.append(ResnetBlock(cin, ch * mult[i]))
                cin = ch * mult[i]
            levels.insert(0, Level(blocks, Upsample(cin) if i else None, "upsample"))
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(cin)
        self.conv_out = nn.Conv2d(cin, 3, 3, padding=1)

    def forward(self, z):
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            for block in level.block:
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class AutoencoderKL(nn.Module):
    """`encode(images in [-1, 1]) -> (mean, logvar)`, `decode(z) -> images`; latents are unscaled (the caller
    multiplies by `SDModel.scale_factor`)."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = dict(cfg)
        ch, mult, nres, z = cfg["ch"], cfg["ch_mult"], cfg["num_res_blocks"], cfg["z"]
        self.encoder = Encoder(ch, mult, nres, z)
        self.decoder = Decoder(ch, mult, nres, z)
        self.quant_conv = nn.Conv2d(2 * z, 2 * z, 1)
        self.post_quant_conv = nn.Conv2d(z, z, 1)

    def encode(self, x):
        dtype = self.quant_conv.weight.dtype
        mean, logvar = self.quant_conv(self.encoder(x.to(dtype))).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z):
        return self.decoder(self.post_quant_conv(z.to(self.post_quant_conv.weight.dtype)))
