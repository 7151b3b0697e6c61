"""iQRL representation: FSQ-quantised latents trained only by latent self-consistency."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tensordict import TensorDict
from torch import Tensor

from common.config import check_fields
from common.nn import mlp, soft_update
from world_models.base import MemorylessWorldModel
from world_models.diagnostics import collapse_metrics
from world_models.quantizers import FSQ


@dataclass
class IQRLModelConfig:
    """iQRL representation settings (``world_model=iqrl``): FSQ groups and levels, encoder and dynamics sizes,
    the loss horizon ``H`` and weight ``ρ``, and the EMA rate ``enc_tau`` of the target encoder."""

    name: str = "iqrl"
    latent_groups: int = 512
    fsq_levels: list[int] = field(default_factory=lambda: [8, 8])
    enc_mlp_dims: list[int] = field(default_factory=lambda: [256])
    dyn_mlp_dims: list[int] = field(default_factory=lambda: [512, 512])
    horizon: int = 5
    rho: float = 0.9
    enc_tau: float = 0.005

    def __post_init__(self) -> None:
        checks = {
            "latent_groups": self.latent_groups >= 1,
            "horizon": self.horizon >= 1,
            "rho": 0.0 < self.rho <= 1.0,
            "enc_tau": 0.0 < self.enc_tau <= 1.0,
        }
        check_fields(self, checks, "iQRL world-model setting")
        FSQ(self.fsq_levels, 1)  # validates the levels


class IQRLWorldModel(MemorylessWorldModel):
    """Encoder ``e`` -> FSQ ``f``, with a residual latent dynamics model ``d`` (not used for planning).

    ``z_0 = f(e(o_t))``, ``z_{h+1} = f(z_h + d(z_h, a_{t+h}))``, trained to match a momentum
    (EMA) encoder's quantised latent of the real next observations::

        L = -(1/H) sum_{h<H} rho^h * mean_batch[ cos(z_{h+1}, f(ebar(o_{t+h+1}))) ]

    Gradients flow through every rollout step via FSQ's straight-through estimator. There is no
    reward or reconstruction term: the representation is task-agnostic. (The public code flips the sign
    and so minimises the similarity; this follows the paper.)
    """

    def __init__(self, obs_dim: int, action_dim: int, cfg: IQRLModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.fsq = FSQ(cfg.fsq_levels, cfg.latent_groups)
        self.latent_dim = self.fsq.dim
        self.encoder = mlp(obs_dim, cfg.enc_mlp_dims, self.latent_dim)
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.dynamics = mlp(self.latent_dim + action_dim, cfg.dyn_mlp_dims, self.latent_dim)
        self.window_length = cfg.horizon

    def encode(self, obs: Tensor, target: bool = False) -> Tensor:
        return self.fsq((self.target_encoder if target else self.encoder)(obs))

    def next(self, z: Tensor, a: Tensor) -> Tensor:
        return self.fsq(z + self.dynamics(torch.cat([z, a], -1)))

    def loss(self, batch: TensorDict) -> tuple[Tensor, dict[str, float]]:
        H = self.cfg.horizon
        obs, action = batch["obs"], batch["action"]
        with torch.no_grad():
            targets = self.encode(obs[:, 1 : H + 1], target=True)
        z = self.encode(obs[:, 0])
        loss = obs.new_zeros(())
        cos_first = None
        for h in range(H):
            z = self.next(z, action[:, h])
            cos = F.cosine_similarity(z, targets[:, h], dim=-1).mean()
            cos_first = cos if cos_first is None else cos_first
            loss = loss - self.cfg.rho**h * cos
        loss = loss / H
        return loss, {"consistency_loss": loss.item(), "cos_sim_h1": cos_first.item(), "cos_sim_hH": cos.item()}

    def after_update(self) -> None:
        """EMA step of the target encoder."""
        soft_update(self.target_encoder, self.encoder, self.cfg.enc_tau)

    @torch.no_grad()
    def diagnostics(self, obs: Tensor) -> dict[str, float]:
        """Collapse measures of the latents of ``obs [N, O]`` (rank at three tolerances, code usage)."""
        return collapse_metrics(self.encode(obs), self.fsq)
