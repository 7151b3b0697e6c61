"""Uncertainty estimators of a world model's one-step prediction, selected by ``world_model.uncertainty``.

What each estimator returns for a step ``(z, a)`` (one value per row; larger = less certain):

* ``entropy`` (aleatoric, DCWM): the entropy of the next-code distribution, averaged over groups,
  ``u = (1/G) Σ_g H(p_g)``, ``H(p) = −Σ_k p_k log p_k``. Exact: the dynamics is categorical.
* ``ensemble`` (epistemic): ``E`` extra dynamics-and-reward heads on the shared encoder's latent, evaluated
  in one batched pass; each predicts the next latent's code values ``ẑ'_e`` and the reward ``r̂_e``.
  Disagreement = the std of the members' predictions: ``u = sqrt(mean_d var_e ẑ'_{e,d}) + std_e(r̂_e)``.
* ``sfr`` (epistemic, :class:`world_models.sfr.SFR`): the predictive std of the reward head read as the GP of
  its linearisation, ``u = sqrt(v(z, a))``, rebuilt on a schedule from a memory of recent transitions and
  updated with every new batch by dual updates in between.
* ``none``: no estimate (the interface's ``uncertainty`` returns ``None``).

The heads learn on the encoder's detached latents, so turning an estimator on never changes the
representation or the main heads' gradients.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.config import check_fields, dims_ok
from common.nn import EnsembleMLP

__all__ = ["ESTIMATORS", "EnsembleHeads", "RewardSFR", "UncertaintyConfig", "categorical_entropy"]

ESTIMATORS = ("none", "entropy", "ensemble", "sfr")


@dataclass
class UncertaintyConfig:
    """``world_model.uncertainty``: which estimator the world model reports (module docstring) and its sizes.

    Attributes:
        estimator: one of ``none | entropy | ensemble | sfr``.
        ensemble_size: E >= 2 members.
        ensemble_mlp_dims: hidden sizes of each member.
        sfr_inducing: M >= 1 inducing points.
        sfr_prior_precision: δ > 0, the prior precision of the weights (the kernel is scaled by 1/(δN)).
        sfr_noise_var: σ² > 0 of the Gaussian likelihood the reward head was fitted under (its MSE loss is the
            Gaussian NLL with σ² = 1/2).
        sfr_memory: recent transitions kept (as observations) to rebuild from; >= sfr_inducing.
        sfr_rebuild_every: world-model updates between rebuilds (fresh snapshot, inducing points and dual sums);
            every batch in between is absorbed by a dual update. About ``sfr_memory / batch_size``, so the GP
            always rests on one to two memories' worth of transitions.
        sfr_jitter: ε added to the diagonal of the M×M matrices before factorising.
    """

    estimator: str = "none"
    ensemble_size: int = 5
    ensemble_mlp_dims: list[int] = field(default_factory=lambda: [256])
    sfr_inducing: int = 128
    sfr_prior_precision: float = 1e-4
    sfr_noise_var: float = 0.5
    sfr_memory: int = 4096
    sfr_rebuild_every: int = 32
    sfr_jitter: float = 1e-6

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {self.estimator!r}; valid estimators: {list(ESTIMATORS)}")
        checks = {
            "ensemble_size": self.ensemble_size >= 2,
            "ensemble_mlp_dims": dims_ok(self.ensemble_mlp_dims),
            "sfr_inducing": self.sfr_inducing >= 1,
            "sfr_prior_precision": self.sfr_prior_precision > 0,
            "sfr_noise_var": self.sfr_noise_var > 0,
            "sfr_memory": self.sfr_memory >= self.sfr_inducing,
            "sfr_rebuild_every": self.sfr_rebuild_every >= 1,
            "sfr_jitter": self.sfr_jitter >= 0,
        }
        check_fields(
            self,
            checks,
            "uncertainty setting",
            "ensemble_size >= 2, sfr_inducing >= 1, sfr_memory >= sfr_inducing, sfr_rebuild_every >= 1, "
            "sfr_prior_precision > 0, sfr_noise_var > 0, sfr_jitter >= 0",
        )


def categorical_entropy(logits: Tensor, dim: int) -> Tensor:
    """``−Σ_k p_k log p_k`` over ``dim`` with ``p = softmax(logits)`` (exact, no sampling)."""
    logp = torch.log_softmax(logits, dim=dim)
    return -(logp.exp() * logp).sum(dim)


class EnsembleHeads(nn.Module):
    """``E`` heads ``[z ‖ a] -> (ẑ', r̂)`` predicting the next latent's code values and the reward, all members in
    one batched pass (:class:`common.nn.EnsembleMLP`).

    Each member regresses the next flat code ``z' [G·C]`` and the reward by squared error on detached real
    latents. Disagreement (:meth:`disagreement`): ``sqrt(mean_d var_e ẑ'_{e,d})`` and ``std_e r̂_e``. Predicting the
    ``G·C`` code values rather than ``K·G`` logits keeps a member several times cheaper than the dynamics head.
    """

    def __init__(
        self,
        in_dim: int,
        latent_dim: int,
        cfg: UncertaintyConfig,
        squash: Callable[[Tensor], Tensor] | None,
    ) -> None:
        super().__init__()
        self.net = EnsembleMLP(cfg.ensemble_size, in_dim, cfg.ensemble_mlp_dims, latent_dim + 1)
        self.squash = squash

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x [N, in]`` -> next latents ``[E, N, D]`` and rewards ``[E, N]``."""
        out = self.net(x)
        r = out[..., -1]
        return out[..., :-1], (r if self.squash is None else self.squash(r))

    def loss(self, x: Tensor, z_next: Tensor, reward: Tensor) -> Tensor:
        """Mean over members of ``mean_d (ẑ'_d − z'_d)² + (r̂ − r)²``; ``x [N, in]``, ``z_next [N, D]``, ``r [N]``."""
        z_hat, r = self(x)
        return F.mse_loss(z_hat, z_next.expand_as(z_hat)) + F.mse_loss(r, reward.expand_as(r))

    def disagreement(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(std of the members' next latents, ``sqrt(mean_d var_e)`` ``[N]``; std of their rewards ``[N]``)."""
        z_hat, r = self(x)
        e = z_hat.shape[0]
        # Unbiased variances over members written out: Tensor.var over the leading dim is far slower on CPU.
        dz, dr = z_hat - z_hat.mean(0), r - r.mean(0)
        return (dz.square().sum((0, 2)) / ((e - 1) * z_hat.shape[-1])).sqrt(), (dr.square().sum(0) / (e - 1)).sqrt()


class RewardSFR(nn.Module):
    """SFR over a world model's reward head, kept current during training.

    Holds a ring memory of the last ``sfr_memory`` real transitions (observation, action, reward). Every
    ``sfr_rebuild_every`` batches :meth:`absorb` rebuilds the GP (snapshot of the reward head, ``M`` random inducing
    inputs from the memory, dual sums over the whole memory re-encoded by the current encoder); every other batch
    is added by a dual update. Everything is a buffer, so a checkpoint restores it exactly.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        head: nn.Sequential,
        squash: Callable[[Tensor], Tensor] | None,
        cfg: UncertaintyConfig,
    ) -> None:
        super().__init__()
        from world_models.sfr import SFR

        self.cfg = cfg
        self.sfr = SFR(
            head,
            num_inducing=cfg.sfr_inducing,
            prior_precision=cfg.sfr_prior_precision,
            noise_var=cfg.sfr_noise_var,
            jitter=cfg.sfr_jitter,
            output_fn=squash,
        )
        n = cfg.sfr_memory
        self.register_buffer("mem_obs", torch.zeros(n, obs_dim))
        self.register_buffer("mem_action", torch.zeros(n, action_dim))
        self.register_buffer("mem_reward", torch.zeros(n))
        self.register_buffer("mem_size", torch.zeros((), dtype=torch.long))
        self.register_buffer("mem_next", torch.zeros((), dtype=torch.long))
        self.register_buffer("batches", torch.zeros((), dtype=torch.long))

    def _remember(self, obs: Tensor, action: Tensor, reward: Tensor) -> None:
        n = self.cfg.sfr_memory
        rows = obs.shape[0]
        idx = (self.mem_next + torch.arange(rows, device=obs.device)) % n
        self.mem_obs[idx], self.mem_action[idx], self.mem_reward[idx] = obs, action, reward
        self.mem_next.copy_((self.mem_next + rows) % n)
        self.mem_size.copy_(torch.clamp(self.mem_size + rows, max=n))

    @torch.no_grad()
    def absorb(
        self, encode: Callable[[Tensor], Tensor], obs: Tensor, action: Tensor, reward: Tensor
    ) -> dict[str, float]:
        """Add real transitions ``obs [N, O], action [N, A], reward [N]``; rebuild when due (returns its cost)."""
        self._remember(obs, action, reward)
        due = (not self.sfr.fitted) or int(self.batches) % self.cfg.sfr_rebuild_every == 0
        self.batches += 1
        if not due:
            self.sfr.update(torch.cat([encode(obs), action], -1), reward)
            return {}
        start = time.perf_counter()
        m = int(self.mem_size)
        x = torch.cat([encode(self.mem_obs[:m]), self.mem_action[:m]], -1)
        gen = torch.Generator(device=obs.device).manual_seed(int(self.batches))
        self.sfr.fit(x, self.mem_reward[:m], generator=gen)
        return {"sfr_rebuild_ms": 1e3 * (time.perf_counter() - start)}

    def std(self, x: Tensor) -> Tensor:
        """Predictive std ``[N]`` of the reward at ``x = [z ‖ a]``; zeros before the first rebuild."""
        if not self.sfr.fitted:
            return x.new_zeros(x.shape[0])
        return self.sfr.predict(x)[1].clamp_min(0.0).sqrt().to(x.dtype)
