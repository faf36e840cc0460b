"""Small readers for test assertions."""
from modules.infotext_utils import parse_generation_parameters


def blocks_field(infotext: str) -> dict:
    from lora_studio_webui.infotext import parse_field
    params = parse_generation_parameters(infotext)
    return dict(parse_field(params.get("LoRA Studio blocks", "")))
