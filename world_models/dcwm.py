"""DCWM: the Discrete Codebook World Model of DC-MPC (Scannell et al., ICLR 2025).

The latent state is a grid of FSQ codes: the encoder output is split into ``G`` groups of
``C = len(fsq_levels)`` channels and each group is quantised to one of ``K = prod(fsq_levels)``
codes (``[5, 3]`` -> 15 two-dimensional codes). The dynamics model is a *classifier*: for every
group it outputs logits over the ``K`` codes of the next latent state. Rollouts propagate either a
straight-through Gumbel-softmax sample (training) or the expected code (planning).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tensordict import TensorDict
from torch import Tensor

from common.config import check_fields, dims_ok, reward_bound_ok
from common.nn import mlp
from world_models.base import MemorylessWorldModel
from world_models.diagnostics import collapse_metrics
from world_models.quantizers import FSQ
from world_models.uncertainty import EnsembleHeads, RewardSFR, UncertaintyConfig, categorical_entropy

__all__ = ["DCWMConfig", "DCWorldModel", "gumbel_softmax_st"]


@dataclass
class DCWMConfig:
    """DCWM settings (``world_model=dcwm``; defaults: the paper / public code at d = 512 groups).

    Attributes:
        name: ``"dcwm"``, the registry name.
        latent_groups: d, the number of FSQ groups; the flat latent has ``d * len(fsq_levels)`` values.
        fsq_levels: levels per channel of one group's code; ``prod(levels)`` codes per group.
        enc_mlp_dims / dyn_mlp_dims / reward_mlp_dims: hidden sizes of encoder, dynamics, reward head.
        horizon: H, the number of dynamics steps unrolled in the loss.
        rho: per-step weight ρ^h of the loss over the horizon.
        consistency_coef / reward_coef: weights of the cross-entropy and reward terms.
        gumbel_tau: temperature of the straight-through Gumbel-softmax used in training rollouts.
        reward_bound: ``None`` (unbounded reward head) or ``[lo, hi]``: the head's output is squashed
            by ``lo + (hi - lo)(tanh(x) + 1)/2``. DMC: ``[0, action_repeat]`` (per-step rewards lie in
            [0, 1] and are summed over the repeat), i.e. ``[0, 2]`` with the default repeat. The model
            does not know the suite, so Meta-World / gym tasks must set ``reward_bound: null``.
        uncertainty: the estimator :meth:`DCWorldModel.uncertainty` reports (``entropy``, ``ensemble``, ``sfr``
            or ``none``) and its sizes (:class:`world_models.uncertainty.UncertaintyConfig`).
    """

    name: str = "dcwm"
    latent_groups: int = 512
    fsq_levels: list[int] = field(default_factory=lambda: [5, 3])
    enc_mlp_dims: list[int] = field(default_factory=lambda: [256])
    dyn_mlp_dims: list[int] = field(default_factory=lambda: [512, 512])
    reward_mlp_dims: list[int] = field(default_factory=lambda: [512, 512])
    horizon: int = 5
    rho: float = 0.9
    consistency_coef: float = 1.0
    reward_coef: float = 1.0
    gumbel_tau: float = 1.0
    reward_bound: list[float] | None = field(default_factory=lambda: [0.0, 2.0])
    uncertainty: UncertaintyConfig = field(default_factory=UncertaintyConfig)

    def __post_init__(self) -> None:
        checks = {
            "latent_groups": self.latent_groups >= 1,
            "horizon": self.horizon >= 1,
            "rho": 0.0 < self.rho <= 1.0,
            "consistency_coef": self.consistency_coef >= 0,
            "reward_coef": self.reward_coef >= 0,
            "gumbel_tau": self.gumbel_tau > 0,
            "enc_mlp_dims": dims_ok(self.enc_mlp_dims),
            "dyn_mlp_dims": dims_ok(self.dyn_mlp_dims),
            "reward_mlp_dims": dims_ok(self.reward_mlp_dims),
            "reward_bound": reward_bound_ok(self.reward_bound),
        }
        check_fields(
            self,
            checks,
            "DCWM setting",
            "horizon >= 1, rho in (0, 1], gumbel_tau > 0, reward_bound null or [lo, hi] with lo < hi",
        )
        try:
            FSQ(self.fsq_levels, 1)  # the one place FSQ levels are validated
        except ValueError as e:
            raise ValueError(f"invalid DCWM setting fsq_levels={self.fsq_levels!r}: {e}") from e


def gumbel_softmax_st(
    logits: Tensor, tau: float = 1.0, generator: torch.Generator | None = None, dim: int = -1
) -> Tensor:
    """Straight-through Gumbel-softmax sample over ``dim``: exactly one-hot forward, soft gradient.

    ``y = softmax((ℓ + g) / τ)``, ``g = −log(−log u)``, ``u ~ U(0, 1)`` (Gumbel(0, 1)); forward value
    ``onehot(argmax y)``, gradient of ``y``. Written as ``onehot + (y − sg(y))`` (not
    ``onehot − sg(y) + y`` as in ``F.gumbel_softmax``) so the forward value is an exact one-hot with
    no rounding residue, and the code it selects from the codebook is exactly a codebook entry.
    (``u`` via ``rand`` and two logs, not ``exponential_``, which is slower on CPU.)
    """
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    gumbel = -torch.log(-torch.log(u.clamp_min_(torch.finfo(logits.dtype).tiny)))
    soft = torch.softmax((logits + gumbel) / tau, dim=dim)
    hard = torch.zeros_like(soft).scatter_(dim, _argmax(soft.detach(), dim), 1.0)
    return hard + (soft - soft.detach())


def _argmax(x: Tensor, dim: int) -> Tensor:
    """``x.argmax(dim, keepdim=True)``, computed over a contiguous last dim: CPU argmax over a middle
    dim is slower than moving that dim last first."""
    return x.movedim(dim, -1).contiguous().argmax(-1, keepdim=True).movedim(-1, dim)


class DCWorldModel(MemorylessWorldModel):
    """Encoder -> FSQ codes; categorical dynamics over each group's codes; reward head.

    Shapes: ``obs [N, O]`` -> ``z [N, G*C]`` (flat normalised codes, what every head reads);
    logits ``[N, K, G]`` (code-major: the class dim is 1, as ``F.cross_entropy`` expects);
    ``codebook [K, C]`` (``FSQ.codebook``).

    * ``encode(o) = FSQ(e(o))``.
    * ``next_logits(z, a) = dyn([z ‖ a])`` viewed as ``[K, G]``: one categorical per group.
    * ``next(z, a)`` (planning) = expected code per group, ``Σ_k softmax(ℓ)_k · codebook_k``.
    * ``sample_next(z, a)`` (training) = straight-through Gumbel-softmax one-hot times the codebook:
      a codebook entry forward, the soft sample's gradient backward (through time, to the encoder).
    * ``reward(z, a) = R([z ‖ a])``, squashed into ``reward_bound`` when set.
    * ``uncertainty(z, a)``: the configured estimator (:mod:`world_models.uncertainty`): the entropy of the
      next-code distribution, the disagreement of an ensemble of heads, or the SFR std of the reward head.

    Loss on windows ``o_{0..H}``, ``a_{0..H-1}``, ``r_{0..H-1}`` (see :meth:`loss`)::

        c_0 = encode(o_0),  ℓ_{h+1} = dyn(c_h, a_h),  c_{h+1} = sample_next(c_h, a_h)
        k_{h+1} = index(encode(o_{h+1}))  under no_grad, same online encoder (no EMA target)
        L = (1/H) Σ_{h<H} ρ^h mean_B[ λ_c · CE_h + λ_r · (R(c_h, a_h) − r_h)² ]
        CE_h = mean over groups of −log softmax(ℓ_{h+1})[k_{h+1}]
    """

    def __init__(self, obs_dim: int, action_dim: int, cfg: DCWMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.fsq = FSQ(cfg.fsq_levels, cfg.latent_groups)
        self.num_groups = cfg.latent_groups
        self.num_codes = self.fsq.codebook_size
        self.latent_dim = self.fsq.dim
        self.action_dim = action_dim
        self.encoder = mlp(obs_dim, cfg.enc_mlp_dims, self.latent_dim)
        self.dynamics = mlp(self.latent_dim + action_dim, cfg.dyn_mlp_dims, self.num_codes * self.num_groups)
        self.reward_head = mlp(self.latent_dim + action_dim, cfg.reward_mlp_dims, 1)
        self.window_length = cfg.horizon
        bound = cfg.reward_bound
        self.reward_bound: tuple[float, float] | None = None if bound is None else (float(bound[0]), float(bound[1]))
        # Estimator modules are built after the main ones (and only when used), so the main weights' init and
        # the training stream are the same with the estimator off.
        est = cfg.uncertainty.estimator
        squash = None if self.reward_bound is None else self.squash_reward
        ucfg, in_dim = cfg.uncertainty, self.latent_dim + action_dim
        self.ensemble = None
        self.reward_sfr = None
        if est == "ensemble":
            self.ensemble = EnsembleHeads(in_dim, self.latent_dim, ucfg, squash)
        elif est == "sfr":
            self.reward_sfr = RewardSFR(obs_dim, action_dim, self.reward_head, squash, ucfg)

    @property
    def codebook(self) -> Tensor:
        """``[K, C]`` normalised codes of one group (FSQ's implicit codebook)."""
        return self.fsq.codebook

    # ------------------------------------------------------------------ model
    def encode(self, obs: Tensor) -> Tensor:
        """``[..., O]`` -> flat codes ``[..., G*C]`` (straight-through FSQ: gradients reach the encoder)."""
        return self.fsq(self.encoder(obs))

    def code_indices(self, z: Tensor) -> Tensor:
        """Flat codes ``[..., G*C]`` -> per-group code indices ``[..., G]``."""
        return self.fsq.codes_to_indices(z)

    def next_logits(self, z: Tensor, a: Tensor) -> Tensor:
        """Logits ``[N, K, G]`` of the next code of every group (softmax over dim 1).

        Code-major on purpose: softmax over a short (K = 15) *last* dim runs much slower on CPU than
        over a middle dim with a long contiguous inner dim, and planning is mostly these softmaxes.
        Which output unit means which (code, group) is a free choice of the last Linear layer.
        """
        out = self.dynamics(torch.cat([z, a], -1))
        return out.view(*out.shape[:-1], self.num_codes, self.num_groups)

    def probs_to_codes(self, weights: Tensor) -> Tensor:
        """Weights over codes ``[N, K, G]`` -> flat codes ``[N, G*C]``: ``Σ_k w[:, k, g] · codebook[k]``."""
        cb_t = self.codebook.to(weights.dtype).t()  # [C, K]
        codes = torch.matmul(cb_t, weights)  # [N, C, G]
        return codes.transpose(-1, -2).reshape(*weights.shape[:-2], self.latent_dim)

    def expected_code(self, logits: Tensor) -> Tensor:
        """``Σ_k softmax(ℓ)_k · codebook_k`` per group, flattened to ``[N, G*C]``."""
        return self.probs_to_codes(torch.softmax(logits, dim=-2))

    def sample_code(self, logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Straight-through Gumbel-softmax code per group (``gumbel_tau``), flattened to ``[N, G*C]``."""
        return self.probs_to_codes(gumbel_softmax_st(logits, self.cfg.gumbel_tau, generator, dim=-2))

    def next(self, z: Tensor, a: Tensor) -> Tensor:
        """Planning transition (deterministic): the expected next code."""
        return self.expected_code(self.next_logits(z, a))

    def sample_next(self, z: Tensor, a: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Training transition: a sampled code per group, with straight-through gradients."""
        return self.sample_code(self.next_logits(z, a), generator)

    predicts_reward = True

    def reward(self, z: Tensor, a: Tensor) -> Tensor:
        """Predicted reward ``[N]``; ``lo + (hi − lo)(tanh(x) + 1)/2`` when ``reward_bound = [lo, hi]``."""
        x = self.reward_head(torch.cat([z, a], -1)).squeeze(-1)
        return x if self.reward_bound is None else self.squash_reward(x)

    def squash_reward(self, x: Tensor) -> Tensor:
        """``lo + (hi − lo)(tanh(x) + 1)/2`` for ``reward_bound = [lo, hi]``."""
        lo, hi = self.reward_bound
        return lo + (hi - lo) * 0.5 * (torch.tanh(x) + 1.0)

    def uncertainty(self, z: Tensor, a: Tensor) -> Tensor | None:
        """The configured estimator's uncertainty ``[N]`` of the step ``(z, a)``; ``None`` when it is ``none``."""
        parts = self.uncertainty_parts(z, a)
        return None if not parts else sum(parts.values())

    def uncertainty_parts(self, z: Tensor, a: Tensor) -> dict[str, Tensor]:
        """The estimate split by what it is about: ``{"latent": [N], "reward": [N]}`` (only the parts the
        estimator has; empty for ``none``). :meth:`uncertainty` is their sum."""
        return self._uncertainty_parts(z, a, None)

    def next_and_uncertainty(self, z: Tensor, a: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(next(z, a), uncertainty(z, a))`` with one dynamics pass (the entropy reads the same logits).

        SFR's uncertainty is left out (``None``): its backward pass costs about the same for any number of rows, so
        the planner scores a whole rollout's steps with one :meth:`uncertainty` call instead."""
        logits = self.next_logits(z, a)
        parts = {} if self.cfg.uncertainty.estimator == "sfr" else self._uncertainty_parts(z, a, logits)
        return self.expected_code(logits), (sum(parts.values()) if parts else None)

    def _uncertainty_parts(self, z: Tensor, a: Tensor, logits: Tensor | None) -> dict[str, Tensor]:
        est = self.cfg.uncertainty.estimator
        if est == "entropy":
            logits = self.next_logits(z, a) if logits is None else logits
            return {"latent": categorical_entropy(logits, dim=-2).mean(-1)}
        if est == "ensemble":
            z_std, r_std = self.ensemble.disagreement(torch.cat([z, a], -1))
            return {"latent": z_std, "reward": r_std}
        if est == "sfr":
            return {"reward": self.reward_sfr.std(torch.cat([z, a], -1))}
        return {}

    # ------------------------------------------------------------------ loss
    def loss(self, batch: TensorDict, generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
        """World-model loss on ``batch`` (obs ``[B, ≥H+1, O]``, action ``[B, ≥H, A]``, reward ``[B, ≥H]``).

        The replay buffer's windows never cross an episode boundary, so every transition in the
        window is real (a terminal transition can only be the last, and its next observation is the
        true terminal one); no done-mask is needed, and unlike the public code the last transition of
        each episode is kept (the public code drops it).
        """
        cfg = self.cfg
        H = cfg.horizon
        obs, action, reward = batch["obs"], batch["action"], batch["reward"]
        if obs.shape[1] < H + 1:
            raise ValueError(f"DCWM.loss needs windows of >= {H} transitions, got obs shape {tuple(obs.shape)}")
        with torch.no_grad():
            # Targets: the *online* encoder's code indices of the real next observations.
            next_codes = self.encode(obs[:, 1 : H + 1])  # [B, H, G*C]
            targets = self.code_indices(next_codes)  # [B, H, G]
        z = self.encode(obs[:, 0])
        est_loss, est_metrics = self._estimator_step(z.detach(), next_codes, batch)
        total = obs.new_zeros(())
        ce_sum = obs.new_zeros(())
        rew_sum = obs.new_zeros(())
        acc_first = obs.new_zeros(())
        for h in range(H):
            a = action[:, h]
            r_hat = self.reward(z, a)
            logits = self.next_logits(z, a)  # [B, K, G]
            ce = F.cross_entropy(logits, targets[:, h])  # mean over batch and groups
            rew = F.mse_loss(r_hat, reward[:, h])
            total = total + cfg.rho**h * (cfg.consistency_coef * ce + cfg.reward_coef * rew)
            ce_sum = ce_sum + ce.detach()
            rew_sum = rew_sum + rew.detach()
            if h == 0:  # share of groups whose target code has the top logit (ties count as hits)
                lg = logits.detach()
                hit = lg.gather(1, targets[:, 0].unsqueeze(1)) >= lg.amax(1, keepdim=True)
                acc_first = hit.float().mean()
            if h < H - 1:
                z = self.sample_code(logits, generator)
        total = total / H
        metrics = {
            "wm_loss": total.item(),
            "consistency_loss": (ce_sum / H).item(),
            "reward_loss": (rew_sum / H).item(),
            "code_acc_h1": acc_first.item(),
        }
        if est_loss is not None:
            total = total + est_loss
        metrics.update(est_metrics)
        return total, metrics

    def _estimator_step(
        self, z0: Tensor, next_codes: Tensor, batch: TensorDict
    ) -> tuple[Tensor | None, dict[str, float]]:
        """The estimator's share of a loss call on the window's real transitions ``h < H``: the ensemble's loss
        (on detached latents, added to the total), or the SFR's memory write and dual update / rebuild."""
        H = self.cfg.horizon
        action, reward = batch["action"][:, :H], batch["reward"][:, :H]
        if self.ensemble is not None:
            z_real = torch.cat([z0.unsqueeze(1), next_codes[:, : H - 1]], 1)  # [B, H, G*C], no grad
            x = torch.cat([z_real, action], -1).flatten(0, 1)
            loss = self.ensemble.loss(x, next_codes.flatten(0, 1), reward.flatten())
            return loss, {"ensemble_loss": loss.item()}
        if self.reward_sfr is not None:
            # One transition per window (h = 0): the memory stays a uniform sample of the replay data.
            return None, self.reward_sfr.absorb(self.encode, batch["obs"][:, 0], action[:, 0], reward[:, 0])
        return None, {}

    @torch.no_grad()
    def diagnostics(self, obs: Tensor) -> dict[str, float]:
        """Collapse measures of the codes of ``obs [N, O]`` (rank at three tolerances, code usage)."""
        return collapse_metrics(self.encode(obs), self.fsq)
