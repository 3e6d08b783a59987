"""Budgets in MACs, params or latency for AMC and ResRep (issue 22 item 2): each pruner's cost over
widths is the budget's cost of the pruned deploy model, each kind meets its budget, and a MACs
budget gives today's AMC policies. Latency runs on a fake timer, so every number is known."""
import json
import math

import pytest
import torch
import torch.nn as nn

import models
import pruning.budget
import rm
from bench.latency import LatencyTable
from pruning.amc import ChannelPruningEnv, apply_policy, plain_graph, residual_graph
from pruning.amc.graph import graph_cost
from pruning.budget import UNITS, Budget
from pruning.resrep import CompactorLayout, ResRepHook, add_compactors, compactors, fold_compactors, resolve
from pruning.resrep.fold import folded_cost
from tests.helpers import randomize_bn
from tests.test_resrep import model_of

SIZE = 16
pytestmark = pytest.mark.usefixtures("one_thread")


class ShapeTimer:
    """Fake ms that grow with a layer's input and settings: convs, Linears and PReLUs (the layers a
    pruner resizes) by their input size times the sum of their settings' numbers; every other layer
    1e-4 ms, or, with `every`, by its input size too; the whole model 1 ms. Never runs a layer."""

    def __init__(self, every: bool = False):
        self.every = every

    def __call__(self, run, layer):
        if layer.kind == "model":   # the whole model, timed once against the table's sum (the report's check)
            return 1.0
        kind, settings, shapes = json.loads(layer.key)[:3]
        resized = kind.split("+")[0] in ("Conv2d", "Linear", "PReLU")
        if not (resized or self.every):
            return 1e-4
        numbers = sum(int(n) for n in "".join(c if c.isdigit() else " " for c in settings).split())
        return 1e-6 * math.prod(shapes[0]) * (numbers if resized else 1)


def budget(kind, keep=1.0, timer=None, runtime="onnxruntime", batch_size=1):
    table = LatencyTable(runtime, batch_size, timer=timer or ShapeTimer()) if kind == "latency" else None
    return Budget(kind, "own", keep, SIZE, table)


def amc_forms():
    """(name, model, graph): the RM form of MobileNetV2 (MobileNetV1) and MobileNetV2, the RM form of a
    ResNet and the ResNet, a PReLU chain with depthwise and grouped convs, and a chain whose Linear
    reads a flattened 4x4 map (16 features per channel)."""
    v2 = randomize_bn(models.create_model("mobilenetv2_rm", num_classes=10, stem="cifar", width_mult=0.25))
    resnet = randomize_bn(models.create_model("resnet18", num_classes=10, stem="cifar", widths=[8, 8, 16, 16]))
    v1, plain_resnet, chain = rm.convert(v2, fuse_bn=False), rm.convert(resnet, fuse_bn=False), model_of("chain-rm").float()
    flat = randomize_bn(nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3, 2, 1),
                                      nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 16, 5))).eval()
    return [("mobilenetv1 (RM)", v1, plain_graph(v1, SIZE)), ("mobilenetv2", v2, residual_graph(v2, SIZE)),
            ("resnet18 (RM)", plain_resnet, plain_graph(plain_resnet, SIZE)),
            ("resnet18", resnet, residual_graph(resnet, SIZE)), ("chain", chain, plain_graph(chain, SIZE)),
            ("flatten head", flat, plain_graph(flat, SIZE))]


@pytest.mark.parametrize("kind", ["params", "latency"])
def test_amc_cost_is_the_budget_cost_of_the_pruned_model(kind):
    g = torch.Generator().manual_seed(0)
    for name, model, graph in amc_forms():
        b = budget(kind)
        cost = graph_cost(graph, model, b)
        assert cost(graph.full) == pytest.approx(b.cost(model), rel=1e-12), name
        for _ in range(2):
            counts = [int(torch.randint(1, c + 1, (1,), generator=g)) for c in graph.full]
            pruned, _ = apply_policy(model, graph, counts)
            assert cost(counts) == pytest.approx(b.cost(pruned), rel=1e-12), (name, counts)


def test_amc_latency_prices_unresized_layers_at_full_width_an_upper_bound():
    """With every layer timed by its input size, the pool before the head is priced at full width."""
    name, model, graph = amc_forms()[0]
    b = budget("latency", timer=ShapeTimer(every=True))
    counts = [max(1, c // 2) for c in graph.full]
    pruned, _ = apply_policy(model, graph, counts)
    assert graph_cost(graph, model, b)(counts) > b.cost(pruned)


@pytest.mark.parametrize("kind", ["macs", "params", "latency"])
def test_amc_each_kind_meets_its_budget(kind):
    g = torch.Generator().manual_seed(0)
    for name, model, graph in amc_forms()[:4]:
        b = budget(kind)
        cost = graph_cost(graph, model, b)
        env = ChannelPruningEnv(graph, lambda counts: 50.0, 0.7, 0.2, 1.0, 1, cost=cost, unit=UNITS[kind])
        assert env.total == pytest.approx(b.cost(model), rel=1e-12)
        for _ in range(3):
            env.reset()
            done = False
            while not done:
                _, _, done, info = env.step(float(torch.rand(1, generator=g)))
            pruned, _ = apply_policy(model, graph, info["policy"])
            reached = b.cost(pruned)
            assert info["cost"] == pytest.approx(reached, rel=1e-12), name
            assert 0.98 * env.target <= info["cost"] <= env.target, (name, kind, info["cost"] / env.target)
            assert info["ratio"] == info["cost"] / env.total
            assert info["macs"] == graph.macs(info["policy"])


# Policies of today's (MACs-only) environment on MobileNetV1 (RM) and MobileNetV2 for a fixed action
# sequence: ratio 0.5 with channel_round 8, then ratio 0.7 with channel_round 1, three episodes each.
TODAY = {
    "v1": [[8, 8, 16, 24, 16, 48, 48, 96, 72, 56, 96, 128, 248, 248], [8, 8, 16, 16, 56, 40, 40, 32, 56, 40, 128, 128, 256, 248],
           [8, 16, 24, 32, 56, 16, 32, 32, 120, 56, 88, 32, 256, 208],
           [6, 4, 13, 24, 13, 51, 110, 128, 128, 128, 128, 128, 255, 255],
           [4, 7, 18, 16, 60, 42, 65, 128, 128, 128, 128, 128, 256, 255],
           [2, 13, 20, 31, 53, 13, 82, 128, 128, 128, 128, 128, 256, 255]],
    "v2": [[8, 8, 8, 24, 16, 48, 40, 40, 24, 24, 24, 40, 40, 56], [8, 8, 16, 16, 40, 16, 32, 24, 24, 24, 24, 32, 40, 64],
           [8, 16, 16, 16, 16, 16, 24, 24, 24, 24, 24, 32, 48, 64],
           [6, 4, 10, 24, 10, 51, 38, 72, 76, 96, 96, 128, 191, 255],
           [4, 7, 14, 16, 45, 42, 30, 46, 96, 96, 96, 128, 191, 255],
           [2, 13, 15, 31, 40, 13, 20, 83, 96, 96, 96, 128, 192, 254]],
}


def test_a_macs_budget_gives_todays_policies():
    torch.manual_seed(0)
    v2 = randomize_bn(models.create_model("mobilenetv2_rm", num_classes=10, stem="cifar", width_mult=0.25))
    v1 = rm.convert(v2, fuse_bn=False)
    for name, model, graph in [("v1", v1, plain_graph(v1, SIZE)), ("v2", v2, residual_graph(v2, SIZE))]:
        cost = graph_cost(graph, model, budget("macs"))
        assert cost == graph.macs   # the MACs kind is the graph's own exact count
        policies = []
        for ratio, channel_round in [(0.5, 8), (0.7, 1)]:
            env = ChannelPruningEnv(graph, lambda counts: 50.0, ratio, 0.2, 1.0, channel_round, cost=cost)
            g = torch.Generator().manual_seed(1)
            for _ in range(3):
                env.reset()
                done = False
                while not done:
                    _, _, done, info = env.step(float(torch.rand(1, generator=g)))
                policies.append(info["policy"])
        assert policies == TODAY[name], name


def _zero_rows(model, seed):
    """Zero a random third of every compactor's rows (never all of one): the fold removes them exactly."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for c in compactors(model):
            dead = torch.rand(len(c.mask), generator=g) < 1 / 3
            dead[int(torch.randint(len(dead), (1,), generator=g))] = False
            c.weight[dead] = 0


@pytest.mark.parametrize("kind", ["params", "latency"])
@pytest.mark.parametrize("form", ["resnet20-residual", "resnet20-rm", "chain-rm"])
def test_resrep_cost_is_the_budget_cost_of_the_folded_model(kind, form):
    model = model_of(form)
    add_compactors(model)
    layout, b = CompactorLayout(model, SIZE), budget(kind)
    cost = folded_cost(layout, model, b)
    assert cost(layout.full()) == pytest.approx(b.cost(fold_compactors(model).model), rel=1e-12)
    _zero_rows(model, 1)
    norms = [c.row_norms() for c in compactors(model)]
    keeps = resolve(layout.slots, [n >= 1e-5 for n in norms], norms)
    folded = fold_compactors(model).model
    assert sum(int(k.sum()) for k in keeps) < sum(layout.channels())
    assert cost(keeps) == pytest.approx(b.cost(folded), rel=1e-12)


@pytest.mark.parametrize("kind", ["macs", "params", "latency"])
@pytest.mark.parametrize("form", ["resnet20-residual", "resnet20-rm"])
def test_resrep_hook_masks_until_each_kind_meets_its_target(kind, form, monkeypatch):
    """Hook updates (masked rows decayed to zero between them, as gradient resetting does) until the
    folded model meets half the cost in the hook's kind; the latency table is the budget's (runtime
    and batch from the hook), on the fake timer."""
    made = []

    def table(runtime, batch_size):
        made.append(LatencyTable(runtime, batch_size, timer=ShapeTimer()))
        return made[-1]

    monkeypatch.setattr(pruning.budget, "latency_table", table)
    model = model_of(form)
    b = budget(kind, runtime="onnxruntime_int8", batch_size=2)
    target = 0.5 * b.cost(model)
    add_compactors(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():   # distinct row norms to rank
        for c in compactors(model):
            c.weight.mul_(torch.rand(len(c.mask), 1, 1, 1, generator=g, dtype=torch.float64) + 0.1)
    hook = ResRepHook(target, granularity=64, kind=kind, runtime="onnxruntime_int8", batch_size=2)
    for step in range(1, 100):
        before = [c.masked() for c in compactors(model)]
        hook.update(model, SIZE, step)
        after = [c.masked() for c in compactors(model)]
        if all(torch.equal(x, y) for x, y in zip(before, after)):
            break
        with torch.no_grad():
            for c, m in zip(compactors(model), after):
                c.weight[m] = 0
    assert [(t.runtime, t.batch_size) for t in made] == ([("onnxruntime_int8", 2)] if kind == "latency" else [])
    reached = b.cost(fold_compactors(model).model)
    assert 0.98 * target <= reached <= target, reached / target


def test_resrep_hook_refuses_an_unknown_kind_and_latency_in_several_processes(monkeypatch):
    with pytest.raises(ValueError, match="kind='flops'"):
        ResRepHook(1e6, kind="flops")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    ResRepHook(1e6, kind="params")
    with pytest.raises(ValueError, match="latency budget is measured in each process"):
        ResRepHook(1e6, kind="latency")


@pytest.fixture
def fake_table(monkeypatch):
    """The budget's latency table on the fake timer; returns the tables made."""
    made = []

    def table(runtime, batch_size):
        made.append(LatencyTable(runtime, batch_size, timer=ShapeTimer()))
        return made[-1]

    monkeypatch.setattr(pruning.budget, "latency_table", table)
    return made


def test_amc_runs_under_a_latency_budget(tmp_path, fake_table, caplog):
    """amc.py end to end with amc.budget.kind=latency: the search's target and reached cost in ms of
    the table (its runtime and batch from the budget), the row's target in ms, its own run folder, and
    a log line in ms whose target says whose latency it is a fraction of."""
    from jobs import amc as pipeline
    from tests.test_amc_pipeline import compose_amc
    with caplog.at_level("INFO", logger="rmnet.amc"):
        report = pipeline.run(compose_amc([f"output_dir={tmp_path}", "amc.forms=[rm]", "amc.budget.kind=latency",
                                           "amc.budget.runtime=eager", "amc.budget.batch_size=2"]))
    assert [(t.runtime, t.batch_size) for t in fake_table] == [("eager", 2)]
    policy, row = report["methods"]["rm"]["policy"], report["rows"][0]
    assert policy["unit"] == "ms" and 0.98 * policy["target_latency"] <= policy["cost"] <= policy["target_latency"]
    assert row["budget_kind"] == "latency" and row["target"] == policy["target_latency"] and row["flag"] is None
    assert f" ms (target {row['target']:.3f} ms: keep 0.5 of the residual model's latency), top-1" in caplog.text
    root = tmp_path / "amc-mobilenetv2_rm-synthetic" / "r0.5-latency-eager-b2"
    assert f"| {policy['target_latency']:.3f} ms / {policy['cost']:.3f} ms |" in (root / "report.md").read_text()


def test_resrep_runs_under_a_params_budget(tmp_path):
    """resrep.py end to end with resrep.budget.kind=params: the hook masks to the params target, the
    folded model meets it, the row's target is in params."""
    from jobs import resrep as pipeline
    from tests.test_resrep_pipeline import compose_resrep
    report = pipeline.run(compose_resrep([f"output_dir={tmp_path}", "resrep.target=0.4", "resrep.forms=[rm]",
                                          "resrep.budget.kind=params"]))
    form, row = report["forms"]["rm"], report["rows"][0]
    assert form["unit"] == "params" and 0.95 * form["target_params"] <= form["cost"] == form["after"]["params"] <= form["target_params"]
    assert form["target_params"] == pytest.approx(0.6 * report["reference"]["params"])
    assert row["budget_kind"] == "params" and row["target"] == form["target_params"] and row["flag"] is None
    assert (tmp_path / "resrep-resnet18-synthetic" / "t0.4-params" / "report.md").is_file()
