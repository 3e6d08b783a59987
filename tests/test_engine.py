"""Engine pieces: evaluation numbers, schedules, weight-decay groups, hooks, model init, run choice."""
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import artifacts
import rm
from engine.checkpoint import save_checkpoint
from engine.config import ConfigError
from engine.hooks import BNL1, build_hooks
from engine.optim import lr_factor, param_groups
from engine.trainer import _choose_run
from engine.validation import evaluate
from tests.helpers import build_tiny, randomize_bn, tiny_config


def test_evaluate_matches_direct_computation():
    torch.manual_seed(1)
    x, y = torch.randn(37, 6), torch.randint(0, 7, (37,))
    model = nn.Linear(6, 7)
    out = evaluate(model.train(), DataLoader(TensorDataset(x, y), batch_size=8), progress=False)
    logits = model(x)
    assert model.training   # mode restored
    assert out["num_samples"] == 37
    assert out["top1"] == pytest.approx(100 * (logits.argmax(1) == y).float().mean().item())
    top5 = logits.topk(5, 1).indices.eq(y[:, None]).any(1).float().mean().item()
    assert out["top5"] == pytest.approx(100 * top5)
    assert out["loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)


def test_schedules():
    cos = type("C", (), {"name": "cosine", "warmup_epochs": 1, "min_lr_ratio": 0.1,
                         "get": lambda self, k, d=None: getattr(self, k, d)})()
    assert lr_factor(cos, 0, 10, 5) == pytest.approx(0.1)     # warm-up starts at 1/10
    assert lr_factor(cos, 9, 10, 5) == pytest.approx(1.0)
    assert lr_factor(cos, 10, 10, 5) == pytest.approx(1.0)    # cosine starts at the peak
    assert lr_factor(cos, 50, 10, 5) == pytest.approx(0.1)    # and ends at min_lr_ratio
    step = type("S", (), {"name": "step", "step_epochs": 2, "gamma": 0.1, "warmup_epochs": 0,
                          "get": lambda self, k, d=None: getattr(self, k, d)})()
    assert [lr_factor(step, s, 10, 6) for s in (0, 19, 20, 40)] == pytest.approx([1, 1, 0.1, 0.01])


def test_no_weight_decay_on_norm_and_bias():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))
    decay, no_decay = param_groups(model, 1e-4, decay_norm_and_bias=False)
    assert [p.shape for p in decay["params"]] == [(4, 3, 3, 3), (2, 4)]
    assert no_decay["weight_decay"] == 0 and len(no_decay["params"]) == 4
    assert len(param_groups(model, 1e-4, decay_norm_and_bias=True)) == 1


def test_hooks_by_name_and_import_path():
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, -0.2, 0.0]))
    bn.weight.grad = torch.ones(3)
    hook = build_hooks({"bn_l1": {"sr": 0.1}})["bn_l1"]
    hook.after_backward(nn.Sequential(bn))
    assert bn.weight.grad.tolist() == pytest.approx([1.1, 0.9, 1.0])
    assert isinstance(build_hooks({"engine.hooks:BNL1": {}})["engine.hooks:BNL1"], BNL1)
    by_target = build_hooks({"mine": {"_target_": "engine.hooks.BNL1", "sr": 0.3}})["mine"]
    assert isinstance(by_target, BNL1) and by_target.sr == 0.3
    with pytest.raises(ValueError, match="bn_l1"):
        build_hooks({"bn_l2": {}})
    with pytest.raises(ValueError, match="cannot be imported from 'engine.hooks.Nope'"):
        build_hooks({"mine": {"_target_": "engine.hooks.Nope"}})


def test_init_from_checkpoint_deploy_and_converted(tmp_path):
    """model.init takes any file the one load function reads; the run's data decides the recorded input."""
    model, spec = build_tiny(tmp_path)
    model = randomize_bn(model)
    assert (spec.name, spec.stem, spec.num_classes, spec.input.size) == ("resnet18", "cifar", 10, 16)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "w.pt")
    x = torch.randn(2, 3, 16, 16)
    loaded, _ = build_tiny(tmp_path, f"model.init={tmp_path / 'w.pt'}")
    torch.testing.assert_close(loaded.eval()(x), model(x))

    kept, kept_spec = build_tiny(tmp_path, f"model.init=ckpt:{tmp_path / 'w.pt'}", "model.convert=keep_bn")
    assert kept_spec.form == "plain" and kept_spec.conversion.fuse_bn is False
    assert any(isinstance(m, nn.BatchNorm2d) for m in kept.modules())
    torch.testing.assert_close(kept.eval()(x), model(x), rtol=1e-4, atol=1e-5)

    artifacts.save_plain(rm.convert(model, fuse_bn=False), kept_spec, str(tmp_path / "plain.pt"))
    plain, plain_spec = build_tiny(tmp_path, f"model.init=deploy:{tmp_path / 'plain.pt'}", "data.input_size=24")
    assert plain.training and isinstance(plain, nn.Sequential) and plain_spec.form == "plain"
    assert plain_spec.input.size == 24   # trained on from now on
    torch.testing.assert_close(plain.eval()(x), model(x), rtol=1e-4, atol=1e-5)

    # A plain model's training checkpoint rebuilds from its layer list.
    save_checkpoint(str(tmp_path / "c.pt"), **artifacts.model_entries(plain, plain_spec))
    again = artifacts.load(str(tmp_path / "c.pt"))
    assert again.kind == "train" and again.spec == plain_spec
    torch.testing.assert_close(again.model(x), plain(x))

    with pytest.raises(ValueError, match="classifies 10 classes"):
        build_tiny(tmp_path, "data.num_classes=5", f"model.init={tmp_path / 'plain.pt'}")
    with pytest.raises(artifacts.CheckpointError, match="holds resnet18, not resnet20"):
        build_tiny(tmp_path, "model=resnet20", f"model.init={tmp_path / 'plain.pt'}")


def test_run_directory_choice(tmp_path):
    cfg = tiny_config(tmp_path, "run_name=r1")
    assert _choose_run(cfg) == (str(tmp_path / "r1"), None)
    os.makedirs(tmp_path / "r1")
    (tmp_path / "r1" / "last.pt").touch()
    with pytest.raises(ConfigError, match="resume=auto"):
        _choose_run(cfg)
    assert _choose_run(tiny_config(tmp_path, "run_name=r1", "resume=auto"))[1] == str(tmp_path / "r1" / "last.pt")
    for name in ("resnet18-synthetic-a", "resnet18-synthetic-b"):
        os.makedirs(tmp_path / name)
        (tmp_path / name / "last.pt").touch()
    os.utime(tmp_path / "resnet18-synthetic-a" / "last.pt", (1e9, 1e9))
    run_dir, resume = _choose_run(tiny_config(tmp_path, "resume=auto"))
    assert run_dir == str(tmp_path / "resnet18-synthetic-b") and resume.endswith("b/last.pt")
    fresh, resume = _choose_run(tiny_config(tmp_path))
    assert resume is None and os.path.basename(fresh).startswith("resnet18-synthetic-2")
