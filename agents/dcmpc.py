"""DC-MPC: MPPI planning over a Discrete Codebook World Model (Scannell et al., ICLR 2025).

* Representation + model: :class:`world_models.dcwm.DCWorldModel` (encoder -> FSQ codes, categorical
  dynamics trained by cross-entropy against the online encoder's next codes, reward head), trained by
  AdamW on the world-model loss only.
* Critic and policy prior: TD3 (:mod:`agents.td3`) on the *detached* codes ``z = FSQ(e(o))``: value
  learning never shapes the representation.
* Acting: :class:`agents.planning.MPPIPlanner` over expected-code rollouts (``plan_code``), scoring a sequence by::

      J = Σ_{h<H} ρ^h R(c_h, a_h) + ρ^H · mean_{k∈M} Q_k(c_H, π(c_H)),   c_{h+1} = E[c' | c_h, a_h]

  with ``M`` = 2 random online critics of 5. During training the executed action gets exploration
  noise ``N(0, σ_t²)``, ``σ_t`` linear 1.0 -> 0.1 over ``explore_episodes`` episodes.

Differences from the public code (fact sheet §8), on purpose: every policy-prior trajectory draws its
own noise (fault 6: the code broadcasts one noise vector, making all 24 prior trajectories identical;
``repeat_prior=True`` reproduces that);
the terminal action ``π(c_H)`` is noiseless (as in the paper's equation; the code adds σ_t noise);
n-step targets keep γ for n = 1 and handle terminations (faults 3, 4, via :func:`agents.td3.nstep_targets`);
all optimiser states and the episode counter (which sets σ_t) are checkpointed (faults 1, 10).

Early in training the planner can be worse than its own policy prior; what limits it is how far the world
model lags behind the actor, not the planner. Measured at the CPU ("small") size on dmc/cartpole-balance after
20k env steps with the paper's ``enc_lr`` 1e-4, evaluating the *same* weights with ``plan_mode`` switched: prior
689, MPPI 323; MPPI with horizon 1: 555; sampling the first action by ``Q(c_0, a)`` alone (no model rollout):
729. After 4000 extra world-model-only updates on that run's replay buffer (critics and actor untouched) the same
planner scores 891 (lr 1e-4) and 993 (lr 3e-4). The small preset therefore trains the world model at 3e-4
(``${sized:1e-4,3e-4}``): a fresh 20k-step run then evaluates at 704 with MPPI (published DC-MPC at 25k: 713),
while its prior, trained on the planner's data, scores 997. ``plan_mode: policy`` acts with the prior alone.

World model switch (``world_model``): ``"dcwm"`` (above) or ``"kla"``, the belief-state world model
:class:`world_models.kla.KLABeliefWorldModel`: the latent is ``z = [μ ‖ log P]`` of a Kalman belief filtered
over the episode's observations. Acting then carries the filter state across the steps of an episode (reset
in :meth:`DCMPCAgent.begin_episode`), updates sample windows of ``burn_in + max(horizon, nstep)`` transitions
and TD3 learns on the beliefs at window positions ``burn_in`` and ``burn_in + nstep``. Critic, actor and
MPPI are the shared ones; ``uncertainty_coef`` (κ) adds ``κ Σ ρ^h u(z_h, a_h)`` to J, ``u`` the model's
predicted next belief variance (kla only).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import torch
from tensordict import TensorDict
from torch import Tensor, nn

from agents.common import optimizer_step
from agents.planning import MPPIConfig, MPPIPlanner
from agents.td3 import TD3, LatentTD3Agent, TD3Config, nstep_targets
from common.config import check_fields
from world_models.dcwm import DCWMConfig, DCWorldModel
from world_models.kla.belief import BeliefState, KLABeliefConfig, KLABeliefWorldModel

__all__ = ["DCMPCConfig", "DCMPCAgent", "PLAN_MODES", "PLAN_VALUES", "WORLD_MODELS"]

PLAN_MODES = ("mppi", "policy")
PLAN_VALUES = ("mean", "min")
WORLD_MODELS = ("dcwm", "kla")
PLANNER_KEYS = {
    "plan_horizon": "horizon",
    "iterations": "iterations",
    "num_samples": "num_samples",
    "num_elites": "num_elites",
    "num_pi_trajs": "num_pi_trajs",
    "repeat_prior": "repeat_prior",
    "min_std": "min_std",
    "max_std": "max_std",
    "eval_max_std": "eval_max_std",
    "eval_num_samples": "eval_num_samples",
    "temperature": "temperature",
    "plan_discount": "discount",
    "use_mppi_mean": "use_mean",
    "uncertainty_coef": "uncertainty_coef",
}
"""DC-MPC's flat planner keys -> :class:`agents.planning.MPPIConfig` fields."""


@dataclass
class DCMPCConfig(DCWMConfig, TD3Config):
    """All DC-MPC hyperparameters: world model (``DCWMConfig``) + actor-critic (``TD3Config``) + planner.

    Planner keys are flat (``plan_*`` where a name would clash with the world model's ``horizon``)
    and map one-to-one onto :class:`agents.planning.MPPIConfig` (see :meth:`mppi_config`):

    ================ ================== ============= =================
    key              MPPIConfig field   key           MPPIConfig field
    ================ ================== ============= =================
    plan_horizon     horizon            min_std       min_std
    iterations       iterations         max_std       max_std
    num_samples      num_samples        temperature   temperature
    num_elites       num_elites         plan_discount discount (ρ in J)
    num_pi_trajs     num_pi_trajs       use_mppi_mean use_mean
    eval_max_std     eval_max_std       repeat_prior  repeat_prior
    eval_num_samples eval_num_samples
    ================ ================== ============= =================

    ``plan_mode``: ``"mppi"`` (plan, the DC-MPC agent) or ``"policy"`` (act with the TD3 policy prior
    alone, no planning: for speed comparisons and ablations).
    ``prior_act_steps``: training acts with the policy prior alone (plus σ_t noise) before this env step, and
    plans after it (0, the paper's: plans from the first step after seeding); evaluation is not affected.
    ``plan_value``: the terminal value over the ``q_sample_size`` random critics, ``"mean"`` (the paper's) or
    ``"min"`` (pessimistic, like the TD target: the search over many sampled sequences then exploits critic
    errors less; measured on reacher-easy, README "Measured results").
    ``compile_planner``: wrap the planner's rollout (``estimate_value``) in ``torch.compile``.
    ``uncertainty_coef``: MPPIConfig's ``uncertainty_coef`` (κ; needs ``world_model="kla"`` when non-zero).

    ``world_model``: ``"dcwm"`` or ``"kla"`` (configs/world_model/). The KLA belief model reads the fields of
    :class:`world_models.kla.KLABeliefConfig` by name (:meth:`belief_config`): the shared ``enc_mlp_dims``,
    ``dyn_mlp_dims``, ``reward_mlp_dims``, ``horizon``, ``rho``, ``consistency_coef``, ``reward_coef``,
    ``reward_bound`` and its own ``belief_*``, ``burn_in``, ``random_burn_in``, ``obs_coef``, ``dec_mlp_dims``,
    ``filter_backend``.
    """

    # world-model optimiser (AdamW over encoder, dynamics and reward head)
    enc_lr: float = 1e-4
    enc_weight_decay: float = 0.01  # torch's AdamW default, which the public code uses
    batch_size: int = 512  # the paper's; overrides TD3Config's 256
    # planner
    plan_mode: str = "mppi"
    prior_act_steps: int = 0
    plan_value: str = "mean"
    # the planner's keys and defaults are MPPIConfig's (PLANNER_KEYS), which also validates them
    plan_horizon: int = MPPIConfig.horizon
    iterations: int = MPPIConfig.iterations
    num_samples: int = MPPIConfig.num_samples
    num_elites: int = MPPIConfig.num_elites
    num_pi_trajs: int = MPPIConfig.num_pi_trajs
    repeat_prior: bool = MPPIConfig.repeat_prior
    min_std: float = MPPIConfig.min_std
    max_std: float = MPPIConfig.max_std
    eval_max_std: float | None = MPPIConfig.eval_max_std
    eval_num_samples: int | None = MPPIConfig.eval_num_samples
    temperature: float = MPPIConfig.temperature
    plan_discount: float = MPPIConfig.discount
    use_mppi_mean: bool = MPPIConfig.use_mean
    uncertainty_coef: float = MPPIConfig.uncertainty_coef
    compile_planner: bool = False
    # world model: dcwm | kla; the belief model's own keys (defaults: KLABeliefConfig's)
    world_model: str = "dcwm"
    belief_lanes: int = KLABeliefConfig.belief_lanes
    burn_in: int = KLABeliefConfig.burn_in
    random_burn_in: bool = KLABeliefConfig.random_burn_in
    belief_dt_min: float = KLABeliefConfig.belief_dt_min
    belief_dt_max: float = KLABeliefConfig.belief_dt_max
    belief_p_init: float = KLABeliefConfig.belief_p_init
    belief_min_obs_var: float = KLABeliefConfig.belief_min_obs_var
    obs_coef: float = KLABeliefConfig.obs_coef
    dec_mlp_dims: list[int] = field(default_factory=lambda: list(KLABeliefConfig().dec_mlp_dims))
    filter_backend: str = KLABeliefConfig.filter_backend

    def __post_init__(self) -> None:
        TD3Config.__post_init__(self)
        DCWMConfig.__post_init__(self)
        if self.world_model not in WORLD_MODELS:
            raise ValueError(f"invalid DC-MPC hyperparameter world_model={self.world_model!r}; one of {WORLD_MODELS}")
        if self.plan_code != "expected" and self.world_model != "dcwm":
            raise ValueError(
                f"invalid DC-MPC hyperparameter plan_code={self.plan_code!r}: only world_model=dcwm plans over "
                f"codes (world_model={self.world_model!r}); set it to 'expected'"
            )
        if self.code_locality is not None and self.world_model != "dcwm":
            raise ValueError(
                f"invalid DC-MPC hyperparameter code_locality={self.code_locality}: only world_model=dcwm has code "
                f"dynamics (world_model={self.world_model!r}); set it to null"
            )
        if self.uncertainty_coef != 0 and self.world_model != "kla":
            raise ValueError(
                f"invalid DC-MPC hyperparameter uncertainty_coef={self.uncertainty_coef}: only world_model=kla "
                f"exposes a model uncertainty (world_model={self.world_model!r}); set it to 0"
            )
        # the belief keys are validated whichever world model is selected: a bad value is an error even unused
        self.belief_config()  # validates the belief keys (errors name them)
        checks = {
            "enc_lr": self.enc_lr > 0,
            "enc_weight_decay": self.enc_weight_decay >= 0,
            "plan_mode": self.plan_mode in PLAN_MODES,
            "prior_act_steps": self.prior_act_steps >= 0,
            "plan_value": self.plan_value in PLAN_VALUES,
        }
        check_fields(
            self,
            checks,
            "DC-MPC hyperparameter",
            f"plan_mode in {PLAN_MODES}; plan_value in {PLAN_VALUES}; enc_lr > 0; prior_act_steps >= 0",
        )
        try:
            self.mppi_config()
        except ValueError as e:  # MPPIConfig's message, with this config's key names
            msg = str(e)
            for key, name in PLANNER_KEYS.items():
                msg = msg.replace(f"MPPIConfig.{name} ", f"{key} ")
            raise ValueError(f"invalid DC-MPC planner hyperparameter: {msg}") from None

    def mppi_config(self) -> MPPIConfig:
        return MPPIConfig(**{name: getattr(self, key) for key, name in PLANNER_KEYS.items()})

    def belief_config(self) -> KLABeliefConfig:
        """The KLA belief world model's config: its fields read by name from this config."""
        return KLABeliefConfig(**{f.name: getattr(self, f.name) for f in fields(KLABeliefConfig)})


class DCMPCPlanningModel:
    """The :class:`agents.planning.PlanningModel` view of a DC-MPC agent (called under no_grad).

    ``next``: the world model's planning transition (DCWM: expected code, or its mode with ``plan_code="mode"``);
    ``reward``: reward head; ``value(c) = mean_{k∈M} Q_k(c, π(c))`` with 2
    random online critics (``min`` with ``plan_value="min"``); ``policy(c) = clamp(π(c) + σ·ε)``,
    ``ε ~ N(0, I)`` drawn per row, so every prior trajectory explores differently. ``prior_std`` is set by
    the agent before each plan.
    """

    def __init__(self, wm: DCWorldModel | KLABeliefWorldModel, td3: TD3, plan_value: str = "mean") -> None:
        self.wm = wm
        self.td3 = td3
        self.pessimistic = plan_value == "min"
        self.prior_std = 0.0

    def next(self, z: Tensor, a: Tensor) -> Tensor:
        return self.wm.next(z, a)

    def reward(self, z: Tensor, a: Tensor) -> Tensor:
        return self.wm.reward(z, a)

    def uncertainty(self, z: Tensor, a: Tensor) -> Tensor:
        """Model uncertainty (world_model=kla: predicted next belief variance); the planner calls it only when
        ``uncertainty_coef != 0``, which the config allows only for kla."""
        return self.wm.uncertainty(z, a)

    def value(self, z: Tensor) -> Tensor:
        a = self.td3.pi(z)
        return self.td3.q_min_random(z, a) if self.pessimistic else self.td3.q_mean_random(z, a)

    def policy(self, z: Tensor) -> Tensor:
        a = self.td3.pi(z)
        if self.prior_std > 0:
            a = (a + self.prior_std * torch.randn_like(a)).clamp(-1.0, 1.0)  # [N, A]: one noise row per trajectory
        return a


class DCMPCAgent(LatentTD3Agent):
    """DC-MPC: a world model (DCWM, or the KLA belief model with ``world_model="kla"``) + TD3 critic / policy
    prior + MPPI (see the module docstring)."""

    def __init__(self, obs_dim: int, action_dim: int, cfg: DCMPCConfig, device: torch.device) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.uses_belief = cfg.world_model == "kla"
        self.wm = (
            KLABeliefWorldModel(obs_dim, action_dim, cfg.belief_config())
            if self.uses_belief
            else DCWorldModel(obs_dim, action_dim, cfg)
        )
        self.td3 = TD3(self.wm.latent_dim, action_dim, cfg)
        self.nets = nn.ModuleDict({"wm": self.wm, "td3": self.td3}).to(self.device)
        # Only the world-model loss trains the encoder; TD3 sees detached codes.
        self.wm_opt = torch.optim.AdamW(self.wm.parameters(), lr=cfg.enc_lr, weight_decay=cfg.enc_weight_decay)
        self.planner = MPPIPlanner(cfg.mppi_config(), action_dim, self.device)
        self.planning_model = DCMPCPlanningModel(self.wm, self.td3, cfg.plan_value)
        if cfg.compile_planner:
            # The rollout (H model steps on (S+P) rows) is where planning time goes; plan() itself has
            # data-dependent control flow and stays eager.
            self.planner.estimate_value = torch.compile(self.planner.estimate_value, dynamic=False)
        # The belief model's losses start after burn_in filtered steps of each window.
        self.window_offset = cfg.burn_in if self.uses_belief else 0
        self.sample_horizon = self.window_offset + max(cfg.horizon, cfg.nstep)
        self.episode = 0
        # Filter state of the ongoing episode, one slot per eval_mode like the planner's warm start.
        self.belief_state: dict[bool, BeliefState | None] = {False: None, True: None}

    def begin_episode(self, episode: int) -> None:
        """Set the episode counter (drives σ_t), forget the planner's warm start and the belief."""
        self.episode = episode
        self.planner.reset()
        self.belief_state = {False: None, True: None}

    def latent_of(self, obs: Tensor, *, eval_mode: bool) -> Tensor:
        """Latent of the current observation ``[1, O]``: DCWM's codes, or the belief after filtering it into
        the episode's carried state (O(1) per step)."""
        if not self.uses_belief:
            return self.wm.encode(obs)
        z, self.belief_state[eval_mode] = self.wm.step(obs, self.belief_state[eval_mode])
        return z

    def explore_std(self) -> float:
        return self.td3.explore_std(self.episode)

    @torch.no_grad()
    def act(self, obs: np.ndarray, *, eval_mode: bool, step: int) -> np.ndarray:
        """Plan (or, with ``plan_mode="policy"`` or in training before ``prior_act_steps``, use π) from one
        observation; add σ_t noise in training."""
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=self.device).reshape(1, -1)
        z = self.latent_of(obs_t, eval_mode=eval_mode)
        std = self.explore_std()
        if self.cfg.plan_mode == "policy" or (not eval_mode and step < self.cfg.prior_act_steps):
            a = self.td3.pi(z)
        else:
            # Prior trajectories carry σ_t noise in training and evaluation alike (as in the public code,
            # but one row each): it keeps the 24 prior sequences distinct.
            self.planning_model.prior_std = std
            a = self.planner.plan(z, self.planning_model, eval_mode=eval_mode)
        if not eval_mode:
            a = self.td3.add_exploration_noise(a, std)
        return a[0].cpu().numpy()

    def update(self, batch: TensorDict) -> dict[str, float]:
        """One world-model step, then one TD3 step on the updated encoder's detached codes."""
        batch = batch.to(self.device)
        wm_loss, metrics = self.wm.loss(batch)
        metrics["wm_grad_norm"] = optimizer_step(
            "wm_loss", wm_loss, self.wm_opt, self.wm.parameters(), self.cfg.grad_clip
        )
        n, off = self.cfg.nstep, self.window_offset
        with torch.no_grad():
            if self.uses_belief:  # beliefs filtered over the window, at positions burn_in and burn_in + n
                z_pair = self.wm.window_latents(batch["obs"], n + 1)[0][:, [0, n]]
            else:
                z_pair = self.wm.encode(batch["obs"][:, [0, n]])
            ret, discount = nstep_targets(batch["reward"][:, off:], batch["terminated"][:, off:], self.cfg.gamma, n)
        metrics.update(self.td3.update(z_pair[:, 0], batch["action"][:, off], ret, discount, z_pair[:, 1]))
        metrics["explore_std"] = self.explore_std()
        return metrics

    @torch.no_grad()
    def diagnostics(self, obs: Tensor) -> dict[str, float]:
        """DCWM: collapse measures of the codes; KLA: belief statistics."""
        if self.uses_belief:
            return self.wm.diagnostics(obs.to(self.device))
        return super().diagnostics(obs)

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.planner.reset()
        self.belief_state = {False: None, True: None}
