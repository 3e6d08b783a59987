"""Deploy artifacts and convert.py: round trips, dtypes, the command line on real training output."""
import os
import re

import pytest
import torch

import artifacts
import models
import rm
from engine.checkpoint import save_checkpoint
from models import ConversionSettings, InputSpec, ModelSpec
from tests.authors_models import RepVGGDeploy, RMRep, authors_checkpoint, randomized
from tests.helpers import randomize_bn, run_script


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Small models on shared cores: one thread is many times faster than two."""


SPEC = ModelSpec("resnet20", 10, "cifar", input=InputSpec(24, (0.5,) * 3, (0.25,) * 3, "synthetic"))


def _small_model():
    return randomize_bn(SPEC.build())


def test_deploy_round_trip(tmp_path):
    model = _small_model()
    plain = rm.convert(model)
    path = tmp_path / "deploy.pt"
    artifacts.save_plain(plain, SPEC.as_plain(ConversionSettings()), str(path), note="kept")
    loaded, meta = rm.load_deploy(str(path))   # torch-level: the layer list, weights and plain metadata
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), plain(x), rtol=0, atol=0)
    assert meta["note"] == "kept" and meta["model_spec"]["name"] == "resnet20"
    art = artifacts.load(path)   # typed: the spec comes back equal
    assert art.kind == "deploy" and art.spec == SPEC.as_plain(ConversionSettings()) and art.meta == {"note": "kept"}
    assert torch.load(path, weights_only=True)["format"] == "rmnet-deploy"
    with pytest.raises(ValueError, match="holds a plain model"):
        artifacts.save_plain(model, SPEC, str(tmp_path / "residual.pt"))


def test_float64_artifact_keeps_float64_weights(tmp_path):
    plain = rm.convert(_small_model().double())
    path = tmp_path / "deploy64.pt"
    rm.save_deploy(plain, str(path))
    loaded, _ = rm.load_deploy(str(path))
    for (name, a), b in zip(plain.state_dict().items(), loaded.state_dict().values()):
        assert a.dtype == b.dtype and torch.equal(a, b), name


def _convert(monkeypatch, capsys, *argv: str) -> tuple[int, str, str]:
    """convert.py in this process: (exit status, stdout, stderr)."""
    return run_script("convert", list(argv))


def test_cli_converts_a_training_checkpoint(tmp_path, monkeypatch, capsys):
    model = _small_model()
    ckpt = tmp_path / "last.pt"
    save_checkpoint(str(ckpt), **artifacts.model_entries(model, SPEC))
    out = tmp_path / "deploy.pt"
    code, text, err = _convert(monkeypatch, capsys, f"checkpoint={ckpt}", f"out={out}")
    assert code == 0, err
    assert "24x24 input" in text and "GMACs" in text   # the trained size, not the stem's nominal 32
    art = artifacts.load(out)
    assert art.spec == SPEC.as_plain(ConversionSettings()) and art.meta["verify"]["float64"]["max_rel"] < 1e-10
    x = torch.randn(2, 3, 24, 24)
    torch.testing.assert_close(art.model(x), model(x), rtol=1e-5, atol=1e-5)


def test_cli_default_output_goes_under_the_ignored_deploy_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, text, _ = _convert(monkeypatch, capsys, "model=resnet20", "stem=cifar", "num_classes=10",
                             "model.kwargs.widths=[8,8,8]")
    assert code == 0 and text.strip().endswith("wrote deploy/resnet20-random.pt")
    assert artifacts.load(tmp_path / "deploy" / "resnet20-random.pt").model[0].in_channels == 3


@pytest.mark.parametrize("argv,message", [
    (["checkpoint=/nonexistent.pt"], r"checkpoint '/nonexistent.pt' does not exist"),
    (["model=rmnet50x6_23"], r"unknown model 'rmnet50x6_23'. Did you mean: rmnet50x6_32"),
    ([], r"pass checkpoint=PATH"),
])
def test_cli_reports_bad_input(tmp_path, monkeypatch, capsys, argv, message):
    code, _, err = _convert(monkeypatch, capsys, *argv, f"out={tmp_path / 'x.pt'}")
    assert code == 2 and err.count("\n") == 1 and re.search(message, err), err
    assert not os.path.exists(tmp_path / "x.pt")


def test_cli_converts_a_narrow_bare_state_dict_and_refuses_a_mismatched_one(tmp_path, monkeypatch, capsys):
    model = randomize_bn(models.create_model("resnet18", num_classes=10, stem="cifar", widths=[8, 8, 16, 16]))
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    code, _, err = _convert(monkeypatch, capsys, f"checkpoint={tmp_path / 'sd.pt'}", "model=resnet18",
                            "model.kwargs.widths=[8,8,16,16]", f"out={tmp_path / 'ok.pt'}")
    assert code == 0, err
    spec = artifacts.load(tmp_path / "ok.pt").spec
    assert (spec.name, spec.num_classes, spec.stem, spec.kwargs) == ("resnet18", 10, "cifar", {"widths": [8, 8, 16, 16]})
    code, _, err = _convert(monkeypatch, capsys, f"checkpoint={tmp_path / 'sd.pt'}", "model=resnet32",
                            f"out={tmp_path / 'x.pt'}")
    assert code == 2 and "does not fit resnet32" in err and err.count("\n") == 1


def test_cli_refuses_above_the_tolerance_and_writes_nothing(tmp_path, monkeypatch, capsys):
    save_checkpoint(str(tmp_path / "c.pt"), **artifacts.model_entries(_small_model(), SPEC))
    code, _, err = _convert(monkeypatch, capsys, f"checkpoint={tmp_path / 'c.pt'}", "conversion.tolerance=1e-12",
                            f"out={tmp_path / 'x.pt'}")
    assert code == 2 and "above conversion.tolerance=1e-12; nothing was written" in err
    assert not os.path.exists(tmp_path / "x.pt")


@pytest.mark.parametrize("theirs, name", [(lambda: RMRep(21, 1000, 0.25, base_wide=8), "rmrepvgg21"),
                                          (lambda: RepVGGDeploy([2, 4, 14, 1], [8, 16, 32, 64], 1000), "repvgg_a0")],
                         ids=["rmrep_21", "repvgg-a0-deploy"])
def test_cli_writes_a_deploy_artifact_of_an_authors_file(tmp_path, monkeypatch, capsys, theirs, name):
    """The RMNet authors' rmrep_<N> converts; a RepVGG deploy-form file is plain already and is written as it
    is, so that the benchmark reads it. Either artifact computes the authors' model."""
    theirs = randomized(theirs(), seed=6)
    torch.save(authors_checkpoint(theirs), tmp_path / "authors.pth.tar")
    code, text, err = _convert(monkeypatch, capsys, f"checkpoint={tmp_path / 'authors.pth.tar'}", f"model={name}",
                               "model.kwargs.widths=[8,16,32,64]", f"out={tmp_path / 'deploy.pt'}")
    assert code == 0, err
    assert ("written without conversion" in text) == isinstance(theirs, RepVGGDeploy)
    art = artifacts.load(tmp_path / "deploy.pt")
    assert (art.kind, art.spec.name, art.spec.form) == ("deploy", name, "plain")
    x = torch.randn(2, 3, 64, 64)
    ref = theirs(x)
    assert (art.model(x) - ref).abs().max() / ref.abs().max() < 1e-5
