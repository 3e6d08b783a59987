"""End to end: sparse-train -> convert -> prune -> fine-tune on synthetic data, report and Figure 6."""
import json
import os
import shutil

import pytest
import torch
from hydra import compose, initialize_config_dir

import artifacts
from engine.checkpoint import load_checkpoint
from engine.config import CONF_DIR
from jobs import prune as pipeline
from pruning.figure import draw_figure6

TINY = ["model=resnet18", "+model.kwargs.widths=[8,8,16,16]", "data.input_size=16", "data.train_size=32",
        "data.val_size=16", "batch_size=8", "max_steps_per_epoch=2", "workers=0", "progress=false",
        "prune.calib_batches=1", "prune.bench.batch_size=2", "prune.bench.iters=1", "prune.bench.warmup=0",
        "prune.bench.repeats=1", "prune.bench.runtimes=[eager]"]


def compose_prune(overrides):
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return compose("prune", overrides=TINY + overrides)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("prune")
    cfg = compose_prune([f"output_dir={out}", "epochs=1", "prune.finetune_epochs=1", "prune.sr=1e-3",
                         "prune.threshold=0.3"])
    report = pipeline.run(cfg)
    return out, cfg, report


def test_end_to_end_writes_report(run_dir):
    out, cfg, report = run_dir
    root = os.path.join(out, "prune-resnet18-synthetic-sr0.001", "thr0.3")
    with open(os.path.join(root, "report.json")) as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(report))
    assert set(saved["forms"]) == {"rm", "residual"}
    for family, r in saved["forms"].items():
        # The report's numbers are those of the files it names.
        tuned = pipeline.evaluate_file(cfg, os.path.join(root, family, "finetuned.pt"))
        assert (tuned["top1"], tuned["params"]) == (pytest.approx(r["top1_finetuned"]), r["after"]["params"])
        assert pipeline.evaluate_file(cfg, r["artifact"])["top1"] == pytest.approx(r["top1_pruned"])
        assert sum(layer["kept"] for layer in r["layers"]) == r["channels_total"] - r["channels_removed"]
    # RM frees the channels that additions tie in the ResNet: more of them go at the same threshold.
    assert saved["forms"]["rm"]["channels_removed"] > saved["forms"]["residual"]["channels_removed"]
    assert "| layer | kept / channels |" in open(os.path.join(root, "report.md")).read()


def test_pruned_models_reload_and_run(run_dir):
    out, cfg, report = run_dir
    x = torch.randn(2, 3, 16, 16)
    for family, kind, form in (("rm", "deploy", "plain"), ("residual", "pruned", "residual")):
        art = artifacts.load(report["forms"][family]["artifact"])
        assert (art.kind, art.spec.form, art.spec.name) == (kind, form, "resnet18")
        assert art.model(x).shape == (2, 10)
        assert art.meta["form"] == family and art.meta["sr"] == pytest.approx(1e-3)
    rm_meta = artifacts.load(report["forms"]["rm"]["artifact"]).meta
    assert rm_meta["verify"]["float32"]["max_rel"] < 1e-4   # the RM conversion it was pruned from


def test_finetune_file(run_dir, tmp_path):
    """`prune.finetune=PATH` fine-tunes a pruned deploy artifact beside it for prune.finetune_epochs and
    evaluates the result; `epochs` (sparse training) is refused, and so is a second run over the first."""
    out, cfg, report = run_dir
    artifact = str(tmp_path / "pruned.pt")
    shutil.copy(report["forms"]["rm"]["artifact"], artifact)
    with pytest.raises(ValueError, match=r"epochs=1 is the sparse-training length; .*prune.finetune_epochs=N"):
        pipeline.finetune_file(cfg, artifact, explicit={"epochs"})
    stats = pipeline.finetune_file(cfg, artifact)
    assert stats["path"] == str(tmp_path / "finetuned.pt")
    assert stats["params"] == report["forms"]["rm"]["after"]["params"]
    assert load_checkpoint(str(tmp_path / "finetune" / "last.pt"))["epoch"] == cfg.prune.finetune_epochs
    with pytest.raises(ValueError, match=r"finetuned.pt exists from an earlier fine-tune"):
        pipeline.finetune_file(cfg, artifact)


def test_a_sparse_checkpoint_of_another_model_is_refused(run_dir):
    out, _, _ = run_dir
    ckpt = os.path.join(out, "prune-resnet18-synthetic-sr0.001", "sparse", "best.pt")
    cfg = compose_prune([f"output_dir={out}", "model=rmnet26x3_32", f"prune.sparse_ckpt={ckpt}",
                         "prune.forms=[rm]"])
    with pytest.raises(ValueError, match=r"holds resnet18 \(10 classes, cifar stem\) but this run's model is "
                                         r"rmnet26x3_32 .* pass model=resnet18"):
        pipeline.run(cfg)


def test_comparison_table_lists_every_pruned_model(run_dir, capsys):
    from pruning.compare import collect, main
    from pruning.row import FIELDS as ROW

    out, _, report = run_dir
    rows = collect([str(out)])
    assert [(r["method"], r["form"]) for r in rows] == [("slimming", "residual"), ("slimming", "rm")]
    assert all(set(r) == set(ROW) for r in rows)
    by_form = {r["form"]: r for r in rows}
    assert by_form["rm"]["params"] == report["forms"]["rm"]["after"]["params"]
    main([str(out)])   # these runs timed eager only (TINY): the speed axis falls back to it
    table = capsys.readouterr().out
    assert "| img/s eager | img/s eager |" in table
    assert f"| resnet18 | synthetic | slimming | rm | thr0.3 | {by_form['rm']['params'] / 1e6:.3f} |" in table
    with open(os.path.join(out, "pareto.png"), "rb") as f:   # top-1 vs img/s and vs MACs
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit) as exit_:
        main([str(out), "--runtime", "onnxruntime_int8"])
    assert exit_.value.code == 2 and capsys.readouterr().err == (
        "error: no report timed runtime 'onnxruntime_int8'; pass --runtime with one of eager\n")


def test_compare_times_every_model_again_in_one_interleaved_run(run_dir, capsys, monkeypatch, tmp_path):
    """--time: the reports' own speeds were taken at different moments; every model file is timed
    again, all (model, runtime) pairs in ONE interleaved call, and those numbers drive the table."""
    import pruning.retime
    from pruning.compare import main

    out, _, _ = run_dir
    real, calls = pruning.retime.time_interleaved, []

    def spy(fns, *args):
        calls.append(sorted(fns))
        return real(fns, *args)

    monkeypatch.setattr(pruning.retime, "time_interleaved", spy)
    plot = tmp_path / "new" / "pareto.png"   # a folder that does not exist yet
    main([str(out), "--time", "eager", "onnxruntime", "onnxruntime_int8", "--repeats", "2", "--plot", str(plot)])
    assert calls == [[(i, rt) for i in (0, 1) for rt in ("eager", "onnxruntime", "onnxruntime_int8")]]
    with open(tmp_path / "new" / "timing.json") as f:
        timing = json.load(f)
    assert len(timing["speeds"]) == 2 and all(s["onnxruntime"] > 0 for s in timing["speeds"])
    assert timing["artifacts"][0].endswith("finetuned.pt") and timing["settings"]["repeats"] == 2
    table = capsys.readouterr().out
    assert "one interleaved run (`--time`), batch 1" in table
    assert "| img/s eager | img/s onnxruntime | img/s onnxruntime_int8 |" in table   # every runtime timed
    assert f"| {timing['speeds'][0]['onnxruntime']:.0f} | {timing['speeds'][0]['onnxruntime_int8']:.0f} |" in table


def test_model_stats_time_the_deploy_runtimes():
    """bench.runtimes: img/s in ONNX Runtime too (the default), not only eager PyTorch."""
    from omegaconf import OmegaConf

    from models import create_model
    from pruning.report import model_stats

    model = create_model("resnet18", num_classes=10, stem="cifar", widths=[8, 8, 16, 16]).eval()
    bench = OmegaConf.create({"device": "cpu", "batch_size": 2, "warmup": 0, "iters": 1, "repeats": 1,
                              "runtimes": ["eager", "onnxruntime"]})
    stats = model_stats(model, 16, bench)
    assert set(stats["speeds"]) == {"eager", "onnxruntime"} and stats["speeds"]["onnxruntime"] > 0
    assert stats["img_s"] == stats["speeds"]["eager"]


def test_a_macs_budget_is_one_absolute_budget_for_both_forms(run_dir, tmp_path):
    """prune.budget.keep: both forms pruned down to half the residual model's MACs (budget.of=residual,
    the default), within 2%, in multiples of prune.channel_round; the report says so."""
    out, _, _ = run_dir
    ckpt = os.path.join(out, "prune-resnet18-synthetic-sr0.001", "sparse", "best.pt")
    cfg = compose_prune([f"output_dir={tmp_path}", f"prune.sparse_ckpt={ckpt}", "prune.budget.keep=0.5",
                         "prune.channel_round=4", "prune.finetune_epochs=0", "prune.bench.runtimes=[eager]"])
    report = pipeline.run(cfg)
    target = 0.5 * report["reference"]["macs"]
    for row in report["rows"]:
        assert row["target"] == target and row["budget"] == "keep 0.5 of the residual model's MACs"
        assert 0.98 * target <= row["macs"] <= target and row["flag"] is None, row
    for form in report["forms"].values():
        assert all(layer["kept"] % 4 == 0 or layer["kept"] == layer["channels"] for layer in form["layers"])
    md = open(os.path.join(tmp_path, "prune-resnet18-synthetic-sr0.001", "macs0.5-residual", "report.md")).read()
    assert f"| rm | {target:,.4g} |" in md


def test_figure6_png(run_dir, tmp_path):
    out, _, _ = run_dir
    paths = draw_figure6(str(out), str(tmp_path))
    assert [os.path.basename(p) for p in paths] == ["figure6-resnet18-synthetic.png"]
    with open(paths[0], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_sparse_training_learns_shortcut_bns(run_dir):
    """The sparse checkpoint holds the shortcut BNs that rank the channels RM reserves."""
    out, _, _ = run_dir
    art = artifacts.load(os.path.join(out, "prune-resnet18-synthetic-sr0.001", "sparse", "best.pt"))
    assert art.spec.kwargs["shortcut_bn"] is True
    bn = art.model.layer1[0].downsample[0]
    assert isinstance(bn, torch.nn.BatchNorm2d) and not torch.equal(bn.weight, torch.ones_like(bn.weight))


def test_a_model_never_sparse_trained_is_labelled_so_and_pruning_nothing_is_flagged(run_dir, tmp_path, caplog):
    """prune.sparse_ckpt= a checkpoint trained without the BN-scale penalty: the report does not call it
    sparse-trained, and a family that removes no channel is warned about and flagged."""
    from engine.checkpoint import load_checkpoint

    out, _, _ = run_dir
    blob = load_checkpoint(os.path.join(out, "prune-resnet18-synthetic-sr0.001", "sparse", "best.pt"))
    del blob["config"]["hooks"]["bn_l1"]
    torch.save(blob, ckpt := str(tmp_path / "plain_training.pt"))
    cfg = compose_prune([f"output_dir={tmp_path}", f"prune.sparse_ckpt={ckpt}", "prune.threshold=1e-12",
                         "prune.forms=[residual]", "prune.finetune_epochs=0"])
    with caplog.at_level("INFO", logger="rmnet.prune"):
        report = pipeline.run(cfg)
    assert report["sparse_trained"] is False and report["sr"] is None and report["rows"][0]["flag"] == "pruned nothing"
    assert artifacts.load(report["forms"]["residual"]["artifact"]).meta["sr"] is None   # no sr it was not trained with
    warnings = " ".join(r.message for r in caplog.records if r.levelname == "WARNING")
    assert "was not sparse-trained" in warnings and "residual: pruned nothing" in warnings
    md = open(os.path.join(tmp_path, "prune-resnet18-synthetic-not-sparse", "thr1e-12", "report.md")).read()
    assert "(not sparse-trained, unpruned)" in md and "| residual pruned (**pruned nothing**) |" in md


def test_a_model_residual_pruning_does_not_know_is_refused_before_any_work(tmp_path):
    """model=rmnet26x3_32 with the resnet family: one line naming the model and the fix, nothing written."""
    from tests.helpers import run_script

    argv = [a for a in TINY if not a.startswith(("model=", "+model"))]
    code, _, err = run_script("prune", [*argv, "model=rmnet26x3_32", "model.kwargs.widths=[16,32,64,128]",
                                        f"output_dir={tmp_path}", "epochs=1"])
    assert code == 2 and err.count("\n") == 1, err
    assert "model=rmnet26x3_32" in err and "prune.forms=[rm]" in err and "resnet20" not in err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("overrides, message", [
    (["prune.families=[rmnet]"], r"prune.families was renamed: pass prune.forms=\[residual,rm\]"),
    (["prune.channel_round=3"], r"prune.channel_round must be one of 1, 4, 8, 16, got 3"),
    (["prune.budget.keep=1.5"], r"prune.budget.keep is the fraction of the cost to keep, in \(0, 1\]; got 1.5"),
    (["prune.budget.of=rm"], r"prune.budget.of='rm': choose from residual, own"),
])
def test_bad_form_budget_and_round_settings_are_refused(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        pipeline.check_settings(compose_prune([f"output_dir={tmp_path}", *overrides]))


def test_a_latency_budget_runs_through_the_pipeline_with_its_table(run_dir, tmp_path, monkeypatch):
    """prune.budget.kind=latency: channels selected by the runtime's per-layer table (a fake with
    bench.latency.LatencyTable's methods), its check and table in the report."""
    import sys
    import types

    from tests.test_prune_budget import FakeLatencyTable

    monkeypatch.setitem(sys.modules, "bench.latency", types.SimpleNamespace(LatencyTable=FakeLatencyTable))
    out, _, _ = run_dir
    ckpt = os.path.join(out, "prune-resnet18-synthetic-sr0.001", "sparse", "best.pt")
    report = pipeline.run(compose_prune([f"output_dir={tmp_path}", f"prune.sparse_ckpt={ckpt}", "prune.budget.keep=0.7",
                                         "prune.budget.kind=latency", "prune.finetune_epochs=0"]))
    assert FakeLatencyTable.made[-1].runtime == "onnxruntime"   # budget.runtime's default
    for row in report["rows"]:
        assert row["budget_kind"] == "latency" and row["flag"] is None
        assert report["forms"][row["form"]]["cost"] <= row["target"]
    md = open(os.path.join(tmp_path, "prune-resnet18-synthetic-sr0.001", "latency0.7-residual", "report.md")).read()
    assert "Per-layer latency table:" in md and "(ratio 1.00)" in md
