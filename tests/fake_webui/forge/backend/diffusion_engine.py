"""Fake Forge diffusion engine: the attributes processing and the Lora handler use."""
import torch

from backend.patcher.base import ModelPatcher
from backend.patcher.clip import CLIP


class ForgeObjects:
    def __init__(self, unet, clip, vae=None, clipvision=None):
        self.unet, self.clip, self.vae, self.clipvision = unet, clip, vae, clipvision

    def shallow_copy(self):
        return ForgeObjects(self.unet, self.clip, self.vae, self.clipvision)


class KModel(torch.nn.Module):
    def __init__(self, diffusion_model):
        super().__init__()
        self.diffusion_model = diffusion_model
        self.storage_dtype = torch.float32


class StableDiffusion:
    """`root` is tests.models.build_model(..., a1111=False): canonical names model.diffusion_model / cond_stage_model."""

    def __init__(self, root):
        unet = ModelPatcher(KModel(root.model.diffusion_model))
        clip = CLIP(torch.nn.ModuleDict({"clip_l": root.cond_stage_model}))
        self.forge_objects = ForgeObjects(unet, clip)
        self.forge_objects_original = self.forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()
        self.current_lora_hash = str([])
        self.is_sd1, self.is_sd2, self.is_sdxl = True, False, False
