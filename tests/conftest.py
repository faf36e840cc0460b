import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """Patching is memory-bound element-wise work; on a loaded 2-core box one thread is several times faster."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
