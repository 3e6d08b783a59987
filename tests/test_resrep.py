"""ResRep (issue 15): compactors, their exact fold, gradient resetting, the mask schedule, the hook's
optimizer group and resumable masks."""
import os
from dataclasses import replace

import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf
from torchvision.models.resnet import Bottleneck

import models
import rm
from engine.checkpoint import load_checkpoint
from engine.optim import build_optimizer
from engine.settings import TrainSettings
from engine.trainer import Trainer
from models import InputSpec, ModelSpec
from models.complexity import count_macs
from models.resnet import ResNet
from pruning import PruneError
from pruning.resrep import (
    CompactedBN,
    CompactorLayout,
    ResRepHook,
    add_compactors,
    compactors,
    fold_compactors,
    next_masks,
    resolve,
)
from tests.helpers import randomize_bn, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")   # tiny convs: one thread is faster on a busy machine
TOL = 1e-10   # float64: exactness, not rounding, is under test
SIZE = 16


def resnet20():
    return models.create_model("resnet20", num_classes=5, stem="cifar")


def resnext():
    return ResNet(Bottleneck, [1, 1, 1, 1], num_classes=5, stem="cifar", widths=(16, 16, 32, 32), groups=4,
                  width_per_group=16)


def depthwise_chain():
    """MobileNetV1-like, PReLU: dense -> depthwise -> dense -> grouped -> grouped (adjacent) -> head."""
    layers = []
    for cin, cout, k, g in [(3, 8, 3, 1), (8, 8, 3, 8), (8, 16, 1, 1), (16, 16, 3, 4), (16, 16, 3, 2)]:
        layers += [nn.Conv2d(cin, cout, k, padding=k // 2, groups=g, bias=False), nn.BatchNorm2d(cout),
                   nn.PReLU(cout)]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))


def model_of(kind, seed=0):
    """float64, eval mode, non-trivial BNs: a ResNet ("residual"), its RM plain form with BN kept ("rm"),
    or the grouped chain."""
    name, form = kind.split("-")
    if name == "chain":
        return randomize_bn(depthwise_chain(), seed).double()
    model = randomize_bn({"resnet20": resnet20, "resnext": resnext}[name](), seed).double()
    return model if form == "residual" else randomize_bn(rm.convert(model, fuse_bn=False), seed + 1).double()


def train_compactors(model, fraction=0.4, seed=0, small=0.0):
    """What ResRep training leaves: compactors away from the identity, a `fraction` of every layer's rows
    masked and zero (or of norm `small`)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for c in compactors(model):
            c.weight.add_(torch.randn(c.weight.shape, generator=g, dtype=c.weight.dtype) * 0.3)
            masked = torch.rand(len(c.mask), generator=g) < fraction
            rows = c.weight[masked]
            c.weight[masked] = small * rows / rows.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            c.mask[masked] = 0
    return model


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


KINDS = ["chain-plain", "resnet20-rm", "resnet20-residual", "resnext-rm", "resnext-residual"]


@pytest.mark.parametrize("kind", KINDS)
def test_fold_is_exact_and_narrower(kind):
    """Plain chains (with a depthwise conv and PReLUs), ResNet internal layers and grouped convs: the
    folded model computes the compactor model's outputs, and its MACs are the layout's count."""
    model = model_of(kind)
    x = torch.randn(3, 3, SIZE, SIZE, dtype=torch.float64)
    reference = model(x)
    add_compactors(model)
    assert rel_err(model(x), reference) < TOL   # identity compactors change nothing
    train_compactors(model)
    result = fold_compactors(model)
    assert not any(isinstance(m, CompactedBN) for m in result.model.modules())
    assert rel_err(result.model(x), model(x)) < TOL
    assert result.removed > 0 and result.max_removed_norm == 0.0
    assert sum(layer["channels"] - layer["kept"] for layer in result.layers) == result.removed
    layout = CompactorLayout(model, SIZE)
    norms = [s.compactor.row_norms() for s in layout.slots]
    assert layout.macs(resolve(layout.slots, [n > 0 for n in norms], norms)) == count_macs(result.model, SIZE)
    if kind.startswith("resnext"):   # grouped convs stay grouped, and some of their groups go
        assert any(layer["groups"] > 1 for layer in result.layers)
        assert any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in result.model.modules())


@pytest.mark.parametrize("kind", ["resnet20-rm", "resnet20-residual"])
def test_fold_with_channel_round_keeps_multiples_and_stays_exact(kind):
    model = model_of(kind)
    add_compactors(model)
    train_compactors(model)
    x = torch.randn(2, 3, SIZE, SIZE, dtype=torch.float64)
    plain, rounded = fold_compactors(model), fold_compactors(model, channel_round=8)
    assert all(layer["kept"] % 8 == 0 or layer["kept"] == layer["channels"] for layer in rounded.layers)
    assert 0 < rounded.removed < plain.removed
    assert rel_err(rounded.model(x), model(x)) < TOL


def test_fold_of_rows_under_the_threshold_is_reported():
    model = model_of("resnet20-residual")
    add_compactors(model)
    train_compactors(model, small=1e-6)
    x = torch.randn(2, 3, SIZE, SIZE, dtype=torch.float64)
    exact = fold_compactors(model, threshold=1e-7)
    assert exact.removed == 0 and exact.masked_kept == exact.masked > 0
    folded = fold_compactors(model, threshold=1e-5)
    assert folded.removed == folded.masked and folded.max_removed_norm == pytest.approx(1e-6)
    assert 0 < rel_err(folded.model(x), model(x)) < 1e-4


def test_residual_compactors_sit_inside_blocks_only():
    """The stream channels that additions tie keep their compactor-free BNs; channels between two
    grouped convs get none."""
    model = resnext()
    slots = add_compactors(model)
    assert [s.name for s in slots][:2] == ["layer1.0.conv1", "layer1.0.conv2"]
    assert all(s.conv != "conv3" for s in slots) and isinstance(model.bn1, nn.BatchNorm2d)
    chain = depthwise_chain()
    names = [s.name for s in add_compactors(chain)]
    assert names == ["0", "3", "6", "12"]   # not "9": between the two grouped convs
    with pytest.raises(PruneError, match="already has a compactor"):
        add_compactors(chain)


@pytest.mark.parametrize("penalty_rows", ["masked", "all"])
def test_gradient_resetting(penalty_rows):
    """After one optimizer step, a masked row moved by the lasso gradient alone, an unmasked row by the
    objective's (plus the lasso's with penalty_rows=all); both against gradients computed by hand. The
    compactors' own optimizer group has no weight decay and momentum 0.99."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3)).double()
    add_compactors(model)
    comp = model[1].compactor
    train_compactors(model, fraction=0.0)
    comp.mask[[1, 4]] = 0
    lasso, lr = 1e-2, 0.1
    hook = ResRepHook(1e6, lasso=lasso, penalty_rows=penalty_rows)
    optim_cfg = OmegaConf.create({"name": "sgd", "lr": lr, "lr_batch": None, "momentum": 0.9, "nesterov": False,
                                  "weight_decay": 5e-4, "decay_norm_and_bias": True})
    optimizer = build_optimizer(model, optim_cfg, 8, hook.param_groups(model))
    own = optimizer.param_groups[-1]
    assert own["params"] == [comp.weight] and (own["weight_decay"], own["momentum"]) == (0.0, 0.99)
    assert not any(p is comp.weight for group in optimizer.param_groups[:-1] for p in group["params"])

    seen = {}
    comp.register_forward_hook(lambda m, i, out: seen.update(x=i[0].detach(), y=out.detach()))
    x, targets = torch.randn(8, 3, 5, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    logits = model(x)
    optimizer.zero_grad()
    nn.functional.cross_entropy(logits, targets).backward()
    hook.after_backward(model)
    before, head = comp.weight.detach().clone(), model[5].weight.detach().clone()
    optimizer.step()
    applied = ((before - comp.weight.detach()) / lr).flatten(1)   # SGD's first step: lr x gradient

    # By hand, from the loss back to the compactor's output y = K x: mean cross-entropy, Linear head,
    # global average pool, ReLU; then d loss / d K[i, j] = sum over images and pixels of dy[i] x[j].
    d_logits = (torch.softmax(logits.detach(), 1) - nn.functional.one_hot(targets, 3)) / len(x)
    d_pooled = d_logits @ head
    d_y = d_pooled[:, :, None, None] / (5 * 5) * (seen["y"] > 0)
    objective = torch.einsum("nihw,njhw->ij", d_y, seen["x"])
    rows = before.flatten(1)
    penalty = lasso * rows / rows.norm(dim=1, keepdim=True)
    masked = comp.mask == 0
    assert torch.allclose(applied[masked], penalty[masked], rtol=TOL, atol=0)
    expected = objective[~masked] + (penalty[~masked] if penalty_rows == "all" else 0)
    assert torch.allclose(applied[~masked], expected, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("kind", ["resnet20-residual", "resnet20-rm", "resnext-rm"])
def test_mask_schedule_reaches_the_target(kind):
    """Mask updates (rows masked so far decayed to zero, as gradient resetting does) add at most
    `granularity` channels each until the folded model meets the target, end within 2% of it, and
    never mask a whole layer."""
    reference = count_macs(model_of(kind.split("-")[0] + "-residual"), SIZE)
    model = model_of(kind)
    add_compactors(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():   # distinct row norms to rank
        for c in compactors(model):
            c.weight.mul_(torch.rand(len(c.mask), 1, 1, 1, generator=g, dtype=torch.float64) + 0.1)
    target, granularity = 0.5 * reference, 32
    hook = ResRepHook(target, granularity=granularity)
    for step in range(1, 200):
        before = [c.masked() for c in compactors(model)]
        hook.update(model, SIZE, step)
        after = [c.masked() for c in compactors(model)]
        assert sum(int(m.sum()) for m in after) - sum(int(m.sum()) for m in before) <= granularity
        assert not any(m.all() for m in after)
        if all(torch.equal(a, b) for a, b in zip(before, after)):
            break
        with torch.no_grad():
            for c, m in zip(compactors(model), after):
                c.weight[m] = 0
    assert step > 5   # it took several updates: the granularity held it back
    macs = count_macs(fold_compactors(model).model, SIZE)
    assert 0.98 * target <= macs <= target


def test_next_masks_when_the_target_is_met_takes_the_shortest_prefix():
    """Once the current mask meets the target, the update is the shortest prefix of the ranking that
    meets it, whatever the granularity: the weakest rows go first, one row fewer would miss it. The
    first layer's rows are the weakest of all, and the prefix passes them: its strongest stays."""
    model = model_of("resnet20-residual")
    add_compactors(model)
    layout = CompactorLayout(model, SIZE)
    norms = [torch.arange(1, c + 1, dtype=torch.float64) * (i + 1) + i * 1e-3 for i, c in enumerate(layout.channels())]
    norms[0] = norms[0] * 1e-3

    def macs(masks):
        return layout.macs(resolve(layout.slots, [~m for m in masks], norms))

    target = 0.8 * macs([torch.zeros(c, dtype=torch.bool) for c in layout.channels()])
    masks = next_masks(layout, norms, [torch.ones(c, dtype=torch.bool) for c in layout.channels()], target, 1,
                       layout.macs)
    assert macs(masks) <= target
    strongest = max(range(len(masks)), key=lambda i: float(norms[i][masks[i]].max()) if masks[i].any() else 0)
    fewer = [m.clone() for m in masks]
    fewer[strongest][norms[strongest].masked_fill(~masks[strongest], 0).argmax()] = False
    assert macs(fewer) > target
    assert masks[0].tolist() == [True] * (len(masks[0]) - 1) + [False]
    assert not masks[-1][-1]


def test_hook_settings_are_checked():
    with pytest.raises(ValueError, match="penalty_rows must be one of masked, all"):
        ResRepHook(1e6, penalty_rows="some")
    with pytest.raises(ValueError, match="interval and granularity must be positive integers"):
        ResRepHook(1e6, interval=0)
    with pytest.raises(ValueError, match="the model has none"):
        ResRepHook(1e6).param_groups(resnet20())


def test_masks_resume_with_the_run(tmp_path):
    """The masks are the resrep hook's state: the checkpoint holds them under "hooks", not among the
    model's weights, and a resumed run starts from them bit for bit. A checkpoint from when the mask was a
    buffer (in the weights, no "hooks") resumes with its masks too. The checkpoint of a plain model with
    compactors is a training form, and artifacts.load says so."""
    import artifacts
    from engine.checkpoint import save_checkpoint
    from engine.stages import train
    from pruning.resrep.compactor import Compactor

    cfg = tiny_config(tmp_path, "run_name=r", "epochs=1", "max_steps_per_epoch=3", "+hooks.resrep.target=1e5",
                      "+hooks.resrep.interval=1", "+hooks.resrep.start_epochs=0", "final.enabled=false")
    settings = TrainSettings.from_cfg(cfg)
    base = randomize_bn(models.create_model("resnet18", num_classes=10, stem="cifar", widths=[8, 8, 16, 16]))
    spec = ModelSpec("resnet18", 10, "cifar", {"widths": [8, 8, 16, 16]},
                     input=InputSpec(16, (0.5,) * 3, (0.25,) * 3, "synthetic")).as_plain(
        models.ConversionSettings(fuse_bn=False))

    def fresh():
        model = rm.convert(base, fuse_bn=False)
        add_compactors(model)
        return model

    def resumed_masks(path):
        model = fresh()
        Trainer(replace(settings, resume=path, epochs=2), model, spec).close()
        return [c.mask for c in compactors(model)]

    train(settings, fresh(), spec)
    last = str(tmp_path / "r" / "last.pt")
    blob = load_checkpoint(last)
    masks = blob["hooks"]["resrep"]["masks"]
    assert masks and any((m == 0).any() for m in masks)
    assert not any(k.endswith("compactor.mask") for k in blob["model"])
    assert all(torch.equal(a, b) for a, b in zip(resumed_masks(last), masks, strict=True))

    names = [n for n, m in fresh().named_modules() if isinstance(m, Compactor)]
    old = {**blob, "model": {**blob["model"], **{f"{n}.mask": m for n, m in zip(names, masks, strict=True)}}}
    del old["hooks"]
    os.makedirs(tmp_path / "old")
    save_checkpoint(str(tmp_path / "old" / "last.pt"), **old)
    assert all(torch.equal(a, b) for a, b in zip(resumed_masks(str(tmp_path / "old" / "last.pt")), masks, strict=True))
    with pytest.raises(artifacts.CheckpointError, match="training form of a plain model"):
        artifacts.load(last)
