"""Full-size conversion of every registered model (minutes on CPU): `scripts/test.sh -m slow`."""
import pytest

import models
import rm
from tests.helpers import randomize_bn


@pytest.mark.slow
# mobilenetv2 (ReLU6) has no exact RM form by design: tests/test_rm_amc.py checks its refusal
@pytest.mark.parametrize("name", [n for n in models.list_models() if n != "mobilenetv2"])
def test_every_registered_model_converts_exactly(name):
    stem = models.model_stems(name)[-1]  # the CIFAR stem when the model has one: small input
    model = randomize_bn(models.create_model(name, num_classes=10, stem=stem), seed=7)
    report = rm.verify_conversion(model, input_size=32 if stem == "cifar" else 64, batch=1)
    assert report["float64"]["max_rel"] < 1e-10, report
    assert report["float32"]["max_rel"] < 1e-5, report
