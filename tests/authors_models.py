"""Minimal stand-ins for the model code of the RMNet authors (fxmeng/RMNet: models/rmnext.py,
models/rmrepvgg.py) and the RepVGG authors' deploy form (DingXiaoH/RepVGG: repvgg.py): written here
from reading it, with their module tree (attribute names, nesting, shapes) and forward pass, so that
`state_dict()` has exactly the keys their files have and the outputs are theirs. Their `train.py`
saves `{"state_dict": model.state_dict(), ...}` of a (Distributed)DataParallel model, hence the
`module.` prefix (`authors_checkpoint`); `repvgg_model_convert` saves a bare state dict.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from tests.helpers import randomize_bn


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c)


class RMNeXtRepBlock(nn.Module):
    """rmnext.py's RepBlock: 3x3 and 1x1 conv+BN branches, summed, ReLU. `running`: the statistics-only
    BN of the versions before December 2021 (commented out since)."""

    def __init__(self, cin: int, cout: int, stride: int, running: bool = False):
        super().__init__()
        self.conv33 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn33 = _bn(cout)
        self.conv11 = nn.Conv2d(cin, cout, 1, stride, 0, bias=False)
        self.bn11 = _bn(cout)
        if running:
            self.running = _bn(cout)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn33(self.conv33(x)) + self.bn11(self.conv11(x)))


class RMNeXtBlock(nn.Module):
    """rmnext.py's RMBlock: 1x1 -> grouped 3x3 -> 1x1 of (expand - 1) x out middle channels; `running1`,
    `running2` (affine-free BNs) only track statistics."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int, cpg: int):
        super().__init__()
        mid = cout * expand - cout
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = _bn(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid // cpg, bias=False)
        self.bn2 = _bn(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = _bn(cout)
        self.relu = nn.ReLU()
        self.downsample = nn.Sequential()
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _bn(cout))
        self.running1 = nn.BatchNorm2d(cin, affine=False)
        self.running2 = nn.BatchNorm2d(cout, affine=False)

    def forward(self, x):
        out = self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))
        return self.relu(self.bn3(self.conv3(out)) + self.downsample(x))


class RMNeXt(nn.Module):
    """rmnext.py's RMNeXt: the stem is two stride-2 RepBlocks in an nn.Sequential for 1000 classes and a
    single stride-1 RepBlock (no index in its keys) for any other class count."""

    def __init__(self, blocks, num_classes: int, base_wide: int, expand: int, cpg: int, running: bool = False):
        super().__init__()
        planes = min(64, base_wide)
        if num_classes == 1000:
            self.layer0 = nn.Sequential(RMNeXtRepBlock(3, planes, 2, running), RMNeXtRepBlock(planes, planes, 2, running))
        else:
            self.layer0 = RMNeXtRepBlock(3, planes, 1, running)
        for stage, n in enumerate(blocks):
            width, stride = base_wide * 2 ** stage, 1 if stage == 0 else 2
            layer = []
            for i in range(n):
                layer.append(RMNeXtBlock(planes, width, stride if i == 0 else 1, expand, cpg * 2 ** stage))
                planes = width
            setattr(self, f"layer{stage + 1}", nn.Sequential(*layer))
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten(1)
        self.fc = nn.Linear(planes, num_classes)

    def forward(self, x):
        for name in ("layer0", "layer1", "layer2", "layer3", "layer4", "gap", "flat", "fc"):
            x = getattr(self, name)(x)
        return x


class RMRepBlock(nn.Module):
    """rmrepvgg.py's RepBlock: 3x3, 1x1 and (same shape, stride 1) identity `bn00` branches, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv33 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn33 = _bn(cout)
        self.conv11 = nn.Conv2d(cin, cout, 1, stride, 0, bias=False)
        self.bn11 = _bn(cout)
        self.identity = cin == cout and stride == 1
        if self.identity:
            self.bn00 = _bn(cout)

    def forward(self, x):
        out = self.bn33(self.conv33(x)) + self.bn11(self.conv11(x))
        return torch.relu(out + self.bn00(x) if self.identity else out)


class RMRepRMBlock(nn.Module):
    """rmrepvgg.py's RMBlock: the first int(planes x ratio) channels are kept; the others are a RepVGG
    block over all channels; the ReLU covers the kept channels too."""

    def __init__(self, planes: int, ratio: float):
        super().__init__()
        self.rmplanes = int(planes * ratio)
        rest = planes - self.rmplanes
        self.conv33 = nn.Conv2d(planes, rest, 3, 1, 1, bias=False)
        self.bn33 = _bn(rest)
        self.conv11 = nn.Conv2d(planes, rest, 1, 1, 0, bias=False)
        self.bn11 = _bn(rest)
        self.bn00 = _bn(rest)

    def forward(self, x):
        out = self.bn33(self.conv33(x)) + self.bn11(self.conv11(x)) + self.bn00(x[:, self.rmplanes:])
        return torch.relu(torch.cat([x[:, :self.rmplanes], out], dim=1))


class RMRep(nn.Module):
    """rmrepvgg.py's RMRep as `rmrep_<depth>` (ratio > 0) or `repvgg_<depth>` (ratio 0) build it: every
    layer in one `feature` nn.Sequential. For 1000 classes the stem is two stride-2 RepBlocks, otherwise
    one stride-1 RepBlock; each stage's `depth` pairs are (RMBlock, stride-1 RepBlock), and stages 2-4
    start with a stride-2 RepBlock."""

    def __init__(self, depth: int, num_classes: int, ratio: float, base_wide: int = 64):
        super().__init__()
        pairs = (depth - 5) // 8
        w = [base_wide * m for m in (1, 2, 4, 8)]
        layers = ([RMRepBlock(3, w[0], 2), RMRepBlock(w[0], w[0], 2)] if num_classes == 1000
                  else [RMRepBlock(3, w[0], 1)])
        for stage, width in enumerate(w):
            if stage:
                layers.append(RMRepBlock(w[stage - 1], width, 2))
            for _ in range(pairs):
                layers += [RMRepRMBlock(width, ratio), RMRepBlock(width, width, 1)]
        self.feature = nn.Sequential(*layers)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten(1)
        self.fc = nn.Linear(w[-1], num_classes)

    def forward(self, x):
        return self.fc(self.flat(self.gap(self.feature(x))))


class RepVGGDeployBlock(nn.Module):
    """repvgg.py's RepVGGBlock after `switch_to_deploy`: one biased 3x3 conv `rbr_reparam`, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int = 1):
        super().__init__()
        self.nonlinearity = nn.ReLU()
        self.se = nn.Identity()
        self.rbr_reparam = nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=True)

    def forward(self, x):
        return self.nonlinearity(self.se(self.rbr_reparam(x)))


class RepVGGDeploy(nn.Module):
    """repvgg.py's RepVGG in deploy form: `stage0` a block, `stage1..4` nn.ModuleLists, `linear`.
    `groups_at` maps the 1-based layer index of stages 1-4 to its group count (their g2/g4 maps)."""

    def __init__(self, blocks, widths, num_classes: int, groups_at: dict[int, int] | None = None):
        super().__init__()
        planes = min(64, widths[0])
        self.stage0 = RepVGGDeployBlock(3, planes, 2)
        index = 1
        for stage, (n, width) in enumerate(zip(blocks, widths)):
            layer = []
            for i in range(n):
                layer.append(RepVGGDeployBlock(planes, width, 2 if i == 0 else 1, (groups_at or {}).get(index, 1)))
                planes, index = width, index + 1
            setattr(self, f"stage{stage + 1}", nn.ModuleList(layer))
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(planes, num_classes)

    def forward(self, x):
        x = self.stage0(x)
        for stage in (self.stage1, self.stage2, self.stage3, self.stage4):
            for block in stage:
                x = block(x)
        return self.linear(self.gap(x).flatten(1))


def randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights, and random statistics in every BatchNorm (affine ones get random scales and shifts
    too): the authors' statistics-only BNs are affine-free."""
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, std=(2 / m.weight[0].numel()) ** 0.5)
            if m.bias is not None:
                nn.init.normal_(m.bias, std=0.1)
    for i, m in enumerate(m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        if m.affine:
            randomize_bn(m, seed * 1000 + i)
        else:
            m.running_mean.normal_(0, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def authors_checkpoint(model: nn.Module) -> dict:
    """What their train.py writes: the state dict of the DataParallel-wrapped model, with training state."""
    return {"epoch": 120, "arch": type(model).__name__, "best_acc1": 79.5,
            "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}
