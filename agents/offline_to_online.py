"""Offline-to-online: adapt an offline meta-RL policy online to dynamics that change at every reset.

The L4DC 2024 residual scheme (Nakhaei, Scannell, Pajarinen), on this repo's pieces:

* **Base policy** ``a_b = pi_off(s)``: the TD3+BC actor of an offline run (``python train.py experiment=offline_meta
  dataset=...``), acting with the prior representation ``z = 0`` (no offline context online). The builder
  (:func:`training.setup.build_agent`) loads that run's checkpoint (``agent.base_checkpoint``) and hands the
  :class:`agents.meta_rl.MetaRLAgent` over (``base=``); this agent's own state carries the base's config and weights,
  so its checkpoints are self-contained. Frozen by default (``residual.finetune_base=true`` trains it with the
  residual's loss).
* **Settings**: ``agent.residual`` (the residual actor), ``agent.context`` (encoder, window ``context_size``, decoder),
  ``agent.actor_critic``, ``agent.optim``, ``agent.exploration``.
* **Context encoder** ``z = E(C_t)`` (:class:`world_models.contextual.ContextEncoder`) over the last ``K``
  transitions of the current episode ``C_t = {(s_i, a_i, r_i, s_{i+1}) : t-K <= i < t}`` (``r_i`` reaches the
  agent through ``observe``, so changes of the reward function are visible too; in training, the buffer's
  rewards). The encoder is trained only by a dynamics decoder, never by the RL losses::

      L_dyn = || D(s_t, a_t, z_t) - (norm(s_{t+1}) - norm(s_t)) ||^2

* **Residual actor** ``a = clip(a_b + beta tanh(R([s, sg(z), a_b])), -1, 1)`` with ``beta = residual.scale``; the
  output layer of ``R`` starts at zero, so before any update ``a == a_b`` exactly.
* **Critics** ``Q_e([s, sg(z)], a)`` trained TD3-style by :class:`agents.td3.TD3` (its update, targets, target
  policy smoothing and actor step; :class:`ResidualTD3` only swaps the actor for the composite policy above).

``mode=finetune`` is the baseline: plain online fine-tuning of the offline TD3+BC actor and critics on ``[s, 0]``
(no context, no residual), with the offline run's TD3 hyperparameters and optimiser states, and its BC term
against the replay actions (``bc_alpha``; ``null`` keeps the offline value, 0 is pure TD3).

**How the context reaches** ``update``: the shared replay buffer samples windows of ``H = K + 1`` consecutive
transitions of one episode (``sample_horizon``). For each window one position ``j ~ U{0..K}`` is trained: its
context is the window's transitions before it (``j`` of them; ``j = K`` is exactly the acting-time context
``C_t``, ``j < K`` the shorter contexts of an episode's first steps, or, for windows that do not start at the
episode's start, a subset of ``C_t`` - with mean pooling an estimate of the same ``z``). The context of the
next state ``s_{j+1}`` is the window's last ``min(j + 1, K)`` transitions up to ``j``, so the TD target uses the
``z`` the policy would have had there. Every transition of an episode can be position ``j`` of some window; episodes
need at least ``K + 1`` decisions (shorter ones hold no window and are never sampled).
"""

from __future__ import annotations

import copy
import dataclasses
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tensordict import TensorDict
from torch import Tensor, nn

from agents.common import ExplorationConfig, OptimConfig, optimizer_step
from agents.meta_rl import MetaRLAgent, MetaRLConfig, Normalizer, check_paths
from agents.td3 import TD3, ActorCriticConfig
from common.config import build_config, check_fields, dims_ok
from common.nn import mlp
from world_models.contextual import ContextEncoder, ContextEncoderConfig

MODES = ("residual", "finetune")


@dataclass
class ResidualConfig:
    """The residual actor (``agent.residual``, ``mode=residual``).

    Attributes:
        scale: beta; the residual moves each action by at most this much (the paper mixes 0.75/0.25).
        finetune_base: also train the base actor (through the residual's actor loss), at ``base_lr``.
    """

    scale: float = 0.25
    finetune_base: bool = False
    base_lr: float = 3e-5

    def __post_init__(self) -> None:
        checks = {"scale": 0.0 < self.scale <= 2.0, "base_lr": self.base_lr > 0}
        check_fields(self, checks, "residual setting", "scale in (0, 2], base_lr > 0")


@dataclass
class OnlineContextConfig(ContextEncoderConfig):
    """The online context (``agent.context``): the context encoder's settings, the window and the decoder.

    Attributes:
        context_size: K, the last transitions of the current episode in the context (paper: 10).
        decoder_mlp_dims: hidden sizes of the dynamics decoder ``D(s, a, z)`` that trains the encoder.
        use_next_obs: must stay true (a set of ``(s, a)`` pairs says nothing about the dynamics).
    """

    z_dim: int = 8
    ctx_mlp_dims: list[int] = field(default_factory=lambda: [200, 200])
    context_size: int = 10
    decoder_mlp_dims: list[int] = field(default_factory=lambda: [256, 256])

    def __post_init__(self) -> None:
        super().__post_init__()
        checks = {
            "context_size": self.context_size >= 1,
            "decoder_mlp_dims": dims_ok(self.decoder_mlp_dims),
            "use_next_obs": self.use_next_obs,
        }
        check_fields(self, checks, "online-context setting", "context_size >= 1; use_next_obs must be true")


@dataclass
class OnlineOptimConfig:
    """Optimisers (``agent.optim``): Adam over the residual actor and the critics (``lr``), over the context
    encoder and decoder (``ctx_lr``); gradient clipping of every step; transitions (windows) per update."""

    lr: float = 3e-4
    ctx_lr: float = 3e-4
    grad_clip: float = 20.0
    batch_size: int = 256

    def __post_init__(self) -> None:
        checks = {"lr": self.lr > 0, "ctx_lr": self.ctx_lr > 0, "batch_size": self.batch_size >= 1}
        check_fields(self, checks, "optimiser setting", "learning rates > 0, batch_size >= 1")

    def actor_critic(self) -> OptimConfig:
        """The :class:`agents.common.OptimConfig` that :class:`agents.td3.TD3` reads (``lr``, ``grad_clip``)."""
        return OptimConfig(lr=self.lr, grad_clip=self.grad_clip, batch_size=self.batch_size)


@dataclass
class OfflineToOnlineConfig:
    """Offline-to-online, composed of its parts' configs (``agent``, ``configs/agent/offline_to_online.yaml``).

    Attributes:
        base_checkpoint: run dir (or checkpoint dir) of an ``experiment=offline_meta`` run. Read by the builder
            (:func:`training.setup.build_agent`) when a run starts; a checkpoint of this agent carries the base
            policy itself, so evaluation and resume never read it again.
        mode: ``residual`` (frozen base + context-conditioned residual) or ``finetune`` (plain fine-tuning).
        residual: the residual actor (``mode=residual``).
        context: the online context encoder, its window and its dynamics decoder (``mode=residual``).
        actor_critic: the critics and the residual's TD3 settings (``mode=residual``; finetune keeps the offline
            run's TD3).
        optim: learning rates, gradient clipping, batch size.
        exploration: noise of the executed training actions (both modes).
        bc_alpha: ``mode=finetune``: TD3+BC's alpha online (``None``: the offline run's; 0: pure TD3).
    """

    base_checkpoint: str | None = None
    mode: str = "residual"
    residual: ResidualConfig = field(default_factory=ResidualConfig)
    context: OnlineContextConfig = field(default_factory=OnlineContextConfig)
    actor_critic: ActorCriticConfig = field(
        default_factory=lambda: ActorCriticConfig(mlp_dims=[256, 256], num_critics=2, noise_clip=0.5)
    )
    optim: OnlineOptimConfig = field(default_factory=OnlineOptimConfig)
    exploration: ExplorationConfig = field(
        default_factory=lambda: ExplorationConfig(std_start=0.1, std_end=0.1, episodes=0)
    )
    bc_alpha: float | None = None

    def __post_init__(self) -> None:
        checks = {
            "mode": self.mode in MODES,
            "bc_alpha": self.bc_alpha is None or self.bc_alpha >= 0,
            "actor_critic.nstep": self.actor_critic.nstep == 1,
        }
        check_paths(
            self, checks, "offline-to-online setting", f"mode in {MODES}; bc_alpha null or >= 0; actor_critic.nstep 1"
        )


def base_spec(base: MetaRLAgent) -> dict[str, Any]:
    """What rebuilds ``base`` (with :func:`rebuild_base`): its config and task count, as plain values."""
    return {"config": dataclasses.asdict(base.cfg), "num_tasks": base.num_tasks}


def rebuild_base(spec: Mapping[str, Any], obs_dim: int, action_dim: int, device: torch.device) -> MetaRLAgent:
    """The offline :class:`MetaRLAgent` described by ``spec`` (:func:`base_spec`; e.g. from this agent's state), with
    fresh weights: loading this agent's state dict then restores the parts it uses (normaliser, actor, critics)."""
    cfg = build_config(MetaRLConfig, spec["config"], "base agent")
    return MetaRLAgent(obs_dim, action_dim, cfg, device, num_tasks=int(spec["num_tasks"]))


class BasePolicy(nn.Module):
    """The offline actor acting with the prior representation: ``a_b = tanh(pi_off([norm(s), 0]))``."""

    def __init__(self, actor: nn.Module, z_dim: int) -> None:
        super().__init__()
        self.actor = actor
        self.z_dim = z_dim

    def forward(self, s: Tensor) -> Tensor:
        prior = s.new_zeros(*s.shape[:-1], self.z_dim)
        return torch.tanh(self.actor(torch.cat([s, prior], -1)))


class ResidualPolicy(nn.Module):
    """``a = clip(a_b(s) + beta tanh(R([s, z, a_b(s)])), -1, 1)`` on ``x = [s, z]`` (module docstring)."""

    def __init__(self, base: BasePolicy, obs_dim: int, z_dim: int, action_dim: int, cfg: OfflineToOnlineConfig):
        super().__init__()
        self.base = base
        self.obs_dim = obs_dim
        self.scale = cfg.residual.scale
        self.residual = mlp(obs_dim + z_dim + action_dim, cfg.actor_critic.mlp_dims, action_dim)
        with torch.no_grad():  # a no-op residual at the start: the online run starts from the offline policy
            self.residual[-1].weight.zero_()
            self.residual[-1].bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        a_base = self.base(x[..., : self.obs_dim])
        delta = torch.tanh(self.residual(torch.cat([x, a_base], -1)))
        return (a_base + self.scale * delta).clamp(-1.0, 1.0)


class ResidualTD3(TD3):
    """TD3 (its critic/actor update unchanged) whose actor is the composite :class:`ResidualPolicy`."""

    def __init__(self, base: BasePolicy, obs_dim: int, z_dim: int, action_dim: int, cfg: OfflineToOnlineConfig):
        super().__init__(obs_dim + z_dim, action_dim, cfg.actor_critic, cfg.optim.actor_critic())
        base.requires_grad_(cfg.residual.finetune_base)
        self.actor = ResidualPolicy(base, obs_dim, z_dim, action_dim, cfg)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        groups = [{"params": list(self.actor.residual.parameters()), "lr": cfg.optim.lr}]
        if cfg.residual.finetune_base:
            groups.append({"params": list(base.parameters()), "lr": cfg.residual.base_lr})
        self.actor_opt = torch.optim.Adam(groups)

    def pi(self, z: Tensor, target: bool = False) -> Tensor:
        return (self.actor_target if target else self.actor)(z)

    def _subset(self) -> Tensor:
        # TD3 finds the device through ``actor[0]``, a plain MLP's first layer; the composite actor is no Sequential
        device = self.actor.residual[0].weight.device
        return torch.randperm(self.cfg.num_critics, device=device)[: self.cfg.q_sample_size]


class OfflineToOnlineAgent:
    """Residual + context adaptation of an offline policy, or plain fine-tuning of it (module docstring).

    Acting keeps a rolling window of the agent's own last ``K`` transitions ``(s, a, s')`` of the current
    episode (emptied by :meth:`begin_episode`); each :meth:`act` call first closes the previous transition
    with the new observation.
    """

    def __init__(
        self, obs_dim: int, action_dim: int, cfg: OfflineToOnlineConfig, device: torch.device, *, base: MetaRLAgent
    ) -> None:
        if (base.obs_dim, base.action_dim) != (obs_dim, action_dim):
            raise ValueError(
                f"the base policy acts on obs_dim={base.obs_dim}, action_dim={base.action_dim}; this env has "
                f"obs_dim={obs_dim}, action_dim={action_dim} (is the base a run on this env's family?)"
            )
        self.cfg = cfg
        self.device = torch.device(device)
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.base_spec = base_spec(base)  # saved with the state: checkpoints rebuild the base without its run
        base.nets.to(self.device)
        self.norm: Normalizer = base.norm  # the offline data's statistics, fixed online
        self.base_z_dim = base.z_dim
        self.encoder: ContextEncoder | None = None
        self.decoder: nn.Module | None = None
        self.ctx_opt: torch.optim.Optimizer | None = None
        if cfg.mode == "finetune":
            self.td3: TD3 = base.td3
            if cfg.bc_alpha is not None:
                self.td3.bc_alpha = cfg.bc_alpha
            self.z_dim = 0
            modules: dict[str, nn.Module] = {"norm": self.norm, "td3": self.td3}
            self.sample_horizon = 1
        else:
            self.z_dim = cfg.context.z_dim
            self.encoder = ContextEncoder(obs_dim, action_dim, cfg.context)
            self.decoder = mlp(obs_dim + action_dim + self.z_dim, cfg.context.decoder_mlp_dims, obs_dim)
            self.td3 = ResidualTD3(BasePolicy(base.td3.actor, base.z_dim), obs_dim, self.z_dim, action_dim, cfg)
            modules = {"norm": self.norm, "td3": self.td3, "encoder": self.encoder, "decoder": self.decoder}
            self.sample_horizon = cfg.context.context_size + 1
        self.nets = nn.ModuleDict(modules).to(self.device)
        if self.encoder is not None:
            params = [*self.encoder.parameters(), *self.decoder.parameters()]
            self.ctx_opt = torch.optim.Adam(params, lr=cfg.optim.ctx_lr)
        self.episode = 0
        self.num_updates = 0
        self.window: deque[tuple[Tensor, Tensor, Tensor, Tensor]] = deque(
            maxlen=cfg.context.context_size
        )  # (s, a, r, s')
        self._pending: tuple[Tensor, Tensor, Tensor] | None = None  # (s_t, a_t, r_t) waiting for s_{t+1}

    # -- context ---------------------------------------------------------------------------------
    def _features(self, s: Tensor, a: Tensor, r: Tensor, s_next: Tensor) -> Tensor:
        """Context features of normalised transitions ``(s, a, r, s')``."""
        assert self.encoder is not None
        return self.encoder.features(s, a, r, s_next)

    def context_z(self) -> Tensor:
        """``z`` of the current rolling window (``0`` while it is empty)."""
        if self.encoder is None:
            return torch.zeros(0, device=self.device)
        if not self.window:
            return torch.zeros(self.z_dim, device=self.device)
        s, a, r, s_next = (torch.stack(x) for x in zip(*self.window))
        return self.encoder(self._features(s, a, r, s_next))

    # -- acting ----------------------------------------------------------------------------------
    def begin_episode(self, episode: int) -> None:
        self.episode = episode
        self.window.clear()  # a new episode may have new dynamics: the old context says nothing about them
        self._pending = None

    def _input(self, s: Tensor, z: Tensor) -> Tensor:
        if self.cfg.mode == "finetune":
            return torch.cat([s, s.new_zeros(self.base_z_dim)], -1)
        return torch.cat([s, z], -1)

    @torch.no_grad()
    def act(self, obs: np.ndarray, *, eval_mode: bool, step: int) -> np.ndarray:
        s = self.norm.obs(torch.as_tensor(obs, dtype=torch.float32, device=self.device))
        if self._pending is not None and self.encoder is not None:  # finetune mode keeps no context
            self.window.append((*self._pending, s))
        a = self.td3.pi(self._input(s, self.context_z())[None])
        if not eval_mode:  # this config's schedule in both modes (finetune's TD3 carries the offline config)
            a = self.td3.add_exploration_noise(a, self.cfg.exploration.std(self.episode))
        self._pending = (s, a[0], s.new_zeros(()))  # the reward arrives with observe
        return a[0].cpu().numpy()

    def act_info(self) -> dict[str, float]:
        return {}

    def observe(self, reward: float) -> None:
        if self._pending is not None:
            s, a, _ = self._pending
            self._pending = (s, a, torch.tensor(float(reward), device=self.device))

    # -- learning --------------------------------------------------------------------------------
    def update(self, batch: TensorDict) -> dict[str, float]:
        if self.cfg.mode == "finetune":
            return self._update_finetune(batch.to(self.device))
        return self._update_residual(batch.to(self.device))

    def _update_finetune(self, batch: TensorDict) -> dict[str, float]:
        obs = self.norm.obs(batch["obs"])  # [B, 2, D]
        prior = obs.new_zeros(obs.shape[0], self.base_z_dim)
        x, x_next = torch.cat([obs[:, 0], prior], -1), torch.cat([obs[:, 1], prior], -1)
        discount = self.cfg.actor_critic.gamma * (1.0 - batch["terminated"][:, 0])
        metrics = self.td3.update(x, batch["action"][:, 0], batch["reward"][:, 0], discount, x_next)
        self.num_updates += 1
        return metrics

    def window_z(self, obs: Tensor, action: Tensor, reward: Tensor, j: Tensor) -> tuple[Tensor, Tensor]:
        """``(z_j, sg(z_{j+1}))`` at positions ``j [B]`` of windows ``obs [B, K+2, D]`` (normalised), ``action``
        ``[B, K+1, A]`` and ``reward [B, K+1]``.

        ``z_j`` encodes the window's transitions ``0..j-1``; ``z_{j+1}`` its last ``min(j + 1, K)`` up to ``j``
        (module docstring): for ``j = K`` exactly the contexts :meth:`act` had at those two steps.
        """
        assert self.encoder is not None
        K = self.cfg.context.context_size
        feats = self._features(obs[:, :-1], action, reward, obs[:, 1:])  # [B, K+1, F]: transition i of the window
        slots = torch.arange(K, device=obs.device)[None]
        z = self.encoder(feats[:, :K], slots < j[:, None])
        with torch.no_grad():
            shift = (j == K).long()  # at j = K the next context drops the window's first transition
            idx = (slots + shift[:, None])[..., None].expand(-1, -1, feats.shape[-1])
            z_next = self.encoder(feats.gather(1, idx), slots < (j + 1).clamp(max=K)[:, None])
        return z, z_next

    def _update_residual(self, batch: TensorDict) -> dict[str, float]:
        """Context encoder + decoder step, then one TD3 step at a random window position (module docstring)."""
        assert self.encoder is not None and self.decoder is not None and self.ctx_opt is not None
        c = self.cfg
        K = c.context.context_size
        obs = self.norm.obs(batch["obs"])  # [B, K+2, D]
        act, rew, term = batch["action"], batch["reward"], batch["terminated"]  # [B, K+1, ...]
        B = obs.shape[0]
        rows = torch.arange(B, device=obs.device)
        j = torch.randint(0, K + 1, (B,), device=obs.device)  # trained position
        z, z_next = self.window_z(obs, act, rew, j)
        s_j, s_next, a_j = obs[rows, j], obs[rows, j + 1], act[rows, j]
        pred = self.decoder(torch.cat([s_j, a_j, z], -1))
        dyn_loss = F.mse_loss(pred, s_next - s_j)
        metrics = {
            "dynamics_loss": dyn_loss.item(),
            "context_grad_norm": optimizer_step(
                "dynamics_loss", dyn_loss, self.ctx_opt, self.ctx_opt.param_groups[0]["params"], c.optim.grad_clip
            ),
        }
        z = z.detach()  # the RL losses see sg(z): the encoder is trained by the decoder alone
        x, x_next = torch.cat([s_j, z], -1), torch.cat([s_next, z_next], -1)
        discount = c.actor_critic.gamma * (1.0 - term[rows, j])
        metrics.update(self.td3.update(x, a_j, rew[rows, j], discount, x_next))
        metrics["z_norm"] = z.norm(dim=-1).mean().item()
        self.num_updates += 1
        return metrics

    # -- the rest of the Agent contract -------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.cfg.optim.batch_size

    def num_params(self) -> int:
        """Trained parameters (the frozen base actor and the target networks excluded)."""
        return sum(p.numel() for p in self.nets.parameters() if p.requires_grad)

    def diagnostics(self, obs: Tensor) -> dict[str, float]:
        return {}

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything a run needs to go on, the base policy included: its weights are in ``nets`` (the normaliser and
        the actor, in finetune mode the whole TD3) and ``base`` (:func:`base_spec`) rebuilds its modules, so a
        checkpoint of this agent does not need the offline run any more (:func:`rebuild_base`)."""
        return {
            "base": self.base_spec,
            "nets": self.nets.state_dict(),
            "td3": self.td3.extra_state(),
            "ctx_opt": None if self.ctx_opt is None else self.ctx_opt.state_dict(),
            "num_updates": self.num_updates,
            "episode": self.episode,
        }

    def load_state_dict(self, state: dict) -> None:
        self.nets.load_state_dict(state["nets"])
        self.td3.load_extra_state(state["td3"])
        if self.ctx_opt is not None:
            self.ctx_opt.load_state_dict(state["ctx_opt"])
        self.num_updates = int(state["num_updates"])
        self.episode = int(state["episode"])


__all__ = [
    "MODES",
    "BasePolicy",
    "OfflineToOnlineAgent",
    "OfflineToOnlineConfig",
    "ResidualPolicy",
    "OnlineContextConfig",
    "OnlineOptimConfig",
    "ResidualConfig",
    "ResidualTD3",
    "base_spec",
    "rebuild_base",
]
