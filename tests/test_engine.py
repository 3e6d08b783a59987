"""Engine pieces: evaluation numbers, schedules, weight-decay groups, hooks, model init, run choice."""
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import rm
from engine.build import build_model, is_plain
from engine.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from engine.config import ConfigError
from engine.evaluate import evaluate
from engine.hooks import BNL1, build_hooks
from engine.optim import lr_factor, param_groups
from engine.trainer import _choose_run
from tests.conftest import randomize_bn
from tests.train_helpers import tiny_config


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
    [hook] = build_hooks({"bn_l1": {"sr": 0.1}})
    hook.after_backward(nn.Sequential(bn))
    assert bn.weight.grad.tolist() == pytest.approx([1.1, 0.9, 1.0])
    assert isinstance(build_hooks({"engine.hooks:BNL1": {}})[0], BNL1)
    with pytest.raises(ValueError, match="bn_l1"):
        build_hooks({"bn_l2": {}})


def test_init_from_checkpoint_deploy_and_converted(tmp_path):
    cfg = tiny_config(tmp_path)
    model = randomize_bn(build_model(cfg.model, cfg.data))
    torch.save({"state_dict": model.state_dict()}, tmp_path / "w.pt")
    x = torch.randn(2, 3, 16, 16)
    loaded = build_model(tiny_config(tmp_path, f"model.init=ckpt:{tmp_path / 'w.pt'}").model, cfg.data).eval()
    torch.testing.assert_close(loaded(x), model(x))

    kept = build_model(tiny_config(tmp_path, f"model.init=ckpt:{tmp_path / 'w.pt'}", "model.convert=keep_bn").model,
                       cfg.data).eval()
    assert is_plain(kept) and any(isinstance(m, nn.BatchNorm2d) for m in kept.modules())
    torch.testing.assert_close(kept(x), model(x), rtol=1e-4, atol=1e-5)

    rm.save_deploy(rm.convert(model, fuse_bn=False), str(tmp_path / "plain.pt"), meta={"name": "resnet18"})
    plain = build_model(tiny_config(tmp_path, f"model.init=deploy:{tmp_path / 'plain.pt'}").model, cfg.data)
    assert plain.training and isinstance(plain, nn.Sequential) and is_plain(plain)
    torch.testing.assert_close(plain.eval()(x), model(x), rtol=1e-4, atol=1e-5)

    # A plain model's checkpoint rebuilds from its spec.
    save_checkpoint(str(tmp_path / "c.pt"), model=plain.state_dict(), model_cfg=plain.rmnet_cfg,
                    spec=rm.deploy.to_spec(plain))
    again = model_from_checkpoint(load_checkpoint(str(tmp_path / "c.pt")))
    torch.testing.assert_close(again(x), plain(x))

    five = tiny_config(tmp_path, "data.num_classes=5", f"model.init=deploy:{tmp_path / 'plain.pt'}")
    with pytest.raises(ValueError, match="classifies 10 classes"):
        build_model(five.model, five.data)


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
