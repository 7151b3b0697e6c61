"""What every agent shares: the Agent contract, the optimiser and exploration settings, a guarded optimiser step."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from tensordict import TensorDict
from torch import Tensor, nn

from common.config import check_fields


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or inf; raised *before* the optimiser step so the weights stay finite."""

    def __init__(self, name: str, value: float) -> None:
        super().__init__(f"loss {name!r} is {value} (non-finite); training stopped before applying it")
        self.name = name


class Agent(Protocol):
    """The contract between agents and the training loop. Agents never touch the env or the disk.

    Per episode: ``begin_episode``, then ``act`` -> env step -> ``observe(reward)`` for every decision.
    The loop reads nothing else of an agent: ``batch_size`` and ``sample_horizon`` shape the batches it
    draws, ``num_params()``, ``diagnostics(obs)`` and ``act_info()`` go to the logs, ``state_dict()`` to
    checkpoints.
    """

    sample_horizon: int  # transitions per sampled window that ``update`` needs

    @property
    def batch_size(self) -> int:
        """Windows per ``update`` batch."""
        ...

    def begin_episode(self, episode: int) -> None: ...

    def act(self, obs: np.ndarray, *, eval_mode: bool, step: int) -> np.ndarray: ...

    def observe(self, reward: float) -> None:
        """The reward of the step just taken with ``act``'s action (agents with an online context use it)."""

    def act_info(self) -> dict[str, float]:
        """Scalars the latest ``act`` measured (e.g. ``plan_uncertainty``); evaluation averages them per episode."""
        ...

    def update(self, batch: TensorDict) -> dict[str, float]: ...

    def num_params(self) -> int:
        """Parameters that training updates (frozen parts excluded)."""
        ...

    def diagnostics(self, obs: Tensor) -> dict[str, float]:
        """Representation statistics on a batch of recent observations ``[N, O]`` (logged at each evaluation)."""
        ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class OptimConfig:
    """Optimisers and batches (``agent.optim``).

    Attributes:
        wm_lr, wm_weight_decay: AdamW over the world model (encoder, dynamics, heads).
        lr: Adam over the actor and the critics.
        grad_clip: max global gradient norm of every step (<= 0: no clipping).
        batch_size: windows per update.
    """

    wm_lr: float = 1e-4
    wm_weight_decay: float = 0.01
    lr: float = 3e-4
    grad_clip: float = 20.0
    batch_size: int = 256

    def __post_init__(self) -> None:
        checks = {
            "wm_lr": self.wm_lr > 0,
            "wm_weight_decay": self.wm_weight_decay >= 0,
            "lr": self.lr > 0,
            "batch_size": self.batch_size >= 1,
        }
        check_fields(self, checks, "optimiser setting", "learning rates > 0, weight decay >= 0, batch_size >= 1")


@dataclass
class ExplorationConfig:
    """Gaussian noise ``N(0, σ_t²)`` on executed training actions (``agent.exploration``):
    ``σ_t`` goes linearly from ``std_start`` to ``std_end`` over ``episodes`` episodes, then stays."""

    std_start: float = 1.0
    std_end: float = 0.1
    episodes: int = 50

    def __post_init__(self) -> None:
        checks = {"std_start": self.std_start >= 0, "std_end": self.std_end >= 0, "episodes": self.episodes >= 0}
        check_fields(self, checks, "exploration setting", "stds >= 0, episodes >= 0")

    def std(self, episode: int) -> float:
        """``σ_t`` at training episode ``episode``."""
        return linear_schedule(self.std_start, self.std_end, self.episodes, episode)


def optimizer_step(
    name: str,
    loss: Tensor,
    optimizer: torch.optim.Optimizer,
    params: Iterable[nn.Parameter],
    grad_clip: float | None,
) -> float:
    """Backprop ``loss`` and step, refusing a non-finite loss; returns the pre-clip gradient norm."""
    value = loss.item()
    if not np.isfinite(value):
        raise NonFiniteLossError(name, value)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = list(params)
    if grad_clip is not None and grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    else:
        norm = torch.norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
    optimizer.step()
    return float(norm)


def linear_schedule(start: float, end: float, duration: int, t: int) -> float:
    """``start`` -> ``end`` linearly over ``duration`` units of ``t``, then constant."""
    if duration <= 0:
        return end
    frac = min(max(t / duration, 0.0), 1.0)
    return start + frac * (end - start)
