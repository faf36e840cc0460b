import os
import tempfile

import pytest
import torch

# Merges remember input hashes in a cache file: tests (and the CLIs they start) use a temporary one, never
# the user's ~/.cache.
os.environ.setdefault("LORA_STUDIO_HASH_CACHE",
                      os.path.join(tempfile.mkdtemp(prefix="lora-studio-tests-"), "model-hashes.json"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Patching is memory-bound element-wise work; on a loaded 2-core box one thread is several times faster."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def webui(request, tmp_path):
    """A started fake AUTOMATIC1111 (tests/fake_webui) whose LoRA folder holds the files the test module lists
    in WEBUI_LORAS as (name, seed) pairs (default: `foo`, seed 1)."""
    from tests.fake_webui.harness import FakeWebui, write_lora

    w = FakeWebui(tmp_path)
    for name, seed in getattr(request.module, "WEBUI_LORAS", (("foo", 1),)):
        write_lora(w, name, seed=seed)
    w.start()
    yield w
    w.close()
