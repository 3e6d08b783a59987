"""What a new user meets at the command line ends in one line, not a traceback: an output path that
cannot be written (refused before any work), a config group the entry point does not have, Ctrl-C."""
from __future__ import annotations

import pytest

import artifacts
from engine.checkpoint import save_checkpoint
from models import InputSpec, ModelSpec
from tests.helpers import run_script

WIDTHS = [8, 8, 16, 16]
DATA = {"name": "synthetic", "num_classes": 10, "stem": "cifar", "input_size": 16, "train_size": 16,
        "val_size": 16, "seed": 0, "mean": [0.5] * 3, "std": [0.25] * 3,
        "augment": {"crop": "pad", "pad": 4, "hflip": 0.5, "crop_pct": 1.0, "randaugment": None,
                    "mixup": 0.0, "cutmix": 0.0}}
SPEC = ModelSpec("resnet18", 10, "cifar", {"widths": WIDTHS}, input=InputSpec.from_data(DATA))
TINY = ["model=resnet18", f"model.kwargs.widths=[{','.join(map(str, WIDTHS))}]", "data=synthetic",
        "data.input_size=16", "workers=0", "progress=false"]


@pytest.fixture
def ckpt(tmp_path):
    path = str(tmp_path / "best.pt")
    save_checkpoint(path, **artifacts.model_entries(SPEC.build().eval(), SPEC),
                    config={"data": DATA, "model": {"name": "resnet18"}})
    return path


def _one_line(code: int, err: str, status: int = 2) -> str:
    err = err.strip()
    assert code == status and "\n" not in err, (code, err)
    return err


def _no_work(*_, **__):
    raise AssertionError("the job's work started before its output was checked")


# (entry point, arguments with {out} for an output under a regular file, the function doing the work)
UNWRITABLE = {
    "evaluate out=": ("evaluate", ["checkpoint={ckpt}", "out={out}/report.json", "workers=0"],
                      "jobs.evaluate.evaluate"),
    "convert out=": ("convert", ["checkpoint={ckpt}", "out={out}/deploy.pt"], "artifacts.to_plain"),
    "benchmark out_dir=": ("benchmark", ["models=[resnet18]", "stem=cifar", "out_dir={out}/bench"],
                           "jobs.benchmark.benchmark_model"),
    "prune output_dir=": ("prune", ["prune.sparse_ckpt={ckpt}", *TINY, "output_dir={out}/runs"],
                          "pruning.job.check_stored_model"),
    "prune prune.out_dir=": ("prune", ["prune.sparse_ckpt={ckpt}", *TINY, "prune.out_dir={out}/p"],
                             "pruning.job.check_stored_model"),
    "amc output_dir=": ("amc", ["amc.checkpoint={ckpt}", "output_dir={out}/runs"], "pruning.job.check_stored_model"),
}


@pytest.mark.parametrize("case", list(UNWRITABLE))
def test_an_unwritable_output_is_refused_before_any_work(case, ckpt, tmp_path, monkeypatch):
    """An output under a regular file (NotADirectoryError, as a read-only folder or a full disk would
    fail) was found only when the result was written, after all the work."""
    script, argv, work = UNWRITABLE[case]
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setattr(work, _no_work)
    code, _, err = run_script(script, [a.format(ckpt=ckpt, out=blocker) for a in argv])
    err = _one_line(code, err)
    assert err.startswith("error: cannot write") and str(blocker) in err, err
    assert err.split("choose another ")[1].startswith(case.split()[1].rstrip("=")), err


def test_an_output_file_that_is_a_folder_is_refused(ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr("jobs.evaluate.evaluate", _no_work)
    code, _, err = run_script("evaluate", [f"checkpoint={ckpt}", f"out={tmp_path}", "workers=0"])
    assert "is a folder" in _one_line(code, err)


@pytest.mark.parametrize("script, argv, message", [
    ("benchmark", ["model=resnet50"], r"benchmark.py has no model group \(it takes none\).*Did you mean models="),
    ("benchmark", ["+model=resnet50"], r"benchmark.py has no model group"),
    ("benchmark", ["data=synthetic"], r"benchmark.py has no data group \(it takes none\)"),
    ("evaluate", ["checkpoint=x.pt", "optim=sgd"], r"evaluate.py has no optim group \(it takes data=, model=, "
                                                   r"conversion=\)"),
])
def test_a_group_the_entry_point_does_not_have_is_one_line(script, argv, message, monkeypatch):
    """Hydra's answer was a 30-line traceback ("Could not override 'model'. No match in the defaults list")."""
    import re

    monkeypatch.setattr("engine.cli.check_choices", _no_work)   # the job must not start
    code, _, err = run_script(script, argv)
    assert re.search(message, _one_line(code, err)), err


def test_benchmark_of_a_bare_state_dict_names_a_way_that_works(tmp_path):
    """A bare state dict does not say its model; benchmark.py has no model=, so "pass model=NAME" failed."""
    import torch

    path = tmp_path / "weights.pth"
    torch.save(SPEC.build().state_dict(), path)
    code, _, err = run_script("benchmark", [f"checkpoints=[{path}]", f"out_dir={tmp_path}"])
    err = _one_line(code, err)
    assert "benchmark.py" in err and "models=[NAME]" in err and f"convert.py checkpoint={path} model=NAME" in err
    code, _, err = run_script("benchmark", ["models=[resnet18]", "stem=cifar", "+model_kwargs.widths=[8,8,16,16]",
                                            "batch_size=2", "warmup=0", "iters=1", "repeats=1", "memory=false",
                                            "forms=[plain]", f"out_dir={tmp_path}"])
    assert code == 0, err


def _interrupt(*_, **__):
    raise KeyboardInterrupt


@pytest.mark.parametrize("script", ["train", "evaluate", "benchmark", "convert", "prune", "amc", "resrep"])
def test_ctrl_c_is_one_line_and_exit_130(script, monkeypatch):
    """Ctrl-C printed Python's traceback (81 lines in evaluate.py); now `interrupted`, status 128 + SIGINT."""
    monkeypatch.setattr("engine.cli.check_choices", _interrupt)
    code, _, err = run_script(script, ["checkpoint=x.pt"] if script == "evaluate" else [])
    assert _one_line(code, err, status=130) == "interrupted"


def test_ctrl_c_during_evaluation(ckpt, monkeypatch):
    monkeypatch.setattr("jobs.evaluate.evaluate", _interrupt)
    code, _, err = run_script("evaluate", [f"checkpoint={ckpt}", "workers=0"])
    assert _one_line(code, err, status=130) == "interrupted"


@pytest.mark.parametrize("script, argv", [
    ("evaluate", ["checkpoint={ckpt}", "workers=0", "progress=true", "out={out}/e.json"]),
    ("benchmark", ["checkpoints=[{ckpt}]", "batch_size=1", "warmup=0", "iters=1", "repeats=1", "memory=false",
                   "out_dir={out}", "name=b"]),
])
def test_progress_bars_stay_out_of_a_redirected_output(ckpt, tmp_path, script, argv):
    """A log written to a file gets no tqdm bars (each refresh would be a line of its own there)."""
    code, out, err = run_script(script, [a.format(ckpt=ckpt, out=tmp_path) for a in argv])
    assert code == 0, err[-2000:]
    assert "%|" not in out + err, (out + err)[-2000:]


def test_pruning_jobs_log_their_own_lines_not_the_exporters(monkeypatch):
    """prune.py/amc.py/resrep.py time ONNX Runtime for their reports; the exporter's and quantizer's
    INFO chatter (hundreds of lines per model) must not bury the job's own lines."""
    import logging

    from engine.cli import setup_logging
    root, ours = logging.getLogger(), logging.getLogger("rmnet")
    monkeypatch.setattr(root, "level", root.level)
    monkeypatch.setattr(ours, "level", ours.level)
    setup_logging()
    assert logging.getLogger("rmnet.prune").isEnabledFor(logging.INFO)
    assert not logging.getLogger("onnxscript.optimizer").isEnabledFor(logging.INFO)
    assert logging.getLogger("onnxruntime.quantization").isEnabledFor(logging.WARNING)
