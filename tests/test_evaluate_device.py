"""evaluate.py as it runs on a GPU, checked with CPU stand-ins (no GPU here): cuDNN autotuning on and
TF32 off while it evaluates, no tensor built from a host value per batch, the model timed apart from the
data pipeline."""
from __future__ import annotations

import os
import time

import pytest
import torch
from hydra import compose, initialize_config_dir

import artifacts
from engine import validation as E
from engine.checkpoint import save_checkpoint
from jobs.evaluate import format_table, run
from models import InputSpec, ModelSpec
from tests.helpers import ROOT

DATA = {"name": "synthetic", "num_classes": 10, "stem": "cifar", "input_size": 16, "train_size": 16,
        "val_size": 20, "seed": 0, "mean": [0.5] * 3, "std": [0.25] * 3,
        "augment": {"crop": "pad", "pad": 4, "hflip": 0.5, "crop_pct": 1.0, "randaugment": None,
                    "mixup": 0.0, "cutmix": 0.0}}
SPEC = ModelSpec("resnet18", 10, "cifar", {"widths": [8, 8, 16, 16]}, input=InputSpec.from_data(DATA))


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_evaluation_runs_with_cudnn_autotuning_and_ieee_float32(tmp_path, monkeypatch):
    """cuDNN's default is TF32 convolutions: the plain - residual difference would mix TF32 rounding with
    the conversion's. Both forms are evaluated with IEEE float32 and cudnn.benchmark; the flags are restored."""
    path = str(tmp_path / "best.pt")
    save_checkpoint(path, **artifacts.model_entries(SPEC.build().eval(), SPEC), config={"data": DATA})
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = torch.backends.cudnn.benchmark, conv.fp32_precision, matmul.fp32_precision
    seen = []

    def spy(model, loader, device, *args, **kwargs):
        seen.append((torch.backends.cudnn.benchmark, conv.fp32_precision, matmul.fp32_precision))
        return evaluate(model, loader, device, *args, **kwargs)

    evaluate = E.evaluate
    monkeypatch.setattr("jobs.evaluate.evaluate", spy)
    with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base="1.3"):
        run(compose("evaluate", overrides=[f"checkpoint={path}", "workers=0", "progress=false"]), set())
    assert seen == [(True, "ieee", "ieee")] * 2
    assert (torch.backends.cudnn.benchmark, conv.fp32_precision, matmul.fp32_precision) == before


def _batches(n: int, size: int = 4, delay: float = 0.0):
    g = torch.Generator().manual_seed(0)
    for _ in range(n):
        time.sleep(delay)
        yield torch.randn(size, 3, 16, 16, generator=g), torch.randint(0, 10, (size,), generator=g)


def test_no_tensor_from_a_host_value_and_no_host_sync_per_batch(monkeypatch):
    """`torch.tensor(float(len(targets)), device=...)` per batch was a blocking host-to-device copy on a GPU;
    the calls that build a tensor from host values or read one back must not grow with the batch count."""
    model = SPEC.build().eval()
    calls = {"tensor": 0, "item": 0, "tolist": 0, "cpu": 0}

    def counting(owner, name):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            calls[name] += 1
            return original(*args, **kwargs)
        monkeypatch.setattr(owner, name, wrapper)

    counting(torch, "tensor")
    for name in ("item", "tolist", "cpu"):
        counting(torch.Tensor, name)
    counts = []
    for n in (2, 6):
        calls.update(dict.fromkeys(calls, 0))
        E.evaluate(model, _batches(n), torch.device("cpu"), progress=False)
        counts.append(dict(calls))
    assert counts[0] == counts[1], counts


def test_model_throughput_is_timed_apart_from_the_pipeline():
    """A slow loader (worker start-up, decoding) lowered the one img/s figure; the model's own rate is
    reported beside the pipeline's, and the table labels both."""
    model = SPEC.build().eval()
    r = E.evaluate(model, _batches(4, delay=0.1), torch.device("cpu"), progress=False)
    assert r["pipeline_img_s"] <= 16 / 0.4
    assert r["img_s"] > 3 * r["pipeline_img_s"]
    header = format_table({"residual": r}, None).splitlines()[0]
    assert "model img/s" in header and "pipeline img/s" in header


def test_the_model_clock_reads_cuda_events_only_at_the_end(monkeypatch):
    """On a GPU each forward is bracketed by CUDA events on its stream; reading one (elapsed_time) waits
    for the device, so it happens once per evaluation, not per batch. Stand-in events, no GPU."""
    log = []

    class Event:
        def __init__(self, enable_timing=False):
            assert enable_timing

        def record(self, stream=None):
            log.append(("record", stream))

        def elapsed_time(self, end):
            log.append(("read", None))
            return 250.0

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: f"stream of {device}")
    clock = E.ModelClock(torch.device("cuda", 1))
    for _ in range(3):
        with clock():
            pass
    assert log == [("record", "stream of cuda:1")] * 6
    assert clock.total() == pytest.approx(0.75) and log.count(("read", None)) == 3
