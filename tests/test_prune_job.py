"""The one pruning job (pruning.job.run) with a fake pruner (no training: a freshly built tiny model, a
fixed pruning ratio), and the three real pruners going through it."""
import json
import os

import pytest
from hydra import compose, initialize_config_dir

import artifacts
from engine import stages
from engine.checkpoint import save_checkpoint
from engine.config import CONF_DIR
from engine.settings import TrainSettings
from jobs import amc as amc_pipeline
from jobs import resrep as resrep_pipeline
from pruning import job
from pruning.job import Pruner, Selection
from pruning.plain import prune_plain
from pruning.residual import prune_residual
from pruning.row import FIELDS
from tests.helpers import randomize_bn, run_script

TINY = ["model=resnet18", "+model.kwargs.widths=[8,8,16,16]", "+model.kwargs.shortcut_bn=true",
        "data.input_size=16", "data.train_size=16", "data.val_size=16", "batch_size=8", "workers=0",
        "progress=false", "prune.calib_batches=1", "prune.finetune_epochs=0", "prune.bench.batch_size=2",
        "prune.bench.iters=1", "prune.bench.warmup=0", "prune.bench.repeats=1", "prune.bench.runtimes=[eager]"]


def compose_prune(overrides):
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return compose("prune", overrides=TINY + overrides)


class Fixed(Pruner):
    """Half the channels of either form by BN scale, whatever the budget; the base model is built, not trained."""
    method, section, schema = "fixed", "prune", "fixed/1"
    hint = "none"
    calls: list

    def __init__(self, ratio=0.5):
        self.ratio, self.calls = ratio, []

    def check_settings(self, cfg):
        self.calls.append("check_settings")

    def root(self, cfg):
        return os.path.join(cfg.output_dir, "fixed")

    def checkpoint(self, cfg):
        """A built model (distinct BN scales to rank) saved as a training checkpoint."""
        self.calls.append("checkpoint")
        model, spec = stages.build(TrainSettings.from_cfg(cfg))
        path = os.path.join(self.root(cfg), "base.pt")
        save_checkpoint(path, model=randomize_bn(model).state_dict(), model_spec=spec.to_dict())
        return path

    def out_dir(self, cfg, base):
        return os.path.join(self.root(cfg), "half")

    def budget(self, cfg, input_size):
        from pruning.budget import Budget
        return Budget.from_cfg(cfg.prune.budget, cfg.prune.budget.keep, input_size)

    def select(self, job, form, start, form_dir, target):
        self.calls.append((form, start.spec.form, target))
        prune = prune_residual if form == "residual" else prune_plain
        result = prune(start.model, ratio=self.ratio)
        return Selection(result.model, result.removed, {"ratio": self.ratio})

    def header(self, job):
        return {"ratio": self.ratio}

    def entry(self, job, form):
        return {"artifact": form.done.pruned_path, "flag": form.flag, "cost": form.cost}

    def budget_text(self, job):
        return job.budget.text()

    @staticmethod
    def to_markdown(report):
        return f"# fixed {sorted(report['forms'])}\n"


@pytest.fixture(scope="module")
def fixed_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("job")
    pruner = Fixed()
    cfg = compose_prune([f"output_dir={out}", "prune.budget.keep=0.05"])
    return os.path.join(out, "fixed", "half"), cfg, pruner, job.run(cfg, pruner)


def test_every_form_is_started_selected_under_one_target_and_written(fixed_run):
    out, cfg, pruner, report = fixed_run
    assert pruner.calls[:2] == ["check_settings", "checkpoint"]
    starts = {call[0]: call for call in pruner.calls[2:]}
    assert list(starts) == ["rm", "residual"] == list(report["forms"])
    assert starts["rm"][1] == "plain" and starts["residual"][1] != "plain"   # rm: the RM plain model
    target = 0.05 * report["reference"]["macs"]   # budget.of=residual: one absolute target for both forms
    assert starts["rm"][2] == pytest.approx(target) and starts["residual"][2] == pytest.approx(target)
    for form in ("rm", "residual"):
        art = artifacts.load(os.path.join(out, form, "pruned.pt"))
        assert art.meta["form"] == form and art.meta["ratio"] == 0.5
        assert ("verify" in art.meta) == (form == "rm")   # the conversion error the rm form started from
        assert art.spec.input.size == 16


def test_rows_flags_and_report_files(fixed_run):
    out, cfg, pruner, report = fixed_run
    with open(os.path.join(out, "report.json")) as f:
        assert json.load(f) == json.loads(json.dumps(report))
    with open(os.path.join(out, "report.md")) as f:
        assert f.read() == "# fixed ['residual', 'rm']\n"
    assert (report["schema"], report["model"], report["ratio"]) == ("fixed/1", "resnet18", 0.5)
    assert report["budget"]["keep"] == 0.05
    for row in report["rows"]:
        assert set(row) == set(FIELDS)
        assert (row["method"], row["budget"], row["budget_kind"]) == ("fixed", "keep 0.05 of the residual model's MACs",
                                                                      "macs")
        assert row["flag"].startswith("target missed")   # half the channels cost more than 5% of the MACs
        assert report["forms"][row["form"]]["cost"] == row["macs"] > row["target"]
        assert row["artifact"] == os.path.join(out, row["form"], "pruned.pt")   # no fine-tuning: the pruned file
        assert row["top1_before"] is not None and row["top1_finetuned"] is None


def test_pruning_nothing_is_flagged(tmp_path):
    cfg = compose_prune([f"output_dir={tmp_path}", "prune.forms=[residual]", "prune.budget.keep=1"])
    report = job.run(cfg, Fixed(ratio=0.0))
    assert [row["flag"] for row in report["rows"]] == ["pruned nothing"]


def test_an_unwritable_output_is_refused_before_the_base_model(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    pruner = Fixed()
    with pytest.raises(Exception, match="cannot write"):
        job.run(compose_prune([f"output_dir={blocker}", "prune.budget.keep=0.5"]), pruner)
    assert pruner.calls == ["check_settings"]


@pytest.mark.parametrize("script, module, pruner", [("prune", None, "Slimming"), ("amc", amc_pipeline, "AMC"),
                                                    ("resrep", resrep_pipeline, "ResRep")])
def test_every_entry_point_runs_its_pruner_through_the_one_job(script, module, pruner, monkeypatch, tmp_path):
    from jobs import prune as pipeline

    seen = []
    monkeypatch.setattr(job, "run", lambda cfg, p: seen.append((cfg, p)) or {})
    monkeypatch.setattr("pruning.figure.draw_figure6", lambda *_: None)
    code, _, err = run_script(script, [f"output_dir={tmp_path}"])
    assert code == 0, err
    (_, p), = seen
    assert type(p) is getattr(module or pipeline, pruner) and isinstance(p, Pruner) and p.section == script


@pytest.mark.parametrize("tuned, warned", [(40.0, True), (55.0, False)])
def test_a_fine_tune_that_lowers_top1_is_warned_about(monkeypatch, caplog, tmp_path, tuned, warned):
    """A short fine-tune at the training lr can leave every epoch below the pruned model (seen on
    shapes100: 69.2 pruned, 41.95 after 3 epochs at lr 0.1); the row then reports the drop, and
    the log must say so and what to change."""
    import logging

    import torch.nn as nn
    from omegaconf import OmegaConf

    from pruning import common

    scores = iter([50.0, tuned])
    monkeypatch.setattr(common, "save_model", lambda *a, **k: None)
    monkeypatch.setattr(common, "top1", lambda *a, **k: next(scores))
    monkeypatch.setattr(common, "finetune", lambda cfg, model, *a: model)
    monkeypatch.setattr(common, "model_stats", lambda *a: {})
    cfg = OmegaConf.create({"optim": {"lr": 0.1}, "data": {},
                            "amc": {"finetune_epochs": 3, "finetune_lr": None, "bench": {}}})
    with caplog.at_level(logging.WARNING, logger="rmnet.prune"):
        done = common.finish_form(cfg, "amc", nn.Identity(), None, str(tmp_path), None, 16, "AMC")
    assert (done.top1_pruned, done.top1_finetuned) == (50.0, tuned)
    expected = ("warning: AMC: fine-tuning lowered top-1 from 50.00 to 40.00 (its best epoch); lower "
                "amc.finetune_lr (now 0.1) or fine-tune longer")
    assert (expected in caplog.text) == warned
