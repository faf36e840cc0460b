"""Where the shared fixtures are: `shared/` beside the repository (CI clones main next to it), else
/work/shared; LORA_STUDIO_FIXTURES overrides both."""

import os
from pathlib import Path


def _fixtures() -> str:
    if os.environ.get("LORA_STUDIO_FIXTURES"):
        return os.environ["LORA_STUDIO_FIXTURES"]
    beside = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
    return str(beside if beside.is_dir() else Path("/work/shared/fixtures"))


FIXTURES = _fixtures()
