"""A plain-torch Stable Diffusion model (SD1, SDXL) with checkpoint naming: build, load, tokenize, encode,
sample. No diffusers/transformers at run time."""

from .model import SDModel, build_model, config, save_model, tokenize  # noqa: F401
from .loader import load_model  # noqa: F401
