import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Small models on a shared 2-core machine: one thread is ~10× faster than two fighting for the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
