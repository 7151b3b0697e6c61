"""Offline meta-RL agent: TD3+BC conditioned on a task representation inferred from a few transitions.

The representation ``z`` of a task is computed from a *context* set of its transitions (see
:class:`world_models.contextual.ContextEncoder`, settings ``agent.context``). Four variants, chosen by config
(:data:`VARIANTS`; the task-representation losses' settings are ``agent.task_loss``):

| variant | ``representation`` | ``task_loss.entropy_coef`` | what trains the context encoder |
|---|---|---|---|
| (a) no task representation | ``none`` | - | nothing (the policy sees ``s`` only) |
| (b) context encoder | ``context`` | ``0`` | FOCAL distance-metric loss |
| (c) ER-TRL | ``context`` | ``> 0`` | FOCAL + entropy regulariser |
| (d) contextual world model | ``world_model`` | ``0`` (or ``> 0``) | latent consistency + reward (+ InfoNCE) |

With ``representation=world_model`` the contextual world model (``world_model=contextual``,
:class:`world_models.contextual.ContextualWorldModel`) owns the context encoder and trains it.

**FOCAL distance metric** (weight ``task_loss.focal_coef``) over the ``N = T*M`` context representations of a batch::

    L_focal = mean_{i != j, same task} ||z_i - z_j||^2 + mean_{different tasks} 1 / (||z_i - z_j||^2 + eps)

**ER-TRL entropy regulariser** (Nakhaei, Scannell, Pajarinen, AAAI 2025). A model of the behaviour policy
given the representation is fitted with ``z`` detached, and the encoder maximises that model's entropy
through ``z`` (the model's weights are frozen for this term, its gradient reaches the encoder only through
``z``). ``behaviour_model=gan`` is the paper's code: a conditional GAN ``a = G(s, z, xi)``,
``xi ~ N(0, I_20)``, against a discriminator ``D(a, s, z)`` (BCE losses, ``behaviour_updates`` G/D steps
per update). For every context ``m`` of task slot ``t`` the generated actions for that slot's batch
states ``a_hat_b = G(s_{t,b}, z_{t,m}, xi_b)`` are fitted by a Gaussian and the encoder minimises::

    L_ent = - mean_{t,m} 1/2 log det(2 pi e Sigma_{t,m}),   Sigma_{t,m} = Cov_b[a_hat_b] + 1e-5 I

``behaviour_model=gaussian`` (an addition: cheaper, no adversarial game) fits ``N(mu(s, z), sigma(s, z)^2)``
by maximum likelihood and uses ``L_ent = - mean H(a | s, z)`` per state. Since
``I(z; a | s) = H(a | s) - H(a | s, z)`` and ``H(a | s)`` is fixed by the data, raising the behaviour
entropy given ``z`` removes from ``z`` what it tells about the actions beyond the state, i.e. which policy
collected the context. (What the states alone reveal about the policy is out of its reach: when two
policies visit disjoint states, the model needs no ``z`` to tell them apart and the term has no effect.)
Weight ``task_loss.entropy_coef`` (paper: 2.5 cheetah/humanoid, 5 others); ``0`` turns the regulariser and the
behaviour model off.

**Actor-critic**: TD3+BC (Fujimoto & Gu 2021) on ``x = [norm(s), sg(z)]`` (the paper used BRAC; the
fact sheet allows any solid offline actor-critic; settings ``agent.actor_critic``, ``agent.bc_alpha``): twin
critics (the REDQ-style ensemble of :class:`agents.td3.TD3`) regress on
``y = r + gamma (1 - term) min_e Qbar_e(x', pibar(x') + eps)``, the actor maximises::

    L_actor = - lambda * mean Q(x, pi(x)) + mean ||pi(x) - a||^2,   lambda = alpha / sg(mean |Q(x, pi(x))|)

Observations are normalised with the dataset's mean and std (kept in the weights); context rewards too.
A share ``prior_prob`` of the windows is conditioned on the prior ``z = 0`` (the representation of an
empty context) instead, so that the policy also acts sensibly during the first steps of a new task,
before any context exists (the online evaluation protocol of :mod:`training.offline`).

Batches are *grouped* (:class:`training.offline.TaskSampler`): ``T`` slots, each ``B`` windows of
``H + 1`` observations and ``M`` context sets of ``K`` transitions drawn from the same task (and, with
``sampling.context_source=behaviour``, the same behaviour policy; settings ``agent.sampling``, ``B`` =
``optim.batch_size``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import reduce
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tensordict import TensorDict
from torch import Tensor, nn

from agents.common import ExplorationConfig, OptimConfig, optimizer_step
from agents.td3 import TD3, ActorCriticConfig
from common.config import check_fields, dims_ok
from common.nn import mlp
from world_models import make_world_model, world_model_config
from world_models.contextual import ContextEncoder, ContextEncoderConfig, ContextualWMConfig, ContextualWorldModel

REPRESENTATIONS = ("none", "context", "world_model")
BEHAVIOUR_MODELS = ("gan", "gaussian")
CONTEXT_SOURCES = ("task", "behaviour")
VARIANTS: dict[str, dict[str, object]] = {
    "a_none": {"representation": "none", "task_loss.entropy_coef": 0.0},
    "b_context": {"representation": "context", "task_loss.entropy_coef": 0.0},
    "c_ertrl": {"representation": "context"},
    "d_world_model": {"representation": "world_model", "task_loss.entropy_coef": 0.0},
}
"""The four variants as overrides of the ``agent`` section, dotted keys (``agent.<key>=<value>`` on the command
line; ``c_ertrl`` keeps the configured ``task_loss.entropy_coef``)."""


@dataclass
class TaskLossConfig:
    """What trains the context encoder with ``representation=context`` (``agent.task_loss``; module docstring).

    Attributes:
        focal_coef, focal_eps: weight of the FOCAL distance metric and its ``eps``.
        entropy_coef: w of the ER-TRL entropy regulariser (paper: 2.5 cheetah/humanoid, 5 others); 0 turns the
            regulariser and the behaviour model off (also with ``representation=world_model``, where it applies too).
        entropy_cov_eps: ``Sigma + eps I`` of the GAN's Gaussian fit.
        behaviour_model: ``gan`` (ER-TRL's conditional GAN) or ``gaussian`` (diagonal Gaussian, max. likelihood).
        behaviour_mlp_dims, behaviour_lr: hidden sizes and Adam learning rate of the behaviour model (GAN: beta1 0.5).
        behaviour_updates: behaviour-model steps per agent update (GAN: G/D pairs).
        gan_noise_dim: size of the GAN's noise ``xi``.
    """

    focal_coef: float = 10.0
    focal_eps: float = 0.1
    entropy_coef: float = 2.5
    entropy_cov_eps: float = 1e-5
    behaviour_model: str = "gan"
    behaviour_mlp_dims: list[int] = field(default_factory=lambda: [256, 256])
    behaviour_lr: float = 2e-4
    behaviour_updates: int = 5
    gan_noise_dim: int = 20

    def __post_init__(self) -> None:
        checks = {
            "focal_coef": self.focal_coef >= 0,
            "focal_eps": self.focal_eps > 0,
            "entropy_coef": self.entropy_coef >= 0,
            "entropy_cov_eps": self.entropy_cov_eps > 0,
            "behaviour_model": self.behaviour_model in BEHAVIOUR_MODELS,
            "behaviour_mlp_dims": dims_ok(self.behaviour_mlp_dims),
            "behaviour_lr": self.behaviour_lr > 0,
            "behaviour_updates": self.behaviour_updates >= 1,
            "gan_noise_dim": self.gan_noise_dim >= 1,
        }
        check_fields(self, checks, "task-loss setting", f"behaviour_model in {BEHAVIOUR_MODELS}")


@dataclass
class SamplingConfig:
    """Grouped batches (``agent.sampling``, read by the builder for :class:`training.offline.TaskSampler`).

    Attributes:
        tasks_per_batch: T, task slots per update (each holds ``optim.batch_size`` windows).
        contexts_per_task: M, context sets per slot (FOCAL needs >= 2 for same-task pairs).
        context_size: K, transitions per context set.
        context_source: ``behaviour`` (a slot is one (task, behaviour policy) group) or ``task`` (all of the task).
    """

    tasks_per_batch: int = 16
    contexts_per_task: int = 2
    context_size: int = 64
    context_source: str = "behaviour"

    def __post_init__(self) -> None:
        checks = {
            "tasks_per_batch": self.tasks_per_batch >= 1,
            "contexts_per_task": self.contexts_per_task >= 1,
            "context_size": self.context_size >= 1,
            "context_source": self.context_source in CONTEXT_SOURCES,
        }
        check_fields(self, checks, "sampling setting", f"context_source in {CONTEXT_SOURCES}")


@dataclass
class MetaOptimConfig(OptimConfig):
    """:class:`agents.common.OptimConfig` plus the context encoder's Adam (``agent.optim``).

    ``batch_size`` counts windows per task slot; ``wm_lr``, ``wm_weight_decay``: AdamW over the contextual world
    model and its context encoder (``representation=world_model``); ``ctx_lr``: Adam over the context encoder
    (``representation=context``); ``lr``, ``grad_clip``: TD3+BC (and every other step's clipping).
    """

    ctx_lr: float = 3e-4

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields(self, {"ctx_lr": self.ctx_lr > 0}, "optimiser setting", "learning rates > 0")


def check_paths(config: object, checks: Mapping[str, bool], what: str, hint: str = "") -> None:
    """:func:`common.config.check_fields` for dotted paths into sub-configs (``optim.batch_size``)."""
    bad = {k: reduce(getattr, k.split("."), config) for k, ok in checks.items() if not ok}
    if bad:
        raise ValueError(f"invalid {what}(s) {bad}" + (f" ({hint})" if hint else ""))


@dataclass
class MetaRLConfig:
    """Offline meta-RL, composed of its parts' configs (``agent``, ``configs/agent/meta_rl.yaml``).

    Attributes:
        representation: ``none`` | ``context`` | ``world_model`` (module docstring's table).
        world_model: the contextual world model (``world_model=contextual``), used with ``representation=world_model``.
        context: the context encoder (both representations; its ``z_dim`` is the size of ``z``).
        task_loss: FOCAL, the ER-TRL entropy regulariser and its behaviour model.
        actor_critic: TD3+BC's actor and critics (one-step targets: ``nstep`` 1).
        optim: learning rates, gradient clipping, windows per task slot.
        exploration: noise of ``act(eval_mode=False)`` (evaluation is deterministic).
        sampling: grouped batches.
        bc_alpha: TD3+BC's alpha.
        prior_prob: share of windows conditioned on the prior ``z = 0`` (acting before any context).
    """

    representation: str = "context"
    world_model: Any = field(default_factory=lambda: {"name": "contextual"})
    context: ContextEncoderConfig = field(default_factory=ContextEncoderConfig)
    task_loss: TaskLossConfig = field(default_factory=TaskLossConfig)
    actor_critic: ActorCriticConfig = field(
        default_factory=lambda: ActorCriticConfig(mlp_dims=[256, 256], num_critics=2, noise_clip=0.5)
    )
    optim: MetaOptimConfig = field(default_factory=MetaOptimConfig)
    exploration: ExplorationConfig = field(
        default_factory=lambda: ExplorationConfig(std_start=0.1, std_end=0.1, episodes=0)
    )
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    bc_alpha: float = 2.5
    prior_prob: float = 0.1

    def __post_init__(self) -> None:
        if self.world_model is not None and not dataclasses.is_dataclass(self.world_model):
            self.world_model = world_model_config(self.world_model, "world_model")
        checks = {
            "representation": self.representation in REPRESENTATIONS,
            "bc_alpha": self.bc_alpha >= 0,
            "prior_prob": 0.0 <= self.prior_prob <= 1.0,
            "actor_critic.nstep": self.actor_critic.nstep == 1,
            "optim.batch_size": self.optim.batch_size >= 2,  # a covariance needs two samples
        }
        check_paths(
            self,
            checks,
            "meta-RL setting",
            f"representation in {REPRESENTATIONS}; one-step targets (actor_critic.nstep 1); optim.batch_size >= 2",
        )
        if self.representation == "world_model" and not isinstance(self.world_model, ContextualWMConfig):
            name = getattr(self.world_model, "name", None)
            raise ValueError(f"representation=world_model needs world_model=contextual, got world_model={name!r}")

    @property
    def uses_context(self) -> bool:
        return self.representation != "none"

    @property
    def uses_entropy(self) -> bool:
        return self.uses_context and self.task_loss.entropy_coef > 0


class Normalizer(nn.Module):
    """Dataset statistics (buffers, saved with the weights): ``(s - mu_s) / sigma_s``, ``(r - mu_r) / sigma_r``."""

    def __init__(self, obs_dim: int) -> None:
        super().__init__()
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))
        self.register_buffer("reward_mean", torch.zeros(()))
        self.register_buffer("reward_std", torch.ones(()))

    @torch.no_grad()
    def set(self, obs_mean: Tensor, obs_std: Tensor, reward_mean: float, reward_std: float) -> None:
        self.obs_mean.copy_(torch.as_tensor(obs_mean, dtype=torch.float32))
        self.obs_std.copy_(torch.as_tensor(obs_std, dtype=torch.float32).clamp_min(1e-3))
        self.reward_mean.fill_(float(reward_mean))
        self.reward_std.fill_(max(float(reward_std), 1e-3))

    def obs(self, o: Tensor) -> Tensor:
        return (o - self.obs_mean) / self.obs_std

    def reward(self, r: Tensor) -> Tensor:
        return (r - self.reward_mean) / self.reward_std


class BehaviourGAN(nn.Module):
    """Conditional GAN model of the behaviour policy ``pi_beta(a | s, z)`` (ER-TRL's public code).

    Generator ``a = tanh(G([s, z, xi]))``, ``xi ~ N(0, I)``; discriminator logit ``D([a, s, z])``.
    """

    def __init__(self, obs_dim: int, action_dim: int, z_dim: int, cfg: TaskLossConfig, grad_clip: float) -> None:
        super().__init__()
        self.noise_dim = cfg.gan_noise_dim
        self.updates = cfg.behaviour_updates
        self.generator = mlp(obs_dim + z_dim + cfg.gan_noise_dim, cfg.behaviour_mlp_dims, action_dim)
        self.discriminator = mlp(action_dim + obs_dim + z_dim, cfg.behaviour_mlp_dims, 1)
        self.g_opt = torch.optim.Adam(self.generator.parameters(), lr=cfg.behaviour_lr, betas=(0.5, 0.999))
        self.d_opt = torch.optim.Adam(self.discriminator.parameters(), lr=cfg.behaviour_lr, betas=(0.5, 0.999))
        self.grad_clip = grad_clip

    def sample(self, s: Tensor, z: Tensor) -> Tensor:
        xi = torch.randn(*s.shape[:-1], self.noise_dim, device=s.device, dtype=s.dtype)
        return torch.tanh(self.generator(torch.cat([s, z, xi], -1)))

    def logit(self, a: Tensor, s: Tensor, z: Tensor) -> Tensor:
        return self.discriminator(torch.cat([a, s, z], -1)).squeeze(-1)

    def update(self, s: Tensor, a: Tensor, z: Tensor) -> dict[str, float]:
        """``behaviour_updates`` discriminator + generator steps on ``(s, a)`` pairs with detached ``z``."""
        z = z.detach()
        ones, zeros = torch.ones(s.shape[:-1], device=s.device), torch.zeros(s.shape[:-1], device=s.device)
        for _ in range(self.updates):
            fake = self.sample(s, z).detach()
            d_loss = F.binary_cross_entropy_with_logits(self.logit(a, s, z), ones) + F.binary_cross_entropy_with_logits(
                self.logit(fake, s, z), zeros
            )
            optimizer_step("gan_d_loss", d_loss, self.d_opt, self.discriminator.parameters(), self.grad_clip)
            self.discriminator.requires_grad_(False)
            g_loss = F.binary_cross_entropy_with_logits(self.logit(self.sample(s, z), s, z), ones)
            optimizer_step("gan_g_loss", g_loss, self.g_opt, self.generator.parameters(), self.grad_clip)
            self.discriminator.requires_grad_(True)
        return {"gan_d_loss": d_loss.item(), "gan_g_loss": g_loss.item()}

    def entropy(self, s: Tensor, z: Tensor, eps: float) -> Tensor:
        """Gaussian entropy ``1/2 log det(2 pi e Sigma)`` of generated actions, per context: ``[T, M]``.

        ``s [T, B, D]`` are slot ``t``'s states, ``z [T, M, d]`` its contexts' representations;
        ``Sigma_{t,m}`` is the covariance over ``b`` of ``G(s_{t,b}, z_{t,m}, xi_b)`` plus ``eps I``.
        """
        T, B, _ = s.shape
        M = z.shape[1]
        a = self.sample(s[:, None].expand(T, M, B, -1), z[:, :, None].expand(T, M, B, -1))  # [T, M, B, A]
        A = a.shape[-1]
        ac = a - a.mean(-2, keepdim=True)
        cov = ac.transpose(-1, -2) @ ac / (B - 1) + eps * torch.eye(A, device=a.device, dtype=a.dtype)
        logdet = 2.0 * torch.log(torch.diagonal(torch.linalg.cholesky(cov), dim1=-2, dim2=-1)).sum(-1)
        return 0.5 * (A * math.log(2 * math.pi * math.e) + logdet)

    def frozen_modules(self) -> list[nn.Module]:
        """Modules whose weights the entropy term must not train (its gradient reaches only ``z``)."""
        return [self.generator]

    def extra_state(self) -> dict:
        return {"g_opt": self.g_opt.state_dict(), "d_opt": self.d_opt.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        self.g_opt.load_state_dict(state["g_opt"])
        self.d_opt.load_state_dict(state["d_opt"])


class BehaviourGaussian(nn.Module):
    """Diagonal Gaussian model of the behaviour policy, fitted by maximum likelihood (``z`` detached)::

        pi_beta(a | s, z) = N(mu(s, z), diag sigma(s, z)^2),   log sigma = -5 + 3 (tanh(u) + 1)  in [-5, 1]
        H(a | s, z) = sum_i log sigma_i(s, z) + (A/2) log(2 pi e)

    A cheaper, more stable alternative to the GAN: the entropy is that of the policy *at each state*
    (``H(a | s, z)``, the quantity in ``I(z; beta)``) rather than a Gaussian fit across states.
    """

    def __init__(self, obs_dim: int, action_dim: int, z_dim: int, cfg: TaskLossConfig, grad_clip: float) -> None:
        super().__init__()
        self.updates = cfg.behaviour_updates
        self.net = mlp(obs_dim + z_dim, cfg.behaviour_mlp_dims, 2 * action_dim)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.behaviour_lr)
        self.grad_clip = grad_clip

    def dist(self, s: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu, log sigma)`` of the model at states ``s`` for representations ``z``."""
        mu, u = self.net(torch.cat([s, z], -1)).chunk(2, -1)
        return mu, -5.0 + 3.0 * (torch.tanh(u) + 1.0)

    def update(self, s: Tensor, a: Tensor, z: Tensor) -> dict[str, float]:
        z = z.detach()
        for _ in range(self.updates):
            mu, log_std = self.dist(s, z)
            nll = (0.5 * ((a - mu) / log_std.exp()).pow(2) + log_std).sum(-1).mean() + 0.5 * a.shape[-1] * math.log(
                2 * math.pi
            )
            optimizer_step("behaviour_nll", nll, self.opt, self.net.parameters(), self.grad_clip)
        return {"behaviour_nll": nll.item()}

    def entropy(self, s: Tensor, z: Tensor, eps: float) -> Tensor:
        """Mean over slot ``t``'s states of ``H(a | s, z_{t,m})``: ``[T, M]`` (``eps`` unused)."""
        T, B, _ = s.shape
        M = z.shape[1]
        _, log_std = self.dist(s[:, None].expand(T, M, B, -1), z[:, :, None].expand(T, M, B, -1))
        A = log_std.shape[-1]
        return (log_std.sum(-1) + 0.5 * A * math.log(2 * math.pi * math.e)).mean(-1)

    def frozen_modules(self) -> list[nn.Module]:
        return [self.net]

    def extra_state(self) -> dict:
        return {"opt": self.opt.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        self.opt.load_state_dict(state["opt"])


class TD3BC(TD3):
    """TD3 with the behaviour-cloning actor loss of TD3+BC (the update loop is :meth:`agents.td3.TD3.update`).

    The actor's output layer starts at zero, so before training the policy outputs ``a = 0`` whatever the
    seed (held-out returns at update 0 are those of "doing nothing", not of a random network).
    """

    def __init__(
        self, in_dim: int, action_dim: int, cfg: ActorCriticConfig, optim: OptimConfig, bc_alpha: float
    ) -> None:
        super().__init__(in_dim, action_dim, cfg, optim)
        self.bc_alpha = bc_alpha
        with torch.no_grad():  # the untrained policy is the zero action in every run: a fixed baseline
            for net in (self.actor, self.actor_target):
                net[-1].weight.zero_()
                net[-1].bias.zero_()

    def actor_loss(self, z: Tensor, action: Tensor) -> tuple[Tensor, dict[str, float]]:
        """``-lambda mean Q(z, pi(z)) + mean ||pi(z) - a||^2`` with ``lambda = alpha / sg(mean |Q|)``."""
        pi = self.pi(z)
        q_pi = self.q_mean_random(z, pi)
        lam = self.bc_alpha / q_pi.abs().mean().detach().clamp_min(1e-6)
        bc = F.mse_loss(pi, action)
        return -lam * q_pi.mean() + bc, {"bc_loss": bc.item()}


def focal_loss(z: Tensor, task_id: Tensor, eps: float) -> Tensor:
    """FOCAL distance metric on ``z [N, d]`` with labels ``task_id [N]`` (module docstring)."""
    d2 = torch.cdist(z, z).pow(2)
    same = task_id[:, None] == task_id[None, :]
    off_diag = ~torch.eye(len(z), dtype=torch.bool, device=z.device)
    pos, neg = same & off_diag, ~same
    loss = z.new_zeros(())
    if pos.any():
        loss = loss + d2[pos].mean()
    if neg.any():
        loss = loss + (1.0 / (d2[neg] + eps)).mean()
    return loss


class MetaRLAgent:
    """Offline meta-RL agent (module docstring). ``num_tasks`` bounds the family's global task ids.

    Acting: :meth:`infer_task` turns context transitions into ``z``; :meth:`set_task` fixes the ``z``
    that :meth:`act` conditions on (``None`` = the prior ``z = 0`` of an empty context).
    """

    def __init__(
        self, obs_dim: int, action_dim: int, cfg: MetaRLConfig, device: torch.device, num_tasks: int = 64
    ) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.num_tasks = int(num_tasks)
        self.z_dim = cfg.context.z_dim if cfg.uses_context else 0
        modules: dict[str, nn.Module] = {"norm": Normalizer(obs_dim)}
        self.wm: ContextualWorldModel | None = None
        self.encoder: ContextEncoder | None = None
        self.behaviour: BehaviourGAN | BehaviourGaussian | None = None
        if cfg.representation == "world_model":
            self.wm = make_world_model(cfg.world_model, obs_dim, action_dim, context=cfg.context, num_tasks=num_tasks)
            self.encoder = self.wm.context_encoder
            modules["wm"] = self.wm
        elif cfg.representation == "context":
            self.encoder = ContextEncoder(obs_dim, action_dim, cfg.context)
            modules["encoder"] = self.encoder
        if cfg.uses_entropy:
            model_cls = BehaviourGAN if cfg.task_loss.behaviour_model == "gan" else BehaviourGaussian
            self.behaviour = model_cls(obs_dim, action_dim, self.z_dim, cfg.task_loss, cfg.optim.grad_clip)
            modules["behaviour"] = self.behaviour
        self.td3 = TD3BC(obs_dim + self.z_dim, action_dim, cfg.actor_critic, cfg.optim, cfg.bc_alpha)
        modules["td3"] = self.td3
        self.nets = nn.ModuleDict(modules).to(self.device)
        self.norm: Normalizer = self.nets["norm"]
        self.rep_opt: torch.optim.Optimizer | None = None
        if self.wm is not None:
            params = [p for n, p in self.wm.named_parameters() if not n.startswith("target_encoder")]
            self.rep_opt = torch.optim.AdamW(params, lr=cfg.optim.wm_lr, weight_decay=cfg.optim.wm_weight_decay)
        elif self.encoder is not None:
            self.rep_opt = torch.optim.Adam(self.encoder.parameters(), lr=cfg.optim.ctx_lr)
        self.sample_horizon = self.wm.window_length if self.wm is not None else 1
        self.num_updates = 0
        self.episode = 0
        self.task_z = torch.zeros(self.z_dim, device=self.device)

    # -- representation ------------------------------------------------------------------------
    def set_normalizer(self, obs_mean: np.ndarray, obs_std: np.ndarray, reward_mean: float, reward_std: float) -> None:
        """Install the dataset statistics used to normalise observations and context rewards."""
        self.norm.set(torch.as_tensor(obs_mean), torch.as_tensor(obs_std), reward_mean, reward_std)

    def context_features(self, context: Mapping[str, Tensor]) -> Tensor:
        """Normalised ``[s, a, r, s']`` features of context transitions ``[..., K]``."""
        assert self.encoder is not None
        n = self.norm
        return self.encoder.features(
            n.obs(context["obs"]), context["action"], n.reward(context["reward"]), n.obs(context["next_obs"])
        )

    def encode_context(self, context: Mapping[str, Tensor], mask: Tensor | None = None) -> Tensor:
        """``z [..., d]`` of context sets ``[..., K]`` (``[..., 0]`` for ``representation=none``)."""
        lead = context["reward"].shape[:-1]
        if self.encoder is None:
            return torch.zeros(*lead, 0, device=self.device)
        return self.encoder(self.context_features(context), mask)

    @torch.no_grad()
    def infer_task(self, context: Mapping[str, np.ndarray | Tensor]) -> Tensor:
        """``z [d]`` of one context set given as arrays ``obs [K, D], action, reward [K], next_obs``."""
        ctx = {k: torch.as_tensor(np.asarray(context[k]), dtype=torch.float32, device=self.device) for k in context}
        return self.encode_context(ctx)

    def set_task(self, z: Tensor | None) -> None:
        """Condition :meth:`act` on ``z`` (``None``: the prior representation ``0``)."""
        self.task_z = torch.zeros(self.z_dim, device=self.device) if z is None else z.to(self.device).reshape(-1)

    # -- the Agent contract ----------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        """Windows per task slot (a grouped batch holds ``sampling.tasks_per_batch`` slots)."""
        return self.cfg.optim.batch_size

    def num_params(self) -> int:
        return sum(p.numel() for p in self.nets.parameters() if p.requires_grad)

    @torch.no_grad()
    def diagnostics(self, obs: Tensor) -> dict[str, float]:
        """The contextual world model's latent statistics on normalised ``obs [N, O]`` (none otherwise)."""
        return {} if self.wm is None else self.wm.diagnostics(self.norm.obs(obs.to(self.device)))

    def begin_episode(self, episode: int) -> None:
        self.episode = episode

    def act_info(self) -> dict[str, float]:
        return {}

    def observe(self, reward: float) -> None:
        """The task representation is set from a context by :meth:`set_task` (training.offline.evaluate_meta)."""

    @torch.no_grad()
    def act(self, obs: np.ndarray, *, eval_mode: bool, step: int) -> np.ndarray:
        o = self.norm.obs(torch.as_tensor(obs, dtype=torch.float32, device=self.device))
        a = self.td3.pi(torch.cat([o, self.task_z], -1)[None])
        if not eval_mode:
            a = self.td3.add_exploration_noise(a, self.cfg.exploration.std(self.episode))
        return a[0].cpu().numpy()

    # -- learning --------------------------------------------------------------------------------
    def update(self, batch: TensorDict) -> dict[str, float]:
        """One update on a grouped batch (module docstring): representation, behaviour GAN, TD3+BC."""
        if "context" not in batch.keys():
            raise ValueError(
                "meta_rl trains offline on grouped batches with contexts (training.offline.TaskSampler); "
                "run it with experiment=offline_meta dataset=<file or dir>"
            )
        c = self.cfg
        batch = batch.to(self.device)
        obs = self.norm.obs(batch["obs"])  # [T, B, H+1, D]
        T, B = obs.shape[:2]
        metrics: dict[str, float] = {}
        z = self._update_representation(batch, obs, metrics)  # [T, M, d] detached
        M = z.shape[1]
        z_seq = z[:, torch.arange(B, device=z.device) % M].reshape(T * B, -1)
        if c.prior_prob > 0 and self.z_dim > 0:  # the policy must also act sensibly before any context
            keep = torch.rand(T * B, 1, device=z.device) >= c.prior_prob
            z_seq = z_seq * keep
        x = torch.cat([obs[:, :, 0].reshape(T * B, -1), z_seq], -1)
        x_next = torch.cat([obs[:, :, 1].reshape(T * B, -1), z_seq], -1)
        reward = batch["reward"][:, :, 0].reshape(T * B)
        discount = c.actor_critic.gamma * (1.0 - batch["terminated"][:, :, 0].reshape(T * B))
        metrics.update(self.td3.update(x, batch["action"][:, :, 0].reshape(T * B, -1), reward, discount, x_next))
        self.num_updates += 1
        return metrics

    def _update_representation(self, batch: TensorDict, obs: Tensor, metrics: dict[str, float]) -> Tensor:
        """Step the context encoder (or world model) and the behaviour GAN; return ``sg(z) [T, M, d]``."""
        c = self.cfg
        T = obs.shape[0]
        M = batch["context"].shape[1]
        if not c.uses_context:
            return obs.new_zeros(T, M, 0)
        if self.wm is not None:
            ctx = batch["context"]
            normed = TensorDict(
                {
                    "obs": self.norm.obs(ctx["obs"]),
                    "action": ctx["action"],
                    "reward": self.norm.reward(ctx["reward"]),
                    "next_obs": self.norm.obs(ctx["next_obs"]),
                },
                batch_size=ctx.batch_size,
            )
            wm_batch = TensorDict(
                {
                    "obs": obs,
                    "action": batch["action"],
                    "reward": batch["reward"],
                    "context": normed,
                    "task_id": batch["task_id"],
                },
                batch_size=[T],
            )
            loss, wm_metrics, z = self.wm.loss_and_task(wm_batch)
            metrics.update(wm_metrics)
            name = "world_model_loss"
        else:
            z = self.encode_context(batch["context"])  # [T, M, d]
            focal = focal_loss(z.reshape(T * M, -1), batch["task_id"].repeat_interleave(M), c.task_loss.focal_eps)
            metrics["focal_loss"] = focal.item()
            loss = c.task_loss.focal_coef * focal
            name = "encoder_loss"
        if c.uses_entropy:
            assert self.behaviour is not None
            s = obs[:, :, 0]  # [T, B, D]
            B = s.shape[1]
            z_seq = z[:, torch.arange(B, device=z.device) % M]
            metrics.update(self.behaviour.update(s, batch["action"][:, :, 0], z_seq))
            frozen = self.behaviour.frozen_modules()
            for m in frozen:
                m.requires_grad_(False)
            entropy = self.behaviour.entropy(s, z, c.task_loss.entropy_cov_eps)
            for m in frozen:
                m.requires_grad_(True)
            loss = loss - c.task_loss.entropy_coef * entropy.mean()
            metrics["behaviour_entropy"] = entropy.mean().item()
        assert self.rep_opt is not None
        params = [p for g in self.rep_opt.param_groups for p in g["params"]]
        grad_norm = optimizer_step(name, loss, self.rep_opt, params, c.optim.grad_clip)
        metrics[f"{name.removesuffix('_loss')}_grad_norm"] = grad_norm
        metrics[name] = loss.item()
        if self.wm is not None:
            self.wm.after_update()
        z_out = z.detach()
        metrics.update(task_separation(z_out, batch["task_id"]))
        return z_out

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "nets": self.nets.state_dict(),
            "td3": self.td3.extra_state(),
            "rep_opt": None if self.rep_opt is None else self.rep_opt.state_dict(),
            "behaviour": None if self.behaviour is None else self.behaviour.extra_state(),
            "num_updates": self.num_updates,
            "episode": self.episode,
        }

    def load_state_dict(self, state: dict) -> None:
        self.nets.load_state_dict(state["nets"])
        self.td3.load_extra_state(state["td3"])
        if self.rep_opt is not None:
            self.rep_opt.load_state_dict(state["rep_opt"])
        if self.behaviour is not None:
            self.behaviour.load_extra_state(state["behaviour"])
        self.num_updates = int(state["num_updates"])
        self.episode = int(state["episode"])


@torch.no_grad()
def task_separation(z: Tensor, task_id: Tensor) -> dict[str, float]:
    """``z_between / z_within``: spread of per-task mean ``z`` over the mean within-task spread (diagnostic)."""
    flat = z.reshape(-1, z.shape[-1])
    labels = task_id.repeat_interleave(z.shape[1])
    ids = labels.unique()
    if len(ids) < 2 or flat.shape[-1] == 0:
        return {}
    means = torch.stack([flat[labels == k].mean(0) for k in ids])
    within = torch.stack([(flat[labels == k] - means[i]).pow(2).sum(-1).mean() for i, k in enumerate(ids)]).mean()
    between = (means - means.mean(0)).pow(2).sum(-1).mean()
    return {"z_separation": float(between / within.clamp_min(1e-8))}


__all__ = [
    "CONTEXT_SOURCES",
    "REPRESENTATIONS",
    "VARIANTS",
    "BEHAVIOUR_MODELS",
    "BehaviourGAN",
    "BehaviourGaussian",
    "MetaOptimConfig",
    "MetaRLAgent",
    "MetaRLConfig",
    "Normalizer",
    "SamplingConfig",
    "TD3BC",
    "TaskLossConfig",
    "check_paths",
    "focal_loss",
    "task_separation",
]
