"""A standalone VAE file baked into a checkpoint merge (`merge_checkpoints(vae=…)`): its keys under
`first_stage_model.` in the original (ldm) naming, diffusers names translated, checked against model A from the
headers alone."""

from __future__ import annotations

import os

from lib_lora.arch import VAE
from lib_lora.errors import LoraStudioError

_VAE_IGNORED = ("loss.", "model_ema.")   # training leftovers in some VAE files (A1111 drops them too)
_ATTN_RENAME = {"group_norm": "norm", "to_q": "q", "query": "q", "to_k": "k", "key": "k", "to_v": "v",
                "value": "v", "to_out.0": "proj_out", "proj_attn": "proj_out"}


def vae_key_to_ldm(key: str, up_blocks: int = 4) -> str | None:
    """A standalone VAE file's key → its name under `first_stage_model.` (the original/ldm naming);
    diffusers names (down_blocks/up_blocks/mid_block…) are translated; None for keys to ignore."""
    import re

    if key.startswith(VAE):
        key = key[len(VAE):]
    if key.startswith(_VAE_IGNORED):
        return None
    if ".down_blocks." not in key and ".up_blocks." not in key and ".mid_block." not in key \
            and "conv_norm_out" not in key:
        return key   # already ldm-named
    key = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
    key = re.sub(r"\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r".down.\1.block.\2.", key)
    key = re.sub(r"\.down_blocks\.(\d+)\.downsamplers\.0\.", r".down.\1.downsample.", key)
    key = re.sub(r"\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
                 lambda mo: f".up.{up_blocks - 1 - int(mo[1])}.block.{mo[2]}.", key)
    key = re.sub(r"\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda mo: f".up.{up_blocks - 1 - int(mo[1])}.upsample.", key)
    key = re.sub(r"\.mid_block\.resnets\.(\d+)\.", lambda mo: f".mid.block_{int(mo[1]) + 1}.", key)
    mo = re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)$", key)
    if mo:
        part = _ATTN_RENAME.get(mo[2], mo[2])
        key = f"{mo[1]}.mid.attn_1.{part}.{mo[3]}"
    return key


def _vae_plan(vae, a, path) -> dict:
    """A's key → the VAE file's key that replaces it. Checked from the headers alone: every VAE tensor must
    land on a first_stage_model key of A with the same shape (a diffusers Linear [C, C] may fill an ldm
    1×1 conv [C, C, 1, 1])."""
    name = os.path.basename(os.fspath(path))
    ups = {int(k.split(".")[2]) for k in vae.keys() if ".up_blocks." in k}
    out = {}
    for key in vae.keys():
        ldm = vae_key_to_ldm(key, (max(ups) + 1) if ups else 4)
        if ldm is None:
            continue
        target = VAE + ldm
        if target not in a:
            raise LoraStudioError(f"VAE '{name}' has '{key}', which model A has no place for (no '{target}'); "
                                  f"pick a Stable Diffusion VAE (.safetensors)")
        sv, sa = tuple(vae.shape(key)), tuple(a.shape(target))
        if sv != sa and not (len(sv) == 2 and sa == sv + (1, 1)):
            raise LoraStudioError(f"VAE '{name}' does not fit model A: '{key}' has shape {list(sv)} but "
                                  f"'{target}' is {list(sa)}; pick a VAE made for this model")
        if not vae.dtype(key).is_floating_point:
            continue
        out[target] = key
    if not out:
        raise LoraStudioError(f"'{name}' holds no VAE weights (no encoder./decoder. keys); pick a VAE file")
    return out
