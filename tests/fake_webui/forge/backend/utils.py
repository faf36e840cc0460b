"""Fake backend.utils: only the state-dict loader."""
from safetensors.torch import load_file


def load_torch_file(ckpt, safe_load=False, device=None):
    return load_file(ckpt)
