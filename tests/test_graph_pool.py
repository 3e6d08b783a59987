"""An average pool inside a residual branch (window == stride, no padding) composed into the conv after it,
and the legacy SE-ResNets' SE module as a leaf: timm's anti-aliased ResNet-D (registered converter), a
user's block with the same shape (graph pass), legacy_seresnet*, and the pools that stay refused."""
import pytest
import torch
import torch.nn as nn

import rm
from bench import timm_coverage as cov
from rm.deploy import InputSizeCheck, input_multiple
from rm.layer import ConvLayer
from tests.helpers import FLOAT64_TOL, check_exact, randomize_bn


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny convs on a busy machine: one thread is many times faster than two."""


def test_a_pool_composes_into_a_padded_grouped_conv():
    """conv(avgpool_2(x)) as one 6x6 stride-2 conv: exact at even sizes, groups kept."""
    from rm.rules import after_avg_pool
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 12, 3, 1, 1, groups=4).double()
    pooled = after_avg_pool(ConvLayer.from_conv(conv), 2)
    assert pooled.kernel == (6, 6) and pooled.stride == (2, 2) and pooled.padding == (2, 2) and pooled.groups == 4
    x = torch.randn(2, 8, 12, 10, dtype=torch.float64)
    got = nn.functional.conv2d(x, pooled.weight, pooled.bias, pooled.stride, pooled.padding, groups=pooled.groups)
    torch.testing.assert_close(got, conv(nn.functional.avg_pool2d(x, 2)), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["legacy_seresnet18", "resnetaa34d", "seresnetaa50d", "resnet50_clip_gap"])
def test_the_timm_name_converts_exactly(name):
    """Float64, randomised BN statistics, 32x32, relative error <= 1e-10 (the sweep's check)."""
    assert cov.sweep_one(name).converted


def test_the_antialiased_resnet_d_checks_its_input_size():
    plain = rm.convert(cov.build("resnetaa34d"))
    assert isinstance(plain[0], InputSizeCheck) and input_multiple(plain) == 32
    with pytest.raises(ValueError, match="multiples of 32"):
        plain(torch.randn(1, 3, 48, 48))


def test_resnetaa50_converts_exactly_too():
    """Its shortcut's strided 1x1 conv reads pixel (2i, 2j): the top-left tap of the composed 2x2 stride-2 conv3,
    where the merge puts it. The branch's pool never touches the reserved channels."""
    assert cov.sweep_one("resnetaa50").converted


class PooledBranch(nn.Module):
    """ByobNet's CLIP bottleneck: 1x1, 3x3 (stride 1), ReLU, avg pool 2x2/2, `last` conv; shortcut avg pool then
    1x1 conv + BN."""

    def __init__(self, cin: int, mid: int, cout: int, last: int = 1, pool: nn.Module | None = None):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv2, self.bn2 = nn.Conv2d(mid, mid, 3, 1, 1, bias=False), nn.BatchNorm2d(mid)
        self.pool = pool or nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)
        self.conv3, self.bn3 = nn.Conv2d(mid, cout, last, 1, last // 2, bias=False), nn.BatchNorm2d(cout)
        self.short = nn.Sequential(nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False),
                                   nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.pool(torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))))
        return torch.relu(self.bn3(self.conv3(y)) + self.short(x))


def _net(**kw) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU(), PooledBranch(8, 6, 12, **kw), PooledBranch(12, 6, 16, **kw),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))


@pytest.mark.parametrize("last", [1, 3])
def test_the_graph_pass_composes_a_pool_in_the_branch(last):
    model = randomize_bn(_net(last=last), seed=1)
    plain = rm.convert(model)
    assert sum(isinstance(m, InputSizeCheck) for m in plain) == 2   # one per block, each on its own input
    assert not any(isinstance(m, nn.AvgPool2d) for m in plain)
    report = check_exact(model, 32)
    assert report["float64"]["max_rel"] < FLOAT64_TOL
    for size in (30, 34):   # odd at the first block, odd at the second
        with pytest.raises(ValueError, match="multiples of 2"):
            plain(torch.randn(1, 3, size, size))


@pytest.mark.parametrize("pool", [nn.AvgPool2d(3, 2, 1), nn.AvgPool2d((2, 3), (2, 3))])
def test_a_pool_whose_window_is_not_its_stride_stays_refused(pool):
    """Overlapping or padded, or a non-square window (read as square, it gave a wrong output shape)."""
    with pytest.raises(rm.ConversionError, match="its divisor varies at the border"):
        rm.convert(_net(pool=pool).eval())
