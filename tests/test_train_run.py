"""Whole training runs on CPU: torchrun/DDP (gloo) on two processes, exact resume, final conversion."""
import json
import os
import subprocess
import sys

import pytest
import torch

import artifacts
import data
from engine.checkpoint import load_checkpoint
from engine.trainer import Trainer
from engine.validation import evaluate
from jobs.train import run as run_training
from tests.helpers import TINY, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.distributed
def test_torchrun_two_processes(tmp_path):
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "train.py"), *TINY, f"output_dir={out}", "epochs=1", "sched=cosine", "optim.lr=0.1"]
    proc = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    [run] = os.listdir(out)                      # one run directory for both ranks
    run_dir = out / run
    assert sorted(os.listdir(run_dir)) == ["best.pt", "config.yaml", "deploy.pt", "final.json", "last.pt",
                                           "metrics.jsonl", "tb", "train.log"]
    assert sorted(os.listdir(tmp_path)) == ["runs"]   # Hydra wrote nothing in the working directory
    assert proc.stdout.count("epoch 1/1:") == 1 and proc.stdout.count("final plain") == 1   # rank 0 only

    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    losses = [r["train_loss"] for r in rows if "lr" in r]
    assert len(losses) == 8                     # 256 images / (2 ranks x 16) steps, logged every step
    assert sum(losses[-3:]) < sum(losses[:3])   # the loss falls

    # Distributed validation over 101 images (odd, not divisible by 2) counts each exactly once and
    # equals a single-process evaluation of the same weights.
    final = json.load(open(run_dir / "final.json"))
    assert final["residual"]["num_samples"] == final["plain"]["num_samples"] == 101
    assert final["residual"]["top1"] == final["plain"]["top1"]
    cfg = tiny_config(out)
    model = artifacts.load(run_dir / "best.pt").model
    single = evaluate(model, data.build_loader(cfg.data, "val", 16, workers=0), progress=False)
    assert single["top1"] == pytest.approx(final["residual"]["top1"])
    assert single["loss"] == pytest.approx(final["residual"]["loss"], rel=1e-5)
    assert load_checkpoint(str(run_dir / "last.pt"))["world_size"] == 2


class _Stop(Exception):
    pass


@pytest.mark.parametrize("every", [0, 3], ids=["epoch-boundary", "mid-epoch"])
def test_resume_gives_the_same_weights(tmp_path, monkeypatch, one_thread, every):
    """A run killed right after its first checkpoint and resumed ends with the same weights as an
    uninterrupted run (cosine schedule, augmentation on, deterministic CPU)."""
    common = ["epochs=2", "max_steps_per_epoch=4", "sched=cosine", "deterministic=true",
              "final.enabled=false", f"ckpt_every_steps={every}", "ema_decay=0.9"]
    run_training(tiny_config(tmp_path, "run_name=full", *common))

    save = Trainer.save

    def save_then_stop(self, best=False):
        save(self, best)
        raise _Stop

    monkeypatch.setattr(Trainer, "save", save_then_stop)
    with pytest.raises(_Stop):
        run_training(tiny_config(tmp_path, "run_name=cut", *common))
    monkeypatch.setattr(Trainer, "save", save)
    stopped = load_checkpoint(str(tmp_path / "cut" / "last.pt"))
    assert (stopped["epoch"], stopped["step_in_epoch"]) == ((0, 3) if every else (1, 0))
    run_training(tiny_config(tmp_path, "run_name=cut", "resume=auto", *common))

    a = load_checkpoint(str(tmp_path / "full" / "last.pt"))
    b = load_checkpoint(str(tmp_path / "cut" / "last.pt"))
    assert a["step"] == b["step"] == 8
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for k, v in a["ema"].items():   # the EMA continues its average: restored, not restarted from the weights
        assert torch.equal(v, b["ema"][k]), k
    for k, v in a["optimizer"]["state"].items():
        assert torch.equal(v["momentum_buffer"], b["optimizer"]["state"][k]["momentum_buffer"])
    if every:
        assert "(its last 1 of 4 steps, resumed)" in open(tmp_path / "cut" / "train.log").read()


def test_progress_bars_stay_out_of_a_redirected_output(tmp_path, capsys):
    run_training(tiny_config(tmp_path, "run_name=p", "epochs=1", "max_steps_per_epoch=2", "progress=true"))
    err = capsys.readouterr().err
    assert "%|" not in err and "it/s]" not in err, err[-2000:]


def test_resume_of_a_finished_run_rewrites_nothing(tmp_path):
    """resume=auto on a run that ended reports its results: deploy.pt and final.json stay as they were."""
    first = run_training(tiny_config(tmp_path, "run_name=done", "epochs=1", "max_steps_per_epoch=2"))
    run_dir = tmp_path / "done"
    files = ("deploy.pt", "final.json", "last.pt", "best.pt")
    before = {f: os.stat(run_dir / f).st_mtime_ns for f in files}
    again = run_training(tiny_config(tmp_path, "run_name=done", "resume=auto", "epochs=1", "max_steps_per_epoch=2"))
    assert {f: os.stat(run_dir / f).st_mtime_ns for f in files} == before
    assert again["plain"] == first["plain"] and again["deploy"] == first["deploy"]
    assert "the run is finished" in open(run_dir / "train.log").read()
