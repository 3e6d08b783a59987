"""Files written by version 1 keep loading and compute what they computed (tests/fixtures/v1)."""
import os

import pytest
import torch

import models
import rm
from engine.checkpoint import load_checkpoint, model_from_checkpoint
from models.loading import load_pretrained
from prune.artifact import load_pruned_residual, load_residual

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "v1")
EXPECTED = torch.load(os.path.join(FIXTURES, "expected_outputs.pt"), weights_only=True)


def _load(name):
    path = os.path.join(FIXTURES, name)
    if name.endswith("deploy.pt") or name == "prune_rmnet_pruned.pt":
        return rm.load_deploy(path)[0]
    if name.startswith("train_"):
        return model_from_checkpoint(load_checkpoint(path), path)
    if name == "prune_resnet_pruned.pt":
        return load_pruned_residual(path)[0]
    if name == "prune_sparse_best.pt":
        return load_residual(path)
    model = models.create_model("resnet18", num_classes=10, stem="cifar", widths=[8, 8, 16, 16])
    load_pretrained(model, path)
    return model


@pytest.mark.parametrize("name", sorted(EXPECTED["outputs"]))
def test_version1_files_give_the_same_outputs(name):
    with torch.no_grad():
        out = _load(name).eval()(EXPECTED["input"])
    torch.testing.assert_close(out, EXPECTED["outputs"][name], rtol=0, atol=0)
