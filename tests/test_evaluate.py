"""evaluate.py: training checkpoints, deploy artifacts and bare state dicts on a tiny generated dataset."""
import json
import os
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir

import artifacts
import rm
from artifacts import CheckpointError
from engine.checkpoint import save_checkpoint
from engine.config import check_overrides
from jobs.evaluate import SCHEMA, run
from models import ConversionSettings, InputSpec, ModelSpec
from rm import atomic_save
from tests.authors_models import RepVGGDeploy, RMNeXt, RMRep, authors_checkpoint, randomized
from tests.helpers import randomize_bn, run_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDTHS = [8, 8, 16, 16]
# The synthetic set (data/synthetic.py) at 16x16; 37 images so that the last batch and the shards are uneven.
DATA = {"name": "synthetic", "num_classes": 10, "stem": "cifar", "input_size": 16, "train_size": 16,
        "val_size": 37, "seed": 0, "mean": [0.5] * 3, "std": [0.25] * 3,
        "augment": {"crop": "pad", "pad": 4, "hflip": 0.5, "crop_pct": 1.0, "randaugment": None,
                    "mixup": 0.0, "cutmix": 0.0}}
COMMON = ["workers=0", "progress=false", "batch_size=16"]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)   # see tests/test_benchmark.py: tiny models, shared cores


SPEC = ModelSpec("resnet18", 10, "cifar", {"widths": WIDTHS}, input=InputSpec.from_data(DATA))


@pytest.fixture(scope="module")
def residual():
    return randomize_bn(SPEC.build(), seed=5, gamma_scale=2.0)


@pytest.fixture
def train_ckpt(tmp_path, residual):
    path = str(tmp_path / "best.pt")
    save_checkpoint(path, **artifacts.model_entries(residual, SPEC),
                    config={"data": DATA, "model": {"name": "resnet18"}})
    return path


def _evaluate(*overrides: str):
    """evaluate.py OVERRIDES, with the keys they set as its command line's (engine.cli.run_app passes them)."""
    explicit = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base="1.3"):
        return run(compose("evaluate", overrides=[*COMMON, *overrides]), explicit)


def test_training_checkpoint_both_forms_agree(train_ckpt, tmp_path):
    out = tmp_path / "report.json"
    report = _evaluate(f"checkpoint={train_ckpt}", f"out={out}")
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["schema"] == SCHEMA and report["kind"] == "train"
    assert report["data"]["val_size"] == 37   # the stored data config was used
    res, plain = report["results"]["residual"], report["results"]["plain"]
    assert res["num_samples"] == plain["num_samples"] == 37
    assert (res["top1"], res["top5"]) == (plain["top1"], plain["top5"])
    assert plain["loss"] == pytest.approx(res["loss"], rel=1e-5)
    assert report["conversion_error"]["float32"]["max_rel"] < 1e-5
    assert {"device", "torch", "command"} <= set(report["environment"])

    # `data.key=value` (checked and passed on as `++data.key` by the command line) edits the stored config;
    # the default output sits beside the checkpoint.
    report = _evaluate(f"checkpoint={train_ckpt}", "+data.val_size=20", "forms=[residual]")
    assert report["results"]["residual"]["num_samples"] == 20 and "plain" not in report["results"]
    assert os.path.isfile(tmp_path / "best.eval-synthetic.json")


def test_the_job_from_python_is_the_command_line(residual, tmp_path):
    """jobs.evaluate.run reads no global state: called from Python inside another Hydra app
    (whose command line set data.input_size), it gives what evaluate.py's command line with the same
    settings gives; the keys a command line sets are passed explicitly (run_app does)."""
    from hydra.core.hydra_config import HydraConfig

    path = str(tmp_path / "best.pt")   # trained at 16x16; its stored data config says 24
    save_checkpoint(path, **artifacts.model_entries(residual, SPEC),
                    config={"data": {**DATA, "input_size": 24}, "model": {"name": "resnet18"}})
    argv = [f"checkpoint={path}", *COMMON, "forms=[residual]"]
    reports = {}
    for name, extra in (("trained", []), ("typed", ["data.input_size=24"])):
        code, _, err = run_script("evaluate", [*argv, *extra, f"out={tmp_path / name}.json"])
        assert code == 0, err
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert (reports["trained"]["data"]["input_size"], reports["typed"]["data"]["input_size"]) == (16, 24)

    with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base="1.3"):
        outer = compose("train", overrides=["data.input_size=24"], return_hydra_config=True)
    HydraConfig.instance().set_config(outer)   # as inside another app's job
    try:
        from_python = {"trained": run(check_overrides([*argv, f"out={tmp_path / 'p1.json'}"], "evaluate")),
                       "typed": run(check_overrides([*argv, "data.input_size=24", f"out={tmp_path / 'p2.json'}"],
                                                    "evaluate"), {"data.input_size"})}
    finally:
        HydraConfig.instance().cfg = None
    for name, report in from_python.items():
        assert report["data"]["input_size"] == reports[name]["data"]["input_size"], name
        assert report["results"]["residual"]["top1"] == reports[name]["results"]["residual"]["top1"], name


def test_deploy_artifact_plain_only(residual, train_ckpt, tmp_path):
    deploy = str(tmp_path / "deploy.pt")
    artifacts.save_plain(rm.convert(residual), SPEC.as_plain(ConversionSettings()), deploy)
    report = _evaluate(f"checkpoint={deploy}", "data=synthetic", "data.val_size=37", f"out={tmp_path / 'd.json'}")
    assert report["kind"] == "deploy" and list(report["results"]) == ["plain"]
    assert report["data"]["input_size"] == 16   # the trained size, not the data group's 32
    assert report["notes"] == ["residual form not available in a deploy file of a plain model"]
    reference = _evaluate(f"checkpoint={train_ckpt}", "forms=[residual]", f"out={tmp_path / 'r.json'}")
    ref, got = reference["results"]["residual"], report["results"]["plain"]
    assert (got["top1"], got["top5"], got["num_samples"]) == (ref["top1"], ref["top5"], ref["num_samples"])
    assert got["loss"] == pytest.approx(ref["loss"], rel=1e-5)


def test_bare_state_dict_needs_a_model_name(residual, tmp_path):
    path = str(tmp_path / "weights.pth")
    atomic_save({"state_dict": {f"module.{k}": v for k, v in residual.state_dict().items()}}, path)
    data = ["data=synthetic", "data.input_size=16", "data.val_size=37"]
    with pytest.raises(CheckpointError, match="pass model=NAME"):
        _evaluate(f"checkpoint={path}", *data)
    report = _evaluate(f"checkpoint={path}", "model=resnet18", f"+model.kwargs.widths={WIDTHS}", *data,
                       f"out={tmp_path / 'b.json'}")
    assert report["kind"] == "state_dict"
    assert report["results"]["residual"]["top1"] == report["results"]["plain"]["top1"]
    with pytest.raises(CheckpointError, match="does not fit resnet34"):
        _evaluate(f"checkpoint={path}", "model=resnet34", *data)


def test_mismatches_are_clear_errors(train_ckpt):
    with pytest.raises(ValueError, match="classifies 10 classes but data 'cifar100' has 100"):
        _evaluate(f"checkpoint={train_ckpt}", "data=cifar100")
    with pytest.raises(ValueError, match="'cifar' stem .* uses the 'imagenet' stem"):
        _evaluate(f"checkpoint={train_ckpt}", "data=imagenet", "data.num_classes=10")
    with pytest.raises(CheckpointError, match="holds resnet18, not resnet50"):
        _evaluate(f"checkpoint={train_ckpt}", "model=resnet50")


def test_rmnet_authors_layout(tmp_path):
    """The authors' CIFAR RMNeXt 26x3_32 (a stem RepBlock without index, statistics-only BNs) as their
    train.py saves it: both forms evaluate alike."""
    theirs = randomized(RMNeXt([2, 2, 2, 2], 10, 16, 3, 32), seed=3)
    path = str(tmp_path / "rmnext26.pth.tar")
    torch.save(authors_checkpoint(theirs), path)
    report = _evaluate(f"checkpoint={path}", "model=rmnet26x3_32", "+model.kwargs.widths=[16,32,64,128]",
                       "data=synthetic", "data.input_size=16", "data.val_size=37", f"out={tmp_path / 'a.json'}")
    assert report["notes"] == ["rmnet-authors layout; dropped 48 statistics-only tensors"]   # running1/2: 3 each
    res, plain = report["results"]["residual"], report["results"]["plain"]
    assert (res["top1"], res["top5"]) == (plain["top1"], plain["top5"])
    assert report["conversion_error"]["float32"]["max_rel"] < 1e-5


@pytest.mark.parametrize("theirs, model", [
    (lambda: RMRep(21, 1000, 0.25, base_wide=8), ["model=rmrepvgg21", "+model.kwargs.widths=[8,16,32,64]"]),
    (lambda: RepVGGDeploy([2, 4, 14, 1], [8, 16, 32, 64], 1000), ["model=repvgg_a0", "+model.kwargs.widths=[8,16,32,64]"]),
], ids=["rmrep_21", "repvgg-a0-deploy"])
def test_authors_deep_and_deploy_form_files(tmp_path, theirs, model):
    """`evaluate.py checkpoint=rmrep_69.pth.tar model=rmrepvgg69 data=...` (here narrow and 21 deep); a
    RepVGG deploy-form file is plain: it has that form only."""
    theirs = randomized(theirs(), seed=5)
    path = str(tmp_path / "authors.pth.tar")
    torch.save(authors_checkpoint(theirs), path)
    report = _evaluate(f"checkpoint={path}", *model, "data=synthetic", "data.num_classes=1000", "data.stem=imagenet",
                       "data.input_size=32", "data.val_size=37", f"out={tmp_path / 'a.json'}")
    plain = report["results"]["plain"]
    assert plain["num_samples"] == 37
    if isinstance(theirs, RepVGGDeploy):
        assert list(report["results"]) == ["plain"] and report["model"]["form"] == "plain"
        assert report["notes"][0] == "repvgg-deploy layout"
    else:
        assert report["notes"] == ["rmnet-authors-deep layout"]
        res = report["results"]["residual"]
        assert (res["top1"], res["top5"]) == (plain["top1"], plain["top5"])


@pytest.mark.distributed
@pytest.mark.slow   # two processes importing torch: ~30 s on 2 shared cores
def test_torchrun_counts_every_image_once(train_ckpt, tmp_path):
    out = tmp_path / "ddp.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "evaluate.py"), f"checkpoint={train_ckpt}", f"out={out}", "device=cpu", *COMMON]
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    report = json.loads(out.read_text())
    single = _evaluate(f"checkpoint={train_ckpt}", f"out={tmp_path / 'one.json'}")
    assert report["settings"]["world_size"] == 2
    for form in ("residual", "plain"):
        assert report["results"][form]["num_samples"] == 37
        assert report["results"][form]["top1"] == single["results"][form]["top1"]
        assert report["results"][form]["loss"] == pytest.approx(single["results"][form]["loss"], rel=1e-6)


def test_a_trained_run_evaluates_at_the_size_it_was_trained_at(tmp_path, capsys):
    """The chain users run: train.py at 16x16, then evaluate.py on its deploy.pt and best.pt with a data
    group chosen (whose default size is 32) gives the accuracy the run reported, at 16x16."""
    from jobs.train import run as run_training
    from tests.helpers import tiny_config

    summary = run_training(tiny_config(tmp_path, "run_name=run", "epochs=2", "data.val_size=37"))
    run_dir = tmp_path / "run"
    for name, form in (("deploy.pt", "plain"), ("best.pt", "residual")):
        report = _evaluate(f"checkpoint={run_dir / name}", "data=synthetic", "data.val_size=37",
                           f"out={tmp_path / (name + '.json')}")
        assert report["data"]["input_size"] == 16
        assert report["results"][form]["top1"] == summary[form]["top1"]
        assert report["results"][form]["num_samples"] == 37
    assert artifacts.load(run_dir / "deploy.pt").spec.input == InputSpec(16, (0.5,) * 3, (0.25,) * 3, "synthetic")

    # Another size on purpose: it is used, with a one-line warning.
    with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base="1.3"):
        cfg = compose("evaluate", overrides=[*COMMON, f"checkpoint={run_dir / 'deploy.pt'}", "data=synthetic",
                                             "data.input_size=32", "data.val_size=37", f"out={tmp_path / 'x.json'}"])
    report = run(cfg, explicit={"data.input_size", "data.val_size"})
    assert report["data"]["input_size"] == 32
    assert "warning: data.input_size=32 differs from the model's training (16)" in capsys.readouterr().err


def test_a_file_without_its_trained_size_warns_when_evaluated_at_another(tmp_path, capsys):
    """A foreign ImageNet-stem state dict records no trained input: evaluated with data=synthetic at 32x32
    (not its stem's nominal 224) it said nothing; now one warning line, also in the report's notes."""
    model = randomize_bn(ModelSpec("resnet18", 10, "imagenet", {"widths": WIDTHS}).build(), seed=1)
    path = str(tmp_path / "r18.pth")
    torch.save(model.state_dict(), path)
    args = [f"checkpoint={path}", "model=resnet18", f"+model.kwargs.widths={WIDTHS}", "data=synthetic",
            "data.stem=imagenet", "data.val_size=8", f"out={tmp_path / 'r.json'}", "forms=[residual]"]
    report = _evaluate(*args)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "224" in warnings[0] and "32x32" in warnings[0], warnings
    assert warnings[0].removeprefix("warning: ") in report["notes"]
    _evaluate(*args, "data.input_size=224", "data.val_size=2")   # at the nominal size: nothing to say
    assert "warning:" not in capsys.readouterr().err
