"""End to end: amc.py on synthetic data (train -> RM -> AMC search -> prune -> fine-tune -> report, and
the AMC baseline on the residual model); its files read by evaluate.py and benchmark.py."""
import json
import os
import re
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir

import amc
import artifacts
from engine.config import CONF_DIR, check_values
from jobs import amc as pipeline
from jobs import benchmark as B
from jobs.evaluate import run as evaluate_run
from pruning.row import FIELDS

TINY = ["+model.kwargs.width_mult=0.25", "data.input_size=16", "data.train_size=96", "data.val_size=32",
        "batch_size=16", "epochs=1", "max_steps_per_epoch=2", "workers=0", "progress=false", "amc.holdout=32",
        "amc.feature_batches=2", "amc.calib_batches=1", "amc.episodes=3", "amc.warmup=2", "amc.channel_round=1",
        "amc.finetune_epochs=1", "amc.agent.hidden=16", "amc.agent.batch_size=4", "amc.bench.batch_size=2",
        "amc.bench.iters=1", "amc.bench.warmup=0", "amc.bench.repeats=1", "amc.bench.runtimes=[eager]"]
ROW_KEYS = set(FIELDS)


def compose_amc(overrides):
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return compose("amc", overrides=TINY + overrides)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny models on shared cores (conftest's one_thread)."""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("amc")
    report = pipeline.run(cfg := compose_amc([f"output_dir={out}"]))
    torch.set_num_threads(threads)
    return os.path.join(out, "amc-mobilenetv2_rm-synthetic", "r0.5"), cfg, report


def test_report_rows_policies_and_reward_curves(run):
    root, cfg, report = run
    with open(os.path.join(root, "report.json")) as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(report))
    assert [row["form"] for row in saved["rows"]] == ["rm", "residual"]
    for row in saved["rows"]:
        assert set(row) == ROW_KEYS
        assert (row["method"], row["model"], row["data"], row["budget"]) == ("amc", "mobilenetv2_rm", "synthetic",
                                                                            "keep 0.5 of the residual model's MACs")
        assert row["artifact"] == os.path.join(root, row["form"], "finetuned.pt")
        with open(os.path.join(root, row["form"], "policy.json")) as f:
            policy = json.load(f)
        assert 0.98 * policy["target_macs"] <= policy["macs"] <= policy["target_macs"]
        assert row["macs"] == policy["macs"]   # the fine-tuned deploy form costs what the search counted
        assert sum(1 for layer in policy["layers"] if layer["kept"] < layer["channels"]) > 0
        assert row["top1_finetuned"] is not None and row["img_s"] > 0
    rm_row, residual_row = saved["rows"]
    # One absolute budget (amc.budget.of=residual, the default): RM + AMC prunes MobileNetV1 (the RM
    # form, which costs more than MobileNetV2) down to half of MobileNetV2's MACs, as AMC does.
    assert rm_row["target"] == pytest.approx(residual_row["target"]) == 0.5 * report["reference"]["macs"]
    with open(os.path.join(root, "reward_curves.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    md = open(os.path.join(root, "report.md")).read()
    target = f"{rm_row['target'] / 1e6:.3f} M"
    assert f"| RM + AMC | plain | {target} / " in md and f"| AMC | residual | {target} / " in md


def test_evaluate_and_benchmark_read_the_pruned_models(run, tmp_path):
    root, cfg, report = run
    rows = {row["form"]: row for row in report["rows"]}
    for form, kind in (("rm", "deploy"), ("residual", "pruned")):
        pruned = os.path.join(root, form, "pruned.pt")
        art = artifacts.load(pruned)
        assert (art.kind, art.spec.name, art.meta["method"]) == (kind, "mobilenetv2_rm", form)
        with initialize_config_dir(CONF_DIR, version_base="1.3"):
            ecfg = compose("evaluate", overrides=[f"checkpoint={pruned}", "workers=0", "progress=false",
                                                  f"out={tmp_path / form}.json", "forms=[plain]"])
        result = evaluate_run(ecfg, explicit=set())
        assert result["results"]["plain"]["top1"] == pytest.approx(rows[form]["top1_pruned"])
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        bcfg = compose("benchmark", overrides=[f"checkpoints=[{rows['rm']['artifact']},{rows['residual']['artifact']}]",
                                               "batch_size=[1]", "warmup=0", "iters=1", "repeats=1",
                                               f"out_dir={tmp_path}", "name=amc", "forms=[plain]"])
    bench = B.run(bcfg)
    assert {r["input_size"] for r in bench["results"]} == {16} and len(bench["results"]) == 2


def test_the_search_holds_out_training_images_apart_from_the_feature_maps(run):
    _, cfg, _ = run
    features, holdout = pipeline.search_loaders(cfg)
    assert len(holdout.dataset) == cfg.amc.holdout == 32
    train = holdout.dataset.dataset   # the training split (96 images; the validation split has 32)
    assert features.dataset.dataset is train and len(train) == cfg.data.train_size == 96
    assert not set(holdout.dataset.indices) & set(features.dataset.indices)


def test_a_rerun_resumes_the_finished_searches(run, caplog):
    """Run again, the job reuses the training run and each finished search (its state file)."""
    root, cfg, report = run
    with caplog.at_level("INFO", logger="rmnet.amc"):
        again = pipeline.run(cfg)
    assert [r["macs"] for r in again["rows"]] == [r["macs"] for r in report["rows"]]
    assert sum("the search in" in r.message and "is finished (3 episodes)" in r.message for r in caplog.records) == 2


@pytest.mark.parametrize("argv, message", [
    (["amc.flops_ratio=1.5"], r"amc.flops_ratio must be in \(0, 1\], got 1.5"),
    (["amc.forms=[rm,slim]"], r"amc.forms: \['slim'\]; choose from residual, rm"),
    (["amc.methods=[rm]"], r"amc.methods was renamed: pass amc.forms=\[residual,rm\]"),
    (["amc.budget.kind=flops"], r"amc.budget.kind='flops': choose from macs, params, latency"),
    (["amc.bench.runtimes=[tflite]"], r"runtime must be one of eager, compile, onnxruntime, onnxruntime_int8"),
    (["amc.warmup=900"], r"amc.warmup must be an integer in \[0, amc.episodes=800\], got 900"),
    (["conversion=fused"], r"use conversion=keep_bn"),
    (["amc.flops_ratoi=0.5"], r"unknown key 'amc.flops_ratoi'. Did you mean 'amc.flops_ratio'"),
    (["model=rmnet26x3_32"], r"AMC on the residual form supports MobileNetV2 \(mobilenetv2, mobilenetv2_rm\) and ResNets, not "
                             r"RMNet; prune it through RM alone \(amc.forms=\[rm\]\)"),
    # the ReLU6 network of the authors' recipe and its search settings
    (["model=mobilenetv2"], r"MobileNetV2: its blocks use ReLU6, which clamps at 6: .* amc\.relu6=approximate"),
    (["amc.relu6=approximate"], r"amc\.relu6=approximate: mobilenetv2_rm has no ReLU6 and converts exactly"),
    (["amc.relu6=roughly"], r"amc\.relu6='roughly': choose one of exact, approximate"),
    (["amc.reward_metric=top3"], r"amc\.reward_metric='top3': choose one of top1, top5"),
    (["amc.search_batch_size=0"], r"amc\.search_batch_size must be a positive integer, got 0"),
])
def test_bad_settings_are_one_line_before_any_work(monkeypatch, capsys, tmp_path, argv, message):
    monkeypatch.setattr(sys, "argv", ["amc.py", f"output_dir={tmp_path}", *argv])
    with pytest.raises(SystemExit) as e:
        amc.run_app("amc", amc.main, amc.__doc__)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and re.search(message, err), err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("ratio", ["0.5", "0.6", "0.7", "0.75"])
def test_the_table_recipes_compose_and_pass_the_checks(ratio):
    """conf/experiment/amc_cifar10_r*: the authors' table on CIFAR-10 (recipe amc_cifar)."""
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("amc", overrides=[f"experiment=amc_cifar10_r{ratio}"])
    check_values(cfg)
    pipeline.check_settings(cfg)
    assert (cfg.amc.flops_ratio, cfg.model.name, cfg.data.name) == (float(ratio), "mobilenetv2", "cifar10")
    assert (cfg.epochs, cfg.amc.rm_finetune_epochs, cfg.amc.finetune_epochs, cfg.amc.episodes, cfg.amc.warmup,
            cfg.amc.holdout, cfg.optim.lr, cfg.optim.weight_decay) == (150, 150, 150, 800, 100, 5000, 0.05, 4e-5)
