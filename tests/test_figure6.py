"""Figure 6 as the authors ran it (fxmeng/RMNet train_pruning.py): their mask-conv network
`rmnet_pruning_*`, its exact RM conversion, the mask penalty with the threshold applied every step,
and the figure6_* recipes through prune.py."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from helpers import check_exact, randomize_bn

import rm
from models import create_model
from models.rmnet_pruning import ChannelMask, plain_channel_masks

WIDTHS = [4, 8, 8, 12]


def random_masks(model: nn.Module, seed: int = 1) -> nn.Module:
    """Masks as sparse training leaves them: some exactly 0, some negative, the rest spread around 1."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, ChannelMask):
            w = torch.randn(m.out_channels, generator=g) * 0.6 + 0.5
            w[torch.rand(m.out_channels, generator=g) < 0.3] = 0.0
            with torch.no_grad():
                m.weight.copy_(w.view(-1, 1, 1, 1))
    return model


def masked_model(stem: str = "cifar", name: str = "rmnet_pruning_18") -> nn.Module:
    model = create_model(name, num_classes=10, stem=stem, widths=WIDTHS)
    return random_masks(randomize_bn(model)).eval()


def test_the_authors_network_shape():
    """ResNet-18's basic blocks, 64-512 wide, CIFAR stem 3x3/1, with masks at 1 on the stem, every block's
    inner and output channels and every shortcut input (train_pruning.py builds rmnet_pruning_18(10))."""
    model = create_model("rmnet_pruning_18", num_classes=10, stem="cifar")
    masks = [m for m in model.modules() if isinstance(m, ChannelMask)]
    assert len(masks) == 1 + 8 * 3
    assert all(bool((m.weight == 1).all()) for m in masks)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert [getattr(model, f"layer{i}")[0].conv2.out_channels for i in range(1, 5)] == [64, 128, 256, 512]
    assert sum(p.numel() for p in model.parameters() if p.ndim == 4 and p.shape[1] > 1) == \
        sum(p.numel() for n, p in create_model("resnet18", num_classes=10, stem="cifar").named_parameters()
            if p.ndim == 4)


@pytest.mark.parametrize("scheme", ["reserve_input", "reserve_shortcut"])
@pytest.mark.parametrize("fuse_bn", [True, False])
@pytest.mark.parametrize("stem,size", [("cifar", 16), ("imagenet", 32)])
def test_rm_conversion_is_exact(scheme, fuse_bn, stem, size):
    check_exact(masked_model(stem), size, downsample=scheme, fuse_bn=fuse_bn)


def test_rmnet_pruning_34_converts_exactly():
    check_exact(masked_model(name="rmnet_pruning_34"), 16, downsample="reserve_input", fuse_bn=False)


def test_plain_channel_masks_name_the_zero_channels():
    """Every plain channel whose mask is 0 is exactly 0 before its activation (so removing it is exact),
    in the chain the pruner ranks (BN kept, reserve_input); the masks line up with the chain's units."""
    model = masked_model()
    plain = rm.convert(model.double(), fuse_bn=False, downsample="reserve_input").eval()
    masks = plain_channel_masks(model)
    acts = [i for i, m in enumerate(plain) if isinstance(m, (nn.ReLU, nn.PReLU))]
    assert len(acts) == len(masks)
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    outs = []
    hooks = [plain[i].register_forward_pre_hook(lambda m, a: outs.append(a[0].detach().clone())) for i in acts]
    plain(x)
    for h in hooks:
        h.remove()
    for out, mask in zip(outs, masks):
        assert out.shape[1] == mask.numel()
        zero = out.abs().amax(dim=(0, 2, 3)) == 0
        assert bool(zero[mask == 0].all()), (zero, mask)
    assert sum(int((m == 0).sum()) for m in masks) > 10


def test_conversion_needs_a_non_negative_block_input():
    block = masked_model().layer1[0]
    with pytest.raises(rm.ConversionError, match="non-negative"):
        rm.convert(block)
