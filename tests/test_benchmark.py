"""benchmark.py and its pieces: JSON/Markdown report, form equivalence, memory estimate, exports."""
import json
import os

import pytest
import torch
import torch.nn as nn
from hydra import compose, initialize_config_dir

import artifacts
import models
import rm
from bench import benchmark as B
from bench.export import export_onnx, export_torchscript
from bench.memory import tensor_lifetime_peak
from models import ModelSpec
from tests.helpers import randomize_bn

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
    artifacts.save_deploy(plain, spec.as_plain(models.ConversionSettings()), str(tmp_path / "deploy.pt"))
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
