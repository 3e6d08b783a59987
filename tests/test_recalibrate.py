"""rm.recalibrate: identity BNs of a fuse_bn=False conversion get data statistics (paper A.3)
while the plain model keeps computing exactly what the residual model computes."""
import sys

import pytest
import torch
import torch.nn as nn

import models
import rm
from rm.recalibrate import identity_channels, recalibrate_identity_bn
from tests.helpers import randomize_bn


def _data(n_batches=3, batch=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    # Offset and scaled so that the statistics are far from the identity BN's 0 / 1.
    return [(torch.randn(batch, 3, 32, 32, generator=g) * 2 + 1, torch.zeros(batch, dtype=torch.long))
            for _ in range(n_batches)]


def _plain(name="resnet18", dtype=torch.float64, **kw):
    model = models.create_model(name, num_classes=10, stem="cifar", **kw).to(dtype)
    randomize_bn(model)
    return model, rm.convert(model, fuse_bn=False)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_outputs_unchanged_and_stats_from_data(dtype, tol):
    model, plain = _plain(dtype=dtype, widths=(8, 16, 16, 32))
    x = torch.randn(2, 3, 32, 32, dtype=dtype)
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    masks = {i: identity_channels(m) for i, m in enumerate(plain) if isinstance(m, nn.BatchNorm2d)}
    assert any(m.any() for m in masks.values()) and not all(m.all() for m in masks.values())

    # The input statistics of every BN, gathered independently of the implementation.
    seen = {}
    hooks = [plain[i].register_forward_pre_hook(lambda mod, a, i=i: seen.setdefault(i, []).append(a[0]))
             for i in masks]
    data = _data()
    with torch.no_grad():
        for images, _ in data:
            plain(images.to(dtype))
    for h in hooks:
        h.remove()

    n = recalibrate_identity_bn(plain, data, )
    assert n == sum(int(m.sum()) for m in masks.values())

    ref = model(x)
    torch.testing.assert_close(plain(x), ref, rtol=tol, atol=tol * ref.abs().max().item())
    for i, mask in masks.items():
        bn = plain[i]
        acts = torch.cat(seen[i]).transpose(0, 1).flatten(1)
        mean, var = acts.mean(1), acts.var(1)
        torch.testing.assert_close(bn.running_mean[mask], mean[mask], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(bn.running_var[mask], var[mask], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(bn.weight[mask], torch.sqrt(var[mask] + bn.eps), rtol=1e-4, atol=1e-5)
        # Trained (non-identity) channels are left exactly as they were.
        for name in ("weight", "bias", "running_mean", "running_var"):
            assert torch.equal(getattr(bn, name)[~mask], before[f"{i}.{name}"][~mask])


def test_merged_bias_is_compensated():
    """A merged conv's bias lives in its identity BN's shift; recalibration must keep it."""
    _, plain = _plain("resnet20", torch.float64)
    bn = next(m for m in plain if isinstance(m, nn.BatchNorm2d) and identity_channels(m).all()
              and m.bias.abs().max() > 0)
    shift = bn.bias - bn.running_mean
    recalibrate_identity_bn(plain, _data(1), )
    torch.testing.assert_close(bn.bias - bn.running_mean, shift)
    assert bn.running_var.sub(1).abs().max() > 1e-3  # statistics really changed


def test_calibrated_bn_is_near_identity_in_training_mode():
    """The point of A.3: with data statistics, batch-statistics BN keeps a reserved channel ~unchanged."""
    _, plain = _plain("resnet20", torch.float64)
    data = _data(1, batch=16)
    recalibrate_identity_bn(plain, data, )
    i, bn = next((i, m) for i, m in enumerate(plain) if isinstance(m, nn.BatchNorm2d)
                 and identity_channels(m).any())
    mask = identity_channels(bn)
    with torch.no_grad():
        z = plain[:i](data[0][0].double())
        bn.train()
        y = bn(z)
        bn.eval()
    shift = (bn.bias - bn.running_mean).view(1, -1, 1, 1)
    torch.testing.assert_close(y[:, mask], (z + shift)[:, mask], rtol=1e-3, atol=1e-3)


def test_bounded_batches_and_errors():
    _, plain = _plain("resnet20", torch.float64)
    calls = []
    data = _data(5)
    plain.register_forward_pre_hook(lambda m, a: calls.append(1))
    recalibrate_identity_bn(plain, data, num_batches=2, )
    assert len(calls) == 2
    assert plain.training is False
    with pytest.raises(ValueError, match="no batches"):
        recalibrate_identity_bn(plain, [], )
    fused = rm.convert(models.create_model("resnet20", num_classes=10, stem="cifar").eval())
    with pytest.raises(ValueError, match="fuse_bn=False"):
        recalibrate_identity_bn(fused, data, )


def test_convert_recalibrates_with_the_stored_data_at_the_trained_size(tmp_path, monkeypatch, capsys):
    """Paper A.3 through convert.py: a training checkpoint with conversion=keep_bn and recalibrate.batches
    gives a verified keep-BN deploy artifact whose identity BNs hold data statistics, measured on the
    data config the checkpoint stores (64 training images here, not the synthetic default's 10000) at
    the input size it was trained at (16)."""
    import artifacts
    from engine.checkpoint import save_checkpoint
    from engine.cli import run_app
    from jobs.convert import run
    from models import InputSpec, ModelSpec

    data = {"name": "synthetic", "num_classes": 10, "stem": "cifar", "input_size": 16, "train_size": 64,
            "val_size": 8, "seed": 0, "mean": [0.5] * 3, "std": [0.25] * 3,
            "augment": {"crop": "pad", "pad": 4, "hflip": 0.5, "crop_pct": 1.0, "randaugment": None,
                        "mixup": 0.0, "cutmix": 0.0}}
    spec = ModelSpec("resnet20", 10, "cifar", input=InputSpec.from_data(data))
    model = randomize_bn(spec.build())
    ckpt, out = tmp_path / "best.pt", tmp_path / "bn.pt"
    save_checkpoint(str(ckpt), **artifacts.model_entries(model, spec), config={"data": data})
    monkeypatch.setattr(sys, "argv", ["convert.py", f"checkpoint={ckpt}", "conversion=keep_bn", "recalibrate.batches=100",
                                      "recalibrate.batch_size=8", "workers=0", "progress=false", f"out={out}"])
    run_app("convert", run)
    printed = capsys.readouterr().out
    assert "on 8 batches of synthetic" in printed and "resnet20 (cifar stem, 10 classes, 16x16 input)" in printed
    art = artifacts.load(out)
    assert art.spec.conversion.fuse_bn is False and art.meta["recalibrated_channels"] > 0
    assert art.meta["verify"]["float32"]["max_rel"] < 1e-4
    assert any(isinstance(m, nn.BatchNorm2d) and (m.running_var != 1).any() and identity_channels(m).any()
               for m in art.model)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(art.model(x), model(x), rtol=1e-4, atol=1e-4)
