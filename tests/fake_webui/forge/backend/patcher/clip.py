"""Fake backend.patcher.clip.CLIP: clone() and add_patches(*args, **kwargs) forwarded to its patcher."""
from backend.patcher.base import ModelPatcher


class CLIP:
    def __init__(self, cond_stage_model=None, patcher=None):
        self.cond_stage_model = cond_stage_model
        self.patcher = patcher if patcher is not None else ModelPatcher(cond_stage_model)

    def clone(self):
        return CLIP(self.cond_stage_model, self.patcher.clone())

    def add_patches(self, *arg, **kwargs):
        return self.patcher.add_patches(*arg, **kwargs)
