"""Text encoders with checkpoint naming: CLIP-L as transformers names it (`transformer.text_model.*`) and
OpenCLIP's text tower (`model.*`, fused attention, `text_projection`) as SDXL checkpoints store it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _causal_attention(q, k, v, heads: int):
    b, n, d = q.shape
    q, k, v = (t.view(b, n, heads, d // heads).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return out.transpose(1, 2).reshape(b, n, d)


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


# ---------------------------------------------------------------- transformers' CLIPTextModel naming

class CLIPAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x):
        return self.out_proj(_causal_attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.heads))


class CLIPMLP(nn.Module):
    def __init__(self, dim: int, inner: int, act: nn.Module):
        super().__init__()
        self.fc1 = nn.Linear(dim, inner)
        self.act = act
        self.fc2 = nn.Linear(inner, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, inner: int, act: nn.Module):
        super().__init__()
        self.self_attn = CLIPAttention(dim, heads)
        self.layer_norm1 = nn.LayerNorm(dim)
        self.mlp = CLIPMLP(dim, inner, act)
        self.layer_norm2 = nn.LayerNorm(dim)

    def forward(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEmbeddings(nn.Module):
    def __init__(self, vocab: int, dim: int, positions: int):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, dim)
        self.position_embedding = nn.Embedding(positions, dim)
        self.register_buffer("position_ids", torch.arange(positions).unsqueeze(0), persistent=True)

    def forward(self, ids):
        return self.token_embedding(ids) + self.position_embedding.weight[: ids.shape[1]].unsqueeze(0)


class CLIPEncoder(nn.Module):
    def __init__(self, layers: int, dim: int, heads: int, inner: int, act_name: str):
        super().__init__()
        self.layers = nn.ModuleList(
            CLIPEncoderLayer(dim, heads, inner, QuickGELU() if act_name == "quick_gelu" else nn.GELU())
            for _ in range(layers))


class CLIPTextTransformer(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.embeddings = CLIPEmbeddings(cfg["vocab"], cfg["width"], cfg["positions"])
        self.encoder = CLIPEncoder(cfg["layers"], cfg["width"], cfg["heads"], cfg["width"] * 4, cfg.get("act", "quick_gelu"))
        self.final_layer_norm = nn.LayerNorm(cfg["width"])


class _TextTower(nn.Module):
    """What both text towers share: `width` and the per-layer states `SDModel` picks a layer from.
    Subclasses give their embedding and their layers, named as in their checkpoints."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = dict(cfg)

    @property
    def width(self) -> int:
        return self.cfg["width"]

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def layers(self) -> nn.ModuleList:
        raise NotImplementedError

    def hidden_states(self, ids: torch.Tensor) -> list[torch.Tensor]:
        """Embedding output followed by every layer's output (transformers' `hidden_states`)."""
        x = self.embed(ids)
        out = [x]
        for layer in self.layers():
            x = layer(x)
            out.append(x)
        return out


class CLIPTextModel(_TextTower):
    """`transformer.text_model.*` of SD1's `cond_stage_model` and SDXL's `conditioner.embedders.0`."""

    kind = "clip"

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        self.text_model = CLIPTextTransformer(cfg)

    def embed(self, ids):
        return self.text_model.embeddings(ids)

    def layers(self):
        return self.text_model.encoder.layers

    def final_norm(self, x):
        return self.text_model.final_layer_norm(x)


# ---------------------------------------------------------------- OpenCLIP text tower naming

class FusedAttention(nn.Module):
    """nn.MultiheadAttention's parameter names (`in_proj_weight`, `in_proj_bias`, `out_proj`)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x):
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        return self.out_proj(_causal_attention(q, k, v, self.heads))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, dim: int, heads: int, inner: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = FusedAttention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(dim, inner))
        self.mlp.add_module("gelu", nn.GELU())
        self.mlp.add_module("c_proj", nn.Linear(inner, dim))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class OpenCLIPTransformer(nn.Module):
    def __init__(self, layers: int, dim: int, heads: int, inner: int):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(dim, heads, inner) for _ in range(layers))


class OpenCLIPText(_TextTower):
    """`conditioner.embedders.1.model.*` of SDXL (the visual tower is not part of a checkpoint)."""

    kind = "openclip"

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        w = cfg["width"]
        self.positional_embedding = nn.Parameter(torch.empty(cfg["positions"], w))
        self.text_projection = nn.Parameter(torch.empty(w, cfg["proj"]))
        self.logit_scale = nn.Parameter(torch.tensor(4.6052))
        self.token_embedding = nn.Embedding(cfg["vocab"], w)
        self.ln_final = nn.LayerNorm(w)
        self.transformer = OpenCLIPTransformer(cfg["layers"], w, cfg["heads"], w * 4)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=w ** -0.5)

    def embed(self, ids):
        return self.token_embedding(ids) + self.positional_embedding[: ids.shape[1]].unsqueeze(0)

    def layers(self):
        return self.transformer.resblocks

    def final_norm(self, x):
        return self.ln_final(x)

    def pooled(self, last: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Projected final-norm state at the end token (the highest id, as OpenCLIP finds it)."""
        x = self.ln_final(last)
        x = x[torch.arange(x.shape[0], device=x.device), ids.argmax(dim=-1)]
        return x @ self.text_projection


class Holder(nn.Module):
    """A named slot so state_dict keys carry the checkpoint's path segment (`transformer`, `model`)."""

    def __init__(self, **children):
        super().__init__()
        for name, mod in children.items():
            self.add_module(name, mod)
