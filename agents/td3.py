"""TD3 on latent states with a REDQ-style critic ensemble, shared by iQRL and DC-MPC."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agents.common import OptimConfig, optimizer_step
from common.config import check_fields, dims_ok
from common.nn import EnsembleMLP, mlp, soft_update


@dataclass
class ActorCriticConfig:
    """TD3 actor and critic ensemble (``agent.actor_critic``; iQRL / DC-MPC defaults).

    Attributes:
        mlp_dims: hidden sizes of the actor and of every critic.
        num_critics: E, critics in the ensemble.
        q_sample_size: M, critics drawn at random for the target's min, the actor loss and the planner's value.
        gamma: discount γ; tau: Polyak rate of the target networks.
        policy_noise, noise_clip: target policy smoothing ``clip(N(0, policy_noise²), ±noise_clip)``.
        actor_update_freq: critic steps per actor step.
        nstep: n of the n-step TD target.
    """

    mlp_dims: list[int] = field(default_factory=lambda: [512, 512])
    num_critics: int = 5
    q_sample_size: int = 2
    gamma: float = 0.99
    tau: float = 0.005
    policy_noise: float = 0.2
    noise_clip: float = 0.3
    actor_update_freq: int = 2
    nstep: int = 1

    def __post_init__(self) -> None:
        checks = {
            "num_critics": self.num_critics >= 1,
            "q_sample_size": 1 <= self.q_sample_size <= self.num_critics,
            "gamma": 0.0 < self.gamma <= 1.0,
            "tau": 0.0 < self.tau <= 1.0,
            "actor_update_freq": self.actor_update_freq >= 1,
            "nstep": self.nstep >= 1,
            "policy_noise": self.policy_noise >= 0,
            "noise_clip": self.noise_clip >= 0,
            "mlp_dims": len(self.mlp_dims) >= 1 and dims_ok(self.mlp_dims),
        }
        check_fields(self, checks, "actor-critic setting", "q_sample_size in [1, num_critics]; gamma, tau in (0, 1]")


class TD3(nn.Module):
    """Deterministic actor ``pi(z)`` (tanh) and ``E`` critics ``Q_e(z, a)`` on detached latents ``z``.

    Critic target (n-step, REDQ-style min over ``M`` random target critics)::

        y = sum_{i<n} gamma^i r_{t+i} + gamma^n (1 - term) min_{e in M} Qbar_e(z_{t+n}, pibar(z_{t+n}) + eps)
        eps = clip(N(0, policy_noise^2), -noise_clip, noise_clip)

    All critics regress onto ``y``; the actor maximises the mean of ``M`` random online critics and is
    updated every ``actor_update_freq`` critic steps. Targets track by Polyak averaging with ``tau``.
    """

    def __init__(self, latent_dim: int, action_dim: int, cfg: ActorCriticConfig, optim: OptimConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.grad_clip = optim.grad_clip
        self.action_dim = action_dim
        self.actor = mlp(latent_dim, cfg.mlp_dims, action_dim)
        self.critic = EnsembleMLP(cfg.num_critics, latent_dim + action_dim, cfg.mlp_dims, 1)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=optim.lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=optim.lr)
        self.num_critic_updates = 0

    def pi(self, z: Tensor, target: bool = False) -> Tensor:
        return torch.tanh((self.actor_target if target else self.actor)(z))

    def q(self, z: Tensor, a: Tensor, target: bool = False) -> Tensor:
        """All critics' values ``[E, N]``."""
        net = self.critic_target if target else self.critic
        return net(torch.cat([z, a], -1)).squeeze(-1)

    def _subset(self) -> Tensor:
        return torch.randperm(self.cfg.num_critics, device=self.actor[0].weight.device)[: self.cfg.q_sample_size]

    def q_mean_random(self, z: Tensor, a: Tensor) -> Tensor:
        """Mean of ``q_sample_size`` randomly chosen online critics ``[N]`` (planning value, actor loss)."""
        return self.q(z, a)[self._subset()].mean(0)

    def q_min_random(self, z: Tensor, a: Tensor, target: bool = False) -> Tensor:
        """Min of ``q_sample_size`` randomly chosen critics ``[N]`` (TD target; pessimistic planning value)."""
        return self.q(z, a, target=target)[self._subset()].min(0).values

    def add_exploration_noise(self, a: Tensor, std: float) -> Tensor:
        return (a + std * torch.randn_like(a)).clamp(-1.0, 1.0)

    def update(self, z: Tensor, action: Tensor, ret: Tensor, discount: Tensor, z_next: Tensor) -> dict[str, float]:
        """One critic step (and every ``actor_update_freq``-th call an actor step) on a batch.

        ``ret`` is the n-step discounted reward sum, ``discount`` = gamma^n (1 - terminated).
        """
        c = self.cfg
        with torch.no_grad():
            eps = (torch.randn_like(action) * c.policy_noise).clamp(-c.noise_clip, c.noise_clip)
            a_next = (self.pi(z_next, target=True) + eps).clamp(-1.0, 1.0)
            q_next = self.q_min_random(z_next, a_next, target=True)
            y = ret + discount * q_next
        q = self.q(z, action)
        critic_loss = F.mse_loss(q, y.expand_as(q))
        metrics = {
            "critic_loss": critic_loss.item(),
            "q_mean": q.mean().item(),
            "critic_grad_norm": optimizer_step(
                "critic_loss", critic_loss, self.critic_opt, self.critic.parameters(), self.grad_clip
            ),
        }
        self.num_critic_updates += 1
        if self.num_critic_updates % c.actor_update_freq == 0:
            self.critic.requires_grad_(False)
            actor_loss, actor_metrics = self.actor_loss(z, action)
            metrics["actor_grad_norm"] = optimizer_step(
                "actor_loss", actor_loss, self.actor_opt, self.actor.parameters(), self.grad_clip
            )
            self.critic.requires_grad_(True)
            metrics.update(actor_loss=actor_loss.item(), **actor_metrics)
            soft_update(self.actor_target, self.actor, c.tau)
        soft_update(self.critic_target, self.critic, c.tau)
        return metrics

    def actor_loss(self, z: Tensor, action: Tensor) -> tuple[Tensor, dict[str, float]]:
        """``-mean_b mean_{k in M} Q_k(z, pi(z))`` (``action``, the batch's, is for subclasses like TD3+BC)."""
        return -self.q_mean_random(z, self.pi(z)).mean(), {}

    def extra_state(self) -> dict:
        return {
            "actor_opt": self.actor_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
            "num_critic_updates": self.num_critic_updates,
        }

    def load_extra_state(self, state: dict) -> None:
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.num_critic_updates = int(state["num_critic_updates"])


class LatentTD3Agent:
    """Shared plumbing of agents that run TD3 on a world model's latents (iQRL, DC-MPC).

    Subclasses set ``self.cfg`` (with ``optim`` and ``exploration``), ``self.wm`` (a
    :class:`world_models.WorldModel`), ``self.td3``, ``self.nets`` (a ModuleDict of everything with weights),
    ``self.wm_opt``, ``self.device`` and ``self.episode``.
    """

    @property
    def batch_size(self) -> int:
        return self.cfg.optim.batch_size

    def num_params(self) -> int:
        return sum(p.numel() for p in self.nets.parameters() if p.requires_grad)

    def explore_std(self) -> float:
        """σ_t of the current training episode."""
        return self.cfg.exploration.std(self.episode)

    def observe(self, reward: float) -> None:
        """No online context: rewards reach these agents through the replay buffer."""

    def act_info(self) -> dict[str, float]:
        return {}

    @torch.no_grad()
    def diagnostics(self, obs: Tensor) -> dict[str, float]:
        """The world model's representation statistics on a batch of observations."""
        return self.wm.diagnostics(obs.to(self.device))

    def state_dict(self) -> dict:
        return {
            "nets": self.nets.state_dict(),
            "wm_opt": self.wm_opt.state_dict(),
            "td3": self.td3.extra_state(),
            "episode": self.episode,
        }

    def load_state_dict(self, state: dict) -> None:
        self.nets.load_state_dict(state["nets"])
        self.wm_opt.load_state_dict(state["wm_opt"])
        self.td3.load_extra_state(state["td3"])
        self.episode = int(state["episode"])


def nstep_targets(reward: Tensor, terminated: Tensor, gamma: float, n: int) -> tuple[Tensor, Tensor]:
    """n-step return ``sum_{i<n} gamma^i r_i`` and bootstrap factor ``gamma^n (1 - term_{n-1})``.

    Windows never cross an episode boundary, so a terminal transition can only be the window's last;
    ``terminated[:, n-1]`` therefore decides whether to bootstrap.
    """
    powers = gamma ** torch.arange(n, dtype=reward.dtype, device=reward.device)
    ret = (reward[:, :n] * powers).sum(1)
    discount = (gamma**n) * (1.0 - terminated[:, n - 1])
    return ret, discount
