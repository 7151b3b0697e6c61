"""Context encoders and a contextual latent world model for offline meta-RL.

Two pieces, used by :mod:`agents.meta_rl`:

* :class:`ContextEncoder`: a permutation-invariant set encoder. Every transition
  ``x_k = (s_k, a_k, r_k, s'_k)`` of a context set ``C = {x_1..x_K}`` of one task goes through the same MLP
  ``phi`` on its own; the set is pooled, so the task representation does not depend on the order::

      mean pooling (ER-TRL):   z = (1/K) sum_k tanh(phi(x_k))                       in [-1, 1]^d
      attention pooling (PMA): z = tanh(W_o concat_h sum_k softmax_k(q_h . K_h phi(x_k) / sqrt(d_h)) V_h phi(x_k))

  An empty context (``K = 0`` or all masked) gives ``z = 0``, the *prior* representation used before
  any transition of a new task has been seen.

* :class:`ContextualWorldModel`: observation encoder ``h = e(o)`` (layer-normalised latent) with an EMA
  target encoder ``e_bar``, task-conditioned residual dynamics ``h' = LN(h + f(h, a, z))`` and reward
  head ``R(h, a, z)``, trained on ``H``-step open-loop latent rollouts (no reconstruction)::

      h_0 = e(o_t),   h_{j+1} = LN(h_j + f(h_j, a_{t+j}, z))
      L = c_cons * sum_{j<H} rho^j ||h_{j+1} - sg(e_bar(o_{t+j+1}))||^2 / D
        + c_rew  * sum_{j<H} rho^j (R(h_j, a_{t+j}, z) - r_{t+j})^2
        + c_proto * L_proto                                                   (weights normalised by sum_j rho^j)

  ``z = ContextEncoder(C)`` is **not** detached: the world-model losses train the context encoder, so
  ``z`` has to carry whatever makes the task's dynamics and rewards predictable. ``L_proto`` is an
  InfoNCE term against moving-average per-task prototypes ``p_k <- m p_k + (1 - m) mean(z of task k)``
  with logits ``-||z - p_k|| / temperature`` (the contextual-world-model paper's choice: temperature 100).
  As a :class:`world_models.base.WorldModel` (``world_model=contextual``) its planning latent is
  ``[h ‖ z]``: ``next`` and ``reward`` carry the task along, ``observe`` takes ``z`` as its state.

Shapes: a *grouped* batch holds ``T`` task slots; ``obs [T, B, H+1, D]``, ``action [T, B, H, A]``,
``reward [T, B, H]`` and ``context [T, M, K]`` (a TensorDict of ``obs, action, reward, next_obs``);
sequence ``b`` of slot ``t`` is conditioned on context ``b mod M`` of that slot.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tensordict import TensorDict
from torch import Tensor, nn

from common.config import check_fields, dims_ok
from common.nn import mlp, soft_update

POOLINGS = ("mean", "attention")


@dataclass
class ContextEncoderConfig:
    """Context encoder (``agent.context``; ER-TRL: 3x200 MLP, z size 20, mean pooling).

    Attributes:
        z_dim: size of the task representation ``z``.
        ctx_mlp_dims: hidden sizes of the per-transition MLP ``phi``.
        use_next_obs: include ``s'`` in a transition's features (dynamics-varying families need it).
        pooling: ``mean`` (ER-TRL) or ``attention`` (multi-head pooling with learned queries).
        attn_heads, attn_dim: heads and width of attention pooling (``attn_dim`` divisible by the heads).
    """

    z_dim: int = 20
    ctx_mlp_dims: list[int] = field(default_factory=lambda: [200, 200, 200])
    use_next_obs: bool = True  # include s' (needed for dynamics-varying families)
    pooling: str = "mean"  # mean | attention
    attn_heads: int = 4
    attn_dim: int = 64

    def __post_init__(self) -> None:
        checks = {
            "z_dim": self.z_dim >= 1,
            "ctx_mlp_dims": dims_ok(self.ctx_mlp_dims),
            "pooling": self.pooling in POOLINGS,
            "attn_heads": self.attn_heads >= 1,
            "attn_dim": self.attn_dim >= 1 and self.attn_dim % max(self.attn_heads, 1) == 0,
        }
        check_fields(self, checks, "context-encoder setting", f"pooling in {POOLINGS}; attn_dim divisible by heads")


class AttentionPool(nn.Module):
    """Pooling by multi-head attention with learned queries (Set Transformer's PMA, one seed vector).

    ``x [..., K, d]`` and an optional boolean ``mask [..., K]`` (True = present) -> ``[..., d]``. Every
    transition is scored against the same queries, so the result is a weighted sum that does not
    depend on the order of the ``K`` entries. Fully masked sets give zeros.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.query = nn.Parameter(torch.randn(heads, self.head_dim) / math.sqrt(self.head_dim))
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        *lead, K, d = x.shape
        k = self.key(x).view(*lead, K, self.heads, self.head_dim)
        v = self.value(x).view(*lead, K, self.heads, self.head_dim)
        scores = torch.einsum("...khd,hd->...hk", k, self.query) / math.sqrt(self.head_dim)
        if mask is not None:
            scores = scores.masked_fill(~mask[..., None, :], float("-inf"))
        w = torch.softmax(scores, dim=-1)
        if mask is not None:
            w = torch.nan_to_num(w, nan=0.0)  # a fully masked set: softmax of all -inf
        pooled = torch.einsum("...hk,...khd->...hd", w, v).reshape(*lead, d)
        return self.out(pooled)


class ContextEncoder(nn.Module):
    """Permutation-invariant encoder of a set of transitions of one task -> task representation ``z``.

    ``forward(context, mask=None)`` takes transition features ``[..., K, F]`` (see :meth:`features`) and
    an optional boolean mask ``[..., K]``; returns ``z [..., z_dim]`` in ``[-1, 1]``.
    """

    def __init__(self, obs_dim: int, action_dim: int, cfg: ContextEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.z_dim = cfg.z_dim
        self.in_dim = obs_dim + action_dim + 1 + (obs_dim if cfg.use_next_obs else 0)
        if cfg.pooling == "mean":
            self.phi = mlp(self.in_dim, cfg.ctx_mlp_dims, cfg.z_dim)
        else:
            self.phi = mlp(self.in_dim, cfg.ctx_mlp_dims, cfg.attn_dim)
            self.pool = AttentionPool(cfg.attn_dim, cfg.attn_heads)
            self.head = nn.Linear(cfg.attn_dim, cfg.z_dim)

    def features(self, obs: Tensor, action: Tensor, reward: Tensor, next_obs: Tensor) -> Tensor:
        """``x = [s, a, r, s']`` (``s'`` only with ``use_next_obs``), last dim concatenated."""
        parts = [obs, action, reward[..., None]]
        if self.cfg.use_next_obs:
            parts.append(next_obs)
        return torch.cat(parts, dim=-1)

    def forward(self, context: Tensor, mask: Tensor | None = None) -> Tensor:
        if context.shape[-1] != self.in_dim:
            raise ValueError(f"context features have width {context.shape[-1]}, the encoder expects {self.in_dim}")
        if context.shape[-2] == 0:
            return context.new_zeros(*context.shape[:-2], self.z_dim)
        if self.cfg.pooling == "mean":
            e = torch.tanh(self.phi(context))  # [..., K, z]
            if mask is None:
                return e.mean(-2)
            m = mask.to(e.dtype)[..., None]
            return (e * m).sum(-2) / m.sum(-2).clamp_min(1.0)
        z = torch.tanh(self.head(self.pool(self.phi(context), mask)))
        if mask is not None:
            z = z * mask.any(-1, keepdim=True).to(z.dtype)  # empty context -> the prior z = 0
        return z


@dataclass
class ContextualWMConfig:
    """Contextual latent world model (``world_model=contextual``; Nakhaei et al. 2026: latent 512, H 5, rho 0.99).

    The task representation ``z`` comes from a :class:`ContextEncoder` whose settings are the agent's
    (``agent.context``, handed to the model as ``context=``); its optimiser (AdamW, ``agent.optim.wm_lr``) too.

    Attributes:
        name: ``"contextual"``, the registry name.
        latent_dim: size of the observation latent ``h`` (the planning latent is ``[h ‖ z]``).
        enc_mlp_dims / dyn_mlp_dims / reward_mlp_dims: hidden sizes of encoder, dynamics and reward head.
        horizon: H, open-loop rollout steps in the loss; rho: per-step weight ``rho^j``.
        enc_tau: Polyak rate of the EMA target encoder.
        consistency_coef / reward_coef / proto_coef: weights of the latent, reward and InfoNCE terms (0 disables).
        proto_momentum: ``m`` of the per-task prototypes; proto_temperature: logits ``-||z - p|| / temperature``.
    """

    name: str = "contextual"
    latent_dim: int = 512
    enc_mlp_dims: list[int] = field(default_factory=lambda: [256])
    dyn_mlp_dims: list[int] = field(default_factory=lambda: [512, 512])
    reward_mlp_dims: list[int] = field(default_factory=lambda: [512, 512])
    horizon: int = 5
    rho: float = 0.99
    enc_tau: float = 0.005
    consistency_coef: float = 1.0
    reward_coef: float = 1.0
    proto_coef: float = 1.0
    proto_momentum: float = 0.9
    proto_temperature: float = 100.0

    def __post_init__(self) -> None:
        checks = {
            "latent_dim": self.latent_dim >= 1,
            "enc_mlp_dims": dims_ok(self.enc_mlp_dims),
            "dyn_mlp_dims": dims_ok(self.dyn_mlp_dims),
            "reward_mlp_dims": dims_ok(self.reward_mlp_dims),
            "horizon": self.horizon >= 1,
            "rho": 0.0 < self.rho <= 1.0,
            "enc_tau": 0.0 < self.enc_tau <= 1.0,
            "consistency_coef": self.consistency_coef >= 0,
            "reward_coef": self.reward_coef >= 0,
            "proto_coef": self.proto_coef >= 0,
            "proto_momentum": 0.0 <= self.proto_momentum < 1.0,
            "proto_temperature": self.proto_temperature > 0,
        }
        check_fields(self, checks, "contextual world-model setting")


class ContextualWorldModel(nn.Module):
    """Latent world model whose dynamics and reward depend on a task representation ``z`` (module docstring).

    :class:`world_models.base.WorldModel` view: the planning latent is ``x = [h ‖ z]`` (``latent_dim`` =
    ``cfg.latent_dim + z_dim``), so ``next(x, a)`` and ``reward(x, a)`` keep the contract's signatures and carry the
    task along; ``observe(obs, state)`` takes the task representation as its state (``None``: the prior ``z = 0``)
    and returns it unchanged (the model cannot infer it from observations alone: :meth:`infer_task` does from a
    context). ``loss`` works on grouped batches (module docstring). Meta-RL reads the parts directly:
    :meth:`encode`, :meth:`infer_task`, :meth:`rollout_loss`, :meth:`loss_and_task`.

    ``context`` sets the context encoder (default :class:`ContextEncoderConfig`); ``num_tasks`` sizes the
    prototype table (task ids are the family's global indices).
    """

    window_offset = 0
    predicts_reward = True

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        cfg: ContextualWMConfig,
        context: ContextEncoderConfig | None = None,
        num_tasks: int = 64,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        context = ContextEncoderConfig() if context is None else context
        self.z_dim = context.z_dim
        self.h_dim = cfg.latent_dim
        self.latent_dim = cfg.latent_dim + context.z_dim
        self.window_length = cfg.horizon
        self.context_encoder = ContextEncoder(obs_dim, action_dim, context)
        self.encoder = mlp(obs_dim, cfg.enc_mlp_dims, cfg.latent_dim)
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        cond = cfg.latent_dim + action_dim + context.z_dim
        self.dynamics = mlp(cond, cfg.dyn_mlp_dims, cfg.latent_dim)
        self.reward_head = mlp(cond, cfg.reward_mlp_dims, 1)
        self.num_tasks = int(num_tasks)
        self.register_buffer("prototypes", torch.zeros(self.num_tasks, context.z_dim))
        self.register_buffer("proto_seen", torch.zeros(self.num_tasks, dtype=torch.bool))

    # -- parts ---------------------------------------------------------------------------------
    def encode(self, obs: Tensor, target: bool = False) -> Tensor:
        """Observation latent ``h`` (layer-normalised) of ``obs [..., D]``."""
        h = (self.target_encoder if target else self.encoder)(obs)
        return F.layer_norm(h, h.shape[-1:])

    def infer_task(self, context: Tensor, mask: Tensor | None = None) -> Tensor:
        """``z`` of context features ``[..., K, F]`` (:meth:`context_features`)."""
        return self.context_encoder(context, mask)

    def step(self, h: Tensor, a: Tensor, task: Tensor) -> Tensor:
        """``h' = LN(h + f(h, a, z))``."""
        h = h + self.dynamics(torch.cat([h, a, task], -1))
        return F.layer_norm(h, h.shape[-1:])

    def task_reward(self, h: Tensor, a: Tensor, task: Tensor) -> Tensor:
        """``R(h, a, z)`` ``[N]``."""
        return self.reward_head(torch.cat([h, a, task], -1)).squeeze(-1)

    def update_target(self) -> None:
        soft_update(self.target_encoder, self.encoder, self.cfg.enc_tau)

    def join(self, h: Tensor, task: Tensor | None) -> Tensor:
        """The planning latent ``[h ‖ z]``; ``task`` ``[z]``, ``[..., z]`` or ``None`` (the prior ``z = 0``)."""
        if task is None:
            task = h.new_zeros(self.z_dim)
        return torch.cat([h, task.to(h.dtype).expand(*h.shape[:-1], self.z_dim)], -1)

    def split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``[h ‖ z]`` -> ``(h, z)``."""
        return x[..., : self.h_dim], x[..., self.h_dim :]

    # -- the WorldModel contract ---------------------------------------------------------------
    def observe(self, obs: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """``[h(obs) ‖ z]`` with ``z`` = ``state`` (the task representation; ``None``: the prior 0), unchanged."""
        return self.join(self.encode(obs), state), state

    def window_latents(self, obs: Tensor, positions: Sequence[int], task: Tensor | None = None) -> Tensor:
        """``[h ‖ z]`` at window positions of ``obs [B, T, D]``; ``task [B, z]`` per window (``None``: prior)."""
        h = self.encode(obs[:, list(positions)])
        return self.join(h, None if task is None else task[:, None])

    def next(self, z: Tensor, a: Tensor) -> Tensor:
        h, task = self.split(z)
        return torch.cat([self.step(h, a, task), task], -1)

    def reward(self, z: Tensor, a: Tensor) -> Tensor:
        h, task = self.split(z)
        return self.task_reward(h, a, task)

    def after_update(self) -> None:
        self.update_target()

    @torch.no_grad()
    def diagnostics(self, obs: Tensor) -> dict[str, float]:
        """Spread of the observation latents (mean per-dimension std of ``h``)."""
        return {"latent_std": float(self.encode(obs).std(0).mean())}

    def uncertainty(self, z: Tensor, a: Tensor) -> Tensor | None:
        return None

    # -- training ------------------------------------------------------------------------------
    def context_features(self, context: TensorDict) -> Tensor:
        return self.context_encoder.features(context["obs"], context["action"], context["reward"], context["next_obs"])

    def rollout_loss(
        self, obs: Tensor, action: Tensor, reward: Tensor, task: Tensor
    ) -> tuple[Tensor, dict[str, float]]:
        """Consistency + reward loss of ``H``-step open-loop rollouts; ``obs [N, H+1, D]``, ``task [N, z]``."""
        c = self.cfg
        H = action.shape[1]
        with torch.no_grad():
            targets = self.encode(obs[:, 1 : H + 1], target=True)
        weights = c.rho ** torch.arange(H, dtype=obs.dtype, device=obs.device)
        weights = weights / weights.sum()
        h = self.encode(obs[:, 0])
        cons = obs.new_zeros(())
        rew = obs.new_zeros(())
        for j in range(H):
            rew = rew + weights[j] * F.mse_loss(self.task_reward(h, action[:, j], task), reward[:, j])
            h = self.step(h, action[:, j], task)
            cons = cons + weights[j] * F.mse_loss(h, targets[:, j])
        loss = c.consistency_coef * cons + c.reward_coef * rew
        return loss, {"consistency_loss": cons.item(), "reward_loss": rew.item()}

    def proto_loss(self, z: Tensor, task_id: Tensor) -> Tensor:
        """InfoNCE of ``z [N, d]`` against the prototypes of the tasks seen so far; updates the prototypes."""
        c = self.cfg
        if int(task_id.max()) >= self.num_tasks or int(task_id.min()) < 0:
            raise ValueError(f"task ids must lie in [0, {self.num_tasks}); got {task_id.tolist()}")
        with torch.no_grad():
            for k in task_id.unique():
                mean = z[task_id == k].mean(0)
                if self.proto_seen[k]:
                    self.prototypes[k].lerp_(mean, 1.0 - c.proto_momentum)
                else:
                    self.prototypes[k] = mean
                    self.proto_seen[k] = True
        seen = torch.nonzero(self.proto_seen).squeeze(-1)
        if seen.numel() < 2:
            return z.new_zeros(())
        logits = -torch.cdist(z, self.prototypes[seen]) / c.proto_temperature
        target = torch.searchsorted(seen, task_id)
        return F.cross_entropy(logits, target)

    def loss(self, batch: TensorDict) -> tuple[Tensor, dict[str, float]]:
        """World-model loss on a grouped batch (module docstring); ``z`` keeps its gradient."""
        loss, metrics, _ = self.loss_and_task(batch)
        return loss, metrics

    def loss_and_task(self, batch: TensorDict) -> tuple[Tensor, dict[str, float], Tensor]:
        """:meth:`loss` plus the task representations ``z [T, M, d]`` it used (with their gradient)."""
        obs, action, reward = batch["obs"], batch["action"], batch["reward"]
        T, B, H1, D = obs.shape
        H = min(self.cfg.horizon, H1 - 1)
        z = self.infer_task(self.context_features(batch["context"]))  # [T, M, d]
        M = z.shape[1]
        z_seq = z[:, torch.arange(B, device=z.device) % M]  # [T, B, d]
        loss, metrics = self.rollout_loss(
            obs[:, :, : H + 1].reshape(T * B, H + 1, D),
            action[:, :, :H].reshape(T * B, H, -1),
            reward[:, :, :H].reshape(T * B, H),
            z_seq.reshape(T * B, -1),
        )
        if self.cfg.proto_coef > 0 and "task_id" in batch.keys():
            proto = self.proto_loss(z.reshape(T * M, -1), batch["task_id"].repeat_interleave(M))
            loss = loss + self.cfg.proto_coef * proto
            metrics["proto_loss"] = proto.item()
        metrics["wm_loss"] = loss.item()
        return loss, metrics, z


__all__ = [
    "POOLINGS",
    "AttentionPool",
    "ContextEncoder",
    "ContextEncoderConfig",
    "ContextualWMConfig",
    "ContextualWorldModel",
]
