"""A fake Forge around LoRA Studio: the fake A1111 `modules` plus the Forge pieces in forge/ (see its README).

The model is a Forge-style engine object over real SD1.5 layer names; `FakeForge.unet`/`.clip` are the
original patchers whose clones record every add_patches call.
"""

from __future__ import annotations

import sys

from .harness import HERE, LAYERS, FakeWebui

FORGE = HERE / "forge"
OUTSIDE = "model.diffusion_model.time_embed.0"          # a U-Net layer outside the block table
FORGE_LAYERS = LAYERS + (OUTSIDE,)
_FORGE_OWNED = ("backend", "modules_forge", "networks")


def _purge_forge():
    for name in list(sys.modules):
        if name.split(".")[0] in _FORGE_OWNED:
            del sys.modules[name]


class FakeForge(FakeWebui):
    def __init__(self, tmp_path, builtin: bool = False, layers=FORGE_LAYERS, seed: int = 0):
        _purge_forge()
        super().__init__(tmp_path, builtin=False, seed=seed, layers=layers)
        sys.path.insert(0, str(FORGE))
        if builtin:
            sys.path.insert(0, str(FORGE / "builtin"))
            __import__("networks")                            # Forge loads it as a global module
        from backend.diffusion_engine import StableDiffusion
        from modules import sd_models, shared

        from tests.models import build_model
        self.root = build_model("sd15", include=self.include, a1111=False, seed=seed)
        self.engine = StableDiffusion(self.root)
        shared.sd_model = self.engine
        sd_models.model_data.sd_model = self.engine

    @property
    def unet(self):
        return self.engine.forge_objects_original.unet

    @property
    def clip(self):
        return self.engine.forge_objects_original.clip

    def close(self):
        super().close()
        _purge_forge()


def forge_key(layer: str) -> str:
    """Forge's parameter name for a canonical layer (U-Net: diffusion_model.…, SD1 CLIP: clip_l.…)."""
    if layer.startswith("model."):
        return layer[len("model."):] + ".weight"
    return "clip_l." + layer[len("cond_stage_model."):] + ".weight"
