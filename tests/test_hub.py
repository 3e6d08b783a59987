"""torch.hub: every registered model loads from this repository with `source="local"`."""
import importlib.util
import os

import pytest
import torch

import models
from tests.helpers import randomize_bn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Small models on shared cores: one thread is many times faster than two."""


def _hubconf():
    spec = importlib.util.spec_from_file_location("hubconf", os.path.join(ROOT, "hubconf.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _meta_shapes(model: torch.nn.Module) -> dict:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_every_registered_model_loads_from_the_hub():
    """torch.hub lists an entry point per registry name (the callables not starting with `_`), and each
    loads (shape-only, on the meta device) the registry's model."""
    hubconf = _hubconf()
    assert {n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith("_")} == set(models.list_models())
    families = {}
    for name in models.list_models():
        with torch.device("meta"):
            model = torch.hub.load(ROOT, name, source="local", verbose=False)
        families.setdefault(models.model_family(name), (name, model))
    for name, model in families.values():   # one per family against the registry
        with torch.device("meta"):
            ours = models.create_model(name, stem=models.model_stems(name)[0])
        assert type(model) is type(ours) and _meta_shapes(model) == _meta_shapes(ours), name


def test_hub_arguments_and_weights(tmp_path):
    narrow = {"widths": [16, 32, 64, 128]}
    source = randomize_bn(models.create_model("rmnet26x3_32", num_classes=10, stem="cifar", **narrow), seed=1)
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "w.pth")
    loaded = torch.hub.load(ROOT, "rmnet26x3_32", source="local", weights=str(tmp_path / "w.pth"), **narrow)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), source(x), rtol=0, atol=0)
    built = torch.hub.load(ROOT, "resnet20", source="local", stem="cifar", num_classes=10)
    assert built.fc.out_features == 10
    with pytest.raises(ValueError, match="no pretrained weights are published for resnet20; pass weights=PATH"):
        torch.hub.load(ROOT, "resnet20", source="local", pretrained=True)
