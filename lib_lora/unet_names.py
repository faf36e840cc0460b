"""diffusers U-Net module paths ↔ compvis (A1111) paths, by rule, both ways: `diffusers_to_compvis` (diffusers/PEFT
LoRA keys, a diffusers U-Net in `host.py`), `compvis_to_diffusers` (kohya sd-scripts' names for SD1/SD2, which it
builds on the diffusers U-Net), and `translate_unet` the same rules on flat (`_`-joined) kohya paths."""

from __future__ import annotations

import functools
import re

from lib_lora.arch import UNET


_RES_CHILD = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
              ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection"))


def _child(kind: str, rest: str, sep: str) -> str:
    if kind == "resnets":
        for old, new in _RES_CHILD:
            if rest == old or rest.startswith(old + sep):
                return new.replace(".", sep) + rest[len(old):]
    return rest


@functools.lru_cache(maxsize=64)
def _unet_rules(sep: str):
    s = re.escape(sep)
    return [
        ("down", re.compile(rf"down_blocks{s}(\d+){s}(attentions|resnets){s}(\d+){s}(.+)")),
        ("downsample", re.compile(rf"down_blocks{s}(\d+){s}downsamplers{s}0{s}conv(.*)")),
        ("mid", re.compile(rf"mid_block{s}(attentions|resnets){s}(\d+){s}(.+)")),
        ("up", re.compile(rf"up_blocks{s}(\d+){s}(attentions|resnets){s}(\d+){s}(.+)")),
        ("upsample", re.compile(rf"up_blocks{s}(\d+){s}upsamplers{s}0{s}conv(.*)")),
        ("time", re.compile(rf"time_embedding{s}linear_(\d)(.*)")),
        ("add", re.compile(rf"add_embedding{s}linear_(\d)(.*)")),
        ("simple", re.compile(rf"(conv_in|conv_norm_out|conv_out)((?:{s}.*)?)")),
    ]


def translate_unet(path: str, sep: str, arch: str) -> str | None:
    """diffusers U-Net path → compvis path relative to model.diffusion_model, in the same separator."""
    j = sep.join
    for kind, rx in _unet_rules(sep):
        m = rx.fullmatch(path)
        if not m:
            continue
        g = m.groups()
        if kind == "down":
            i, what, k, rest = int(g[0]), g[1], int(g[2]), g[3]
            return j(["input_blocks", str(1 + 3 * i + k), "1" if what == "attentions" else "0", _child(what, rest, sep)])
        if kind == "downsample":
            return j(["input_blocks", str(3 + 3 * int(g[0])), "0", "op"]) + g[1]
        if kind == "mid":
            what, k, rest = g
            return j(["middle_block", "1" if what == "attentions" else str(2 * int(k)), _child(what, rest, sep)])
        if kind == "up":
            i, what, k, rest = int(g[0]), g[1], int(g[2]), g[3]
            return j(["output_blocks", str(3 * i + k), "1" if what == "attentions" else "0", _child(what, rest, sep)])
        if kind == "upsample":
            i = int(g[0])
            # the upsampler follows the attention when the up block has one: SD1 up_blocks.0 has none, SDXL's has
            sub = "2" if (arch == "sdxl" or i > 0) else "1"
            return j(["output_blocks", str(3 * i + 2), sub, "conv"]) + g[1]
        if kind == "time":
            return j(["time_embed", str(2 * int(g[0]) - 2)]) + g[1]
        if kind == "add":
            return j(["label_emb", "0", str(2 * int(g[0]) - 2)]) + g[1]
        if kind == "simple":
            return {"conv_in": j(["input_blocks", "0", "0"]), "conv_norm_out": j(["out", "0"]),
                    "conv_out": j(["out", "2"])}[g[0]] + g[1]
    return None


def diffusers_to_compvis(path: str, arch: str = "sd1") -> str | None:
    """`down_blocks.1.attentions.0.proj_in` → `model.diffusion_model.input_blocks.4.1.proj_in` (None if no rule).

    Pure: accepts an optional `unet.` prefix and trailing `.weight`/`.bias`; SDXL differs only in the
    up_blocks.0 upsampler (output_blocks.2.2.conv instead of .2.1.conv).
    """
    if path.startswith("unet."):
        path = path[5:]
    rel = translate_unet(path, ".", arch)
    return None if rel is None else UNET + rel


def compvis_to_diffusers(rel: str, arch: str = "sd1") -> str | None:
    """The inverse of `translate_unet` on dotted paths relative to the U-Net: `input_blocks.4.1.proj_in` →
    `down_blocks.1.attentions.0.proj_in` (None for a path diffusers has no name for). kohya sd-scripts builds its
    SD1/SD2 networks on the diffusers U-Net, so this is how it names their modules."""
    parts = rel.split(".")

    def res(prefix: str, rest: list) -> str | None:
        child = ".".join(rest)
        for old, new in _RES_CHILD:
            if child == new or child.startswith(new + "."):
                return f"{prefix}.{old}{child[len(new):]}"
        return None

    try:
        head, n = parts[0], int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
        if head == "input_blocks" and n is not None:
            if n == 0:
                return "conv_in" + rel[len("input_blocks.0.0"):] if parts[2] == "0" else None
            i, k = divmod(n - 1, 3)
            if k == 2:
                return f"down_blocks.{i}.downsamplers.0.conv" + rel[len(f"input_blocks.{n}.0.op"):] \
                    if parts[2:4] == ["0", "op"] else None
            if parts[2] == "0":
                return res(f"down_blocks.{i}.resnets.{k}", parts[3:])
            return f"down_blocks.{i}.attentions.{k}." + ".".join(parts[3:]) if parts[2] == "1" else None
        if head == "middle_block" and n is not None:
            if n == 1:
                return "mid_block.attentions.0." + ".".join(parts[2:])
            return res(f"mid_block.resnets.{n // 2}", parts[2:]) if n in (0, 2) else None
        if head == "output_blocks" and n is not None:
            i, k = divmod(n, 3)
            if parts[2] == "0":
                return res(f"up_blocks.{i}.resnets.{k}", parts[3:])
            if parts[3] == "conv" and k == 2 and parts[2] == ("2" if (arch == "sdxl" or i > 0) else "1"):
                return f"up_blocks.{i}.upsamplers.0.conv" + rel[len(".".join(parts[:4])):]
            return f"up_blocks.{i}.attentions.{k}." + ".".join(parts[3:]) if parts[2] == "1" else None
        if head in ("time_embed", "label_emb"):
            j = parts[1] if head == "time_embed" else parts[2]
            base = "time_embedding" if head == "time_embed" else "add_embedding"
            return f"{base}.linear_{int(j) // 2 + 1}" if j in ("0", "2") else None
        if head == "out" and n in (0, 2):
            return ("conv_norm_out", None, "conv_out")[n] + rel[len(f"out.{n}"):]
    except IndexError:
        return None
    return None
