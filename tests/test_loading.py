"""Checkpoint import: each foreign layout is built here with its own key names, saved the way its
authors save it, loaded with the one load function (`artifacts.load`), and compared output for output."""
import pytest
import torch
import torchvision

import artifacts
import models
import rm
from artifacts import CheckpointError
from tests.authors_models import RepVGGDeploy, RMNeXt, RMRep, authors_checkpoint, randomized
from tests.helpers import randomize_bn

_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Small models on shared cores: one thread is many times faster than two."""


def _same_outputs(a, b, size=32):
    x = torch.randn(2, 3, size, size)
    torch.testing.assert_close(a.eval()(x), b.eval()(x), rtol=0, atol=0)


def _agrees(theirs: torch.nn.Module, ours: torch.nn.Module, size: int) -> None:
    """Our model (residual, and its RM conversion unless it is plain already) computes the authors' model
    built from the same tensors: in float64 (both hold the file's float32 values exactly)."""
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    ref = theirs.double()(x)
    ours = ours.double()
    outputs = [ours(x)] + ([rm.convert(ours)(x)] if not isinstance(ours, torch.nn.Sequential) else [])
    for out in outputs:
        assert ((out - ref).abs().max() / ref.abs().max()).item() <= 1e-12


NARROW = {"widths": [16, 32, 64, 128]}


@pytest.mark.parametrize("num_classes, stem", [(1000, "imagenet"), (10, "cifar")])
@pytest.mark.parametrize("running", [False, True], ids=["current", "before-dec-2021"])
def test_authors_rmnext_checkpoint_round_trip(tmp_path, num_classes, stem, running):
    """Their RMNeXt 26x3_32 as train.py saves it: an ImageNet stem of two indexed RepBlocks, or for other
    class counts one RepBlock without index; older files have a statistics-only `running` BN per stem block."""
    theirs = randomized(RMNeXt([2, 2, 2, 2], num_classes, 16, 3, 32, running), seed=4)
    path = tmp_path / "rmnext.pth.tar"
    torch.save(authors_checkpoint(theirs), path)
    art = artifacts.load(path, name="rmnet26x3_32", kwargs=NARROW)
    assert (art.kind, art.meta["layout"], art.spec.num_classes, art.spec.stem) == ("state_dict", "rmnet-authors",
                                                                                     num_classes, stem)
    statistics_only = [k for k in theirs.state_dict() if {"running", "running1", "running2"} & set(k.split("."))]
    assert statistics_only and sorted(art.meta["dropped"]) == sorted(statistics_only)
    _agrees(theirs, art.model, 64 if stem == "imagenet" else 32)


@pytest.mark.parametrize("name, depth, ratio, base", [("rmrepvgg21", 21, 0.25, 8), ("rmrepvgg69", 69, 0.5, 8),
                                                      ("repvgg21", 21, 0.0, 8), ("rmrepvgg21", 21, 0.25, 6)])
def test_authors_deep_rmrep_checkpoint_loads(tmp_path, name, depth, ratio, base):
    """Their rmrep_<N> / repvgg_<N>: `feature.<i>` blocks in forward order, RM blocks keeping the first
    int(ratio x C) channels (6 x 0.25 keeps 1); each maps onto our registry model of that depth."""
    theirs = randomized(RMRep(depth, 1000, ratio, base_wide=base), seed=depth)
    path = tmp_path / f"{name}.pth.tar"
    torch.save(authors_checkpoint(theirs), path)
    art = artifacts.load(path, name=name, kwargs={"widths": [base, 2 * base, 4 * base, 8 * base]})
    assert (art.meta["layout"], art.spec.num_classes, art.spec.stem) == ("rmnet-authors-deep", 1000, "imagenet")
    _agrees(theirs, art.model, 64)


def test_authors_deep_rmrep_of_another_depth_names_what_the_file_is(tmp_path):
    torch.save(authors_checkpoint(RMRep(21, 1000, 0.25, base_wide=8)), tmp_path / "rmrep_21.pth.tar")
    with pytest.raises(CheckpointError, match=r"rmnet-authors-deep layout: the RMNet authors' rmrep_21 "
                                              r"\(model=rmrepvgg21\)\) does not fit rmrepvgg37"):
        artifacts.load(tmp_path / "rmrep_21.pth.tar", name="rmrepvgg37", kwargs={"widths": [8, 16, 32, 64]})


def test_authors_cifar_rmrep_is_refused_with_the_reason(tmp_path):
    torch.save(authors_checkpoint(RMRep(21, 10, 0.25, base_wide=8)), tmp_path / "rmrep_21_cifar.pth.tar")
    with pytest.raises(CheckpointError, match=r"rmrep_21 built for a class count other than 1000: a one-block stem "
                                              r"and no first block in stage 1, 20 layers.*rmrepvgg21 has 21"):
        artifacts.load(tmp_path / "rmrep_21_cifar.pth.tar", name="rmrepvgg21", kwargs={"widths": [8, 16, 32, 64]})


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


@pytest.mark.parametrize("name, blocks, widths, groups", [
    ("repvgg_a0", [2, 4, 14, 1], A0_NARROW["widths"], None),
    ("repvgg_b1g2", [4, 6, 16, 1], [16, 16, 32, 64], {i: 2 for i in range(2, 27, 2)})])
def test_deploy_form_repvgg_loads_as_a_plain_model(tmp_path, name, blocks, widths, groups):
    """`repvgg_model_convert`'s file (bare state dict of `rbr_reparam` convs): already plain, so it loads as
    the plain chain rm.convert makes of the registry model, for evaluation and benchmarks."""
    theirs = randomized(RepVGGDeploy(blocks, widths, 5, groups), seed=2)
    torch.save(theirs.state_dict(), tmp_path / f"{name}-deploy.pth")
    art = artifacts.load(tmp_path / f"{name}-deploy.pth", name=name, kwargs={"widths": widths})
    assert (art.kind, art.meta["layout"], art.spec.form, art.spec.num_classes) == ("state_dict", "repvgg-deploy",
                                                                                   "plain", 5)
    assert {type(m) for m in art.model} == {torch.nn.Conv2d, torch.nn.ReLU, torch.nn.AdaptiveAvgPool2d,
                                            torch.nn.Flatten, torch.nn.Linear}
    _agrees(theirs, art.model, 64)


def test_deploy_form_repvgg_of_another_model_names_the_mismatch(tmp_path):
    torch.save(randomized(RepVGGDeploy([2, 4, 14, 1], [8, 8, 8, 16], 5)).state_dict(), tmp_path / "a0.pth")
    with pytest.raises(CheckpointError, match=r"repvgg-deploy layout.*does not fit repvgg_b0.*missing keys"):
        artifacts.load(tmp_path / "a0.pth", name="repvgg_b0", kwargs={"widths": [8, 8, 8, 16]})


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


@pytest.mark.parametrize("name, ratio", [("rmrepvgg21", 0.5), ("rmrepvgg21", 0.75), ("rmrepvgg37", 0.5)])
def test_authors_deep_rmrep_with_another_ratio_loads_under_the_documented_name(tmp_path, name, ratio):
    """Their rmrep_<N> trained with a ratio other than our rmrepvgg<N>'s default: the ratio is read from the
    file; `model.kwargs.rm_ratio` (which used to raise a raw argument error) gives the same model."""
    depth = int(name.removeprefix("rmrepvgg"))
    theirs = randomized(RMRep(depth, 1000, ratio, base_wide=8), seed=depth)
    path = tmp_path / f"rmrep_{depth}.pth.tar"
    torch.save(authors_checkpoint(theirs), path)
    widths = {"widths": [8, 16, 32, 64]}
    for kwargs in (widths, {**widths, "rm_ratio": ratio}):
        art = artifacts.load(path, name=name, kwargs=kwargs)
        assert art.spec.kwargs["rm_ratio"] == ratio and art.spec.build() is not None
        _agrees(theirs, art.model, 64)


def _authors_rmobilenet(num_classes: int = 1000, w: float = 0.25) -> dict:
    """What their train.py writes for mobilenetv2_imagenet (fxmeng/RMNet models/rmobilenet.py, RMobileNet):
    its module tree written from reading it (stem, a dw/pw-linear block, InvertedResidual blocks whose
    residual ones carry statistics-only BNs running1/running2, a 1280-wide head, classifier.1)."""
    def cbn(cin, cout, k=1, groups=1):
        return [torch.nn.Conv2d(cin, cout, k, groups=groups, bias=False), torch.nn.BatchNorm2d(cout), torch.nn.ReLU6()]

    rows = [(6, 24, 1, 2), (6, 24, 1, 1), (6, 32, 1, 2), (6, 32, 2, 1), (6, 64, 1, 2), (6, 64, 3, 1), (6, 96, 1, 1),
            (6, 96, 2, 1), (6, 160, 1, 2), (6, 160, 2, 1), (6, 320, 1, 1)]
    stem, cin = int(32 * w), int(16 * w)
    features = [torch.nn.Sequential(*cbn(3, stem, 3)), torch.nn.Sequential(*cbn(stem, stem, 3, stem), *cbn(stem, cin)[:2])]
    for t, c, n, s in rows:
        for _ in range(n):
            block, hidden, cout = torch.nn.Module(), round(cin * t), int(c * w)
            block.conv = torch.nn.Sequential(*cbn(cin, hidden), *cbn(hidden, hidden, 3, hidden), *cbn(hidden, cout)[:2])
            if s == 1 and cin == cout:
                block.running1, block.running2 = (torch.nn.BatchNorm2d(cin, affine=False) for _ in range(2))
            features.append(block)
            cin = cout
    model = torch.nn.Module()
    model.features = torch.nn.Sequential(*features, torch.nn.Sequential(*cbn(cin, 1280)))
    model.classifier = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(1280, num_classes))
    return authors_checkpoint(model)


@pytest.mark.parametrize("name", ["mobilenetv2_rm", "mobilenetv1", "rmnet26x3_32"])
def test_authors_rmobilenet_is_refused_saying_what_it_is(tmp_path, name):
    """It was refused as an "RMNeXt layout" with key dumps: refusing is right, the reason is the model."""
    torch.save(_authors_rmobilenet(), tmp_path / "mobilenetv2_imagenet.pth.tar")
    with pytest.raises(CheckpointError, match=r"the RMNet authors' RMobileNet .*ReLU6.*mobilenetv2_rm") as e:
        artifacts.load(tmp_path / "mobilenetv2_imagenet.pth.tar", name=name)
    assert "\n" not in str(e.value) and "keys" not in str(e.value) and "RMNeXt" not in str(e.value)
