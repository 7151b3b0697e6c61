"""The world-model interface: what an agent may ask of any latent world model.

Every world model (DCWM, KLA belief, iQRL, contextual) implements :class:`WorldModel`, and agents call
nothing else, so a new model plugs into DC-MPC by registering it (:func:`world_models.register_world_model`)
and naming it in the config (``world_model=<name>``). Shapes: ``obs [N, O]`` (or ``[B, T, O]`` windows),
``z [N, latent_dim]``, ``a [N, A]`` in ``[-1, 1]``.

* ``observe(obs, state) -> (z, state)``: the latent of one observation per row. ``state`` is carried across
  the steps of an episode (KLA: the filter state of the belief; the contextual model: the task
  representation) and is ``None`` at an episode's start; memoryless models ignore it and return ``None``.
* ``window_latents(obs, positions) -> z [B, len(positions), D]``: latents of replay windows ``obs [B, T, O]``
  at window positions counted from ``window_offset`` (the transitions a window spends building state
  before its first loss step: KLA's burn-in, 0 for memoryless models). Value learning reads these.
* ``next(z, a) -> z'``: the planning transition (deterministic: DCWM's expected code).
* ``reward(z, a) -> r [N]``: the predicted reward; ``predicts_reward`` is False for models without a head.
* ``loss(batch) -> (scalar, metrics)`` on replay windows of at least ``window_length`` transitions
  (``window_offset`` of them included).
* ``after_update()``: housekeeping after each optimiser step (EMA targets).
* ``diagnostics(obs) -> metrics``: representation statistics on single observations ``[N, O]``.
* ``uncertainty(z, a) -> u [N] | None``: the model's uncertainty about the step ``(z, a)``; ``None`` (the
  default) when the model has no estimate. The planner adds ``κ Σ ρ^h u_h`` to a plan's score.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from tensordict import TensorDict
from torch import Tensor, nn

__all__ = ["MemorylessWorldModel", "WorldModel"]


@runtime_checkable
class WorldModel(Protocol):
    """The contract of every latent world model (module docstring)."""

    latent_dim: int
    window_offset: int
    window_length: int
    predicts_reward: bool

    def observe(self, obs: Tensor, state: Any | None = None) -> tuple[Tensor, Any | None]: ...

    def window_latents(self, obs: Tensor, positions: Sequence[int]) -> Tensor: ...

    def next(self, z: Tensor, a: Tensor) -> Tensor: ...

    def reward(self, z: Tensor, a: Tensor) -> Tensor: ...

    def loss(self, batch: TensorDict) -> tuple[Tensor, dict[str, float]]: ...

    def after_update(self) -> None: ...

    def diagnostics(self, obs: Tensor) -> dict[str, float]: ...

    def uncertainty(self, z: Tensor, a: Tensor) -> Tensor | None: ...


class MemorylessWorldModel(nn.Module):
    """Defaults of the :class:`WorldModel` contract for models whose latent is ``encode(o)`` of one observation.

    Subclasses define ``encode(obs) -> z``, ``next``, ``loss`` and ``window_length``; they override
    ``reward`` (and set ``predicts_reward``), ``diagnostics`` and ``uncertainty`` where they have them.
    """

    latent_dim: int
    window_length: int
    window_offset = 0
    predicts_reward = False

    def encode(self, obs: Tensor) -> Tensor:
        raise NotImplementedError

    def observe(self, obs: Tensor, state: Any | None = None) -> tuple[Tensor, None]:
        return self.encode(obs), None

    def window_latents(self, obs: Tensor, positions: Sequence[int]) -> Tensor:
        return self.encode(obs[:, list(positions)])

    def reward(self, z: Tensor, a: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} predicts no reward")

    def after_update(self) -> None:
        pass

    def diagnostics(self, obs: Tensor) -> dict[str, float]:
        return {}

    def uncertainty(self, z: Tensor, a: Tensor) -> Tensor | None:
        return None
