"""AMC's DDPG agent: actor and critic MLPs with target copies, a replay buffer, truncated-normal
exploration noise that decays per episode, and a moving-average reward baseline.

As in AMC's code: every transition of an episode is stored with the episode's final reward; the
critic regresses reward - baseline + discount * Q'(s', mu'(s')) (no bootstrap from a terminal
state); the baseline moves halfway to each sampled batch's mean reward. Every random draw uses the
agent's own generator and everything it holds is tensors and numbers, so `state_dict()` saved with
torch.save reads back with weights_only=True and a resumed search continues the same random stream.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn


@dataclass
class AgentSettings:
    hidden: int = 300
    lr_actor: float = 1e-4
    lr_critic: float = 1e-3
    tau: float = 0.01             # soft update of the target networks
    discount: float = 1.0
    batch_size: int = 64
    memory: int = 100 * 14        # replay capacity in transitions (AMC: 100 per layer)
    noise: float = 0.5            # initial sigma of the truncated normal around the actor's action
    noise_decay: float = 0.95     # per episode after the warm-up
    baseline_momentum: float = 0.5


def _mlp(inputs: int, hidden: int, out: nn.Module | None) -> nn.Sequential:
    layers = [nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)]
    return nn.Sequential(*layers, *([out] if out is not None else []))


class ReplayBuffer:
    """A ring of (state, action, reward, next state, done) transitions."""

    def __init__(self, capacity: int, state_dim: int):
        self.states = torch.zeros(capacity, state_dim)
        self.next_states = torch.zeros(capacity, state_dim)
        self.actions = torch.zeros(capacity, 1)
        self.rewards = torch.zeros(capacity, 1)
        self.dones = torch.zeros(capacity, 1)
        self.size = self.next = 0

    def append(self, state: torch.Tensor, action: float, reward: float, next_state: torch.Tensor, done: bool) -> None:
        i = self.next
        self.states[i], self.next_states[i] = state, next_state
        self.actions[i], self.rewards[i], self.dones[i] = action, reward, float(done)
        self.next = (i + 1) % len(self.states)
        self.size = min(self.size + 1, len(self.states))

    def sample(self, batch: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        idx = torch.randint(self.size, (batch,), generator=gen)
        return self.states[idx], self.actions[idx], self.rewards[idx], self.next_states[idx], self.dones[idx]

    def state_dict(self) -> dict[str, Any]:
        return {"states": self.states, "next_states": self.next_states, "actions": self.actions,
                "rewards": self.rewards, "dones": self.dones, "size": self.size, "next": self.next}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("states", "next_states", "actions", "rewards", "dones"):
            getattr(self, key).copy_(state[key])
        self.size, self.next = int(state["size"]), int(state["next"])


def truncated_normal(mean: float, sigma: float, low: float, high: float, gen: torch.Generator) -> float:
    """One draw of N(mean, sigma) truncated to [low, high] (inverse CDF)."""
    if sigma <= 0:
        return min(max(mean, low), high)
    a, b = (torch.tensor([low, high], dtype=torch.float64) - mean) / sigma
    cdf_a, cdf_b = torch.special.ndtr(a), torch.special.ndtr(b)
    u = cdf_a + (cdf_b - cdf_a) * torch.rand(1, generator=gen, dtype=torch.float64)
    z = torch.special.ndtri(u.clamp(1e-12, 1 - 1e-12))
    return float((mean + sigma * z).clamp(low, high))


class DDPG:
    def __init__(self, state_dim: int, bounds: tuple[float, float], settings: AgentSettings, seed: int = 0):
        self.settings, self.bounds = settings, bounds
        with torch.random.fork_rng(devices=[]):   # the networks' initial weights from `seed`, global RNG untouched
            torch.manual_seed(seed)
            self.actor = _mlp(state_dim, settings.hidden, nn.Sigmoid())
            self.critic = _mlp(state_dim + 1, settings.hidden, None)
        self.actor_target, self.critic_target = copy.deepcopy(self.actor), copy.deepcopy(self.critic)
        self.actor_optim = torch.optim.Adam(self.actor.parameters(), lr=settings.lr_actor)
        self.critic_optim = torch.optim.Adam(self.critic.parameters(), lr=settings.lr_critic)
        self.memory = ReplayBuffer(settings.memory, state_dim)
        self.baseline: float | None = None
        self.gen = torch.Generator().manual_seed(seed + 1)

    def _scale(self, unit: torch.Tensor) -> torch.Tensor:
        low, high = self.bounds
        return low + (high - low) * unit

    def random_action(self) -> float:
        low, high = self.bounds
        return low + (high - low) * float(torch.rand(1, generator=self.gen, dtype=torch.float64))

    @torch.no_grad()
    def greedy_action(self, state: torch.Tensor) -> float:
        return float(self._scale(self.actor(state.unsqueeze(0)))[0, 0])

    def noisy_action(self, state: torch.Tensor, episodes_since_warmup: int) -> float:
        s = self.settings
        sigma = s.noise * s.noise_decay ** episodes_since_warmup
        return truncated_normal(self.greedy_action(state), sigma, *self.bounds, self.gen)

    def _q(self, critic: nn.Module, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        low, high = self.bounds   # the critic sees actions on [0, 1], as the actor outputs them
        return critic(torch.cat([states, (actions - low) / max(high - low, 1e-12)], 1))

    def update(self) -> None:
        s = self.settings
        states, actions, rewards, next_states, dones = self.memory.sample(s.batch_size, self.gen)
        mean = float(rewards.mean())
        self.baseline = mean if self.baseline is None else self.baseline + s.baseline_momentum * (mean - self.baseline)
        with torch.no_grad():
            next_q = self._q(self.critic_target, next_states, self._scale(self.actor_target(next_states)))
            target = rewards - self.baseline + s.discount * (1 - dones) * next_q
        critic_loss = nn.functional.mse_loss(self._q(self.critic, states, actions), target)
        self.critic_optim.zero_grad()
        critic_loss.backward()
        self.critic_optim.step()
        actor_loss = -self._q(self.critic, states, self._scale(self.actor(states))).mean()
        self.actor_optim.zero_grad()
        actor_loss.backward()
        self.actor_optim.step()
        with torch.no_grad():
            for target_net, net in ((self.actor_target, self.actor), (self.critic_target, self.critic)):
                for t, p in zip(target_net.parameters(), net.parameters()):
                    t.mul_(1 - s.tau).add_(p, alpha=s.tau)

    def state_dict(self) -> dict[str, Any]:
        return {"actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
                "actor_target": self.actor_target.state_dict(), "critic_target": self.critic_target.state_dict(),
                "actor_optim": self.actor_optim.state_dict(), "critic_optim": self.critic_optim.state_dict(),
                "memory": self.memory.state_dict(), "baseline": self.baseline, "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("actor", "critic", "actor_target", "critic_target", "actor_optim", "critic_optim", "memory"):
            getattr(self, key).load_state_dict(state[key])
        self.baseline = state["baseline"]
        self.gen.set_state(state["gen"])
