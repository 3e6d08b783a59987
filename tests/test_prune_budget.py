"""Budgets users compare (issue 22 items 2, 3): channel_round widths with an exact fold, channel
selection under a MACs, params or latency budget, one absolute budget for both forms."""
import sys
import types

import pytest
import torch
import torch.nn as nn

import models
import rm
from pruning.budget import Budget, check_budget, search
from pruning.plain import channel_scores, prune_plain
from pruning.residual import prune_residual, residual_scores
from tests.helpers import randomize_bn

SIZE = 16


def resnet20(seed=0):
    model = models.create_model("resnet20", num_classes=5, stem="cifar", shortcut_bn=True)
    return randomize_bn(model, seed).double().eval()


def forms(seed=0):
    """(residual model, its RM plain form with BN kept; its identity BNs given scales, as the pipeline's
    recalibration does, so no two channels tie), float64."""
    residual = resnet20(seed)
    plain = randomize_bn(rm.convert(residual, fuse_bn=False, downsample="reserve_shortcut"), seed).double().eval()
    return {"residual": (residual, residual_scores, prune_residual), "rm": (plain, channel_scores, prune_plain)}


def kill(model, fraction=0.5, seed=1):
    """Zero the scale and shift of a random `fraction` of every BN's channels: removing them is exact."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            dead = torch.rand(m.num_features, generator=g) < fraction
            with torch.no_grad():
                m.weight[dead], m.bias[dead] = 0, 0
    return model


@pytest.mark.parametrize("form", ["residual", "rm"])
@pytest.mark.parametrize("channel_round", [4, 8, 16])
def test_channel_round_gives_multiples_and_keeps_the_fold_exact(form, channel_round):
    model, _, prune = forms()[form]
    model = kill(model)
    plain = prune(model, threshold=1e-12)                     # every dead channel goes
    rounded = prune(model, threshold=1e-12, channel_round=channel_round)
    widths = [(layer["kept"], layer["channels"]) for layer in rounded.layers]
    assert all(k % channel_round == 0 or k == c for k, c in widths), widths
    assert rounded.removed < plain.removed                    # rounding kept some dead channels back
    x = torch.randn(2, 3, SIZE, SIZE, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(rounded.model(x), rounded.model(x)) and torch.allclose(
            rounded.model(x), model(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("form", ["residual", "rm"])
@pytest.mark.parametrize("kind, channel_round, keep", [("macs", 1, 0.5), ("params", 1, 0.5), ("macs", 4, 0.3),
                                                        ("params", 8, 0.7)])
def test_a_budget_is_met_within_two_percent(form, kind, channel_round, keep):
    """Also with channel_round, whose blocks of channels make a global threshold overshoot or
    undershoot by several percent (budget.fill spends the rest)."""
    model, scores_of, prune = forms()[form]
    budget = Budget(kind, "own", keep, SIZE)
    target = budget.target(0, budget.cost(model))
    result, cost = search(lambda t: prune(model, threshold=t, channel_round=channel_round), budget.cost,
                          scores_of(model), target)
    assert cost == budget.cost(result.model)
    assert 0.98 * target <= cost <= target, (cost / target)
    assert all(k % channel_round == 0 or k == c for k, c in ((la["kept"], la["channels"]) for la in result.layers))


def test_the_default_budget_is_one_absolute_budget_for_both_forms():
    """of=residual: the RM form (which costs more than the residual model) gets the residual model's
    budget in absolute terms, not a fraction of its own cost."""
    f = forms()
    budget = Budget("macs", "residual", 0.5, SIZE)
    residual_cost = budget.cost(f["residual"][0])
    reached = {}
    for form, (model, scores_of, prune) in f.items():
        target = budget.target(residual_cost, budget.cost(model))
        assert target == 0.5 * residual_cost
        _, reached[form] = search(lambda t, m=model, p=prune: p(m, threshold=t), budget.cost, scores_of(model),
                                  target)
    assert budget.cost(f["rm"][0]) > residual_cost                       # so `own` would differ
    assert all(0.98 * 0.5 * residual_cost <= c <= 0.5 * residual_cost for c in reached.values()), reached


class FakeLatencyTable:
    """bench.latency.LatencyTable's methods, timing each conv as a fixed ms per MMAC of its shape."""
    made: list = []

    def __init__(self, runtime="onnxruntime", batch_size=1, threads=None, cache=None, timer=None):
        self.runtime, self.batch_size, self.shapes = runtime, batch_size, {}
        FakeLatencyTable.made.append(self)

    def model_ms(self, model, input_size):
        total, size = 0.0, input_size
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                size = size // m.stride[0]
                key = (m.in_channels, m.out_channels, m.kernel_size, m.groups, size)
                self.shapes[key] = 1e-6 * m.weight.numel() * size * size * self.batch_size
                total += self.shapes[key]
        return total

    def check(self, model, input_size):
        ms = self.model_ms(model, input_size)
        return {"sum_ms": ms, "whole_ms": ms, "ratio": 1.0}

    def to_markdown(self):
        return "| layer | ms |\n| --- | --- |\n" + "".join(f"| {k} | {v:.4f} |\n" for k, v in self.shapes.items())


def test_a_latency_budget_uses_the_runtime_table(monkeypatch):
    monkeypatch.setitem(sys.modules, "bench.latency", types.SimpleNamespace(LatencyTable=FakeLatencyTable))
    cfg = types.SimpleNamespace(kind="latency", of="residual", runtime="onnxruntime_int8", batch_size=4)
    check_budget(cfg, "prune")
    budget = Budget.from_cfg(cfg, 0.6, SIZE)
    assert (budget.table.runtime, budget.table.batch_size) == ("onnxruntime_int8", 4)
    model, scores_of, prune = forms()["rm"]
    target = budget.target(budget.cost(forms()["residual"][0]), None)
    result, ms = search(lambda t: prune(model, threshold=t), budget.cost, scores_of(model), target)
    assert 0.98 * target <= ms <= target
    report = budget.report(forms()["residual"][0])
    assert "| layer | ms |" in report["latency_table"] and report["check"]["ratio"] == 1.0


@pytest.mark.parametrize("settings, message", [
    (dict(kind="flops", of="residual"), "prune.budget.kind='flops': choose from macs, params, latency"),
    (dict(kind="macs", of="mine"), "prune.budget.of='mine': choose from residual, own"),
    (dict(kind="latency", of="own", runtime="tflite", batch_size=1), "prune.budget.runtime='tflite'"),
])
def test_bad_budgets_are_refused(settings, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        check_budget(types.SimpleNamespace(**settings), "prune")


def test_rows_of_older_reports_still_compare():
    """Reports written before the typed row (target in each method's own sense, no flag, no speeds)."""
    from pruning.compare import to_markdown
    from pruning.row import Row

    old = {"method": "amc", "form": "rm", "model": "mobilenetv2_rm", "data": "synthetic", "target": 0.5,
           "params": 1000, "macs": 2_000_000, "top1_before": 90.0, "top1_pruned": 80.0, "top1_finetuned": None,
           "img_s": 100.0, "artifact": "x.pt"}
    row = Row.from_dict(old)
    assert (row.budget, row.target, row.flag, row.speeds, row.top1) == ("0.5", None, None, {}, 80.0)
    assert "| mobilenetv2_rm | synthetic | amc | rm | 0.5 |" in to_markdown([row.as_dict()], "eager")
