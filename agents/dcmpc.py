"""DC-MPC: MPPI planning over a latent world model with a TD3 critic ensemble and policy prior
(Scannell et al., ICLR 2025).

* World model: any :class:`world_models.WorldModel` that predicts rewards, built by name from the
  ``world_model`` config (the paper's: :class:`world_models.dcwm.DCWorldModel`, FSQ codes with categorical
  dynamics), trained by AdamW on its own loss only.
* Critic and policy prior: TD3 (:mod:`agents.td3`) on the *detached* latents: value learning never shapes
  the representation. With a world model that builds state over a window (KLA's burn-in), TD3 learns on the
  latents at window positions ``0`` and ``n`` after the model's ``window_offset``.
* Acting: :class:`agents.planning.MPPIPlanner` over the model's planning transition, scoring a sequence by::

      J = Σ_{h<H} ρ^h R(z_h, a_h) + ρ^H · mean_{k∈M} Q_k(z_H, π(z_H)) (+ κ Σ_{h<H} ρ^h u(z_h, a_h))

  with ``M`` = 2 random online critics of 5 and ``u`` the world model's ``uncertainty``: κ = +``planner.optimism``
  in training, −``planner.caution`` in evaluation (0 by default). With ``planner.prior_fallback`` an evaluation
  step acts with π when π's own rollout is less uncertain than the plan. Evaluation reports the mean ``u`` along
  each executed plan (:meth:`DCMPCAgent.act_info`). The latent of the current observation comes from the world
  model's ``observe``, whose state (a filter's belief) is carried across an episode. During training the
  executed action gets exploration noise ``N(0, σ_t²)``, ``σ_t`` linear 1.0 -> 0.1 over
  ``exploration.episodes`` episodes; every policy-prior trajectory in the planner carries its own σ_t noise.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict
from torch import Tensor, nn

from agents.common import ExplorationConfig, OptimConfig, optimizer_step
from agents.planning import MPPIConfig, MPPIPlanner, rollout_uncertainty
from agents.td3 import TD3, ActorCriticConfig, LatentTD3Agent, nstep_targets
from common.config import check_fields
from world_models import WorldModel, make_world_model, world_model_config

__all__ = ["DCMPCConfig", "DCMPCAgent", "PLAN_MODES"]

PLAN_MODES = ("mppi", "policy")


@dataclass
class DCMPCConfig:
    """DC-MPC, composed of its parts' configs (``agent`` in the composed config, ``configs/agent/dcmpc.yaml``).

    Attributes:
        world_model: the world model's config (``world_model=<name>``; the paper's is ``dcwm``). A mapping
            is built into the named model's config class.
        actor_critic: TD3 critic ensemble and policy prior.
        planner: MPPI settings.
        optim: optimisers and batch size.
        exploration: σ_t schedule of the executed training actions.
        plan_mode: ``"mppi"`` (plan: DC-MPC) or ``"policy"`` (act with the policy prior alone: the baseline
            of paired planner-vs-prior evaluations, ``eval.py ... +agent.plan_mode=policy``).
        compile_planner: wrap the planner's rollout (``estimate_value``) in ``torch.compile`` (speed only).
    """

    world_model: Any = field(default_factory=lambda: {"name": "dcwm"})
    actor_critic: ActorCriticConfig = field(default_factory=ActorCriticConfig)
    planner: MPPIConfig = field(default_factory=MPPIConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(batch_size=512))
    exploration: ExplorationConfig = field(default_factory=ExplorationConfig)
    plan_mode: str = "mppi"
    compile_planner: bool = False

    def __post_init__(self) -> None:
        if not dataclasses.is_dataclass(self.world_model):
            self.world_model = world_model_config(self.world_model, "world_model")
        check_fields(self, {"plan_mode": self.plan_mode in PLAN_MODES}, "DC-MPC setting", f"plan_mode in {PLAN_MODES}")


class DCMPCPlanningModel:
    """The :class:`agents.planning.PlanningModel` view of a DC-MPC agent (called under no_grad).

    ``next``, ``reward``, ``uncertainty``: the world model's; ``value(z) = mean_{k∈M} Q_k(z, π(z))`` with 2 random
    online critics; ``policy(z) = clamp(π(z) + σ·ε)``, ``ε ~ N(0, I)`` drawn per row, so every prior trajectory
    explores differently. ``prior_std`` is set by the agent before each plan.
    """

    def __init__(self, wm: WorldModel, td3: TD3) -> None:
        self.wm = wm
        self.td3 = td3
        self.prior_std = 0.0

    def next(self, z: Tensor, a: Tensor) -> Tensor:
        return self.wm.next(z, a)

    def reward(self, z: Tensor, a: Tensor) -> Tensor:
        return self.wm.reward(z, a)

    def uncertainty(self, z: Tensor, a: Tensor) -> Tensor:
        return self.wm.uncertainty(z, a)

    def next_and_uncertainty(self, z: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
        both = getattr(self.wm, "next_and_uncertainty", None)
        return both(z, a) if both is not None else (self.wm.next(z, a), self.wm.uncertainty(z, a))

    def value(self, z: Tensor) -> Tensor:
        return self.td3.q_mean_random(z, self.td3.pi(z))

    def policy(self, z: Tensor) -> Tensor:
        a = self.td3.pi(z)
        if self.prior_std > 0:
            a = (a + self.prior_std * torch.randn_like(a)).clamp(-1.0, 1.0)  # [N, A]: one noise row per trajectory
        return a


class DCMPCAgent(LatentTD3Agent):
    """DC-MPC: a world model + TD3 critic ensemble and policy prior + MPPI (see the module docstring)."""

    def __init__(self, obs_dim: int, action_dim: int, cfg: DCMPCConfig, device: torch.device) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.wm = make_world_model(cfg.world_model, obs_dim, action_dim)
        if not self.wm.predicts_reward:
            raise ValueError(f"world_model.name={cfg.world_model.name!r} predicts no reward; DC-MPC plans with one")
        self.td3 = TD3(self.wm.latent_dim, action_dim, cfg.actor_critic, cfg.optim)
        self.nets = nn.ModuleDict({"wm": self.wm, "td3": self.td3}).to(self.device)
        # Only the world-model loss trains the encoder; TD3 sees detached latents.
        self.wm_opt = torch.optim.AdamW(
            self.wm.parameters(), lr=cfg.optim.wm_lr, weight_decay=cfg.optim.wm_weight_decay
        )
        self.planner = MPPIPlanner(cfg.planner, action_dim, self.device)
        self.planning_model = DCMPCPlanningModel(self.wm, self.td3)
        probe = self.wm.uncertainty(
            torch.zeros(1, self.wm.latent_dim, device=self.device), torch.zeros(1, action_dim, device=self.device)
        )
        self.has_uncertainty = probe is not None
        if cfg.planner.uses_uncertainty and not self.has_uncertainty:
            used = {k: getattr(cfg.planner, k) for k in ("optimism", "caution", "prior_fallback")}
            raise ValueError(
                f"agent.planner settings {used} need a world model with an uncertainty estimate; "
                f"world_model={cfg.world_model.name!r} reports none (set world_model.uncertainty.estimator for "
                "dcwm, or turn them off)"
            )
        self._act_info: dict[str, float] = {}
        if cfg.compile_planner:
            # The rollout (H model steps on (S+P) rows) is where planning time goes; plan() itself has
            # data-dependent control flow and stays eager.
            self.planner.estimate_value = torch.compile(self.planner.estimate_value, dynamic=False)
        self.sample_horizon = max(self.wm.window_length, self.wm.window_offset + cfg.actor_critic.nstep)
        self.episode = 0
        # The world model's carried state of the ongoing episode, one slot per eval_mode like the planner's.
        self.wm_state: dict[bool, Any] = {False: None, True: None}

    def begin_episode(self, episode: int) -> None:
        """Set the episode counter (drives σ_t), forget the planner's warm start and the world-model state."""
        self.episode = episode
        self.planner.reset()
        self.wm_state = {False: None, True: None}

    @torch.no_grad()
    def act(self, obs: np.ndarray, *, eval_mode: bool, step: int) -> np.ndarray:
        """Plan (or, with ``plan_mode="policy"``, use π) from one observation; add σ_t noise in training."""
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=self.device).reshape(1, -1)
        z, self.wm_state[eval_mode] = self.wm.observe(obs_t, self.wm_state[eval_mode])
        std = self.explore_std()
        if self.cfg.plan_mode == "policy":
            a = self.td3.pi(z)
        else:
            # Prior trajectories carry σ_t noise in training and evaluation alike: it keeps them distinct.
            self.planning_model.prior_std = std
            a = self.planner.plan(z, self.planning_model, eval_mode=eval_mode)
            if eval_mode and self.has_uncertainty:
                a = self._check_plan_uncertainty(z, a)
        if not eval_mode:
            a = self.td3.add_exploration_noise(a, std)
        return a[0].cpu().numpy()

    def _check_plan_uncertainty(self, z: Tensor, a: Tensor) -> Tensor:
        """Record the mean uncertainty along the executed plan; with ``prior_fallback``, act with π instead when
        π's noise-free rollout is less uncertain than the plan."""
        u_plan = float(rollout_uncertainty(z, self.planner.last_plan, self.planning_model).mean())
        info = {"plan_uncertainty": u_plan}
        if self.cfg.planner.prior_fallback:
            prior_plan, zh = [], z
            for h in range(self.cfg.planner.horizon):
                prior_plan.append(self.td3.pi(zh))
                if h < self.cfg.planner.horizon - 1:
                    zh = self.wm.next(zh, prior_plan[-1])
            u_prior = float(rollout_uncertainty(z, torch.stack(prior_plan, 1), self.planning_model).mean())
            use_prior = u_prior < u_plan
            info = {"plan_uncertainty": min(u_plan, u_prior), "prior_fallback": float(use_prior)}
            if use_prior:
                a = prior_plan[0]
        self._act_info = info
        return a

    def act_info(self) -> dict[str, float]:
        """What the latest evaluation ``act`` measured: ``plan_uncertainty`` (mean world-model uncertainty along
        the executed plan) and, with ``prior_fallback``, whether it acted with π (1) or the plan (0). Empty
        when the world model has no estimate or the agent acts with π alone."""
        return dict(self._act_info)

    def update(self, batch: TensorDict) -> dict[str, float]:
        """One world-model step, then one TD3 step on the updated model's detached latents."""
        batch = batch.to(self.device)
        wm_loss, metrics = self.wm.loss(batch)
        metrics["wm_grad_norm"] = optimizer_step(
            "wm_loss", wm_loss, self.wm_opt, self.wm.parameters(), self.cfg.optim.grad_clip
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

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.planner.reset()
        self.wm_state = {False: None, True: None}
