"""benchmark.py and its pieces: JSON/Markdown report, form equivalence, memory estimate, exports."""
import contextlib
import json
import os

import pytest
import torch
import torch.nn as nn
from hydra import compose, initialize_config_dir

import artifacts
import models
import rm
from bench import timing
from bench.export import export_onnx, export_torchscript
from bench.memory import tensor_lifetime_peak
from jobs import benchmark as B
from models import ModelSpec
from tests.helpers import markdown_table, randomize_bn, run_script

CONF = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")
SMALL = [16, 32, 64, 128]


@pytest.fixture(autouse=True)
def _one_thread():
    # Models this small gain nothing from a second thread, and on a shared CPU busy OpenMP workers
    # spin-wait for each other (measured 40x slower forward passes at load 7 on 2 cores).
    torch.set_num_threads(1)


def _cfg(*overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("benchmark", overrides=list(overrides))


def test_run_writes_report_with_schema(tmp_path):
    cfg = _cfg("models=[resnet18,rmnet26x3_32]", "stem=cifar", "num_classes=10", f"+model_kwargs.widths={SMALL}",
               "batch_size=[1,2]", "warmup=1", "iters=1", "repeats=2", f"out_dir={tmp_path}", "name=t")
    report = B.run(cfg)
    with open(tmp_path / "t.json") as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(report))
    assert saved["schema"] == B.SCHEMA
    assert {"device", "device_name", "torch", "cuda", "cudnn", "command", "date"} <= set(saved["environment"])
    assert saved["settings"]["batch_sizes"] == [1, 2] and saved["settings"]["notes"] == []
    rows = saved["results"]
    assert sorted({(r["model"], r["form"], r["batch_size"]) for r in rows}) == sorted(
        (m, f, b) for m in ("resnet18", "rmnet26x3_32") for f in B.FORMS for b in (1, 2))
    for r in rows:
        assert set(r) >= {"params", "macs", "img_per_s", "latency_ms", "memory", "check", "input_size"}
        assert r["input_size"] == 32 and r["num_classes"] == 10
        speeds, latencies = r["img_per_s"]["runs"], r["latency_ms"]["runs"]
        assert len(speeds) == 2 and r["img_per_s"]["max"] == max(speeds)
        for speed, latency in zip(speeds, latencies):   # both from the same timing of `iters` batches
            assert speed * latency == pytest.approx(1000 * r["batch_size"])
        assert r["memory"]["lifetime_peak_mib"] > 0 and r["memory"]["cuda_peak_mib"] is None
        assert (r["check"] is None) == (r["form"] == "residual")
        if r["check"]:
            assert r["check"]["max_rel"] < 1e-5
    by_form = {(r["model"], r["form"]): r for r in rows if r["batch_size"] == 1}
    assert by_form["rmnet26x3_32", "plain"]["params"] > by_form["rmnet26x3_32", "residual"]["params"]
    table = (tmp_path / "t.md").read_text()
    assert "| rmnet26x3_32 | 2 | fp32 | eager | plain |" in table and "tensor lifetimes" in table


def test_plain_and_folded_outputs_equal_residual():
    settings = B.Settings(device="cpu", batch_sizes=[2], warmup=0, iters=1, repeats=1, memory=False)
    for name in ("resnet18", "rmnet26x3_32"):
        spec = ModelSpec(name, 10, "cifar", {"widths": SMALL})
        model = randomize_bn(spec.build(), seed=3)
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            ref = model(x)
            forms = B.build_forms(model, spec, list(B.FORMS))
            for form, m in forms.items():
                torch.testing.assert_close(m(x), ref, rtol=1e-4, atol=1e-5, msg=f"{name} {form}")
        assert not any(isinstance(m, nn.BatchNorm2d) for m in forms["bn_folded"].modules())
        rows = B.benchmark_model(model, spec, settings)
        assert all(r["check"]["max_rel"] < 1e-5 for r in rows if r["form"] != "residual")


def test_lifetime_estimate_counts_what_a_shortcut_holds():
    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x):
            x = self.a(x)        # one map
            y = self.b(x)        # x is held for the shortcut while b writes y: two maps
            return x + y         # x, y and the sum: three maps

    one_map = 8 * 16 * 16 * 4
    x = torch.randn(1, 8, 16, 16)
    plain = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 8, 3, padding=1))
    assert tensor_lifetime_peak(plain.eval(), x) == 2 * one_map   # the in-place ReLU allocates nothing
    assert tensor_lifetime_peak(Res().eval(), x) == 3 * one_map


def test_settings_defaults_and_errors():
    s = B.resolve_settings(_cfg("device=cpu"))
    assert (s.batch_sizes, s.warmup, s.iters) == (B.CPU_DEFAULTS["batch_size"], B.CPU_DEFAULTS["warmup"],
                                                  B.CPU_DEFAULTS["iters"])
    assert "CPU run: reduced defaults" in s.notes[0]
    assert B.resolve_settings(_cfg("device=cpu", "batch_size=128", "warmup=50", "iters=50")).notes == []
    with pytest.raises(ValueError, match="precision must be one of"):
        B.resolve_settings(_cfg("precision=fp8"))
    with pytest.raises(ValueError, match="warmup >= 1"):
        B.resolve_settings(_cfg("device=cpu", "runtime=[eager,compile]", "warmup=0"))
    with pytest.raises(ValueError, match="forms must be"):
        B.resolve_settings(_cfg("forms=[plain,vgg]"))


def test_presets_and_model_errors():
    specs, cfg = B.resolve_models(_cfg("preset=table1_imagenet"))
    assert [s.name for s in specs][:3] == ["resnet50", "resnet101", "resnet152"] and len(specs) == 11
    assert all(s.stem == "imagenet" and s.num_classes == 1000 for s in specs)
    _, cfg = B.resolve_models(_cfg("preset=a1_batch_sweep", "batch_size=4"))
    assert cfg.batch_size == 4   # the command line wins over the preset
    with pytest.raises(ValueError, match="table1_cifar"):
        B.resolve_models(_cfg("preset=table9"))
    with pytest.raises(ValueError, match="either"):
        B.resolve_models(_cfg("preset=table1_cifar", "models=[resnet18]"))
    with pytest.raises(models.UnknownModelError, match="rmnet50x6_32"):
        B.resolve_models(_cfg("models=[rmnet50x6_23]"))


def test_a_deploy_artifact_is_timed_in_its_plain_form_at_its_trained_size(tmp_path):
    """checkpoints=[deploy.pt]: the file's model, its plain form only, at the input size it was trained at."""
    spec = ModelSpec("resnet20", 10, "cifar", input=models.InputSpec(24, (0.5,) * 3, (0.25,) * 3, "synthetic"))
    plain = rm.convert(randomize_bn(spec.build()))
    artifacts.save_plain(plain, spec.as_plain(models.ConversionSettings()), str(tmp_path / "deploy.pt"))
    report = B.run(_cfg(f"checkpoints=[{tmp_path / 'deploy.pt'}]", "batch_size=1", "warmup=0", "iters=1",
                        "repeats=1", "memory=false", f"out_dir={tmp_path}", "name=d"))
    assert [(r["model"], r["form"], r["input_size"]) for r in report["results"]] == [("resnet20", "plain", 24)]
    assert report["results"][0]["params"] == sum(p.numel() for p in plain.parameters())


@pytest.fixture
def plain_resnet20():
    model = randomize_bn(models.create_model("resnet20", num_classes=10, stem="cifar"))
    return rm.convert(model), torch.randn(2, 3, 32, 32)


def test_torchscript_export_matches_pytorch(tmp_path, plain_resnet20):
    report = export_torchscript(*plain_resnet20, str(tmp_path / "m.ts.pt"))
    assert report["max_rel"] < 1e-6 and os.path.isfile(report["path"])
    json.dumps(report)  # plain values only: the benchmark report stays JSON-serialisable


@pytest.mark.slow  # the dynamo ONNX exporter takes ~20 s on 2 CPU cores
def test_onnx_export_matches_pytorch(tmp_path, plain_resnet20):
    report = export_onnx(*plain_resnet20, str(tmp_path / "m.onnx"))
    assert report["max_rel"] < 1e-5 and report["runtime"] in ("onnxruntime", "onnx.reference")
    json.dumps(report)


def test_backend_flags_are_scoped():
    conv = torch.backends.cudnn.conv
    before = torch.backends.cudnn.benchmark, conv.fp32_precision
    with B.backend_flags("tf32"):
        assert torch.backends.cudnn.benchmark and conv.fp32_precision == "tf32"
        with B.backend_flags("fp32"):
            assert conv.fp32_precision == "ieee"
        assert conv.fp32_precision == "tf32"
    assert (torch.backends.cudnn.benchmark, conv.fp32_precision) == before


def _deploy_file(path, widths, seed=0) -> str:
    """A deploy artifact of resnet20 (random BN statistics) trained, as its spec says, at 16x16."""
    spec = ModelSpec("resnet20", 10, "cifar", {"widths": widths},
                     input=models.InputSpec(16, (0.5,) * 3, (0.25,) * 3, "synthetic"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    artifacts.save_plain(rm.convert(randomize_bn(spec.build(), seed)), spec.as_plain(models.ConversionSettings()),
                          str(path))
    return str(path)


@pytest.fixture
def scripted_times(monkeypatch):
    """time_interleaved replaced: the n-th call (one per model and batch size) takes seconds[n] per
    timed block of every (runtime, form), so speeds are known and differ between models."""
    seconds = []

    def fake(calls, device, warmup, iters, repeats):
        t = seconds.pop(0)
        return {key: [t] * repeats if isinstance(t, float) else list(t) for key in calls}

    monkeypatch.setattr(B, "time_interleaved", fake)
    return seconds


def test_two_files_of_one_architecture_keep_their_own_rows(tmp_path, scripted_times):
    """checkpoints=[A, B] of the same model name (a deploy.pt and a pruned one): each row is keyed by its
    file, so A's eager row is 1.00x of A's eager row, not of B's, and both files are named."""
    a = _deploy_file(tmp_path / "run" / "deploy.pt", [16, 32, 64])
    b = _deploy_file(tmp_path / "amc" / "deploy.pt", [8, 16, 32], seed=1)
    scripted_times += [1.0, 3.0]
    report = B.run(_cfg(f"checkpoints=[{a},{b}]", "batch_size=1", "warmup=0", "iters=1", "repeats=1",
                        "memory=false", f"out_dir={tmp_path}", "name=t"))
    rows = report["results"]
    assert [(r["model"], r["file"], r["source"]) for r in rows] == [
        ("resnet20", a, "run/deploy.pt"), ("resnet20", b, "amc/deploy.pt")]
    assert [r["img_per_s"]["median"] for r in rows] == [1.0, 1 / 3]
    assert [s["file"] for s in report["sources"]] == [a, b]
    table = markdown_table((tmp_path / "t.md").read_text(), "| model |")
    assert [(t["model"], t["vs eager"]) for t in table] == [
        ("resnet20 (run/deploy.pt)", "1.00x"), ("resnet20 (amc/deploy.pt)", "1.00x")]
    with open(tmp_path / "t.json") as f:
        assert [r["file"] for r in json.load(f)["results"]] == [a, b]


def test_the_same_file_twice_is_refused(tmp_path):
    a = _deploy_file(tmp_path / "deploy.pt", [8, 16, 32])
    with pytest.raises(ValueError, match="twice"):
        B.resolve_models(_cfg(f"checkpoints=[{a},{tmp_path}/./deploy.pt]"))


def test_wide_spread_is_flagged_in_one_line_the_json_and_the_markdown(tmp_path, capsys, scripted_times):
    """Repeats of one row that disagree by more than WIDE_SPREAD of their median (a busy machine: 10.7
    to 39.3 img/s around 11.4) are flagged per row and summed up in one warning line."""
    scripted_times += [(1.0, 1.1, 0.3)]   # img/s 1, 0.91, 3.3: spread (3.3 - 0.91) / 1 = 240%
    report = B.run(_cfg("models=[resnet20]", "forms=[plain]", "+model_kwargs.widths=[8,16,32]", "batch_size=1",
                        "warmup=0", "iters=1", "repeats=3", "memory=false", f"out_dir={tmp_path}", "name=t"))
    (row,) = report["results"]
    assert row["img_per_s"]["spread"] == pytest.approx((1 / 0.3 - 1 / 1.1) / 1.0)
    assert row["wide_spread"] is True and report["settings"]["wide_spread"] == B.WIDE_SPREAD
    warnings = [line for line in capsys.readouterr().err.splitlines() if "spread" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: 1 of 1 rows") and "242%" in warnings[0]
    (cells,) = markdown_table((tmp_path / "t.md").read_text(), "| model |")
    assert cells["min-max"] == "0.9-3.3 (wide)"


def test_cpu_threads_default_to_a_stable_count_recorded_and_restored(tmp_path, monkeypatch, scripted_times):
    """threads=null on CPU: physical cores minus one (here 4 faked cores -> 3), used while timing,
    recorded in the JSON and the Markdown, and torch's own setting restored afterwards."""
    monkeypatch.setattr(timing, "physical_cores", lambda: 4)
    seen = []
    scripted_times.append(1.0)
    fake = B.time_interleaved
    monkeypatch.setattr(B, "time_interleaved", lambda *a: seen.append(torch.get_num_threads()) or fake(*a))
    torch.set_num_threads(2)
    report = B.run(_cfg("device=cpu", "models=[resnet20]", "forms=[plain]", "+model_kwargs.widths=[8,16,32]",
                        "batch_size=1", "warmup=0", "iters=1", "repeats=1", "memory=false", f"out_dir={tmp_path}",
                        "name=t"))
    assert seen == [3] and report["settings"]["threads"] == 3 and torch.get_num_threads() == 2
    assert "3 torch threads" in (tmp_path / "t.md").read_text()
    monkeypatch.setattr(timing, "physical_cores", lambda: 1)
    assert B.resolve_settings(_cfg("device=cpu")).threads == 1
    assert B.resolve_settings(_cfg("device=cpu", "threads=2")).threads == 2
    with pytest.raises(ValueError, match="threads must be"):
        B.resolve_settings(_cfg("device=cpu", "threads=0"))


def test_the_report_records_what_its_numbers_were_measured_with(tmp_path):
    """Each file's spec, data config and input size, and the threads, runtimes and batch sizes."""
    a = _deploy_file(tmp_path / "deploy.pt", [8, 16, 32])
    B.run(_cfg("device=cpu", f"checkpoints=[{a}]", "models=[resnet20]", "stem=cifar", "+model_kwargs.widths=[8,16,32]",
               "forms=[plain]", "batch_size=1", "warmup=0", "iters=1", "repeats=1", "memory=false",
               f"out_dir={tmp_path}", "name=t"))
    with open(tmp_path / "t.json") as f:
        saved = json.load(f)
    registry, file = saved["sources"]
    assert registry == {"source": "resnet20", "file": None, "kind": "registry", "input_size": 32,
                        "spec": ModelSpec("resnet20", 10, "cifar", {"widths": [8, 16, 32]}).to_dict(),
                        "data_config": None}
    assert (file["source"], file["file"], file["kind"], file["input_size"]) == ("deploy.pt", a, "deploy", 16)
    assert file["spec"] == json.loads(json.dumps(artifacts.load(a).spec.to_dict()))
    assert {"threads", "runtimes", "batch_sizes", "precisions", "warmup", "iters", "repeats"} <= set(saved["settings"])
    assert f"`deploy.pt`: {a}" in (tmp_path / "t.md").read_text()


class FakeCuda:
    """Two CUDA devices as far as the benchmark can tell: the current device, each device's stream,
    and events that remember the stream they were recorded on."""

    def __init__(self, monkeypatch):
        self.current, self.recorded = 0, []
        fake = self

        class Event:
            def __init__(self, enable_timing=False):
                pass

            def record(self, stream=None):
                fake.recorded.append(stream or fake.current_stream())

            def synchronize(self):
                pass

            def elapsed_time(self, end):
                return 1.0

        @contextlib.contextmanager
        def device(d):
            saved, self.current = self.current, self._index(d)
            try:
                yield
            finally:
                self.current = saved

        for name, value in {"is_available": lambda: True, "device_count": lambda: 2, "Event": Event,
                            "current_device": lambda: self.current, "device": device,
                            "set_device": lambda d: setattr(self, "current", self._index(d)),
                            "current_stream": self.current_stream, "synchronize": lambda d=None: None,
                            "empty_cache": lambda: None}.items():
            monkeypatch.setattr(torch.cuda, name, value)

    def _index(self, d) -> int:
        d = torch.device(d) if not isinstance(d, int) else torch.device("cuda", d)
        return self.current if d.index is None else d.index

    def current_stream(self, d=None):
        return f"stream of cuda:{self.current if d is None else self._index(d)}"


def test_cuda_n_times_on_that_device_and_its_stream(monkeypatch):
    """device=cuda:1: the timed calls run with cuda:1 current and the events sit on cuda:1's stream
    (before, on device 0's current stream, timing nothing of the model's work)."""
    cuda = FakeCuda(monkeypatch)
    ran_on = []
    seconds = timing.time_interleaved({"a": lambda: ran_on.append(cuda.current)}, torch.device("cuda:1"), warmup=1,
                                 iters=2, repeats=2)
    assert seconds == {"a": [0.001, 0.001]} and set(ran_on) == {1} and len(ran_on) == 5
    assert cuda.recorded == ["stream of cuda:1"] * 4 and cuda.current == 0
    timing.time_forward(lambda x: ran_on.append(cuda.current), torch.zeros(1), 0, 1, 1)   # prune's timer: CPU input
    assert ran_on[-1] == 0 and len(cuda.recorded) == 4


def test_cuda_n_is_selected_before_anything_is_built(tmp_path, monkeypatch):
    cuda = FakeCuda(monkeypatch)
    monkeypatch.setattr(B, "environment", lambda device: {"device": device})
    monkeypatch.setattr(B, "to_markdown", lambda report: "")
    built_on = []
    monkeypatch.setattr(B, "benchmark_model", lambda *a, **k: built_on.append(cuda.current) or [])
    code, _, err = run_script("benchmark", ["device=cuda:1", "models=[resnet20]", f"out_dir={tmp_path}", "name=t"])
    assert (code, err, built_on) == (0, "", [1]) and cuda.current == 0
    with pytest.raises(ValueError, match="cuda:2.*2 CUDA devices"):
        B.resolve_settings(_cfg("device=cuda:2"))
