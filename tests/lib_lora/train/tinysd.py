"""A small runnable SD1-shaped model whose random weights let a LoRA learn (the memorisation test): a U-Net
with a ResBlock, cross-attention transformers, a downsampler and an upsampler under their real SD1 compvis
names (input_blocks.1.1.transformer_blocks.0.attn2.to_k, …), a transformers CLIP text encoder (HF names under
cond_stage_model.transformer.) and a convolutional VAE encoder. Random weights, small widths; the same
interface as `lib_lora.sd.SDModel` as far as the trainer uses it."""

from __future__ import annotations

import math
import zlib

import torch
import torch.nn.functional as F
from torch import nn

C, CTX, EMB = 32, 32, 128


class ResBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.in_layers = nn.Sequential(nn.GroupNorm(8, cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(EMB, cout))
        self.out_layers = nn.Sequential(nn.GroupNorm(8, cout), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(cout, cout, 3, padding=1))
        self.skip_connection = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb, ctx=None):
        h = self.in_layers(x) + self.emb_layers(emb)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Attention(nn.Module):
    def __init__(self, dim, ctx_dim, heads=4):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(ctx_dim, dim, bias=False)
        self.to_v = nn.Linear(ctx_dim, dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(0.0))

    def forward(self, x, ctx=None):
        ctx = x if ctx is None else ctx
        b, n, d = x.shape
        q, k, v = (t.view(b, -1, self.heads, d // self.heads).transpose(1, 2)
                   for t in (self.to_q(x), self.to_k(ctx), self.to_v(ctx)))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        return self.to_out(out)


class GEGLU(nn.Module):
    def __init__(self, dim, inner):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x):
        a, g = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(g)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.attn1, self.attn2 = Attention(dim, dim), Attention(dim, CTX)
        self.ff = nn.Module()
        self.ff.net = nn.Sequential(GEGLU(dim, dim * 4), nn.Dropout(0.0), nn.Linear(dim * 4, dim))
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x, ctx):
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), ctx)
        return x + self.ff.net(self.norm3(x))


class SpatialTransformer(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = nn.GroupNorm(8, dim)
        self.proj_in = nn.Conv2d(dim, dim, 1)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(dim)])
        self.proj_out = nn.Conv2d(dim, dim, 1)

    def forward(self, x, emb, ctx):
        b, c, h, w = x.shape
        y = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)
        for blk in self.transformer_blocks:
            y = blk(y, ctx)
        return x + self.proj_out(y.transpose(1, 2).reshape(b, c, h, w))


class Down(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.op = nn.Conv2d(dim, dim, 3, stride=2, padding=1)

    def forward(self, x, emb, ctx):
        return self.op(x)


class Up(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x, emb, ctx):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Seq(nn.ModuleList):
    def forward(self, x, emb, ctx):
        for m in self:
            x = m(x, emb, ctx) if not isinstance(m, nn.Conv2d) else m(x)
        return x


class UNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.time_embed = nn.Sequential(nn.Linear(C, EMB), nn.SiLU(), nn.Linear(EMB, EMB))
        self.input_blocks = nn.ModuleList([
            Seq([nn.Conv2d(4, C, 3, padding=1)]), Seq([ResBlock(C, C), SpatialTransformer(C)]),
            Seq([ResBlock(C, C), SpatialTransformer(C)]), Seq([Down(C)]),
            Seq([ResBlock(C, C), SpatialTransformer(C)]), Seq([ResBlock(C, C), SpatialTransformer(C)])])
        self.middle_block = Seq([ResBlock(C, C), SpatialTransformer(C), ResBlock(C, C)])
        self.output_blocks = nn.ModuleList([
            Seq([ResBlock(2 * C, C)]), Seq([ResBlock(2 * C, C)]), Seq([ResBlock(2 * C, C), Up(C)]),
            Seq([ResBlock(2 * C, C), SpatialTransformer(C)]), Seq([ResBlock(2 * C, C), SpatialTransformer(C)]),
            Seq([ResBlock(2 * C, C), SpatialTransformer(C)])])
        self.out = nn.Sequential(nn.GroupNorm(8, C), nn.SiLU(), nn.Conv2d(C, 4, 3, padding=1))

    def forward(self, x, timesteps, context, y=None):
        half = C // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half).to(x.device)
        args = timesteps.float()[:, None] * freqs[None]
        emb = self.time_embed(torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(x.dtype))
        hs, h = [], x
        for blk in self.input_blocks:
            h = blk(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context)
        for blk in self.output_blocks:
            h = blk(torch.cat([h, hs.pop()], dim=1), emb, context)
        return self.out(h)


class VAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.SiLU(),
                                     nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.SiLU(),
                                     nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.SiLU(), nn.Conv2d(16, 8, 1))

    def encode(self, img):
        mean, logvar = self.encoder(img).chunk(2, dim=1)
        return mean, logvar.clamp(-30, 20)


class TinySD(nn.Module):
    arch = "sd1"
    scale_factor = 0.18215

    def __init__(self, seed: int = 0):
        super().__init__()
        from transformers import CLIPTextConfig, CLIPTextModel

        torch.manual_seed(seed)
        self.unet = UNet()
        self.vae = VAE()
        te = CLIPTextModel(CLIPTextConfig(vocab_size=1000, hidden_size=CTX, intermediate_size=64,
                                          num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77))
        self.text_encoders = nn.ModuleList([te])
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
        self.alphas_cumprod = torch.cumprod(1 - betas, 0).float()

    def tokenize(self, prompts, max_length=75):
        out = []
        for p in prompts:
            ids = [1] + [zlib.crc32(w.encode()) % 997 + 2 for w in p.replace(",", " ").split()][:75] + [0]
            out.append(ids + [0] * (77 - len(ids)))
        return torch.tensor(out)

    def encode_text(self, prompts, clip_skip=None, max_length=75):
        te = self.text_encoders[0]
        ids = self.tokenize(prompts).to(next(te.parameters()).device)
        out = te(input_ids=ids, output_hidden_states=True)
        if clip_skip and clip_skip > 1:
            h = te.text_model.final_layer_norm(out.hidden_states[-clip_skip])
        else:
            h = out.last_hidden_state
        return h, None

    def state_dict(self, *a, **k):
        sd = {}
        for k_, v in self.unet.state_dict().items():
            sd["model.diffusion_model." + k_] = v
        for k_, v in self.text_encoders[0].state_dict().items():
            sd["cond_stage_model.transformer." + k_] = v
        for k_, v in self.vae.state_dict().items():
            sd["first_stage_model." + k_] = v
        return sd


def build(seed: int = 0) -> TinySD:
    return TinySD(seed)
