"""What every agent shares: the Agent contract and a guarded optimiser step."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import numpy as np
import torch
from tensordict import TensorDict
from torch import Tensor, nn


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or inf; raised *before* the optimiser step so the weights stay finite."""

    def __init__(self, name: str, value: float) -> None:
        super().__init__(f"loss {name!r} is {value} (non-finite); training stopped before applying it")
        self.name = name


class Agent(Protocol):
    """The contract between agents and the trainer. Agents never touch the env or the disk.

    Per episode: ``begin_episode``, then ``act`` -> env step -> ``observe(reward)`` for every decision.
    """

    sample_horizon: int  # transitions per sampled window that ``update`` needs

    def begin_episode(self, episode: int) -> None: ...

    def act(self, obs: np.ndarray, *, eval_mode: bool, step: int) -> np.ndarray: ...

    def observe(self, reward: float) -> None:
        """The reward of the step just taken with ``act``'s action (agents with an online context use it)."""

    def update(self, batch: TensorDict) -> dict[str, float]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


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
