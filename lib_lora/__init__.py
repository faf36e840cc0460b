"""LoRA Studio core: no WebUI imports here (plain torch, numpy, safetensors)."""

__version__ = "0.1.0"
