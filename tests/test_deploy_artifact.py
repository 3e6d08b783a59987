import subprocess
import sys

import pytest
import torch

import convert as convert_cli
import models
import rm
from engine.checkpoint import atomic_save
from tests.conftest import randomize_bn


def _small_model():
    return randomize_bn(models.create_model("resnet20", num_classes=10, stem="cifar"))


def test_deploy_round_trip(tmp_path):
    model = _small_model()
    plain = rm.convert(model)
    path = tmp_path / "deploy.pt"
    rm.save_deploy(plain, str(path), meta={"name": "resnet20"})
    loaded, meta = rm.load_deploy(str(path))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), plain(x), rtol=0, atol=0)
    assert meta["name"] == "resnet20"
    blob = torch.load(path, weights_only=True)
    assert blob["format"] == "rmnet-deploy"


def test_float64_artifact_keeps_float64_weights(tmp_path):
    plain = rm.convert(_small_model().double())
    path = tmp_path / "deploy64.pt"
    rm.save_deploy(plain, str(path))
    loaded, _ = rm.load_deploy(str(path))
    for (name, a), b in zip(plain.state_dict().items(), loaded.state_dict().values()):
        assert a.dtype == b.dtype and torch.equal(a, b), name


def test_deploy_artifact_runs_without_model_classes(tmp_path):
    """A fresh interpreter that cannot import the training-time model code still runs the file."""
    model = _small_model()
    path = tmp_path / "deploy.pt"
    rm.save_deploy(rm.convert(model), str(path))
    x = torch.randn(1, 3, 32, 32)
    expected = model(x)
    torch.save(x, tmp_path / "x.pt")
    code = f"""
import importlib.util, sys, torch
sys.modules["models"] = None  # any import of the model zoo now fails
spec = importlib.util.spec_from_file_location("deploy", "rm/deploy.py")
deploy = importlib.util.module_from_spec(spec); spec.loader.exec_module(deploy)
net, _ = deploy.load_deploy({str(path)!r})
torch.save(net(torch.load({str(tmp_path / 'x.pt')!r})), {str(tmp_path / 'y.pt')!r})
"""
    subprocess.run([sys.executable, "-c", code], check=True)
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), expected, rtol=1e-5, atol=1e-5)


def test_cli_converts_a_training_checkpoint(tmp_path, capsys):
    model = _small_model()
    ckpt = tmp_path / "last.pt"
    atomic_save({"format": "rmnet-train", "model": model.state_dict(), "model_cfg": model.rmnet_cfg}, str(ckpt))
    out = tmp_path / "deploy.pt"
    assert convert_cli.main(["--checkpoint", str(ckpt), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "float64" in text and "GMACs" in text
    plain, meta = rm.load_deploy(str(out))
    assert meta["verify"]["float64"]["max_rel"] < 1e-10
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(plain(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("args,message", [
    (["--checkpoint", "/nonexistent.pt"], "does not exist"),
    (["--model", "rmnet50x6_23"], "Did you mean"),
])
def test_cli_reports_bad_input(tmp_path, capsys, args, message):
    assert convert_cli.main(args + ["--out", str(tmp_path / "x.pt")]) == 2
    assert message in capsys.readouterr().err


def test_cli_refuses_a_mismatched_checkpoint(tmp_path, capsys):
    ckpt = tmp_path / "sd.pt"
    torch.save(_small_model().state_dict(), ckpt)
    code = convert_cli.main(["--checkpoint", str(ckpt), "--model", "resnet32", "--stem", "cifar",
                             "--num-classes", "10", "--out", str(tmp_path / "x.pt")])
    assert code == 2
    assert "does not match resnet32" in capsys.readouterr().err
