"""Where the test fixtures are: `tests/fixtures/` (key/shape manifests of real SD1.5/SDXL checkpoints and
the CLIP-L tokenizer files, i.e. facts about public models, kept in the repository so a plain clone tests
itself). LORA_STUDIO_FIXTURES overrides it."""

import os
from pathlib import Path

FIXTURES = os.environ.get("LORA_STUDIO_FIXTURES") or str(Path(__file__).resolve().parent / "fixtures")

# The repository root, for tests in any sub-folder of tests/.
REPO = Path(__file__).resolve().parent.parent
