"""rm.recalibrate: identity BNs of a fuse_bn=False conversion get data statistics (paper A.3)
while the plain model keeps computing exactly what the residual model computes."""
import pytest
import torch
import torch.nn as nn

import models
import rm
from rm.recalibrate import identity_channels, recalibrate_identity_bn
from tests.conftest import randomize_bn


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

    n = recalibrate_identity_bn(plain, data, progress=False)
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
    recalibrate_identity_bn(plain, _data(1), progress=False)
    torch.testing.assert_close(bn.bias - bn.running_mean, shift)
    assert bn.running_var.sub(1).abs().max() > 1e-3  # statistics really changed


def test_calibrated_bn_is_near_identity_in_training_mode():
    """The point of A.3: with data statistics, batch-statistics BN keeps a reserved channel ~unchanged."""
    _, plain = _plain("resnet20", torch.float64)
    data = _data(1, batch=16)
    recalibrate_identity_bn(plain, data, progress=False)
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
    recalibrate_identity_bn(plain, data, num_batches=2, progress=False)
    assert len(calls) == 2
    assert plain.training is False
    with pytest.raises(ValueError, match="no batches"):
        recalibrate_identity_bn(plain, [], progress=False)
    fused = rm.convert(models.create_model("resnet20", num_classes=10, stem="cifar").eval())
    with pytest.raises(ValueError, match="fuse_bn=False"):
        recalibrate_identity_bn(fused, data, progress=False)


def test_recalibrate_script_writes_an_equivalent_artifact(tmp_path, monkeypatch):
    """scripts/recalibrate_bn.py: checkpoint + training data in, verified keep-BN deploy artifact out."""
    from engine.checkpoint import save_checkpoint
    from scripts import recalibrate_bn

    small = recalibrate_bn.load_data_config("synthetic", None)
    small.train_size = 64  # the embedded dataset, generated small to keep the test fast
    monkeypatch.setattr(recalibrate_bn, "load_data_config", lambda name, root: small)

    model = randomize_bn(models.create_model("resnet20", num_classes=10, stem="cifar"))
    ckpt, out = tmp_path / "best.pt", tmp_path / "bn.pt"
    save_checkpoint(str(ckpt), model=model.state_dict(), model_cfg=dict(model.rmnet_cfg))
    argv = ["--checkpoint", str(ckpt), "--data", "synthetic", "--out", str(out), "--batches", "2",
            "--batch-size", "8", "--workers", "0"]
    assert recalibrate_bn.main(argv) == 0
    plain, meta = rm.load_deploy(str(out))
    assert meta["fuse_bn"] is False and meta["recalibrated_channels"] > 0
    assert any(isinstance(m, nn.BatchNorm2d) and (m.running_var != 1).any() and identity_channels(m).any()
               for m in plain)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(plain(x), model(x), rtol=1e-4, atol=1e-4)
    monkeypatch.undo()
    with pytest.raises(SystemExit, match="choose one of"):
        recalibrate_bn.load_data_config("nope", None)
