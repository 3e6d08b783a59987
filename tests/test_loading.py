"""Checkpoint import: each foreign layout is built here with its own key names, saved the way its
authors save it, loaded with the one load function (`artifacts.load`), and compared output for output."""
import pytest
import torch
import torchvision

import artifacts
import models
from artifacts import CheckpointError
from tests.helpers import randomize_bn

_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _same_outputs(a, b, size=32):
    x = torch.randn(2, 3, size, size)
    torch.testing.assert_close(a.eval()(x), b.eval()(x), rtol=0, atol=0)


def _authors_rmnext(model: torch.nn.Module, old: bool) -> dict:
    """The RMNet authors' RMNeXt state dict: conv33/bn33/conv11/bn11 stem branches, tracking-only
    BNs `running1`/`running2` in every block, `stage0` and `running` stem BNs in older files."""
    stem_names = {"rbr_dense.conv": "conv33", "rbr_dense.bn": "bn33", "rbr_1x1.conv": "conv11", "rbr_1x1.bn": "bn11"}
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("layer0."):
            _, index, rest = key.split(".", 2)
            branch, leaf = rest.rsplit(".", 1)
            key = f"{'stage0' if old else 'layer0'}.{index}.{stem_names[branch]}.{leaf}"
        state[key] = value
    for name, module in model.named_modules():
        if name.startswith("layer") and name.count(".") == 1 and not name.startswith("layer0"):
            for running in ("running1", "running2"):
                for leaf in _BN[2:]:
                    state[f"{name}.{running}.{leaf}"] = torch.ones(module.conv1.in_channels)
    if old:
        for index in range(len(model.layer0)):
            state[f"layer0.{index}.running.running_mean"] = torch.zeros(model.layer0[index].rbr_dense.conv.out_channels)
    return {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 120, "best_acc1": 79.5}


NARROW = {"widths": [16, 32, 64, 128]}


@pytest.mark.parametrize("old", [False, True])
def test_authors_rmnext_checkpoint_round_trip(tmp_path, old):
    source = randomize_bn(models.create_model("rmnet26x3_32", num_classes=5, **NARROW), seed=4)
    path = tmp_path / "rmnext.pth.tar"
    torch.save(_authors_rmnext(source, old), path)
    art = artifacts.load(path, name="rmnet26x3_32", kwargs=NARROW)
    assert (art.kind, art.meta["layout"], art.spec.num_classes, art.spec.stem) == ("state_dict", "rmnet-authors", 5,
                                                                                     "imagenet")
    assert art.meta["dropped"] and all(".running" in k for k in art.meta["dropped"])
    _same_outputs(art.model, source, 64)


def test_torchvision_resnet_checkpoint_loads(tmp_path):
    tv = randomize_bn(torchvision.models.resnet18(num_classes=10), seed=2)
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in tv.state_dict().items()}}, path)
    art = artifacts.load(path, name="resnet18")
    assert (art.meta["layout"], art.spec.num_classes, art.spec.stem) == ("native", 10, "imagenet")
    _same_outputs(art.model, tv, 64)


def test_torchvision_resnext_state_dict_loads(tmp_path):
    tv = randomize_bn(torchvision.models.resnext50_32x4d(num_classes=10), seed=3)
    torch.save(tv.state_dict(), tmp_path / "x.pth")
    _same_outputs(artifacts.load(tmp_path / "x.pth", name="resnext50_32x4d").model, tv, 64)


def _repvgg_authors(blocks, widths, num_classes, seed=0) -> dict:
    """The RepVGG authors' training-form keys, written from their naming, with random values."""
    g = torch.Generator().manual_seed(seed)

    def conv_bn(prefix, cin, cout, k):
        out = {f"{prefix}.conv.weight": torch.randn(cout, cin, k, k, generator=g)}
        return out | {f"{prefix}.bn.{leaf}": _bn_value(leaf, cout, g) for leaf in _BN}

    layout = [("stage0", min(64, widths[0]), 2)] + [(f"stage{s + 1}.{i}", w, 2 if i == 0 else 1)
                                                   for s, (n, w) in enumerate(zip(blocks, widths)) for i in range(n)]
    state, prev = {}, 3
    for prefix, cout, stride in layout:
        state |= conv_bn(f"{prefix}.rbr_dense", prev, cout, 3) | conv_bn(f"{prefix}.rbr_1x1", prev, cout, 1)
        if prev == cout and stride == 1:
            state |= {f"{prefix}.rbr_identity.{leaf}": _bn_value(leaf, cout, g) for leaf in _BN}
        prev = cout
    return state | {"linear.weight": torch.randn(num_classes, prev, generator=g),
                    "linear.bias": torch.randn(num_classes, generator=g)}


def _bn_value(leaf, c, g):
    if leaf == "num_batches_tracked":
        return torch.tensor(100)
    return torch.rand(c, generator=g) + 0.5 if leaf in ("weight", "running_var") else torch.randn(c, generator=g)


A0_NARROW = {"widths": [8, 16, 32, 64]}


def test_repvgg_authors_checkpoint_loads(tmp_path):
    state = _repvgg_authors([2, 4, 14, 1], A0_NARROW["widths"], 5)
    path = tmp_path / "RepVGG-A0-train.pth"
    torch.save(state, path)
    art = artifacts.load(path, name="repvgg_a0", kwargs=A0_NARROW)
    assert art.meta["layout"] == "native"
    loaded = art.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_deploy_form_repvgg_is_refused(tmp_path):
    state = _repvgg_authors([2, 4, 14, 1], A0_NARROW["widths"], 5)
    torch.save({k.replace("rbr_dense.conv", "rbr_reparam"): v for k, v in state.items() if "rbr_dense.conv" in k},
               tmp_path / "deploy.pth")
    with pytest.raises(CheckpointError, match="deploy-form RepVGG"):
        artifacts.load(tmp_path / "deploy.pth", name="repvgg_a0", kwargs=A0_NARROW)


def test_torchvision_mobilenetv2_is_refused_with_the_reason(tmp_path):
    torch.save(torchvision.models.mobilenet_v2(num_classes=10).state_dict(), tmp_path / "mbv2.pth")
    with pytest.raises(CheckpointError, match="torchvision MobileNetV2.*MobileNetV1"):
        artifacts.load(tmp_path / "mbv2.pth", name="mobilenetv2_rm")


def test_mismatch_names_the_keys(tmp_path):
    source = models.create_model("resnet20", num_classes=10, stem="cifar").state_dict()
    del source["layer1.0.bn1.running_var"]
    source["extra.weight"] = torch.zeros(1)
    torch.save(source, tmp_path / "r20.pth")
    with pytest.raises(CheckpointError) as err:
        artifacts.load(tmp_path / "r20.pth", name="resnet20", num_classes=100)
    message = str(err.value)
    for part in ("resnet20", "missing keys (1): layer1.0.bn1.running_var", "unexpected keys (1): extra.weight",
                 "fc.weight: file (10, 64), model (100, 64)"):
        assert part in message


class _NotATensor:
    pass


def test_unsafe_pickle_is_not_executed(tmp_path):
    path = tmp_path / "unsafe.pth"
    torch.save({"state_dict": {}, "payload": _NotATensor()}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        artifacts.load(path, name="resnet20")
