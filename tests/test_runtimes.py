"""The benchmark's runtimes (bench/runtimes.py) and INT8 quantization (bench/quantize.py): every
runtime's output matches the residual model, INT8 runs end to end on a trained file with its data,
and bad runtime names or missing packages are one-line errors."""
import os
import re
import sys

import numpy as np
import onnx
import pytest
import torch
from hydra import compose, initialize_config_dir
from onnx import numpy_helper

import artifacts
import models
import rm
from bench.export import ort_session, to_onnx
from bench.quantize import layer_errors, quantize_int8
from engine.inputs import trained_loaders
from engine.validation import evaluate
from jobs import benchmark as B
from jobs.train import run as run_training
from models import ModelSpec
from tests.helpers import markdown_table, randomize_bn, tiny_config

CONF = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """torch and ONNX Runtime (which takes torch's thread count) on one thread each."""


def _cfg(*overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("benchmark", overrides=list(overrides))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny resnet18 trained for a few steps on 16x16 synthetic images: best.pt with its data config."""
    torch.set_num_threads(1)   # module scope: set before the function-scoped thread fixtures run
    summary = run_training(tiny_config(tmp_path_factory.mktemp("runs"), "run_name=r", "epochs=1",
                                       "max_steps_per_epoch=8", "progress=false"))
    return summary["checkpoint"]


def test_onnxruntime_and_int8_on_a_trained_file(tmp_path, trained):
    """Float32 ONNX Runtime within 1e-4 of the residual model for both deployed forms; INT8 runs end to
    end (calibrated on the file's training images), its validation top-1 and agreement measured
    against eager float32."""
    report = B.run(_cfg(f"checkpoints=[{trained}]", "forms=[bn_folded,plain]",
                        "runtime=[eager,onnxruntime,onnxruntime_int8]", "batch_size=[3]", "warmup=1", "iters=1",
                        "repeats=1", "memory=false", "fidelity=true", "data_batch_size=32",
                        "int8.calibration_batches=2", f"out_dir={tmp_path}", "name=t"))
    rows = {(r["runtime"], r["form"]): r for r in report["results"]}
    assert set(rows) == {(rt, f) for rt in ("eager", "onnxruntime", "onnxruntime_int8") for f in ("bn_folded", "plain")}
    for (runtime, form), r in rows.items():
        assert r["check"]["reference"] == "residual eager fp32"
        if runtime == "onnxruntime_int8":
            # Reported, not held to a tolerance; it must differ from float32 (the check runs the int8 model).
            assert r["check"]["tolerance"] is None and 1e-4 < r["check"]["max_rel"] < 0.5
            assert r["int8"]["kept_float"] == [] and r["int8"]["min_weight_sqnr_db"] > 20
            assert r["fidelity"]["images"] == 101 and r["fidelity"]["agreement"] >= 50
        else:
            assert r["check"]["tolerance"] == 1e-4 and r["check"]["max_rel"] < 1e-4, (runtime, form, r["check"])
            assert r["fidelity"] is None   # float32: the output check bounds it
    # The fidelity reference is each form's eager float32 top-1, as the trainer's evaluation loop counts it.
    art = artifacts.load(trained)
    val = trained_loaders(art, 32, 1)[1]
    for form, model in B.build_forms(art.model, art.spec, ["bn_folded", "plain"]).items():
        top1 = evaluate(model, val, progress=False)["top1"]
        assert rows["onnxruntime_int8", form]["fidelity"]["top1_reference"] == pytest.approx(top1), form
    table = (tmp_path / "t.md").read_text()
    assert "| onnxruntime_int8 | plain |" in table and "agreement %" in table and "plain / residual" in table


def test_compile_matches_the_residual_model():
    spec = ModelSpec("rmnet26x3_32", 10, "cifar", {"widths": [16, 32, 64, 128]})
    s = B.Settings(device="cpu", runtimes=["compile"], forms=["plain"], batch_sizes=[2], warmup=1, iters=1,
                   repeats=1, memory=False)
    (row,) = B.benchmark_model(randomize_bn(spec.build(), seed=1), spec, s)
    assert row["runtime"] == "compile" and row["check"]["reference"] == "residual eager fp32"
    assert row["check"]["max_rel"] < 1e-4


def test_int8_keeps_the_identity_merges_in_float_first(tmp_path):
    """The layers whose int8 weights lose most in a plain model are the merge convs of identity
    shortcuts (rows holding the shortcut's 1.0 beside trained weights); keep_float leaves them in float."""
    plain = rm.convert(randomize_bn(models.create_model("resnet20", num_classes=10, stem="cifar",
                                                        widths=(8, 16, 32)), seed=2))
    batches = [torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    path = to_onnx(plain, batches[0][:2], str(tmp_path / "plain.onnx"))
    report = quantize_int8(path, str(tmp_path / "plain.int8.onnx"), batches, keep_float=2)
    graph = onnx.load(report["prepared"]).graph
    weights = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    weight_of = {node.name: node.input[1] for node in graph.node if node.op_type in ("Conv", "Gemm")}

    def mixed(node):   # rows with an exact 1.0 next to other non-zero weights
        rows = weights[weight_of[node]].reshape(len(weights[weight_of[node]]), -1)
        return bool(((rows == 1.0).any(1) & (np.count_nonzero(rows, axis=1) > 1)).any())

    sqnr = report["weight_sqnr_db"]
    assert set(sqnr) == set(weight_of) and len(report["kept_float"]) == 2
    assert all(mixed(node) for node in report["kept_float"])
    assert max(sqnr[n] for n in report["kept_float"]) <= min(sqnr[n] for n in sqnr if n not in report["kept_float"])
    int8 = onnx.load(str(tmp_path / "plain.int8.onnx")).graph
    dequantized = {node.output[0] for node in int8.node if node.op_type == "DequantizeLinear"}
    quantized = {node.name for node in int8.node if node.op_type in ("Conv", "Gemm") and node.input[1] in dequantized}
    assert quantized == set(weight_of) - set(report["kept_float"])
    layers = layer_errors(report["prepared"], str(tmp_path / "plain.int8.onnx"), batches[:1])
    assert [r["node"] for r in layers] == [n.name for n in graph.node if n.name in weight_of]
    assert all(r["output_sqnr_db"] is not None and np.isfinite(r["output_sqnr_db"]) for r in layers
               if r["node"] not in report["kept_float"])


def _cli_error(monkeypatch, capsys, *argv: str) -> str:
    from engine.cli import run_app

    monkeypatch.setattr(sys, "argv", ["benchmark.py", *argv])
    with pytest.raises(SystemExit) as e:
        run_app("benchmark", B.run)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    return err


def test_bad_runtimes_and_missing_packages_are_one_line_errors(monkeypatch, capsys):
    err = _cli_error(monkeypatch, capsys, "models=[resnet20]", "runtime=[eager,tensorrt]")
    assert re.search(r"runtime must be one of eager, compile, onnxruntime, onnxruntime_int8.*got tensorrt", err)
    with pytest.raises(ValueError, match="precision=fp32"):
        B.resolve_settings(_cfg("device=cpu", "runtime=[onnxruntime]", "precision=[fp32,bf16]"))
    with pytest.raises(ValueError, match="compile_mode must be one of"):
        B.resolve_settings(_cfg("device=cpu", "runtime=[compile]", "compile_mode=fastest"))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)   # import onnxruntime now raises ImportError
    err = _cli_error(monkeypatch, capsys, "models=[resnet20]", "runtime=[eager,onnxruntime_int8]")
    assert "the onnxruntime package is needed for runtime=onnxruntime_int8" in err and "pip install onnxruntime" in err


def test_a_run_s_best_and_deploy_files_are_compared_each_with_itself(tmp_path, trained):
    """checkpoints=[deploy.pt, best.pt] of one run (one model name): deploy.pt's plain row has no residual
    row of its own to be compared with (it was compared with best.pt's), and the fidelity table has a
    row per file and form (it showed one file's only)."""
    deploy = os.path.join(os.path.dirname(trained), "deploy.pt")
    report = B.run(_cfg(f"checkpoints=[{deploy},{trained}]", "forms=[residual,plain]", "precision=bf16",
                        "batch_size=[3]", "warmup=0", "iters=1", "repeats=1", "memory=false", "fidelity=true",
                        "data_batch_size=64", f"out_dir={tmp_path}", "name=t"))
    assert [(r["source"], r["form"]) for r in report["results"]] == [
        ("deploy.pt", "plain"), ("best.pt", "residual"), ("best.pt", "plain")]
    markdown = (tmp_path / "t.md").read_text()
    main = [(r["model"], r["form"], r["vs residual"]) for r in markdown_table(markdown, "| model | batch |")]
    assert main[:2] == [("resnet18 (deploy.pt)", "plain", ""), ("resnet18 (best.pt)", "residual", "1.00x")]
    assert main[2][:2] == ("resnet18 (best.pt)", "plain") and main[2][2].endswith("x")
    fidelity = [(r["model"], r["form"]) for r in markdown_table(markdown, "| model | form | runtime |")]
    assert fidelity == [("resnet18 (deploy.pt)", "plain"), ("resnet18 (best.pt)", "residual"),
                        ("resnet18 (best.pt)", "plain")]
    # The plain model of deploy.pt is best.pt's converted: the same predictions in bf16 and fp32.
    top1 = {r["source"]: r["fidelity"]["top1_reference"] for r in report["results"] if r["form"] == "plain"}
    assert top1["deploy.pt"] == pytest.approx(top1["best.pt"])


def test_onnx_export_splits_prelus_into_operators_ort_keeps_in_its_conv_layout(tmp_path):
    """The RM form of MobileNetV2 has a PReLU after most convs (reserved linear bottlenecks may be
    negative); ONNX Runtime runs a PRelu node outside its blocked conv layout. The export writes
    relu(x) - a * relu(-x) instead: no PRelu node, the same outputs, slopes below 0 and above 1 too."""
    plain = rm.convert(randomize_bn(models.create_model("mobilenetv2_rm", num_classes=10, stem="cifar",
                                                        width_mult=0.25), seed=3))
    prelus = [m for m in plain.modules() if isinstance(m, torch.nn.PReLU)]
    assert prelus
    with torch.no_grad():
        for k, p in enumerate(prelus):
            p.weight.copy_(torch.linspace(-0.5, 1.5, p.num_parameters) + 0.01 * k)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    path = to_onnx(plain, x, str(tmp_path / "plain.onnx"))
    assert "PRelu" not in {node.op_type for node in onnx.load(path).graph.node}
    out = ort_session(path).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        ref = plain(x)
    assert np.allclose(out, ref.numpy(), rtol=1e-4, atol=1e-5 * float(ref.abs().max()))
