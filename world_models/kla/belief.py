"""KLA belief-state world model: a Kalman-filtered belief over the observation history as the latent state.

Per observation ``o_t`` an encoder emits, for each of ``L`` lanes, an observed value and an input-dependent
observation precision (the KLA "gating")::

    (v_t, s_t) = enc(o_t),        Λ_t = 1 / (softplus(s_t) + min_obs_var)

Every lane ``l`` is a scalar linear-Gaussian system filtered in information form by
:func:`world_models.kla.kla_filter` (key ``k = 1``: lane ``l`` observes its own value ``v_t[l]``)::

    x_t = ā x_{t-1} + w,  w ~ N(0, p̄);      ā = exp(Δ a_c),  a_c = −exp(θ),  Δ = softplus(δ)
    p̄ = p_c (1 − exp(−2|a_c|Δ)) / (2|a_c|)                         (Ornstein–Uhlenbeck process noise)
    λ_t = λ_{t-1} / (ā² + p̄ λ_{t-1}) + Λ_t,   η_t = ā / (ā² + p̄ λ_{t-1}) · η_{t-1} + Λ_t v_t
    belief:  μ_t = η_t / λ_t,   P_t = 1 / λ_t                       (prior λ_0 = 1, η_0 = 0)

(``p_c`` starts at ``2|a_c|``, so the prior N(0, 1) is the process's stationary distribution.)

The planning / critic latent is ``z_t = [μ_t ‖ log P_t]`` (``2L`` values): the mean says where the state
probably is, the log variance how sure the filter is (it grows while observations are missing or imprecise).
On top of the belief, like DCWM: deterministic latent dynamics ``ẑ_{t+1} = g([z_t ‖ a_t])``, a reward head
``R([z_t ‖ a_t])`` (squashed into ``reward_bound`` when set) and an observation decoder ``D(z_t) ≈ o_t``.

**Uncertainty** (``uncertainty(z, a)``, for the planner's ``optimism`` / ``caution``): the mean over lanes of the
belief variance the model predicts after taking ``a`` and filtering the next observation,
``u(z, a) = mean_l exp(ĝ_logvar(z, a)_l)``. It is high where the next observations are expected to be
uninformative (the encoder's precision is low there) and where the belief already was vague; caution
steers evaluation plans away from poorly observed states, optimism steers training plans towards them.

Training (:meth:`KLABeliefWorldModel.loss`) uses replay windows of ``burn_in + H`` transitions (windows never
cross an episode boundary). The filter runs from the prior over the window; row ``b`` starts at a random
offset ``s_b ∈ {0..burn_in}`` when ``random_burn_in`` so that beliefs built from few observations (the start
of an episode, when acting) are trained too. From the belief ``z_0`` at window position ``burn_in``::

    ẑ_0 = z_0,  ẑ_{h+1} = g(ẑ_h, a_h);   targets z_{h+1} = sg(filtered belief at burn_in + h + 1)
    L = (1/H) Σ_{h<H} ρ^h [ c_cons ‖ẑ_{h+1} − z_{h+1}‖² + c_rew (R(ẑ_h, a_h) − r_h)² + c_obs ‖D(ẑ_h) − o_h‖² ]

(squared norms are means over elements). Gradients reach the encoder through the filter over the whole
window, so the encoder learns what to remember. The decoder term keeps the belief informative (a latent that
only has to be self-consistent could collapse to a constant); decoding ``o_h`` from *predicted* latents makes
the belief carry what the next observations need (e.g. velocities that are not observed).

Acting is online: :meth:`step` updates a carried :class:`BeliefState` with one observation in O(1) and gives
exactly the belief the batch filter gives on the same episode. An observation containing NaN is missing:
its update is skipped (the belief only predicts: the mean decays by ``ā``, the variance grows by ``p̄``).
Known mismatch: acting filters the whole episode while training filters at most ``burn_in + 1`` steps of
history; keep the dynamics' memory (initial ``Δ`` range) short compared with ``burn_in``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from tensordict import TensorDict
from torch import Tensor, nn

from common.config import check_fields, dims_ok, reward_bound_ok
from common.nn import mlp

from .scan import BACKENDS, kla_filter

__all__ = ["Belief", "BeliefFilterOutput", "BeliefState", "KLABeliefConfig", "KLABeliefWorldModel", "LaneDynamics"]


@dataclass
class KLABeliefConfig:
    """Settings of :class:`KLABeliefWorldModel` (``world_model=kla``).

    Attributes:
        name: ``"kla"``, the registry name.
        belief_lanes: L, independent filtered lanes; the latent ``z = [μ ‖ log P]`` has ``2L`` values.
        enc_mlp_dims / dyn_mlp_dims / reward_mlp_dims / dec_mlp_dims: hidden sizes of the observation encoder,
            latent dynamics g, reward head and observation decoder.
        horizon: H, dynamics steps unrolled in the loss; rho: loss weight ρ^h.
        consistency_coef / reward_coef / obs_coef: weights of the latent, reward and decoder terms.
        burn_in: filtered steps before the first loss step (the window has ``burn_in + H`` transitions).
        random_burn_in: start each row's filter at a random offset in ``{0..burn_in}`` (see module docstring).
        belief_dt_min, belief_dt_max: range of the log-uniform initial step Δ (ā = exp(−Δ) at init).
        belief_p_init: initial OU process-noise scale p_c. The default 2 makes the process's stationary variance
            ``p_c / (2|a_c|)`` equal to 1, the prior's: without observations a belief relaxes back to the prior
            (its variance grows towards 1), with them it shrinks.
        belief_min_obs_var: floor of the observation variance (caps the observation precision).
        reward_bound: ``None`` or ``[lo, hi]``: reward head squashed by ``lo + (hi − lo)(tanh(x) + 1)/2``.
        filter_backend: :func:`world_models.kla.kla_scan` backend (``auto``: Triton on CUDA, else the scan).
    """

    name: str = "kla"
    belief_lanes: int = 256
    enc_mlp_dims: list[int] = field(default_factory=lambda: [256])
    dyn_mlp_dims: list[int] = field(default_factory=lambda: [512, 512])
    reward_mlp_dims: list[int] = field(default_factory=lambda: [512, 512])
    dec_mlp_dims: list[int] = field(default_factory=lambda: [512, 512])
    horizon: int = 5
    rho: float = 0.9
    consistency_coef: float = 1.0
    reward_coef: float = 1.0
    obs_coef: float = 1.0
    burn_in: int = 16
    random_burn_in: bool = True
    belief_dt_min: float = 0.05
    belief_dt_max: float = 1.0
    belief_p_init: float = 2.0
    belief_min_obs_var: float = 1e-4
    reward_bound: list[float] | None = field(default_factory=lambda: [0.0, 2.0])
    filter_backend: str = "auto"

    def __post_init__(self) -> None:
        checks = {
            "belief_lanes": self.belief_lanes >= 1,
            "enc_mlp_dims": dims_ok(self.enc_mlp_dims),
            "dyn_mlp_dims": dims_ok(self.dyn_mlp_dims),
            "reward_mlp_dims": dims_ok(self.reward_mlp_dims),
            "dec_mlp_dims": dims_ok(self.dec_mlp_dims),
            "horizon": self.horizon >= 1,
            "rho": 0.0 < self.rho <= 1.0,
            "consistency_coef": self.consistency_coef >= 0,
            "reward_coef": self.reward_coef >= 0,
            "obs_coef": self.obs_coef >= 0,
            "burn_in": self.burn_in >= 0,
            "belief_dt_min": self.belief_dt_min > 0,
            "belief_dt_max": self.belief_dt_max >= self.belief_dt_min,
            "belief_p_init": self.belief_p_init > 0,
            "belief_min_obs_var": self.belief_min_obs_var > 0,
            "reward_bound": reward_bound_ok(self.reward_bound),
            "filter_backend": self.filter_backend in BACKENDS,
        }
        check_fields(
            self,
            checks,
            "KLA belief world-model setting",
            "belief_lanes, horizon >= 1; burn_in >= 0; rho in (0, 1]; coefficients >= 0; "
            "0 < belief_dt_min <= belief_dt_max; belief_p_init > 0; belief_min_obs_var > 0; "
            f"reward_bound null or [lo, hi] with lo < hi; filter_backend in {BACKENDS}",
        )


class Belief(NamedTuple):
    """Per-lane Gaussian belief: ``mean`` and ``variance``, each ``[..., L]``."""

    mean: Tensor
    variance: Tensor


class BeliefState(NamedTuple):
    """Carried filter state (information form) of the last filtered step: ``lam, eta`` are ``[B, L]``."""

    lam: Tensor
    eta: Tensor


class BeliefFilterOutput(NamedTuple):
    """Result of :meth:`KLABeliefWorldModel.filter`: ``belief`` and latent ``z`` per step (``[B, T, L]`` /
    ``[B, T, 2L]``) and the :class:`BeliefState` after the last step."""

    belief: Belief
    z: Tensor
    state: BeliefState


class LaneDynamics(nn.Module):
    """Time-invariant per-lane transition ``(ā, p̄)``, each ``[L]``.

    ``ā = exp(Δ a_c)``, ``a_c = −exp(θ)`` (θ init 0), ``Δ = softplus(δ)`` log-uniform in ``[dt_min, dt_max]``
    at init, and OU process noise ``p̄ = p_c (1 − exp(−2|a_c|Δ)) / (2|a_c|)``: the variance an OU process
    accumulates over Δ, so the stationary variance ``p_c / (2|a_c|)`` does not depend on the step.
    """

    # Numerical floors (as in KLALayer), not hyperparameters: keep Δ > 0 and the precision bounded by ~1/p̄.
    _STEP_FLOOR = 1e-7
    _NOISE_FLOOR = 1e-7

    def __init__(self, lanes: int, dt_min: float, dt_max: float, p_init: float) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(lanes))
        dt = torch.exp(torch.empty(lanes).uniform_(math.log(dt_min), math.log(dt_max)))
        self.delta = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.p_c = nn.Parameter(torch.full((lanes,), float(p_init)))

    def forward(self) -> tuple[Tensor, Tensor]:
        rate = torch.exp(self.theta)  # |a_c|
        step = F.softplus(self.delta) + self._STEP_FLOOR
        a = torch.exp(-rate * step)
        p = self.p_c.clamp_min(self._NOISE_FLOOR) * (-torch.expm1(-2.0 * rate * step)) / (2.0 * rate)
        return a, p.clamp_min(self._NOISE_FLOOR)


class KLABeliefWorldModel(nn.Module):
    """Observation encoder -> KLA-filtered belief ``z = [μ ‖ log P]``; latent dynamics, reward, decoder.

    See the module docstring for the equations. Shapes: ``obs [B, T, O]`` -> belief ``[B, T, L]`` and
    ``z [B, T, 2L]``; one-step methods take ``z [N, 2L]``, ``a [N, A]``. Implements
    :class:`world_models.base.WorldModel`: ``observe`` filters one step into the carried :class:`BeliefState`,
    windows spend ``burn_in`` transitions building the belief (``window_offset``).
    """

    predicts_reward = True

    def __init__(self, obs_dim: int, action_dim: int, cfg: KLABeliefConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.obs_dim = obs_dim
        self.action_dim = action_dim
        self.lanes = cfg.belief_lanes
        self.latent_dim = 2 * cfg.belief_lanes
        self.encoder = mlp(obs_dim, cfg.enc_mlp_dims, 2 * self.lanes)
        self.transition = LaneDynamics(self.lanes, cfg.belief_dt_min, cfg.belief_dt_max, cfg.belief_p_init)
        self.dynamics = mlp(self.latent_dim + action_dim, cfg.dyn_mlp_dims, self.latent_dim)
        self.reward_head = mlp(self.latent_dim + action_dim, cfg.reward_mlp_dims, 1)
        self.decoder = mlp(self.latent_dim, cfg.dec_mlp_dims, obs_dim)
        bound = cfg.reward_bound
        self.reward_bound: tuple[float, float] | None = None if bound is None else (float(bound[0]), float(bound[1]))
        self.window_offset = cfg.burn_in
        self.window_length = cfg.burn_in + cfg.horizon

    # ------------------------------------------------------------------ filter
    def measure(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """``obs [..., O]`` -> observed values ``v`` and precisions ``Λ``, each ``[..., L]``.

        A row with any NaN is a missing observation: its ``v`` is NaN (``kla_filter`` then skips the update)
        and the encoder sees zeros there, so no NaN reaches the weights' gradients.
        """
        missing = torch.isnan(obs).any(-1, keepdim=True)
        v, s = self.encoder(torch.where(missing, torch.zeros_like(obs), obs)).chunk(2, dim=-1)
        precision = 1.0 / (F.softplus(s) + self.cfg.belief_min_obs_var)
        v = torch.where(missing, torch.full_like(v, float("nan")), v)
        return v, precision

    def latent(self, belief: Belief) -> Tensor:
        """``z = [μ ‖ log P]``."""
        return torch.cat([belief.mean, belief.variance.log()], dim=-1)

    def split(self, z: Tensor) -> Belief:
        """Inverse of :meth:`latent`."""
        mean, log_var = z.split(self.lanes, dim=-1)
        return Belief(mean, log_var.exp())

    def filter(self, obs: Tensor, state: BeliefState | None = None) -> BeliefFilterOutput:
        """Filter ``obs [B, T, O]`` from ``state`` (default: the prior ``λ = 1, η = 0``)."""
        if obs.dim() != 3 or obs.shape[-1] != self.obs_dim:
            raise ValueError(f"obs must be [B, T, {self.obs_dim}], got {tuple(obs.shape)}")
        v, precision = self.measure(obs)
        a, p = self.transition()
        a, p = a.to(v.dtype), p.to(v.dtype)
        keys = torch.ones(*v.shape[:2], 1, dtype=v.dtype, device=v.device)  # lane l observes v[l] directly
        lam0: Tensor | float = 1.0 if state is None else state.lam.unsqueeze(-1)
        eta0: Tensor | float = 0.0 if state is None else state.eta.unsqueeze(-1)
        f = kla_filter(
            v, precision, keys, a.unsqueeze(-1), p.unsqueeze(-1),
            lam0=lam0, eta0=eta0, backend=self.cfg.filter_backend, validate=False,
        )  # fmt: skip
        belief = Belief(f.mean.squeeze(-1), f.var.squeeze(-1))
        return BeliefFilterOutput(belief, self.latent(belief), BeliefState(f.lam[:, -1, :, 0], f.eta[:, -1, :, 0]))

    def observe(self, obs: Tensor, state: BeliefState | None = None) -> tuple[Tensor, BeliefState]:
        """Online update with one observation per row, ``obs [B, O]`` -> ``(z [B, 2L], new state)``; O(1)."""
        out = self.filter(obs.unsqueeze(1), state)
        return out.z[:, 0], out.state

    def encode(self, obs: Tensor) -> Tensor:
        """Latent of a belief built from one observation ``[N, O]`` and the prior (an episode's first step)."""
        return self.observe(obs, None)[0]

    def window_latents(self, obs: Tensor, positions: Sequence[int]) -> Tensor:
        """Beliefs ``z [B, len(positions), 2L]`` at window positions ``burn_in + p`` (random burn-in starts)."""
        positions = list(positions)
        return self.filtered_window(obs, max(positions) + 1)[0][:, positions]

    def filtered_window(self, obs: Tensor, count: int, random_start: bool | None = None) -> tuple[Tensor, Belief]:
        """Latents at window positions ``burn_in .. burn_in + count − 1`` of ``obs [B, T, O]``.

        With ``random_start`` (default ``cfg.random_burn_in``) row ``b``'s filter starts at offset
        ``s_b ~ U{0..burn_in}`` instead of 0. Rows are shifted left by ``s_b`` (the filter is causal per
        row, so the clamped tail never affects a returned position) and read back at ``burn_in − s_b + j``.
        Returns ``z [B, count, 2L]`` and the belief at those positions.
        """
        b0 = self.cfg.burn_in
        if obs.shape[1] < b0 + count:
            raise ValueError(f"need windows of >= {b0 + count} observations (burn_in {b0}), got {tuple(obs.shape)}")
        obs = obs[:, : b0 + count]
        bsz, length = obs.shape[:2]
        random_start = self.cfg.random_burn_in if random_start is None else random_start
        if random_start and b0 > 0:
            start = torch.randint(0, b0 + 1, (bsz,), device=obs.device)
        else:
            start = torch.zeros(bsz, dtype=torch.long, device=obs.device)
        steps = torch.arange(length, device=obs.device)
        idx = (start[:, None] + steps).clamp_max(length - 1)
        shifted = obs.gather(1, idx[..., None].expand(-1, -1, obs.shape[-1]))
        out = self.filter(shifted)
        pos = (b0 - start)[:, None] + steps[:count]

        def pick(x: Tensor) -> Tensor:
            return x.gather(1, pos[..., None].expand(-1, -1, x.shape[-1]))

        return pick(out.z), Belief(pick(out.belief.mean), pick(out.belief.variance))

    # ------------------------------------------------------------------ heads
    def next(self, z: Tensor, a: Tensor) -> Tensor:
        """Predicted next latent ``g([z ‖ a])`` (planning and training rollouts)."""
        return self.dynamics(torch.cat([z, a], -1))

    def reward(self, z: Tensor, a: Tensor) -> Tensor:
        """Predicted reward ``[N]``; ``lo + (hi − lo)(tanh(x) + 1)/2`` when ``reward_bound = [lo, hi]``."""
        x = self.reward_head(torch.cat([z, a], -1)).squeeze(-1)
        if self.reward_bound is None:
            return x
        lo, hi = self.reward_bound
        return lo + (hi - lo) * 0.5 * (torch.tanh(x) + 1.0)

    def decode(self, z: Tensor) -> Tensor:
        """Reconstructed observation ``D(z)``."""
        return self.decoder(z)

    def uncertainty(self, z: Tensor, a: Tensor) -> Tensor:
        """``[N]``: mean over lanes of the predicted next belief variance ``exp(ĝ_logvar(z, a))``."""
        return self.next(z, a)[..., self.lanes :].exp().mean(-1)

    def after_update(self) -> None:
        pass

    # ------------------------------------------------------------------ loss
    def loss(self, batch: TensorDict) -> tuple[Tensor, dict[str, float]]:
        """World-model loss (module docstring) on windows: obs ``[B, ≥ burn_in+H+1, O]``, action and reward
        ``[B, ≥ burn_in+H, ·]``. Windows never cross an episode boundary (the replay buffer's guarantee)."""
        cfg = self.cfg
        H, b0 = cfg.horizon, cfg.burn_in
        obs, action, reward = batch["obs"], batch["action"], batch["reward"]
        if obs.shape[1] < b0 + H + 1:
            raise ValueError(
                f"KLA belief loss needs windows of >= burn_in + horizon = {b0 + H} transitions, "
                f"got obs shape {tuple(obs.shape)}"
            )
        zs, belief = self.filtered_window(obs, H + 1)
        targets = zs[:, 1:].detach()  # stop-grad filtered beliefs of the real next observations
        z = zs[:, 0]
        total = obs.new_zeros(())
        sums = {k: obs.new_zeros(()) for k in ("consistency_loss", "reward_loss", "obs_loss")}
        for h in range(H):
            a = action[:, b0 + h]
            rew = F.mse_loss(self.reward(z, a), reward[:, b0 + h])
            o = obs[:, b0 + h]
            seen = torch.isfinite(o)
            rec = ((self.decode(z) - o.nan_to_num(0.0)) ** 2 * seen).sum() / seen.sum().clamp_min(1)
            z = self.next(z, a)
            cons = F.mse_loss(z, targets[:, h])
            total = total + cfg.rho**h * (cfg.consistency_coef * cons + cfg.reward_coef * rew + cfg.obs_coef * rec)
            sums["consistency_loss"] += cons.detach()  # .item() once at the end: one device sync
            sums["reward_loss"] += rew.detach()
            sums["obs_loss"] += rec.detach()
        total = total / H
        with torch.no_grad():
            a_bar, _ = self.transition()
        metrics = {"wm_loss": total.item(), **{k: (v / H).item() for k, v in sums.items()}}
        metrics["belief_var"] = belief.variance[:, 0].mean().item()
        metrics["belief_a_mean"] = a_bar.mean().item()
        return total, metrics

    @torch.no_grad()
    def diagnostics(self, obs: Tensor) -> dict[str, float]:
        """Belief statistics on single observations ``[N, O]``: mean variance and precision, mean ``ā``."""
        _, precision = self.measure(obs)
        a_bar, p_bar = self.transition()
        belief = self.split(self.encode(obs))
        return {
            "belief_var": belief.variance.mean().item(),
            "belief_obs_precision_median": precision.median().item(),
            "belief_a_mean": a_bar.mean().item(),
            "belief_p_mean": p_bar.mean().item(),
        }
