"""MPPI planner over a latent world model, shared by every agent that plans.

The planner follows DC-MPC / TD-MPC2 (MPPI with a policy prior and a learned terminal value).
For each of ``B`` independent environments, given the latent ``z`` of the current observation:

1. **Policy prior.** ``P = num_pi_trajs`` action sequences come from rolling the policy prior
   through the model: ``a_h = π(z_h)``, ``z_{h+1} = f(z_h, a_h)`` for ``h < H``. The planner calls
   ``model.policy`` on ``B·P`` rows (``z`` repeated), so a noisy prior can give every trajectory its
   own noise (draw it with shape ``[N, A]``, never ``[A]`` broadcast: the public DC-MPC code's shared
   noise makes all 24 prior trajectories identical).
2. **Iterations** ``i = 1 … I``. Sample ``S = num_samples`` sequences
   ``a^{(j)} ~ N(μ, σ²)`` clamped to ``[-1, 1]``, append the ``P`` prior sequences and score each by

       J = Σ_{h<H} ρ^h r̂(z_h, a_h) + ρ^H V(z_H) + κ · U,   U = Σ_{h<H} ρ^h u(z_h, a_h),

   with ``z_0 = z``, ``z_{h+1} = f(z_h, a_h)``, ``ρ = discount`` and ``u`` the model's uncertainty of a step.
   ``κ = +optimism`` when planning for training (a bonus: seek what the model does not know) and
   ``κ = −caution`` when planning for evaluation (a penalty: avoid it); the ``U`` term, and the call to
   ``model.uncertainty``, only when ``κ ≠ 0``. Keep the ``K = num_elites``
   best, with scores ``s_k = exp(τ (J_k − max_k J_k)) / Σ_k exp(τ (J_k − max_k J_k))``, ``τ = temperature``,
   and refit

       μ ← Σ_k s_k a^{(k)},    σ ← clamp( sqrt(Σ_k s_k (a^{(k)} − μ)²), min_std, max_std ).

   At the first iteration ``σ = max_std`` and ``μ`` is the previous plan's final mean shifted one
   step forward with a zero last step (warm start), or zeros at the start of an episode.
3. **Action.** The final ``μ`` is stored for the next warm start. The returned action is the first
   action of one elite drawn with probability ``s_k`` (as in DC-MPC and TD-MPC2); that elite's whole
   sequence is kept as :attr:`MPPIPlanner.last_plan`.

The planner adds no exploration noise; the agent does (DC-MPC: N(0, σ_t²) on a schedule;
TD-MPC2: N(0, σ²) with the planner's final std, available as :attr:`MPPIPlanner.last_std`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["MPPIConfig", "MPPIPlanner", "PlanningModel", "UncertaintyModel", "rollout_uncertainty"]


@dataclass
class MPPIConfig:
    """Settings of :class:`MPPIPlanner` (``agent.planner``; defaults: DC-MPC / TD-MPC2).

    Attributes:
        horizon: planning horizon H (number of actions per sequence).
        iterations: MPPI refinement rounds I.
        num_samples: Gaussian action sequences sampled per round (per environment).
        num_elites: K, sequences kept per round; at most ``num_samples + num_pi_trajs`` since
            elites are picked among the sampled and the policy-prior sequences together.
        num_pi_trajs: policy-prior sequences per environment (0 disables the prior).
        min_std, max_std: clamp of the per-dimension sampling std; each ``plan`` starts at ``max_std``.
        temperature: τ in the elite scores exp(τ (J − max J)).
        discount: ρ in J. 0.9 is the DC-MPC code's value (its fault 5: ρ is used where the paper
            writes γ); TD-MPC2 discounts with the agent's γ instead. Must lie in (0, 1].
        optimism: β >= 0; training plans score ``J + β·U`` (U the discounted sum of ``model.uncertainty``
            along the sequence). 0 = off.
        caution: λ >= 0; evaluation plans score ``J − λ·U``. 0 = off.
        prior_fallback: in evaluation, act with the policy prior when its (noise-free) rollout is less
            uncertain than the executed plan (mean ``u`` over the horizon; the agent applies it).
    """

    horizon: int = 3
    iterations: int = 6
    num_samples: int = 512
    num_elites: int = 64
    num_pi_trajs: int = 24
    min_std: float = 0.05
    max_std: float = 2.0
    temperature: float = 0.5
    discount: float = 0.9
    optimism: float = 0.0
    caution: float = 0.0
    prior_fallback: bool = False

    def __post_init__(self) -> None:
        if self.horizon < 1:
            raise ValueError(f"MPPIConfig.horizon must be >= 1, got {self.horizon}")
        if self.iterations < 1:
            raise ValueError(f"MPPIConfig.iterations must be >= 1, got {self.iterations}")
        if self.num_samples < 1:
            raise ValueError(f"MPPIConfig.num_samples must be >= 1, got {self.num_samples}")
        if self.num_pi_trajs < 0:
            raise ValueError(f"MPPIConfig.num_pi_trajs must be >= 0, got {self.num_pi_trajs}")
        pool = self.num_samples + self.num_pi_trajs
        if not 1 <= self.num_elites <= pool:
            raise ValueError(
                f"MPPIConfig.num_elites must satisfy 1 <= num_elites <= num_samples + num_pi_trajs "
                f"(= {self.num_samples} + {self.num_pi_trajs} = {pool}: elites are chosen among the sampled "
                f"and policy-prior sequences together), got {self.num_elites}"
            )
        if not self.min_std > 0:
            raise ValueError(f"MPPIConfig.min_std must be > 0, got {self.min_std}")
        if not self.min_std <= self.max_std:
            raise ValueError(
                f"MPPIConfig.max_std must be >= min_std, got min_std={self.min_std}, max_std={self.max_std}"
            )
        if not self.temperature > 0:
            raise ValueError(f"MPPIConfig.temperature must be > 0, got {self.temperature}")
        if not 0 < self.discount <= 1:
            raise ValueError(f"MPPIConfig.discount must lie in (0, 1], got {self.discount}")
        for name in ("optimism", "caution"):
            if not getattr(self, name) >= 0:
                raise ValueError(
                    f"MPPIConfig.{name} must be >= 0 (its sign is fixed: a bonus in training, a penalty in "
                    f"evaluation), got {getattr(self, name)}"
                )

    @property
    def uses_uncertainty(self) -> bool:
        """Whether any setting needs the model's uncertainty."""
        return self.optimism > 0 or self.caution > 0 or self.prior_fallback


class PlanningModel(Protocol):
    """What the planner needs from a world model; every method is batched over a leading dim N.

    ``z`` is a tensor ``[N, *latent]``, ``a`` is ``[N, A]`` in ``[-1, 1]``. Methods are called under
    ``torch.no_grad``. Any noise (policy prior, terminal action) should be drawn per row.
    """

    def next(self, z: Tensor, a: Tensor) -> Tensor:
        """Latent used for planning after taking ``a`` in ``z`` (e.g. DCWM's expected code)."""
        ...

    def reward(self, z: Tensor, a: Tensor) -> Tensor:
        """Predicted reward ``[N]``."""
        ...

    def value(self, z: Tensor) -> Tensor:
        """Terminal value ``[N]`` (DC-MPC: mean of 2 random online Q's at π(z))."""
        ...

    def policy(self, z: Tensor) -> Tensor:
        """Policy-prior action ``[N, A]`` (may add noise, drawn per row)."""
        ...


@runtime_checkable
class UncertaintyModel(PlanningModel, Protocol):
    """A :class:`PlanningModel` that also scores its uncertainty, needed when ``MPPIConfig.optimism`` or
    ``caution`` is non-zero."""

    def uncertainty(self, z: Tensor, a: Tensor) -> Tensor:
        """Per-row uncertainty ``[N]`` of the step ``(z, a)``. The planner calls it once per rollout, on the
        ``H·N`` rows of all its steps. A model may also define ``next_and_uncertainty(z, a) -> (next, u)`` to
        compute both in one pass (the planner prefers it); ``u = None`` there leaves the step to that one call."""
        ...


def _repeat_rows(z: Tensor, n: int) -> Tensor:
    """``[B, *latent] -> [B·n, *latent]``, each environment's row repeated ``n`` times (env-major)."""
    return z.repeat_interleave(n, dim=0)


class MPPIPlanner:
    """Batched MPPI planner (see the module docstring for the algorithm).

    Warm-start state is kept in two independent slots, one for training (``eval_mode=False``) and one
    for evaluation (``eval_mode=True``), so an evaluation run between or during training episodes
    never disturbs the training episode's warm start. Call :meth:`reset` at each episode start.
    If ``plan`` is called with a batch size different from the stored plan's, it starts from zeros.
    """

    def __init__(self, cfg: MPPIConfig, action_dim: int, device: torch.device | str = "cpu") -> None:
        if action_dim < 1:
            raise ValueError(f"action_dim must be >= 1, got {action_dim}")
        self.cfg = cfg
        self.action_dim = action_dim
        self.device = torch.device(device)
        self._prev_mean: dict[bool, Tensor | None] = {False: None, True: None}
        # The elite sequence [B, H, A] whose first action the latest plan call returned.
        self.last_plan: Tensor | None = None
        # First-step std [B, A] after the final iteration of the latest plan call (for TD-MPC2-style noise).
        self.last_std: Tensor | None = None

    # ------------------------------------------------------------------ warm start
    def reset(self, eval_mode: bool | None = None) -> None:
        """Forget the warm-start mean (call at episode start). ``None`` clears both slots."""
        slots = (False, True) if eval_mode is None else (eval_mode,)
        for slot in slots:
            self._prev_mean[slot] = None

    def prev_mean(self, *, eval_mode: bool = False) -> Tensor | None:
        """Final mean ``[B, H, A]`` of the latest plan in this slot (not yet shifted), or None."""
        return self._prev_mean[eval_mode]

    def warm_start_mean(
        self, batch_size: int, *, eval_mode: bool = False, dtype: torch.dtype = torch.float32
    ) -> Tensor:
        """Initial mean ``[B, H, A]`` of the next plan: the stored mean shifted by one step with a zero
        last step, or zeros after :meth:`reset` (or when the batch size changed)."""
        cfg = self.cfg
        mean = torch.zeros(batch_size, cfg.horizon, self.action_dim, device=self.device, dtype=dtype)
        prev = self._prev_mean[eval_mode]
        if prev is not None and prev.shape[0] == batch_size:
            mean[:, :-1] = prev[:, 1:].to(dtype)
        return mean

    # ------------------------------------------------------------------ evaluation
    def estimate_value(self, z: Tensor, actions: Tensor, model: PlanningModel, unc_coef: float = 0.0) -> Tensor:
        """Return J ``[N]`` for ``N`` action sequences ``actions [N, H, A]`` from latents ``z [N, ...]``:
        ``J = Σ_{h<H} ρ^h r̂(z_h, a_h) + ρ^H V(z_H) (+ κ Σ_{h<H} ρ^h u(z_h, a_h))``, ``κ = unc_coef``."""
        cfg = self.cfg
        n = actions.shape[0]
        ret = torch.zeros(n, device=actions.device, dtype=actions.dtype)
        tally = _UncertaintyTally(model, torch.zeros_like(ret)) if unc_coef != 0 else None
        weight = 1.0
        for h in range(cfg.horizon):
            a = actions[:, h]
            ret = ret + weight * _as_rows(model.reward(z, a), n, "reward")
            z = tally.step(z, a, weight) if tally is not None else model.next(z, a)
            weight *= cfg.discount
        ret = ret + weight * _as_rows(model.value(z), n, "value")
        if tally is not None:
            ret = ret + unc_coef * tally.total()
        return ret

    def _prior_trajectories(self, z: Tensor, model: PlanningModel, dtype: torch.dtype) -> Tensor:
        """Roll the policy prior out of each env's latent: ``[B, P, H, A]``."""
        cfg = self.cfg
        b, p = z.shape[0], cfg.num_pi_trajs
        zr = _repeat_rows(z, p)
        acts = []
        for h in range(cfg.horizon):
            a = model.policy(zr)
            if a.shape != (b * p, self.action_dim):
                raise ValueError(f"model.policy returned shape {tuple(a.shape)}, expected {(b * p, self.action_dim)}")
            a = a.to(dtype).clamp(-1.0, 1.0)
            acts.append(a)
            if h < cfg.horizon - 1:
                zr = model.next(zr, a)
        return torch.stack(acts, dim=1).view(b, p, cfg.horizon, self.action_dim)

    # ------------------------------------------------------------------ planning
    @torch.no_grad()
    def plan(
        self,
        z: Tensor,
        model: PlanningModel,
        *,
        eval_mode: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Plan for ``B`` environments from latents ``z [B, *latent]``; return actions ``[B, A]`` in
        ``[-1, 1]``. All sampling uses ``generator`` (which must live on ``z``'s device) when given.
        ``eval_mode`` picks the warm-start slot (see the class docstring)."""
        cfg = self.cfg
        if z.dim() < 1 or z.shape[0] < 1:
            raise ValueError(f"z must be batched as [B, *latent] with B >= 1, got shape {tuple(z.shape)}")
        if z.device.type != self.device.type:
            raise ValueError(f"z is on {z.device}, planner was built for {self.device}")
        dtype = z.dtype if z.is_floating_point() else torch.float32
        unc_coef = -cfg.caution if eval_mode else cfg.optimism
        s = cfg.num_samples
        b, p, k = z.shape[0], cfg.num_pi_trajs, cfg.num_elites
        h_, a_ = cfg.horizon, self.action_dim
        n_traj = p + s

        prior = self._prior_trajectories(z, model, dtype) if p > 0 else None
        z_rows = _repeat_rows(z, n_traj)  # [B·(P+S), *latent], env-major

        max_std = cfg.max_std
        mean = self.warm_start_mean(b, eval_mode=eval_mode, dtype=dtype).to(z.device)
        std = torch.full_like(mean, max_std)
        actions = torch.empty(b, n_traj, h_, a_, device=z.device, dtype=dtype)
        if prior is not None:
            actions[:, :p] = prior
        bad = torch.zeros(b, dtype=torch.bool, device=z.device)

        for _ in range(cfg.iterations):
            eps = torch.randn(b, s, h_, a_, device=z.device, dtype=dtype, generator=generator)
            actions[:, p:] = (mean.unsqueeze(1) + std.unsqueeze(1) * eps).clamp(-1.0, 1.0)

            value = self.estimate_value(z_rows, actions.view(b * n_traj, h_, a_), model, unc_coef).view(b, n_traj)
            finite = torch.isfinite(value)
            bad |= ~finite.any(dim=1)
            value = torch.where(finite, value, torch.full_like(value, -torch.inf))

            elite_value, elite_idx = torch.topk(value, k, dim=1)  # [B, K]
            elite_actions = torch.gather(actions, 1, elite_idx[:, :, None, None].expand(b, k, h_, a_))  # [B, K, H, A]
            # exp(τ (J − max J)) normalised; non-finite J get weight 0.
            score = torch.softmax(cfg.temperature * elite_value, dim=1).nan_to_num(0.0)
            w = score[:, :, None, None]
            mean = (w * elite_actions).sum(dim=1)
            var = (w * (elite_actions - mean.unsqueeze(1)) ** 2).sum(dim=1)
            std = var.sqrt().clamp(cfg.min_std, max_std)

        if bool(bad.any()):
            raise RuntimeError(
                "MPPI: every trajectory had a non-finite return J for environment(s) "
                f"{bad.nonzero().flatten().tolist()}; check the model's reward/value outputs"
            )

        self._prev_mean[eval_mode] = mean.clone()
        self.last_std = std[:, 0].clone()
        pick = torch.multinomial(score, 1, generator=generator)  # [B, 1]
        self.last_plan = torch.gather(elite_actions, 1, pick[:, :, None, None].expand(b, 1, h_, a_)).squeeze(1)
        return self.last_plan[:, 0].clamp(-1.0, 1.0)


def rollout_uncertainty(z: Tensor, actions: Tensor, model: PlanningModel) -> Tensor:
    """Mean of ``model.uncertainty`` along ``actions [N, H, A]`` from ``z [N, ...]``:
    ``(1/H) Σ_{h<H} u(z_h, a_h)``, ``z_{h+1} = f(z_h, a_h)``; shape ``[N]``."""
    n, horizon = actions.shape[0], actions.shape[1]
    tally = _UncertaintyTally(model, torch.zeros(n, device=actions.device, dtype=actions.dtype))
    for h in range(horizon):
        z = tally.step(z, actions[:, h], 1.0)
    return tally.total() / horizon


class _UncertaintyTally:
    """``Σ_h w_h u(z_h, a_h)`` over a rollout, added onto ``zeros [N]``, stepping the model as it goes.

    A step whose uncertainty the model's ``next_and_uncertainty`` gives (from the pass that predicts ``z_{h+1}``)
    is added at once; the others are kept and scored together by one ``model.uncertainty`` call on their
    ``H·N`` rows when :meth:`total` is read, so an estimator with a cost per call (SFR's backward pass, a
    string of small kernels on a GPU) pays it once per rollout rather than once per step.
    """

    def __init__(self, model: PlanningModel, zeros: Tensor) -> None:
        self.uncertainty = getattr(model, "uncertainty", None)
        if not callable(self.uncertainty):
            raise TypeError(
                f"planning with uncertainty (MPPIConfig.optimism, caution or prior_fallback) needs a model with an "
                f"uncertainty(z, a) -> [N] method; {type(model).__name__} has none (turn them off or implement it)"
            )
        both = getattr(model, "next_and_uncertainty", None)
        self.next_and_uncertainty = both if callable(both) else (lambda z, a: (model.next(z, a), None))
        self.n = zeros.shape[0]
        self.sum = zeros
        self.later: list[tuple[float, Tensor, Tensor]] = []  # (w_h, z_h, a_h) left to the one call

    def step(self, z: Tensor, a: Tensor, weight: float) -> Tensor:
        """Count the step ``(z, a)`` with weight ``w``; return ``next(z, a)``."""
        nxt, u = self.next_and_uncertainty(z, a)
        if u is None:
            self.later.append((weight, z, a))
        else:
            self.sum = self.sum + weight * _as_rows(u, self.n, "uncertainty")
        return nxt

    def total(self) -> Tensor:
        if self.later:
            weights, zs, acts = zip(*self.later)
            u = _as_rows(self.uncertainty(torch.cat(zs), torch.cat(acts)), self.n * len(zs), "uncertainty")
            w = torch.tensor(weights, device=u.device, dtype=u.dtype)
            self.sum = self.sum + (w[:, None] * u.view(len(zs), self.n)).sum(0)
            self.later = []
        return self.sum


def _as_rows(x: Tensor, n: int, name: str) -> Tensor:
    """Accept ``[N]`` or ``[N, 1]`` model outputs; anything else is a contract error."""
    if x.shape == (n, 1):
        x = x.squeeze(1)
    if x.shape != (n,):
        raise ValueError(f"model.{name} returned shape {tuple(x.shape)}, expected ({n},)")
    return x
