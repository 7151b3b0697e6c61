"""iQRL agent: TD3 on implicitly quantised latents (Scannell et al. 2024)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tensordict import TensorDict
from torch import nn

from agents.common import optimizer_step
from agents.td3 import TD3, LatentTD3Agent, TD3Config, nstep_targets
from world_models.iqrl import IQRLModelConfig, IQRLWorldModel


@dataclass
class IQRLConfig(IQRLModelConfig, TD3Config):
    """All iQRL hyperparameters: representation (``IQRLModelConfig``) + actor-critic (``TD3Config``)."""

    enc_lr: float = 1e-4
    enc_weight_decay: float = 0.01

    def __post_init__(self) -> None:
        TD3Config.__post_init__(self)
        IQRLModelConfig.__post_init__(self)
        if self.enc_lr <= 0:
            raise ValueError(f"invalid hyperparameter enc_lr={self.enc_lr}: must be > 0")


class IQRLAgent(LatentTD3Agent):
    """Encoder + FSQ trained by latent self-consistency (``IQRLWorldModel``); TD3 acts on the
    detached quantised latents of the online encoder. Only the consistency loss shapes the encoder."""

    def __init__(self, obs_dim: int, action_dim: int, cfg: IQRLConfig, device: torch.device) -> None:
        self.cfg = cfg
        self.device = device
        self.wm = IQRLWorldModel(obs_dim, action_dim, cfg)
        self.td3 = TD3(self.wm.latent_dim, action_dim, cfg)
        self.nets = nn.ModuleDict({"wm": self.wm, "td3": self.td3}).to(device)
        self.wm_opt = torch.optim.AdamW(
            list(self.wm.encoder.parameters()) + list(self.wm.dynamics.parameters()),
            lr=cfg.enc_lr,
            weight_decay=cfg.enc_weight_decay,
        )
        self.sample_horizon = max(cfg.horizon, cfg.nstep)
        self.episode = 0

    def begin_episode(self, episode: int) -> None:
        self.episode = episode

    @torch.no_grad()
    def act(self, obs: np.ndarray, *, eval_mode: bool, step: int) -> np.ndarray:
        z = self.wm.encode(torch.as_tensor(obs, dtype=torch.float32, device=self.device)[None])
        a = self.td3.pi(z)
        if not eval_mode:
            a = self.td3.add_exploration_noise(a, self.td3.explore_std(self.episode))
        return a[0].cpu().numpy()

    def update(self, batch: TensorDict) -> dict[str, float]:
        batch = batch.to(self.device)
        wm_loss, metrics = self.wm.loss(batch)
        metrics["wm_grad_norm"] = optimizer_step(
            "consistency_loss", wm_loss, self.wm_opt, self.wm_opt.param_groups[0]["params"], self.cfg.grad_clip
        )
        self.wm.update_target()
        n = self.cfg.nstep
        with torch.no_grad():
            z = self.wm.encode(batch["obs"][:, 0])
            z_next = self.wm.encode(batch["obs"][:, n])
            ret, discount = nstep_targets(batch["reward"], batch["terminated"], self.cfg.gamma, n)
        metrics.update(self.td3.update(z, batch["action"][:, 0], ret, discount, z_next))
        metrics["explore_std"] = self.td3.explore_std(self.episode)
        return metrics
