"""The AMC search loop: warm-up episodes of random actions, then the DDPG agent's noisy actions,
the policy updated after every episode; the best policy, the reward of every episode and the agent
are written after each episode, so a killed search resumes where it stopped.

The state file is rewritten atomically (`rm.atomic_save`) and read with weights_only=True; a
resumed search repeats the episode that was interrupted with the same random draws (the agent's
generator is part of its state), so it ends with the policy an uninterrupted search finds.
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Protocol

import torch
from tqdm import tqdm

import rm

from .ddpg import DDPG, AgentSettings

log = logging.getLogger("rmnet.amc")
FORMAT, VERSION = "rmnet-amc-search", 1


class Environment(Protocol):
    bounds: tuple[float, float]
    layers: int
    state_dim: int

    def reset(self) -> torch.Tensor: ...
    def step(self, action: float) -> tuple[torch.Tensor, float | None, bool, dict[str, Any]]: ...


@dataclass
class SearchSettings:
    episodes: int = 800
    warmup: int = 100
    seed: int = 0
    agent: AgentSettings = field(default_factory=AgentSettings)


@dataclass
class SearchResult:
    best: dict[str, Any]                 # the best episode's info: policy, reward, accuracy, macs, ...
    history: list[dict[str, Any]]        # one row per episode: reward, accuracy, macs, ratio, best reward
    agent: DDPG


def _check(settings: SearchSettings) -> None:
    if settings.episodes < 1:
        raise ValueError(f"amc.episodes must be positive, got {settings.episodes}")
    if not 0 <= settings.warmup <= settings.episodes:
        raise ValueError(f"amc.warmup must be in [0, amc.episodes={settings.episodes}], got {settings.warmup}")


def _load(path: str, identity: dict[str, Any]) -> dict[str, Any] | None:
    if not os.path.isfile(path):
        return None
    state = rm.load_file(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise rm.CheckpointError(f"{path} is not an AMC search state; move it away to start a new search")
    if state["identity"] != identity:
        changed = sorted(k for k in identity if state["identity"].get(k) != identity[k])
        raise ValueError(f"{path} is the state of another search (its {', '.join(changed)} differ); move it away "
                         f"or use another amc.out_dir to start a new one")
    return state


def search(env: Environment, settings: SearchSettings, state_path: str | None = None,
           identity: dict[str, Any] | None = None, progress: bool = True, desc: str = "AMC search",
           after_episode: Callable[[int, dict[str, Any]], None] | None = None) -> SearchResult:
    """Run (or resume, from `state_path`) the search. `identity` (plain values) names the search a
    state file belongs to: a file with another identity is refused rather than continued."""
    _check(settings)
    # `episodes` is not part of it: a finished search may be extended
    identity = {**(identity or {}), "settings": {k: v for k, v in asdict(settings).items() if k != "episodes"},
                "layers": env.layers}
    agent = DDPG(env.state_dim, env.bounds, settings.agent, settings.seed)
    best: dict[str, Any] = {"reward": -float("inf")}
    history: list[dict[str, Any]] = []
    saved = _load(state_path, identity) if state_path else None
    if saved is not None:
        agent.load_state_dict(saved["agent"])
        best, history = saved["best"], saved["history"]
        log.info(f"the search in {state_path} is finished ({len(history)} episodes)" if len(history) >= settings.episodes
                 else f"resumed the search at episode {len(history) + 1} of {settings.episodes} from {state_path}")
    bar = tqdm(total=settings.episodes, initial=len(history), desc=desc, unit="episode", disable=None if progress else True)
    for episode in range(len(history), settings.episodes):
        state, done, trajectory = env.reset(), False, []
        while not done:
            action = (agent.random_action() if episode < settings.warmup
                      else agent.noisy_action(state, episode - settings.warmup))
            next_state, reward, done, info = env.step(action)
            trajectory.append((state, info["action"], next_state, done))
            state = next_state
        for s, a, s2, d in trajectory:
            agent.memory.append(s, a, reward, s2, d)
            if episode >= settings.warmup:
                agent.update()
        if reward > best["reward"]:
            best = {"episode": episode, "reward": reward, **{k: v for k, v in info.items() if k != "action"}}
        history.append({"episode": episode, "reward": reward, "best_reward": best["reward"],
                        **{k: v for k, v in info.items() if k in ("accuracy", "macs", "ratio")}})
        if state_path:
            rm.atomic_save({"format": FORMAT, "version": VERSION, "identity": identity, "agent": agent.state_dict(),
                            "best": best, "history": history}, state_path)
        bar.update()
        bar.set_postfix(reward=f"{reward:.4f}", best=f"{best['reward']:.4f}")
        if after_episode is not None:
            after_episode(episode, info)
    bar.close()
    return SearchResult(best, history, agent)
