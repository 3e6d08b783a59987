"""The trainer's CUDA paths, checked on a CPU with stand-ins: resuming onto a non-CPU device (the meta
device), no host synchronisation in the training step between log steps, the EMA's state."""
import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

import engine.distributed as D
from engine.checkpoint import load_checkpoint
from engine.ema import EMA
from engine.hooks import Hook
from tests.helpers import tiny_config, trainer_for

SHORT = ["epochs=1", "max_steps_per_epoch=6", "final.enabled=false"]


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")
def test_resume_onto_a_non_cpu_device_loads_to_the_cpu(tmp_path, monkeypatch):
    """A trainer on a GPU resumes a checkpoint: the meta device stands in for cuda:N, so every tensor
    the trainer would load onto its device has no data (as a CUDA RNG state has no `.numpy()`)."""
    cfg = tiny_config(tmp_path, "run_name=r", *SHORT, "ema_decay=0.9")
    trainer = trainer_for(cfg)
    trainer.save()
    trainer.close()
    saved = load_checkpoint(str(tmp_path / "r" / "last.pt"))

    real_setup = D.setup
    monkeypatch.setattr(D, "setup", lambda *a, **k: (real_setup(*a, **k), torch.device("meta"))[1])
    torch.manual_seed(123)   # another stream than the one saved
    cfg = tiny_config(tmp_path, "run_name=r", "resume=auto", *SHORT, "ema_decay=0.9")
    resumed = trainer_for(cfg)
    resumed.close()
    assert resumed.device.type == "meta" and next(resumed.model.parameters()).is_meta
    assert torch.equal(torch.get_rng_state(), saved["rng"][0]["torch"])


class _SyncCounter:
    """Counts the calls that force a host sync on a GPU; `counts` holds the total at each optimizer step's end."""

    def __init__(self, monkeypatch):
        self.calls, self.counts, self.active = [], [], True
        tensor = torch.Tensor
        for owner, name in ((tensor, "item"), (tensor, "tolist"), (tensor, "cpu"), (tensor, "numpy"),
                            (tensor, "__bool__"), (tensor, "__float__"), (tensor, "__int__"), (torch, "tensor"),
                            (dist, "all_reduce"), (dist, "broadcast"), (D, "all_reduce_sum")):
            monkeypatch.setattr(owner, name, self._counted(getattr(owner, name), name))

    def _counted(self, fn, name):
        def wrapper(*args, **kwargs):
            if self.active:
                self.calls.append(name)
            return fn(*args, **kwargs)
        return wrapper

    def loader(self, loader):
        """The loader, with its batches fetched outside the count (workers make them, not the step)."""
        counter = self

        class Quiet:
            def __getattr__(self, name):
                return getattr(loader, name)

            def __iter__(self):
                it = iter(loader)
                while True:
                    counter.active = False
                    try:
                        batch = next(it)
                    except StopIteration:
                        return
                    finally:
                        counter.active = True
                    yield batch
        return Quiet()


@pytest.mark.parametrize("ema", [0.0, 0.9], ids=["plain", "ema"])
def test_no_host_sync_between_log_steps(tmp_path, monkeypatch, ema):
    """Steps 2-5 of 6 (logged only at the epoch's end) call nothing that waits for the GPU."""
    cfg = tiny_config(tmp_path, "run_name=s", *SHORT, "log_every_steps=100", f"ema_decay={ema}")
    trainer = trainer_for(cfg)
    counter = _SyncCounter(monkeypatch)
    trainer.train_loader = counter.loader(trainer.train_loader)

    class Mark(Hook):
        def after_step(self, t):
            counter.counts.append(list(counter.calls))

    trainer.hooks["mark"] = Mark()
    try:
        trainer.train_epoch()
    finally:
        trainer.close()
    steps = counter.counts
    assert len(steps) == 6
    between = steps[4][len(steps[0]):]   # from the end of step 1 to the end of step 5
    assert between == [], between


def test_ema_state_restores_the_average_instead_of_restarting_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = EMA(model, decay=0.5)
    ema.update(model)   # the first update copies the weights
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update(model)
    restored = EMA(model, decay=0.5)
    restored.load(ema.module.state_dict(), ema.updates)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    expected = torch.lerp(ema.module[0].weight, model[0].weight, 0.5)
    restored.update(model)
    assert torch.equal(restored.module[0].weight, expected)   # averaged with the restored weights, not copied
    assert restored.updates == 3
    assert restored.module[1].num_batches_tracked.dtype == torch.long   # integer buffers are copied


def test_ddp_uses_gradient_buckets_as_gradients(tmp_path):
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        wrapped = D.wrap_ddp(nn.Linear(3, 2), torch.device("cpu"))
        assert isinstance(wrapped, nn.parallel.DistributedDataParallel) and wrapped.gradient_as_bucket_view
    finally:
        dist.destroy_process_group()

