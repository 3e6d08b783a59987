"""Files written by version 1 keep loading through the one load function and compute what they
computed (tests/fixtures/v1, made by that version's own code).

The stored outputs were computed in float32 on another CPU, whose kernels round differently (up to
~1e-6 relative). Each model is therefore run here in float64, which removes this machine's rounding,
and compared with a tolerance that covers only the stored float32 rounding: a loading fault (a
missing layer, a wrong BN epsilon, a misplaced channel) moves outputs by orders of magnitude more.
`.ci/run` also runs these tests under other CPU kernels (marker `stored_numbers`)."""
import os

import pytest
import torch

import artifacts

pytestmark = pytest.mark.stored_numbers

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "v1")
EXPECTED = torch.load(os.path.join(FIXTURES, "expected_outputs.pt"), weights_only=True)
KIND = {"train_residual_best.pt": ("train", "residual"), "train_plain_keep_bn_last.pt": ("train", "plain"),
        "train_deploy.pt": ("deploy", "plain"), "recalibrated_keep_bn_deploy.pt": ("deploy", "plain"),
        "convert_keep_bn_deploy.pt": ("deploy", "plain"), "rmnet_se_deploy.pt": ("deploy", "plain"),
        "prune_sparse_best.pt": ("train", "residual"), "prune_rmnet_pruned.pt": ("deploy", "plain"),
        "prune_resnet_pruned.pt": ("pruned", "residual"), "state_dict_bare.pt": ("state_dict", "residual"),
        "state_dict_ddp_wrapped.pt": ("state_dict", "residual")}


@pytest.mark.parametrize("name", sorted(EXPECTED["outputs"]))
def test_version1_files_give_the_same_outputs(name):
    kwargs = {"name": "resnet18", "kwargs": {"widths": [8, 8, 16, 16]}} if name.startswith("state_dict") else {}
    art = artifacts.load(os.path.join(FIXTURES, name), **kwargs)
    assert (art.kind, art.spec.form) == KIND[name]
    stored = EXPECTED["outputs"][name]
    with torch.no_grad():
        out = art.model.double()(EXPECTED["input"].double())
    # float32 rounding of the stored side: relative 1e-5 of the output's scale
    torch.testing.assert_close(out, stored.double(), rtol=1e-5, atol=1e-5 * stored.abs().max().item())


def test_version1_settings_become_a_typed_spec():
    """What version 1 kept in untyped dicts: the trained input of a training run (from its data config,
    not the stem's nominal 32), the shortcut BNs of sparse training, the conversion of a deploy file."""
    best = artifacts.load(os.path.join(FIXTURES, "train_residual_best.pt"))
    assert (best.spec.name, best.spec.stem, best.spec.num_classes) == ("resnet18", "cifar", 10)
    assert best.spec.kwargs == {"widths": [8, 8, 16, 16]}
    assert (best.spec.input.size, best.spec.input.mean, best.spec.input.dataset) == (16, (0.5, 0.5, 0.5), "synthetic")
    assert artifacts.load(os.path.join(FIXTURES, "prune_sparse_best.pt")).spec.kwargs["shortcut_bn"] is True
    keep_bn = artifacts.load(os.path.join(FIXTURES, "convert_keep_bn_deploy.pt")).spec
    assert (keep_bn.conversion.fuse_bn, keep_bn.conversion.downsample) == (False, "reserve_input")
    assert artifacts.load(os.path.join(FIXTURES, "train_plain_keep_bn_last.pt")).spec.conversion.fuse_bn is False
