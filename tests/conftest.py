import pytest
import torch


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """One torch thread, deterministic algorithms restored afterwards: on a busy 2-core machine two
    OpenMP threads per process run tiny convs ~40x slower, and the resume tests enable determinism."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.use_deterministic_algorithms(False)
    torch.set_num_threads(threads)
