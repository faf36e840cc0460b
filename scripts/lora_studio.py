"""LoRA Studio for AUTOMATIC1111 / Forge: this file only imports and registers (logic: lora_studio_webui/)."""

import lora_studio_webui

lora_studio_webui.register()

from lora_studio_webui.script import LoraStudioScript  # noqa: E402,F401  (importing a Script subclass registers it)
from lora_studio_webui.xyz_blocks import BlockAnalyzerScript  # noqa: E402,F401  (LBW's Effective Block Analyzer)
