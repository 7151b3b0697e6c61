"""A test-only world model that is registered nowhere: DC-MPC must drive it through the WorldModel contract
alone, selected by ``world_model.name=linear_world_model:LinearWorldModel``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from world_models.base import MemorylessWorldModel


@dataclass
class LinearConfig:
    name: str = "linear_world_model:LinearWorldModel"
    latent_dim: int = 4
    horizon: int = 2
    reward_bound: list[float] | None = None


class LinearWorldModel(MemorylessWorldModel):
    """``z = W o``, ``z' = A [z ‖ a]``, ``r = w·[z ‖ a]``; trained by latent consistency and reward regression."""

    Config = LinearConfig
    predicts_reward = True

    def __init__(self, obs_dim: int, action_dim: int, cfg: LinearConfig) -> None:
        super().__init__()
        self.latent_dim = cfg.latent_dim
        self.window_length = cfg.horizon
        self.enc = nn.Linear(obs_dim, cfg.latent_dim)
        self.dyn = nn.Linear(cfg.latent_dim + action_dim, cfg.latent_dim)
        self.rew = nn.Linear(cfg.latent_dim + action_dim, 1)
        self.observed = 0

    def encode(self, obs: Tensor) -> Tensor:
        return self.enc(obs)

    def observe(self, obs: Tensor, state=None):
        self.observed += 1
        return super().observe(obs, state)

    def next(self, z: Tensor, a: Tensor) -> Tensor:
        return self.dyn(torch.cat([z, a], -1))

    def reward(self, z: Tensor, a: Tensor) -> Tensor:
        return self.rew(torch.cat([z, a], -1)).squeeze(-1)

    def loss(self, batch):
        obs, action, reward = batch["obs"], batch["action"], batch["reward"]
        z = self.encode(obs[:, 0])
        loss = obs.new_zeros(())
        for h in range(self.window_length):
            loss = loss + F.mse_loss(self.reward(z, action[:, h]), reward[:, h])
            z = self.next(z, action[:, h])
            loss = loss + F.mse_loss(z, self.encode(obs[:, h + 1]).detach())
        return loss, {"linear_wm_loss": loss.item()}
