"""Behaviour policies and episode rollouts that produce arrays in the dataset schema (:mod:`envs.datasets`).

Shared by ``scripts/collect_dataset.py`` (which adds checkpoint policies on top) and
:mod:`envs.toy_datasets`. Only numpy and the gymnasium env API: no agents, no training code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

POLICY_IDS: dict[str, int] = {"random": 0, "medium": 1, "expert": 2, "checkpoint": 3, "replay": 4}
"""Fixed behaviour-policy ids stored in ``policy_ids`` (the same in every file, so files concatenate)."""


@dataclass
class Policy:
    """A behaviour policy: ``act(obs) -> action in [-1, 1]`` plus what the dataset attrs record."""

    name: str
    act: Callable[[np.ndarray], np.ndarray]
    begin_episode: Callable[[], None] = lambda: None
    info: dict[str, Any] = field(default_factory=dict)


def random_policy(action_dim: int, seed: int, stream: int = 0) -> Policy:
    """Uniform actions in [-1, 1] from ``numpy.random.default_rng([seed, stream])`` (stream: task index)."""
    rng = np.random.default_rng([seed, stream])
    return Policy(
        "random",
        lambda obs: rng.uniform(-1.0, 1.0, size=action_dim).astype(np.float32),
        info={"description": "uniform random actions in [-1, 1]"},
    )


@dataclass
class Collected:
    """Arrays of one file being assembled, plus per-episode returns by policy for the summary."""

    data: dict[str, list[np.ndarray]] = field(default_factory=dict)
    returns: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, x: np.ndarray) -> None:
        self.data.setdefault(name, []).append(x)

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v) for k, v in self.data.items()}


def rollout_episode(env: Any, policy: Policy, seed: int) -> tuple[dict[str, np.ndarray], float]:
    """One episode with ``policy``; returns its schema arrays (without task/policy ids) and its return."""
    policy.begin_episode()
    obs, _ = env.reset(seed=seed)
    rows: dict[str, list[Any]] = {k: [] for k in ("obs", "act", "rew", "next", "term", "trunc")}
    done = False
    while not done:
        action = np.clip(np.asarray(policy.act(obs), dtype=np.float32).reshape(env.action_space.shape), -1, 1)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        for k, v in zip(rows, (obs, action, reward, next_obs, terminated, truncated)):
            rows[k].append(v)
        obs = next_obs
        done = bool(terminated or truncated)
    term = np.asarray(rows["term"], dtype=bool)
    arrays = {
        "observations": np.asarray(rows["obs"], dtype=np.float32),
        "actions": np.asarray(rows["act"], dtype=np.float32),
        "rewards": np.asarray(rows["rew"], dtype=np.float32),
        "next_observations": np.asarray(rows["next"], dtype=np.float32),
        "terminals": term,
        "timeouts": np.asarray(rows["trunc"], dtype=bool) & ~term,
    }
    return arrays, float(np.sum(rows["rew"], dtype=np.float64))
