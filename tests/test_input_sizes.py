"""No silent wrong answer at any input size: a plain model exact only at some sizes refuses the others."""
from __future__ import annotations

import pytest
import timm
import torch

import rm
from tests.helpers import randomize_bn


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny convs on a busy machine: one thread is many times faster than two."""


def _resnet18d() -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("resnet18d", pretrained=False, channels=(8, 8, 16, 16), stem_width=8, num_classes=10)
    return randomize_bn(model.to(torch.float64))


def _rel_error(model, plain, size: int) -> float:
    x = torch.randn(1, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(size))
    with torch.no_grad():
        ref = model(x)
        return ((plain(x) - ref).abs().max() / ref.abs().max()).item()


def test_resnet_d_is_exact_or_refuses_each_input_size(tmp_path):
    model = _resnet18d()
    plain = rm.convert(model)
    assert _rel_error(model, plain, 64) <= 1e-10
    rm.save_deploy(plain, str(tmp_path / "plain.pt"))
    loaded, _ = rm.load_deploy(str(tmp_path / "plain.pt"))
    for net in (plain, loaded):
        for size in (72, 200):
            try:
                err = _rel_error(model, net, size)
            except ValueError as e:
                assert f"{size}x{size}" in str(e) and "multiples of 32" in str(e) and "\n" not in str(e)
            else:
                assert err <= 1e-10, f"silent wrong answer at {size}x{size}: relative error {err:.1e}"


def test_verification_runs_at_a_size_the_plain_model_accepts():
    report = rm.verify_conversion(_resnet18d(), input_size=48, dtypes=(torch.float64,))
    assert report["float64"]["max_rel"] <= 1e-10
