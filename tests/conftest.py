import pytest
import torch
import torch.nn as nn


def randomize_bn(model: nn.Module, seed: int = 0, gamma_scale: float = 1.0) -> nn.Module:
    """Give every BatchNorm non-trivial affine parameters and running statistics (default BN
    statistics are an identity map and hide conversion bugs); returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            with torch.no_grad():
                m.weight.copy_((torch.rand(c, generator=g) + 0.5) * gamma_scale)
                m.bias.copy_(torch.randn(c, generator=g) * 0.3)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
    return model.eval()


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
