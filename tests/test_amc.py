"""AMC (pruning/amc): the cost model, the budget rule, channel selection with the least-squares refit,
the DDPG agent on a toy problem, and a killed search that resumes."""
import math

import pytest
import torch
import torch.nn as nn

import models
import rm
from bench.forms import fold_bn
from models.complexity import count_macs
from pruning.amc import (
    ChannelPruningEnv,
    SearchSettings,
    apply_policy,
    collect_features,
    plain_graph,
    residual_graph,
)
from pruning.amc.ddpg import AgentSettings
from pruning.amc.search import search
from tests.helpers import randomize_bn

SIZE = 16


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny models on shared cores (conftest's one_thread)."""


def _mobilenet(width_mult=0.25):
    return randomize_bn(models.create_model("mobilenetv2_rm", num_classes=10, stem="cifar", width_mult=width_mult))


def _forms():
    """(name, model, graph) of every kind AMC prunes: the RM form of MobileNetV2 (MobileNetV1) and of
    a ResNet, and both residual models."""
    v2 = _mobilenet()
    resnet = randomize_bn(models.create_model("resnet18", num_classes=10, stem="cifar", widths=[8, 8, 16, 16]))
    v1, plain_resnet = rm.convert(v2, fuse_bn=False), rm.convert(resnet, fuse_bn=False)
    return [("mobilenetv1 (RM)", v1, plain_graph(v1, SIZE)), ("mobilenetv2", v2, residual_graph(v2, SIZE)),
            ("resnet18 (RM)", plain_resnet, plain_graph(plain_resnet, SIZE)),
            ("resnet18", resnet, residual_graph(resnet, SIZE))]


def _batches(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 3, SIZE, SIZE, generator=g), torch.zeros(4, dtype=torch.long)) for _ in range(n)]


def test_the_cost_model_is_count_macs_of_the_pruned_model():
    g = torch.Generator().manual_seed(0)
    for name, model, graph in _forms():
        assert graph.macs(graph.full) == count_macs(fold_bn(model), SIZE), name
        counts = [int(torch.randint(1, c + 1, (1,), generator=g)) for c in graph.full]
        pruned, masks = apply_policy(model, graph, counts)
        assert [int(m.sum()) for m in masks] == counts
        assert count_macs(fold_bn(pruned), SIZE) == graph.macs(counts), name
    # The residual baseline leaves the channels that additions tie: MobileNetV2's segments are the
    # stem, the 12 expansions and the last conv; the RM form prunes all 14 pointwise outputs.
    assert len(_forms()[1][2].segments) == 14 and _forms()[1][2].segments[1].producer == "block2.conv1"


def _env(graph, ratio, channel_round=8, evaluate=lambda counts: 50.0):
    return ChannelPruningEnv(graph, evaluate, ratio, lbound=0.2, rbound=1.0, channel_round=channel_round)


@pytest.mark.parametrize("ratio", [0.5, 0.6, 0.7, 0.75])
def test_every_policy_meets_the_budget_within_two_percent(ratio):
    """Whatever the agent asks for (all at the lower bound, all at the upper bound, random), the
    policy costs at most the target and at least 98% of it, on the full-width models of the table."""
    v2 = models.create_model("mobilenetv2_rm", num_classes=10, stem="cifar").eval()
    graphs = {"RM + AMC": plain_graph(rm.convert(v2, fuse_bn=False), 32), "AMC": residual_graph(v2, 32)}
    gen = torch.Generator().manual_seed(0)
    for name, graph in graphs.items():
        env = _env(graph, ratio)
        askers = [lambda: 0.0, lambda: 1.0] + [lambda: float(torch.rand(1, generator=gen))] * 10
        for ask in askers:
            env.reset()
            done = False
            while not done:
                _, reward, done, info = env.step(ask())
            assert info["macs"] == graph.macs(info["policy"])
            assert 0.98 * env.target <= info["macs"] <= env.target, (name, ask(), info["ratio"])
            assert all(n % 8 == 0 or n == c for n, c in zip(info["policy"], graph.full))
            assert reward == pytest.approx(0.5)


def test_an_unreachable_budget_is_refused():
    graph = _forms()[0][2]
    with pytest.raises(ValueError, match=r"amc.flops_ratio=0.01 is unreachable: with every layer at amc.lbound=0.2 "
                                         r"\(amc.channel_round=8\) the model keeps 0.\d+ of its MACs"):
        _env(graph, 0.01)


def test_keeping_every_channel_changes_nothing():
    for name, model, graph in _forms():
        model = model.double()
        features = collect_features(model, graph, [(x.double(), y) for x, y in _batches()], 8, 0)
        pruned, _ = apply_policy(model, graph, graph.full, features)
        x = torch.randn(2, 3, SIZE, SIZE, dtype=torch.float64)
        assert torch.equal(pruned(x), model(x)), name


def _known_answer_chain():
    """conv 3->4 (3x3) + BN -> conv 4->3 (1x1) + BN + ReLU -> pool -> Linear, in float64, where the
    first conv's channel 3 is 2 * channel 0 - channel 1 before its BN (so, after the BN, an affine
    function of channels 0 and 1) and has the smallest weights in the reader."""
    torch.manual_seed(0)
    chain = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4),
                          nn.Conv2d(4, 3, 1, bias=False), nn.BatchNorm2d(3), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)).double()
    randomize_bn(chain)
    with torch.no_grad():
        w = chain[0].weight
        w[3] = 2 * w[0] - w[1]
        chain[2].weight[:, 3] *= 0.2
    return chain


def test_least_squares_refit_recovers_a_removed_channel_that_the_kept_ones_determine():
    chain = _known_answer_chain()
    graph = plain_graph(chain, SIZE)
    assert [s.channels for s in graph.segments] == [4, 3]
    batches = [(x.double(), y) for x, y in _batches()]
    features = collect_features(chain, graph, batches, 16, 0)
    refit, masks = apply_policy(chain, graph, [3, 3], features)
    plain, _ = apply_policy(chain, graph, [3, 3])
    assert masks[0].tolist() == [True, True, True, False]
    # The known answer: with y_c = a_c z_c + d_c the BN of channel c, y_3 = (2 a3/a0) y_0 - (a3/a1) y_1
    # + const, so the reader's columns 0 and 1 take column 3's weight times those factors.
    bn, w = chain[1], chain[2].weight.detach().flatten(1)
    a = bn.weight.detach() / (bn.running_var + bn.eps).sqrt()
    expected = w[:, :3].clone()
    expected[:, 0] += w[:, 3] * 2 * a[3] / a[0]
    expected[:, 1] -= w[:, 3] * a[3] / a[1]
    assert torch.allclose(refit[2].weight.detach().flatten(1), expected, atol=1e-9, rtol=0)
    x = torch.randn(8, 3, SIZE, SIZE, dtype=torch.float64)

    def reader_error(model):   # the reader's BN output against the unpruned model's
        return float((model[:4](x) - chain[:4](x)).detach().pow(2).mean())

    assert reader_error(refit) < 1e-20
    assert reader_error(plain) > 1e-4


class ToyEnv:
    """Reward 1 - |actions - TARGET|^2 after the last of 8 layers; the state is the layer (one-hot)
    and the previous action."""
    TARGET = [0.3, 0.8, 0.5, 0.9, 0.4, 0.7, 0.6, 0.35]
    bounds = (0.2, 1.0)
    layers = len(TARGET)
    state_dim = len(TARGET) + 1

    def reset(self):
        self.actions = []
        return self._state()

    def _state(self):
        k = min(len(self.actions), self.layers - 1)
        return torch.cat([torch.eye(self.layers)[k], torch.tensor([self.actions[-1] if self.actions else 1.0])])

    def step(self, action):
        self.actions.append(min(max(action, 0.2), 1.0))
        if len(self.actions) < self.layers:
            return self._state(), None, False, {"action": self.actions[-1]}
        distance = sum((a - t) ** 2 for a, t in zip(self.actions, self.TARGET))
        return self._state(), 1 - distance, True, {"action": self.actions[-1], "policy": list(self.actions)}


def _distance(policy):
    return math.dist(policy, ToyEnv.TARGET)


def test_the_agent_gets_closer_to_the_best_policy_than_random_search():
    """150 episodes each, seed 0: DDPG (30 random warm-up episodes, then the actor with decaying
    noise) against 150 random episodes (warm-up only). Seeds 0-4 all give DDPG the closer policy
    (0.18-0.27 vs 0.26-0.43 away from the target)."""
    agent = AgentSettings(hidden=64, lr_actor=3e-3, lr_critic=3e-3, batch_size=64, memory=150 * 8, noise_decay=0.97)
    ddpg = search(ToyEnv(), SearchSettings(150, 30, 0, agent), progress=False)
    random = search(ToyEnv(), SearchSettings(150, 150, 0, agent), progress=False)
    assert _distance(ddpg.best["policy"]) < _distance(random.best["policy"])


class Killed(Exception):
    pass


def _search_env(kill_at=None):
    """The budget environment of a tiny MobileNetV1 with a scoring that favours a known policy; it
    raises Killed on its `kill_at`-th evaluation (a search killed in the middle of an episode)."""
    graph = plain_graph(rm.convert(_mobilenet(), fuse_bn=False), SIZE)
    calls = []

    def evaluate(counts):
        calls.append(counts)
        if len(calls) == kill_at:
            raise Killed
        return 100 - sum((n / c - 0.6) ** 2 for n, c in zip(counts, graph.full))

    return ChannelPruningEnv(graph, evaluate, 0.5, channel_round=1)


def test_a_killed_search_resumes_and_finds_the_same_policy(tmp_path):
    settings = SearchSettings(8, 3, 0, AgentSettings(hidden=16, batch_size=8, memory=64))
    whole = search(_search_env(), settings, str(tmp_path / "whole.pt"), {"run": 1}, progress=False)
    state = str(tmp_path / "killed.pt")
    with pytest.raises(Killed):
        search(_search_env(kill_at=6), settings, state, {"run": 1}, progress=False)
    assert len(rm.load_file(state)["history"]) == 5   # written after each finished episode, read weights_only
    resumed = search(_search_env(), settings, state, {"run": 1}, progress=False)
    assert resumed.best == whole.best and resumed.history == whole.history
    for a, b in zip(resumed.agent.actor.parameters(), whole.agent.actor.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(resumed.agent.memory.states, whole.agent.memory.states)
    with pytest.raises(ValueError, match=r"killed.pt is the state of another search \(its run differ\)"):
        search(_search_env(), settings, state, {"run": 2}, progress=False)
