"""Trainer faults: SIGKILL and exact resume, SIGTERM/SIGINT preemption, elastic restart under
torchrun, a crash while writing a checkpoint, non-finite losses, an unwritable run directory."""
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

import engine.faults as faults
import engine.trainer as trainer_mod
from artifacts import CheckpointError
from engine.checkpoint import load_checkpoint, save_checkpoint
from engine.config import ConfigError
from engine.faults import NonFiniteLossError, StopSignal
from engine.trainer import Trainer
from jobs.train import run as run_training
from tests.helpers import TINY, tiny_config, trainer_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHORT = ["epochs=2", "max_steps_per_epoch=4", "final.enabled=false"]
FAULT = ["+hooks.fault._target_=tests.fault_hook.InjectFault"]   # kind, step and rank: +hooks.fault.<key>=
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _same_weights(a_path, b_path):
    a, b = load_checkpoint(a_path), load_checkpoint(b_path)
    assert a["step"] == b["step"]
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k


def test_sigkill_at_a_random_step_resumes_exactly(tmp_path, one_thread):
    """A process SIGKILLed after a random step resumes from its last step checkpoint with resume=auto
    and ends with the weights of an uninterrupted run."""
    common = [*SHORT, "deterministic=true", "ckpt_every_steps=1", "sched=cosine"]
    step = random.Random(os.getpid()).randint(2, 7)
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), *TINY, f"output_dir={tmp_path}", "run_name=cut",
           *common, *FAULT, "+hooks.fault.kind=kill", f"+hooks.fault.step={step}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert load_checkpoint(str(tmp_path / "cut" / "last.pt"))["step"] == step - 1   # killed before its save
    run_training(tiny_config(tmp_path, "run_name=cut", "resume=auto", *common, *FAULT, "+hooks.fault.kind=kill",
                             f"+hooks.fault.step={step}"))
    run_training(tiny_config(tmp_path, "run_name=full", *common))
    _same_weights(str(tmp_path / "full" / "last.pt"), str(tmp_path / "cut" / "last.pt"))
    assert (f"resumed {tmp_path / 'cut' / 'last.pt'} at epoch {(step - 1) // 4 + 1}/2, {(step - 1) % 4} steps into it "
            f"(global step {step - 1})") in \
        open(tmp_path / "cut" / "train.log").read()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_preemption_signal_checkpoints_after_the_step_and_exits_nonzero(tmp_path, monkeypatch, sig):
    before = signal.getsignal(sig)
    with pytest.raises(SystemExit) as e:
        run_training(tiny_config(tmp_path, "run_name=pre", *SHORT, "+hooks.sig._target_=tests.fault_hook.SendSignal",
                                 f"+hooks.sig.signum={int(sig)}", "+hooks.sig.step=3"))
    assert e.value.code == 128 + sig
    ckpt = load_checkpoint(str(tmp_path / "pre" / "last.pt"))
    assert (ckpt["step"], ckpt["epoch"], ckpt["step_in_epoch"]) == (3, 0, 3)
    assert "stopped by a signal at epoch 1/2, 3 steps into it (global step 3)" in open(tmp_path / "pre" / "train.log").read()
    assert signal.getsignal(sig) == before   # the handler from before the run is back


def test_a_signal_at_the_epochs_last_step_checkpoints_before_validating(tmp_path, monkeypatch, one_thread):
    """SIGTERM after the epoch's last step: last.pt is written before validation (which, with fresh
    workers, could outlast the deadline); the resume validates that epoch and ends as an uninterrupted run."""
    common = [*SHORT, "deterministic=true"]
    validated = []
    real_validate = Trainer.validate
    monkeypatch.setattr(Trainer, "validate", lambda self: validated.append(self.step) or real_validate(self))
    with pytest.raises(SystemExit) as e:
        run_training(tiny_config(tmp_path, "run_name=end", *common, "+hooks.sig._target_=tests.fault_hook.SendSignal",
                                 f"+hooks.sig.signum={int(signal.SIGTERM)}", "+hooks.sig.step=4"))
    assert e.value.code == 128 + signal.SIGTERM and validated == []
    ckpt = load_checkpoint(str(tmp_path / "end" / "last.pt"))
    assert (ckpt["epoch"], ckpt["step_in_epoch"], ckpt["step"]) == (0, 4, 4)
    run_training(tiny_config(tmp_path, "run_name=end", "resume=auto", *common))
    assert validated == [4, 8]
    assert "epoch 1/2: train loss n/a (resumed after the epoch's last step)" in open(tmp_path / "end" / "train.log").read()
    run_training(tiny_config(tmp_path, "run_name=full", *common))
    _same_weights(str(tmp_path / "full" / "last.pt"), str(tmp_path / "end" / "last.pt"))


def test_best_is_the_checkpoint_written_once(tmp_path, monkeypatch):
    """best.pt is last.pt's file (a hard link), not a second serialisation, and a later last.pt leaves it as it was."""
    cfg = tiny_config(tmp_path, "run_name=b", *SHORT)
    trainer = trainer_for(cfg)
    writes = []
    real_save = trainer_mod.save_checkpoint
    monkeypatch.setattr(trainer_mod, "save_checkpoint", lambda path, **kw: writes.append(path) or real_save(path, **kw))
    try:
        trainer.save(best=True)
        trainer.step = 5
        trainer.save()
    finally:
        trainer.close()
    assert writes == [str(tmp_path / "b" / "last.pt")] * 2
    assert load_checkpoint(str(tmp_path / "b" / "best.pt"))["step"] == 0
    assert load_checkpoint(str(tmp_path / "b" / "last.pt"))["step"] == 5
    assert sorted(os.listdir(tmp_path / "b")) == ["best.pt", "config.yaml", "last.pt", "tb", "train.log"]


def test_second_signal_exits_at_once(monkeypatch):
    exits = []

    def exit_now(code):   # like os._exit, never returns (a returning stub would leave the first timer armed)
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(faults.os, "_exit", exit_now)
    with pytest.raises(SystemExit), StopSignal() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM and not exits
        os.kill(os.getpid(), signal.SIGINT)
    assert exits == [128 + signal.SIGINT]


def test_a_step_that_never_ends_after_the_signal_exits_after_the_grace_period(monkeypatch):
    exits = []
    monkeypatch.setattr(faults.os, "_exit", exits.append)
    with StopSignal(grace_s=0.05):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)   # a rank blocked on a dead peer
    assert exits == [128 + signal.SIGTERM]


@pytest.mark.distributed
def test_elastic_restart_resumes_from_the_last_checkpoint(tmp_path):
    """Rank 1 dies after step 3 of 8; torchrun restarts both ranks once, and they resume from step 2."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=1",
           os.path.join(ROOT, "train.py"), *TINY, f"output_dir={tmp_path}", "run_name=el", "resume=auto", *SHORT,
           "ckpt_every_steps=2", *FAULT, "+hooks.fault.kind=crash", "+hooks.fault.rank=1", "+hooks.fault.step=3",
           "dist_timeout_min=1",
           "batch_size=null", "global_batch_size=32"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "fault injection: crash on rank 1 after step 3" in proc.stderr
    log = open(tmp_path / "el" / "train.log").read()
    assert f"resumed {tmp_path / 'el' / 'last.pt'} at epoch 1/2, 2 steps into it (global step 2)" in log
    assert "2 process(es) on cpu, global batch 32, lr 0.05, 4 steps/epoch" in log   # 16 per rank
    ckpt = load_checkpoint(str(tmp_path / "el" / "last.pt"))
    assert (ckpt["step"], ckpt["world_size"]) == (8, 2)


@pytest.mark.distributed
def test_sigterm_to_torchrun_checkpoints_and_says_so_once(tmp_path):
    """The agent passes SIGTERM to both workers: one notice (rank 0's), both stop at the same step with
    last.pt written and exit 143. torchrun itself then reports the signal in its own words and exits 1."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "train.py"), *TINY, f"output_dir={tmp_path}", "run_name=term", *SHORT,
           "+hooks.sig._target_=tests.fault_hook.SendSignal", f"+hooks.sig.signum={int(signal.SIGTERM)}",
           "+hooks.sig.step=2", "+hooks.sig.to=agent", "batch_size=null", "global_batch_size=32"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=180)
    out = proc.stdout + proc.stderr
    assert out.count("SIGTERM received") == 1, out[-3000:]
    assert proc.returncode == 1, out[-3000:]
    log = open(tmp_path / "term" / "train.log").read()
    step = load_checkpoint(str(tmp_path / "term" / "last.pt"))["step"]
    assert step >= 2 and f"(global step {step}); checkpoint" in log, log


_JOIN = ("import torch, torch.distributed as dist; from engine import distributed; "
         "distributed.setup('cpu', timeout_min=0.5); t = torch.ones(1); dist.all_reduce(t); print(int(t)); "
         "distributed.cleanup()")


@pytest.mark.distributed
def test_a_restarted_group_does_not_read_the_dead_attempts_addresses(tmp_path):
    """torchrun keeps one store for all restarts. Rank 1 of the second attempt starts 2 s before rank 0:
    it must wait for rank 0's new address rather than connect to the one the first attempt left."""
    agent_store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    env = {**ENV, "PYTHONPATH": ROOT, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(agent_store.port),
           "WORLD_SIZE": "2", "TORCHELASTIC_USE_AGENT_STORE": "True"}

    def attempt(n, rank0_delay_s):
        procs = []
        for rank in (1, 0):
            if rank == 0:
                time.sleep(rank0_delay_s)
            procs.append(subprocess.Popen(
                [sys.executable, "-c", _JOIN], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank),
                                "TORCHELASTIC_RESTART_COUNT": str(n)}))
        try:
            outs = [p.communicate(timeout=60) for p in procs]
        finally:
            for p in procs:
                p.kill()   # a hung rank must not outlive the test
        assert [(p.returncode, out.strip()) for p, (out, _) in zip(procs, outs)] == [(0, "2")] * 2, outs

    attempt(0, rank0_delay_s=0)
    attempt(1, rank0_delay_s=2)


def test_crash_during_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    path = str(tmp_path / "last.pt")
    save_checkpoint(path, step=1, model={"w": torch.ones(3)})
    real_save = torch.save

    def save_half_then_die(obj, f, *args, **kwargs):
        real_save(obj, f)
        f.truncate(f.tell() // 2)   # half of the bytes are on disk when the "crash" happens
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", save_half_then_die)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, step=2, model={"w": torch.zeros(3)})
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(path)["step"] == 1
    assert os.listdir(tmp_path) == ["last.pt"]   # no temporary file left behind


def test_disk_full_during_a_run_is_a_clear_error(tmp_path, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    cfg = tiny_config(tmp_path, "run_name=full", *SHORT)
    trainer = trainer_for(cfg)
    try:
        trainer.save()
        monkeypatch.setattr(trainer_mod, "save_checkpoint", disk_full)
        with pytest.raises(CheckpointError, match=r"could not write .*last.pt \(No space left on device\); the "
                                                  r"previous checkpoint is intact"):
            trainer.save()
    finally:
        trainer.close()


def _image_folder(root, bad_class):
    from PIL import Image

    for split in ("train", "val"):
        for c in ("a", "b"):
            os.makedirs(root / split / c)
            for i in range(3):
                Image.new("RGB", (20, 20), (80 * i, 50, 0)).save(root / split / c / f"{i}.JPEG")
    (root / "train" / bad_class / "2.JPEG").write_bytes(b"not an image")


def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_run_folder(tmp_path):
    import data
    from engine.config import check_overrides

    _image_folder(tmp_path, "b")
    out = tmp_path / "runs"
    cfg = check_overrides(["model=resnet18", "model.kwargs.widths=[8,8,16,16]", "data=imagenet",
                           f"data.root={tmp_path}", "data.num_classes=2", "data.input_size=16", "batch_size=2",
                           "workers=0", "progress=false", f"output_dir={out}", "epochs=1"])
    with pytest.raises(data.DatasetError, match=r"2\.JPEG cannot be decoded"):
        run_training(cfg)
    assert os.listdir(out) == []


def test_unwritable_run_directory_fails_at_start(tmp_path):
    (tmp_path / "file").write_text("a file where a folder should be")
    with pytest.raises(ConfigError, match="cannot write to the run directory .*choose another output_dir"):
        cfg = tiny_config(tmp_path / "file" / "runs", *SHORT)
        trainer_for(cfg)


class _NaNAt(nn.Module):
    """Cross-entropy that returns NaN on call number `at` (1-based)."""
    def __init__(self, at):
        super().__init__()
        self.at, self.calls, self.ce = at, 0, nn.CrossEntropyLoss()

    def forward(self, logits, targets):
        self.calls += 1
        loss = self.ce(logits, targets)
        return loss * float("nan") if self.calls == self.at else loss


def test_nonfinite_loss_stops_and_never_overwrites_a_good_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, "_loss", lambda self, settings: (None, _NaNAt(3)))
    with pytest.raises(NonFiniteLossError) as e:
        run_training(tiny_config(tmp_path, "run_name=diverged", *SHORT, "ckpt_every_steps=1", "log_every_steps=2"))
    last = tmp_path / "diverged" / "last.pt"
    assert "non-finite loss at step 3 (lr 0.05)" in str(e.value) and f"Last good checkpoint: {last}" in str(e.value)
    ckpt = load_checkpoint(str(last))
    assert ckpt["step"] == 2   # the save after step 3 saw the NaN and wrote nothing
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_nonfinite_loss_skip_mode_skips_the_update(tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, "_loss", lambda self, settings: (None, _NaNAt(3)))
    run_training(tiny_config(tmp_path, "run_name=skip", *SHORT, "nonfinite_loss=skip"))
    ckpt = load_checkpoint(str(tmp_path / "skip" / "last.pt"))
    assert ckpt["step"] == 8
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert "non-finite loss at step 3 (lr 0.05): update skipped" in open(tmp_path / "skip" / "train.log").read()


def test_resume_from_a_checkpoint_of_another_model_is_refused(tmp_path):
    import artifacts
    from models import ModelSpec

    spec = ModelSpec("resnet20", 10, "cifar")
    path = str(tmp_path / "other" / "last.pt")
    save_checkpoint(path, **artifacts.model_entries(spec.build(), spec), optimizer={}, scheduler={},
                    scaler={}, epoch=0, step=0, step_in_epoch=0, best_top1=0.0)
    cfg = tiny_config(tmp_path, f"resume={path}", *SHORT)
    with pytest.raises(CheckpointError, match=r"does not fit this run \(resnet20, 10 classes, cifar stem"):
        trainer_for(cfg)
