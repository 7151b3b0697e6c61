"""KLA sequence-mixing layer and a stackable pre-norm block.

:class:`KLALayer` (the "plain" KLA block, Mamba-like)::

    x -> in_proj -> (z, g)                                   each M = expand * d_model wide
    z -> causal depthwise conv (kernel d_conv) -> SiLU       token feature
      -> sensor projection -> v (M), s (M), k (S), q (S)
         obs variance sigma^2 = softplus(s) + 1e-4,  obs precision Lv = 1 / sigma^2  (input-dependent gate)
         k <- k / |k|,  q <- q / |q|                     (L2-normalised per token, shared by all M channels)
    Kalman filter per lane (m, s) (see kla_filter):  phi = Lv[m] k[s]^2,  r = Lv[m] v[m] k[s]
         x_t = a x_{t-1} + w,  w ~ N(0, p);  a = exp(Delta a_c),  a_c = -exp(theta),
         Delta = softplus(delta) + 1e-7
         OU process noise  p = p_c (1 - exp(-2 |a_c| Delta)) / (2 |a_c|)
    read-out  y[m] = sum_s q[s] mu[m, s] + lambda_skip * z[m],   y_var[m] = sum_s q[s]^2 P[m, s]
    out = out_proj(y * SiLU(g)),   out_var = (y_var * SiLU(g)^2) @ (W_out^2)^T

The filter always runs in float32 (float64 inputs stay float64) with autocast off: the precision recursion
loses too much in bf16.  A :class:`KLAState` (belief per lane plus the conv window) can be carried across
calls, so a sequence split into pieces gives the same output as one pass, and decoding costs O(1) per token.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .scan import kla_filter

__all__ = ["KLABlock", "KLALayer", "KLALayerOutput", "KLAState"]


class KLAState(NamedTuple):
    """Recurrent state of one :class:`KLALayer`: ``lam, eta`` are ``(B, M, S)`` (precision and information of
    the last filtered belief) and ``conv`` is ``(B, M, d_conv - 1)`` (the last pre-conv inputs)."""

    lam: Tensor
    eta: Tensor
    conv: Tensor


class KLALayerOutput(NamedTuple):
    """``out, out_var``: ``(B, L, d_model)``; ``mean, var``: posterior belief ``(B, L, M, S)``;
    ``y, y_var``: query read-out ``(B, L, M)`` before gating; ``state``: :class:`KLAState` after the last
    token."""

    out: Tensor
    out_var: Tensor
    mean: Tensor
    var: Tensor
    y: Tensor
    y_var: Tensor
    state: KLAState


class KLALayer(nn.Module):
    """Kalman Linear Attention mixer: an input-gated information-form Kalman filter over an ``M x S`` latent.

    Args:
        d_model: input/output width.
        d_state: ``S``, state lanes per channel (keys/queries have this size).
        expand: ``M = expand * d_model`` channels.
        d_conv: causal depthwise convolution width (1 disables mixing across tokens before the filter).
        dt_min, dt_max: range of the log-uniform initial step ``Delta``.
        p_init: initial process-noise scale ``p_c``.
        noise: ``"ou"`` (Ornstein-Uhlenbeck discretisation, stable when stacking) or ``"zoh"``
            (``p = p_c Delta``).
        backend: filter backend, see :func:`world_models.kla.kla_scan`.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        expand: int = 2,
        d_conv: int = 4,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        p_init: float = 0.01,
        noise: str = "ou",
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if noise not in ("ou", "zoh"):
            raise ValueError(f"noise must be 'ou' or 'zoh', got {noise!r}")
        if d_conv < 1:
            raise ValueError(f"d_conv must be >= 1, got {d_conv}")
        self.d_model, self.d_state, self.d_inner, self.d_conv = d_model, d_state, expand * d_model, d_conv
        self.noise, self.backend = noise, backend
        m, s = self.d_inner, d_state
        self.in_proj = nn.Linear(d_model, 2 * m, bias=False)
        self.conv = nn.Conv1d(m, m, d_conv, groups=m, bias=True)
        self.sensor = nn.Linear(m, 2 * m + 2 * s, bias=False)
        self.out_proj = nn.Linear(m, d_model, bias=False)
        # a_c = -exp(theta) = -1 at init; the time scale lives in Delta (Mamba-style log-uniform init).
        self.theta = nn.Parameter(torch.zeros(m, s))
        dt = torch.exp(torch.empty(m, s).uniform_(math.log(dt_min), math.log(dt_max)))
        self.delta = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.p_c = nn.Parameter(torch.full((m, s), p_init))
        self.skip = nn.Parameter(torch.tensor(-1.0))

    def no_weight_decay(self) -> set[str]:
        """Names of parameters that should be excluded from weight decay (the dynamics)."""
        return {"theta", "delta"}

    def transition(self) -> tuple[Tensor, Tensor]:
        """Discretised dynamics ``(a, p)``, each ``(M, S)``: ``a = exp(Delta a_c) in (0, 1)`` and the process
        noise (OU: ``p_c (1 - exp(-2|a_c| Delta)) / (2|a_c|)``, the exact variance an OU process accumulates
        over Delta; ZOH: ``p_c Delta``), floored at 1e-7 so the precision stays bounded by ``~1/p``."""
        rate = torch.exp(self.theta)  # |a_c|
        step = F.softplus(self.delta) + 1e-7
        a = torch.exp(-rate * step)
        p_c = self.p_c.clamp_min(1e-7)
        if self.noise == "ou":
            p = p_c * (-torch.expm1(-2.0 * rate * step)) / (2.0 * rate)
        else:
            p = p_c * step
        return a, p.clamp_min(1e-7)

    def init_state(self, batch: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> KLAState:
        """Prior state: standard-normal belief (``lam = 1, eta = 0``) and an all-zero conv window."""
        kw = {"device": device, "dtype": dtype or torch.float32}
        m, s = self.d_inner, self.d_state
        return KLAState(
            torch.ones(batch, m, s, **kw),
            torch.zeros(batch, m, s, **kw),
            torch.zeros(batch, m, self.d_conv - 1, **kw),
        )

    def sensor_outputs(self, x: Tensor, state: KLAState | None = None) -> tuple[Tensor, ...]:
        """Token features and observation model: returns ``(zc, g, v, obs_precision, k, q, conv_window)``."""
        z, g = self.in_proj(x).chunk(2, dim=-1)
        zt = z.transpose(1, 2)
        window = self.d_conv - 1
        prev = zt.new_zeros(zt.shape[0], zt.shape[1], window) if state is None else state.conv.to(zt.dtype)
        zt = torch.cat([prev, zt], dim=-1)
        zc = F.silu(self.conv(zt)).transpose(1, 2)
        conv_window = zt[..., zt.shape[-1] - window :]
        m, s = self.d_inner, self.d_state
        v, s_raw, k, q = self.sensor(zc).split([m, m, s, s], dim=-1)
        obs_precision = 1.0 / (F.softplus(s_raw) + 1e-4)  # the floor caps precision at 1e4
        k = F.normalize(k, dim=-1, eps=1e-6)
        q = F.normalize(q, dim=-1, eps=1e-6)
        return zc, g, v, obs_precision, k, q, conv_window

    def forward(self, x: Tensor, state: KLAState | None = None) -> KLALayerOutput:
        """Filter a sequence ``x: (B, L, d_model)``, optionally continuing from ``state``."""
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must be (B, L, {self.d_model}), got {tuple(x.shape)}")
        zc, g, v, prec, k, q, conv_window = self.sensor_outputs(x, state)
        fdtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=x.device.type, enabled=False):
            a, p = self.transition()
            lam0: Tensor | float = 1.0 if state is None else state.lam.to(fdtype)
            eta0: Tensor | float = 0.0 if state is None else state.eta.to(fdtype)
            f = kla_filter(
                v.to(fdtype), prec.to(fdtype), k.to(fdtype), a.to(fdtype), p.to(fdtype),
                q=q.to(fdtype), lam0=lam0, eta0=eta0, backend=self.backend, validate=False,
            )  # fmt: skip
        y = f.y.to(x.dtype) + self.skip * zc
        gate = F.silu(g)
        out = self.out_proj(y * gate)
        out_var = F.linear(f.y_var.to(x.dtype) * gate * gate, self.out_proj.weight**2)
        new_state = KLAState(f.lam[:, -1], f.eta[:, -1], conv_window)
        return KLALayerOutput(out, out_var, f.mean, f.var, f.y, f.y_var, new_state)


class KLABlock(nn.Module):
    """Pre-norm residual block: ``x + KLA(RMSNorm(x))`` then ``x + SwiGLU(RMSNorm(x))``.

    SwiGLU: ``W3 (SiLU(W1 x) * W2 x)`` with hidden width ``2/3 * mlp_ratio * d_model``.  Extra keyword
    arguments go to :class:`KLALayer`.
    """

    def __init__(self, d_model: int, d_state: int = 16, expand: int = 2, mlp_ratio: float = 4.0, **kla_kwargs) -> None:
        super().__init__()
        self.norm1 = nn.RMSNorm(d_model, eps=1e-5)
        self.mixer = KLALayer(d_model, d_state=d_state, expand=expand, **kla_kwargs)
        self.norm2 = nn.RMSNorm(d_model, eps=1e-5)
        hidden = max(1, int(2 * mlp_ratio * d_model / 3))
        self.w12 = nn.Linear(d_model, 2 * hidden, bias=False)
        self.w3 = nn.Linear(hidden, d_model, bias=False)

    def forward(
        self, x: Tensor, state: KLAState | None = None, return_state: bool = False
    ) -> Tensor | tuple[Tensor, KLAState]:
        """``x: (B, L, d_model)`` -> same shape; with ``return_state`` also the mixer's :class:`KLAState`."""
        mix = self.mixer(self.norm1(x), state)
        x = x + mix.out
        h1, h2 = self.w12(self.norm2(x)).chunk(2, dim=-1)
        x = x + self.w3(F.silu(h1) * h2)
        return (x, mix.state) if return_state else x
