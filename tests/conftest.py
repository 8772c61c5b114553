import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny matmuls on a busy 2-core machine: OpenMP threads spin-wait for ~1 s a forward; one thread does not."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
