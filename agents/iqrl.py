"""iQRL agent: TD3 on implicitly quantised latents (Scannell et al. 2024).

The world model (``world_model=iqrl``, :class:`world_models.iqrl.IQRLWorldModel`) is trained by latent
self-consistency only; TD3 acts on the detached quantised latents of the online encoder.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict
from torch import nn

from agents.common import ExplorationConfig, OptimConfig, optimizer_step
from agents.td3 import TD3, ActorCriticConfig, LatentTD3Agent, nstep_targets
from world_models import make_world_model, world_model_config


@dataclass
class IQRLConfig:
    """iQRL, composed of its parts' configs (``agent`` in the composed config, ``configs/agent/iqrl.yaml``).

    ``world_model``: any world model (``world_model=iqrl``, the paper's); its ``loss`` alone shapes the encoder.
    """

    world_model: Any = field(default_factory=lambda: {"name": "iqrl"})
    actor_critic: ActorCriticConfig = field(default_factory=ActorCriticConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    exploration: ExplorationConfig = field(default_factory=ExplorationConfig)

    def __post_init__(self) -> None:
        if not dataclasses.is_dataclass(self.world_model):
            self.world_model = world_model_config(self.world_model, "world_model")


class IQRLAgent(LatentTD3Agent):
    """World model trained by its own loss (iQRL: latent self-consistency); TD3 acts on its detached latents."""

    def __init__(self, obs_dim: int, action_dim: int, cfg: IQRLConfig, device: torch.device) -> None:
        self.cfg = cfg
        self.device = device
        self.wm = make_world_model(cfg.world_model, obs_dim, action_dim)
        self.td3 = TD3(self.wm.latent_dim, action_dim, cfg.actor_critic, cfg.optim)
        self.nets = nn.ModuleDict({"wm": self.wm, "td3": self.td3}).to(device)
        self.wm_opt = torch.optim.AdamW(
            [p for p in self.wm.parameters() if p.requires_grad],
            lr=cfg.optim.wm_lr,
            weight_decay=cfg.optim.wm_weight_decay,
        )
        self.sample_horizon = max(self.wm.window_length, self.wm.window_offset + cfg.actor_critic.nstep)
        self.episode = 0

    def begin_episode(self, episode: int) -> None:
        self.episode = episode

    @torch.no_grad()
    def act(self, obs: np.ndarray, *, eval_mode: bool, step: int) -> np.ndarray:
        z, _ = self.wm.observe(torch.as_tensor(obs, dtype=torch.float32, device=self.device)[None])
        a = self.td3.pi(z)
        if not eval_mode:
            a = self.td3.add_exploration_noise(a, self.explore_std())
        return a[0].cpu().numpy()

    def update(self, batch: TensorDict) -> dict[str, float]:
        batch = batch.to(self.device)
        wm_loss, metrics = self.wm.loss(batch)
        metrics["wm_grad_norm"] = optimizer_step(
            "consistency_loss", wm_loss, self.wm_opt, self.wm_opt.param_groups[0]["params"], self.cfg.optim.grad_clip
        )
        self.wm.after_update()
        n, off = self.cfg.actor_critic.nstep, self.wm.window_offset
        with torch.no_grad():
            z_pair = self.wm.window_latents(batch["obs"], [0, n])
            ret, discount = nstep_targets(
                batch["reward"][:, off:], batch["terminated"][:, off:], self.cfg.actor_critic.gamma, n
            )
        metrics.update(self.td3.update(z_pair[:, 0], batch["action"][:, off], ret, discount, z_pair[:, 1]))
        metrics["explore_std"] = self.explore_std()
        return metrics
