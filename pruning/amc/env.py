"""AMC's environment: one episode walks the segments of a model and takes one action per segment,
the fraction of its channels to keep; after the last one the pruned model is scored.

State of segment k (He et al. 2018, sec. 3.2): index, reader type (conv 0, Linear 1), the
producer's in/out channels, stride and kernel, the MACs that scale with this segment, then the MACs
already removed, the MACs of the segments still to come (both over the model's total) and the
previous action. The static part is min-max normalised over the segments, as in AMC's code.

The budget rule. Widths are whole channels (multiples of `channel_round`, or the full width), so the
environment computes with counts and the model's cost of them (`cost`: the MACs of `Graph.macs` by
default, or params or latency, `graph.graph_cost`); the state keeps AMC's MACs whatever the budget's
kind. An action is turned into a count and then limited from above so that the target stays
reachable with every later segment at `lbound` (AMC's rule), and from below so that it stays
reachable with every later segment at `rbound` (ours: without it an episode may end far under the
target, and a policy that leaves budget unused is not the one asked for). Each limit tries every
width the segment may take (a measured latency need not grow with the width). The upper limit wins,
so no policy exceeds the target; the last segment then lands within one step of its own width below
it (within 2% on the models of the authors' table: tests/test_amc.py).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch

from .graph import Graph

REWARDS = ("acc", "acc_flops")


def reward_of(kind: str, accuracy: float, macs: int) -> float:
    """AMC's rewards from the held-out accuracy (%, top-1 or top-5: amc.reward_metric): the accuracy
    (`acc`), or -error * log(MACs) (`acc_flops`)."""
    if kind == "acc":
        return accuracy / 100
    return -(1 - accuracy / 100) * math.log(macs)


def widths(channels: int, lbound: float, rbound: float, channel_round: int) -> list[int]:
    """The counts a segment of `channels` may keep: multiples of `channel_round` (and the full width)
    between lbound and rbound of it, at least one."""
    grid = sorted({*range(channel_round, channels + 1, channel_round), channels})
    lo = max(1, math.ceil(lbound * channels - 1e-9))
    hi = math.floor(rbound * channels + 1e-9)
    inside = [c for c in grid if lo <= c <= hi]
    if inside:
        return inside
    return [min(grid, key=lambda c: (abs(c - lo), c))]   # no multiple in range: the closest one


def check_budget(flops_ratio: float, lbound: float, rbound: float, channel_round: int, reward: str) -> None:
    """The environment's settings, checkable before a model exists."""
    if reward not in REWARDS:
        raise ValueError(f"amc.reward={reward!r}: choose one of {', '.join(REWARDS)}")
    if not 0 < lbound <= rbound <= 1:
        raise ValueError(f"need 0 < amc.lbound <= amc.rbound <= 1, got lbound={lbound}, rbound={rbound}")
    if not 0 < flops_ratio <= 1:
        raise ValueError(f"amc.flops_ratio must be in (0, 1], got {flops_ratio}")
    if not isinstance(channel_round, int) or channel_round < 1:
        raise ValueError(f"amc.channel_round must be a positive integer, got {channel_round!r}")


class ChannelPruningEnv:
    """`evaluate(counts) -> accuracy (%)` scores a policy (prune, evaluate on held-out images); the
    budget is `flops_ratio` of `cost` (counts -> cost, in `unit`; MACs by default)."""

    def __init__(self, graph: Graph, evaluate: Callable[[list[int]], float], flops_ratio: float,
                 lbound: float = 0.2, rbound: float = 1.0, channel_round: int = 8, reward: str = "acc",
                 cost: Callable[[list[int]], float] | None = None, unit: str = "MACs"):
        check_budget(flops_ratio, lbound, rbound, channel_round, reward)
        self.graph, self.evaluate, self.reward = graph, evaluate, reward
        self.cost = cost or graph.macs
        self.bounds = (lbound, rbound)
        self.macs_total = graph.macs(graph.full)
        self.total = self.cost(graph.full)
        self.target = flops_ratio * self.total
        self.choices = [widths(c, lbound, rbound, channel_round) for c in graph.full]
        lowest = self.cost([c[0] for c in self.choices])
        if lowest > self.target:
            raise ValueError(f"amc.flops_ratio={flops_ratio} is unreachable: with every layer at amc.lbound={lbound} "
                             f"(amc.channel_round={channel_round}) the model keeps {lowest / self.total:.3f} of its "
                             f"{unit}; raise flops_ratio or lower lbound")
        static = torch.tensor(graph.layer_state, dtype=torch.float64)
        span = static.max(0).values - static.min(0).values
        self.static = torch.where(span > 0, (static - static.min(0).values) / span.clamp(min=1e-12), static)
        self.rest = [sum(graph.segment_macs(j) for j in range(k + 1, len(graph.segments))) / self.macs_total
                     for k in range(len(graph.segments))]
        self.reset()

    @property
    def layers(self) -> int:
        return len(self.graph.segments)

    @property
    def state_dim(self) -> int:
        return self.static.shape[1] + 3

    def reset(self) -> torch.Tensor:
        self.counts: list[int] = []
        return self._state(0, 1.0)

    def _state(self, k: int, previous: float) -> torch.Tensor:
        full = self.graph.full
        current = self.graph.macs(self.counts + full[len(self.counts):])
        dynamic = torch.tensor([(self.macs_total - current) / self.macs_total, self.rest[k], previous],
                               dtype=torch.float64)
        return torch.cat([self.static[k], dynamic]).float()

    def limits(self, k: int) -> tuple[int, int]:
        """(lowest, highest) count segment k may take given the counts already chosen (module docstring)."""
        choices = self.choices[k]
        rest = [c[0] for c in self.choices[k + 1:]]
        high = max((n for n in choices if self.cost(self.counts + [n] + rest) <= self.target), default=choices[0])
        rest = [c[-1] for c in self.choices[k + 1:]]
        low = min((n for n in choices if self.cost(self.counts + [n] + rest) >= self.target), default=choices[-1])
        return min(low, high), high

    def step(self, action: float) -> tuple[torch.Tensor, float | None, bool, dict[str, Any]]:
        """Take the action for the current segment; returns (next state, reward or None, done, info
        with the action taken after the budget rule)."""
        k = len(self.counts)
        channels = self.graph.full[k]
        choices = self.choices[k]
        wanted = min(max(float(action), self.bounds[0]), self.bounds[1]) * channels
        count = min(choices, key=lambda n: (abs(n - wanted), n))
        low, high = self.limits(k)
        count = min(max(count, low), high)
        self.counts.append(count)
        taken = count / channels
        info: dict[str, Any] = {"action": taken}
        if len(self.counts) < self.layers:
            return self._state(k + 1, taken), None, False, info
        macs, cost = self.graph.macs(self.counts), self.cost(self.counts)
        accuracy = self.evaluate(list(self.counts))
        info.update(policy=list(self.counts), macs=macs, cost=cost, accuracy=accuracy, ratio=cost / self.total)
        return self._state(k, taken), reward_of(self.reward, accuracy, macs), True, info
