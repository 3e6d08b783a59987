"""Figure 6 as the authors ran it (fxmeng/RMNet train_pruning.py): their mask-conv network
`rmnet_pruning_*`, its exact RM conversion, the mask penalty with the threshold applied every step,
and the figure6_* recipes through prune.py."""
from __future__ import annotations

import json
import os
import re

import pytest
import torch
import torch.nn as nn
import yaml
from omegaconf import OmegaConf

import rm
from models import create_model
from models.rmnet_pruning import ChannelMask, plain_channel_masks
from tests.helpers import check_exact, randomize_bn, run_script

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


@pytest.mark.parametrize("scheme,fuse_bn,stem,size", [
    ("reserve_input", False, "cifar", 16), ("reserve_shortcut", True, "cifar", 16),
    ("reserve_input", True, "imagenet", 32), ("reserve_shortcut", False, "imagenet", 32)])
def test_rm_conversion_is_exact(scheme, fuse_bn, stem, size):
    check_exact(masked_model(stem), size, downsample=scheme, fuse_bn=fuse_bn)


def test_rmnet_pruning_34_converts_exactly():
    check_exact(masked_model(name="rmnet_pruning_34"), 16, downsample="reserve_input", fuse_bn=False)


@pytest.mark.parametrize("scheme,fuse_bn,stem", [("reserve_input", True, "imagenet"), ("reserve_shortcut", False, "cifar")])
def test_the_graph_pass_folds_trained_masks_as_the_block_converter_does(scheme, fuse_bn, stem):
    """The model's order comes from its forward (no model-level converter), and forced through the graph
    pass (only the mask conv keeps its converter) the masks, zeros and negatives among them, fold where the
    block converter folds them: the same layers, equal weights. (The registry test's masks are all 1.)"""
    model = masked_model(stem)
    assert type(model) not in rm.registered_types()
    registered = rm.convert(model, fuse_bn=fuse_bn, downsample=scheme)
    derived = rm.convert(model, fuse_bn=fuse_bn, downsample=scheme, use_registered=False)
    assert [type(m) for m in registered] == [type(m) for m in derived]
    a, b = registered.state_dict(), derived.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


def test_conversion_keeps_the_masks_on_the_models_device():
    """The mask scales stay on the model's device, as every other weight (a GPU model converts on the GPU):
    on the meta device the conversion gives the CPU conversion's layer shapes."""
    model = masked_model()
    shapes = [p.shape for p in rm.convert(model, use_registered=False).parameters()]
    assert [p.shape for p in rm.convert(model.to("meta")).parameters()] == shapes


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


@pytest.mark.parametrize("use_registered", [True, False])
def test_conversion_needs_a_non_negative_block_input(use_registered):
    """relu(mask_res * x) is the per-channel scale max(mask_res, 0) * x only where x >= 0: a block on its own
    (signed input) is refused by its converter and by the graph pass alike."""
    block = masked_model().layer1[0]
    with pytest.raises(rm.ConversionError, match="non-negative"):
        rm.convert(block, use_registered=use_registered)


def _sparse_net() -> tuple[nn.Module, ChannelMask, nn.BatchNorm2d]:
    torch.manual_seed(0)
    bn, mask = nn.BatchNorm2d(4), ChannelMask(4)
    with torch.no_grad():
        mask.weight.copy_(torch.tensor([1.0, 0.004, -0.003, -0.5]).view(-1, 1, 1, 1))
        bn.weight.copy_(torch.tensor([0.5, 0.002, -0.001, 1.0]))
    return nn.Sequential(nn.Conv2d(3, 4, 3), bn, mask), mask, bn


def _backward(net: nn.Module) -> None:
    net.zero_grad()
    net(torch.randn(2, 3, 6, 6)).square().sum().backward()


@pytest.mark.parametrize("on", ["mask_conv", "bn_scale"])
def test_threshold_every_step_is_the_authors_update_mask(on):
    """Between backward and the step (train_pruning.py:81-84, update_mask): grad += sr * sign(s), then the
    scales with |s| <= threshold and their gradients are zeroed; the other kind of scale is untouched."""
    from pruning.penalty import ScaleL1

    net, mask, bn = _sparse_net()
    _backward(net)
    scale, other = (mask.weight, bn.weight) if on == "mask_conv" else (bn.weight, mask.weight)
    w, g, other_w, other_g = scale.detach().clone(), scale.grad.clone(), other.detach().clone(), other.grad.clone()
    ScaleL1(sr=0.01, on=on, threshold=0.005).after_backward(net)
    keep = w.abs() > 0.005
    assert keep.flatten().tolist() == [True, False, False, True]
    torch.testing.assert_close(scale.grad, (g + 0.01 * torch.sign(w)) * keep, rtol=0, atol=0)
    torch.testing.assert_close(scale.detach(), w * keep, rtol=0, atol=0)
    assert torch.equal(other.detach(), other_w) and torch.equal(other.grad, other_g)


def test_momentum_moves_a_zeroed_mask_and_the_next_step_zeroes_it_again():
    """SGD's momentum buffer still holds a zeroed mask's earlier gradients, so the step moves it off 0;
    the next update zeroes it again while it stays under the threshold (as in the authors' loop)."""
    from pruning.penalty import ScaleL1

    net, mask, _ = _sparse_net()
    hook = ScaleL1(sr=0.01, on="mask_conv", threshold=0.005)
    with torch.no_grad():
        mask.weight[1] = 0.1                   # above the threshold at the first step: it gets a momentum buffer
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    _backward(net)
    hook.after_backward(net)
    optimizer.step()
    with torch.no_grad():
        mask.weight[1] = 0.001                 # now under it
    _backward(net)
    hook.after_backward(net)
    assert float(mask.weight.detach()[1]) == 0.0
    optimizer.step()
    moved = float(mask.weight.detach()[1])
    assert moved != 0.0 and abs(moved) <= 0.005
    _backward(net)
    hook.after_backward(net)
    assert float(mask.weight.detach()[1]) == 0.0


def test_the_hooks_of_sparse_training():
    """bn_scale thresholded once keeps today's bn_l1 hook; every other variant is ScaleL1, by import path."""
    from engine.hooks import build_hooks
    from pruning.penalty import ScaleL1, hooks

    assert hooks("bn_scale", 1e-4, None) == {"bn_l1": {"sr": 1e-4}}
    for penalty, threshold in (("mask_conv", 5e-3), ("mask_conv", None), ("bn_scale", 5e-3)):
        built = list(build_hooks(hooks(penalty, 1e-4, threshold)).values())
        assert len(built) == 1 and isinstance(built[0], ScaleL1)
        assert (built[0].on, built[0].sr, built[0].threshold) == (penalty, 1e-4, threshold)


FIGURE6 = {"figure6_mask_conv": ("rmnet_pruning_18", "mask_conv", ["rm"], True, "reserve_input"),
           "figure6_bn_scale": ("resnet18", "bn_scale", ["rm", "residual"], False, "reserve_shortcut")}


def test_every_figure6_recipe_has_an_entry():
    from engine.config import CONF_DIR

    assert {f[:-5] for f in os.listdir(os.path.join(CONF_DIR, "experiment")) if f.startswith("figure6_")} == set(FIGURE6)


@pytest.mark.parametrize("name", sorted(FIGURE6))
def test_figure6_recipe_composes_in_prune_py(name):
    """prune.py composes each recipe to its own model on CIFAR-10 with the authors' training (train_pruning.py:
    200 + 200 epochs, lr 0.1 at batch 128, weight decay 5e-4 on everything, cosine) and passes prune.py's checks."""
    from jobs import prune as pipeline

    code, out, err = run_script("prune", [f"experiment={name}", "--cfg", "job"])
    assert code == 0, err
    cfg = OmegaConf.create(yaml.safe_load(out))
    model, penalty, forms, every_step, scheme = FIGURE6[name]
    assert (cfg.model.name, cfg.data.name, list(cfg.data.std)) == (model, "cifar10", [0.2023, 0.1994, 0.2010])
    assert (cfg.epochs, cfg.prune.finetune_epochs, cfg.global_batch_size, cfg.optim.lr, cfg.optim.lr_batch) == \
        (200, 200, 128, 0.1, 128)
    assert (cfg.optim.weight_decay, cfg.optim.decay_norm_and_bias, cfg.sched.name, cfg.sched.min_lr_ratio) == \
        (5e-4, True, "cosine", 0.0)
    assert (cfg.prune.penalty, list(cfg.prune.forms), cfg.prune.threshold_every_step, cfg.conversion.downsample) == \
        (penalty, forms, every_step, scheme)
    pipeline.check_settings(cfg)


@pytest.mark.parametrize("overrides, message", [
    (["prune.penalty=mask_conv"], r"mask_conv with model=resnet20: mask_conv penalises the mask convs"),
    (["model=rmnet_pruning_18", "prune.forms=[rm]", "conversion.downsample=reserve_input"],
     r"prune.penalty=bn_scale with model=rmnet_pruning_18"),
    (["experiment=figure6_mask_conv", "prune.forms=[rm,residual]"], r"prunes through RM alone.*prune.forms=\[rm\]"),
    (["experiment=figure6_mask_conv", "conversion.downsample=reserve_shortcut"], r"conversion.downsample=reserve_input"),
    (["prune.penalty=l2"], r"prune.penalty must be one of bn_scale, mask_conv"),
])
def test_bad_penalty_settings_end_in_one_line(tmp_path, overrides, message):
    code, _, err = run_script("prune", [*overrides, f"output_dir={tmp_path}", "epochs=1"])
    assert code == 2 and err.count("\n") == 1 and re.search(message, err), err
    assert os.listdir(tmp_path) == []


TINY_RUN = ["model.kwargs.widths=[4,8,8,8]", "data=synthetic", "data.input_size=32", "data.train_size=32",
            "data.val_size=16", "global_batch_size=null", "optim.lr_batch=null", "batch_size=8", "max_steps_per_epoch=2", "workers=0",
            "progress=false", "epochs=1", "prune.finetune_epochs=1", "prune.calib_batches=1", "prune.bench.batch_size=2",
            "prune.bench.iters=1", "prune.bench.warmup=0", "prune.bench.repeats=1", "prune.bench.runtimes=[eager]"]


def test_a_tiny_mask_conv_run_writes_a_plain_model_evaluate_reproduces(tmp_path):
    """prune.py experiment=figure6_mask_conv at tiny width on 32x32 synthetic images: sparse training with the
    masks thresholded every step, RM conversion, pruning by the masks, fine-tuning; the pruned and the
    fine-tuned files are plain models whose top-1 evaluate.py reproduces, with the widths the masks left."""
    import artifacts
    from engine.checkpoint import load_checkpoint

    code, _, err = run_script("prune", ["experiment=figure6_mask_conv", *TINY_RUN, "prune.sr=1.0",
                                        "prune.threshold=0.9", f"output_dir={tmp_path}"])
    assert code == 0, err
    root = tmp_path / "prune-rmnet_pruning_18-synthetic-sr1-step0.9"
    report = json.loads((root / "thr0.9" / "report.json").read_text())
    assert list(report["forms"]) == ["rm"]
    assert report["penalty"] == {"sr": 1.0, "on": "mask_conv", "threshold": 0.9}
    rm_form = report["forms"]["rm"]
    sparse = load_checkpoint(str(root / "sparse" / "best.pt"))
    assert sparse["config"]["hooks"]["scale_l1"] == {"_target_": "pruning.penalty.ScaleL1", "sr": 1.0, "on": "mask_conv",
                                                     "threshold": 0.9}
    base = artifacts.load(str(root / "sparse" / "best.pt"))
    masks = plain_channel_masks(base.model)
    kept = [layer["kept"] for layer in rm_form["layers"]]
    assert kept == [max(1, int((m >= 0.9).sum())) for m in masks] and sum(kept) < sum(m.numel() for m in masks)
    for path, top1 in ((rm_form["artifact"], rm_form["top1_pruned"]),
                       (str(root / "thr0.9" / "rm" / "finetuned.pt"), rm_form["top1_finetuned"])):
        art = artifacts.load(path)
        assert (art.kind, art.spec.name) == ("deploy", "rmnet_pruning_18")
        code, _, err = run_script("evaluate", [f"checkpoint={path}", f"out={tmp_path / 'eval.json'}", "workers=0",
                                               "progress=false"])
        assert code == 0, err
        assert json.loads((tmp_path / "eval.json").read_text())["results"]["plain"]["top1"] == pytest.approx(top1)


def test_pruning_the_zero_masks_is_exact_and_follows_the_masks():
    """Pruned by its masks at a threshold just above 0, the converted chain loses exactly the zero-mask
    channels (widths = the non-zero masks per layer) and still computes the residual model, in float64."""
    from pruning.plain import prune_plain
    from pruning.surgery import PruneError

    model = masked_model().double()
    plain = rm.convert(model, fuse_bn=False, downsample="reserve_input").eval()
    masks = plain_channel_masks(model)
    result = prune_plain(plain, threshold=1e-12, scores=masks)
    assert [layer["kept"] for layer in result.layers] == [max(1, int((m > 0).sum())) for m in masks]
    assert result.removed > 10 and result.approximate == 0
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        ref, out = model(x), result.model(x)
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-10
    with pytest.raises(PruneError, match="score vectors"):
        prune_plain(plain, threshold=1e-12, scores=masks[1:])


def test_slimming_ranks_the_rm_chain_by_the_masks_not_the_bn_scales():
    """With prune.penalty=mask_conv the pruner keeps what the masks keep, even where the BN scales (here
    all under the threshold) would remove the channel."""
    from types import SimpleNamespace

    from jobs import prune as pipeline
    from pruning.job import Job

    model = random_masks(randomize_bn(create_model("rmnet_pruning_18", num_classes=10, stem="cifar", widths=WIDTHS),
                                      gamma_scale=1e-3)).eval()
    plain = rm.convert(model, fuse_bn=False, downsample="reserve_input").eval()
    prune_cfg = {"penalty": "mask_conv", "threshold": 5e-3, "ratio": None, "channel_round": 1, "budget": {"keep": None}}
    cfg = OmegaConf.create({"prune": prune_cfg})
    job = Job(cfg, SimpleNamespace(model=model, meta={}), "", None, {}, None)
    selection = pipeline.Slimming().select(job, "rm", SimpleNamespace(model=plain), "", None)
    kept = [layer["kept"] for layer in selection.extra["result"].layers]
    assert kept == [max(1, int((m >= 5e-3).sum())) for m in plain_channel_masks(model)]
    cfg.prune.penalty = "bn_scale"
    by_bn = pipeline.Slimming().select(job, "rm", SimpleNamespace(model=plain), "", None)
    assert by_bn.removed > selection.removed
