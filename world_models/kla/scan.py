"""Parallel (associative-scan) form of the KLA filter, input checks and the public dispatch functions.

The per-lane filter (see :mod:`world_models.kla.reference` for the step equations) is computed with two scans:

1. **Precision (Moebius) scan.**  predict + update is the fractional-linear map
   ``lam_t = (A lam_{t-1} + B) / (C lam_{t-1} + D)`` with leaf ``[[1 + p phi_t, a^2 phi_t], [p, a^2]]``
   (the textbook leaf times ``a^2``, a positive rescale the projective action ignores; it keeps the leaf
   entries O(1) even for tiny ``a``).  Leaves compose by matrix product, later on the left:
   ``combine(X, Y) = Y X / tr(Y X)``.  Trace normalisation keeps the products finite
   (``det`` of an unnormalised product is ``a^(2L)``) without changing the action, so associativity is exact.
   With the inclusive prefix ``[[Pa, Pb], [Pc, Pd]]``: ``lam_t = (Pa lam_0 + Pb) / (Pc lam_0 + Pd)``.
2. **Information (affine) scan.**  ``eta_t = alpha_t eta_{t-1} + r_t`` with
   ``alpha_t = a / (a^2 + p lam_{t-1})``; elements ``(alpha, r)`` compose as
   ``combine((a1, r1), (a2, r2)) = (a2 a1, a2 r1 + r2)`` and ``eta_t = (prod alpha) eta_0 + R_t``.

:func:`kla_scan_torch` runs them chunked: inside chunks of ~sqrt(L) steps sequentially (all chunks at once),
across chunks with :func:`associative_scan`, a work-efficient odd/even (Blelloch-style) recursion with O(L)
combines and O(log L) depth for any length; ``chunk=1`` makes the whole computation one log-depth scan.  The
chunked form does less arithmetic than a pure tree scan, which matters on CPUs.  Everything is ordinary
PyTorch, so autograd differentiates it and it runs on any device and dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from . import triton_kernels
from .reference import kla_scan_reference

__all__ = [
    "BACKENDS",
    "KLAFilterOutput",
    "associative_scan",
    "default_chunk",
    "kla_filter",
    "kla_readout",
    "kla_scan",
    "kla_scan_torch",
    "posterior",
    "resolve_backend",
]

BACKENDS = ("auto", "reference", "scan", "triton")

Elems = tuple[Tensor, ...]


# ----------------------------------------------------------------------------------------------------------
# Generic associative scan
# ------------------------------------------------------------------------------------------------------------
def _slice(x: Tensor, dim: int, start: int, stop: int, step: int = 1) -> Tensor:
    index = [slice(None)] * x.dim()
    index[dim] = slice(start, stop, step)
    return x[tuple(index)]


def associative_scan(combine: Callable[[Elems, Elems], Elems], elems: Sequence[Tensor], dim: int = 1) -> Elems:
    """Inclusive scan ``out_t = e_0 o e_1 o ... o e_t`` of an associative operator along ``dim``.

    ``combine(earlier, later)`` receives two tuples of equal-shape tensors (the earlier element first) and
    returns their composition; it need not be commutative.  Odd/even recursion: combine neighbouring pairs,
    scan the half-length sequence of pairs recursively, then fill the even positions with one more combine.
    That is ``~2L`` combines in ``2 log2 L`` rounds, for any ``L`` (odd lengths carry their last element).
    """
    elems = tuple(elems)
    n = elems[0].shape[dim]
    if n < 2:
        return elems
    dim = dim % elems[0].dim()
    m = n // 2
    pairs = combine(
        tuple(_slice(x, dim, 0, 2 * m, 2) for x in elems),
        tuple(_slice(x, dim, 1, 2 * m, 2) for x in elems),
    )
    odd = associative_scan(combine, pairs, dim)  # prefixes ending at positions 1, 3, 5, ...
    k = (n - 1) // 2  # even positions 2, 4, ... still to fill
    even_tail = combine(tuple(_slice(o, dim, 0, k) for o in odd), tuple(_slice(x, dim, 2, n, 2) for x in elems))
    out = []
    for x, e_tail, o in zip(elems, even_tail, odd):
        even = torch.cat([_slice(x, dim, 0, 1), e_tail], dim)
        if n % 2 == 0:
            out.append(torch.stack([even, o], dim + 1).flatten(dim, dim + 1))
        else:
            woven = torch.stack([_slice(even, dim, 0, m), o], dim + 1).flatten(dim, dim + 1)
            out.append(torch.cat([woven, _slice(even, dim, m, m + 1)], dim))
    return tuple(out)


def _mobius_combine(x: Elems, y: Elems) -> Elems:
    """``Y X / tr(Y X)`` for 2x2 matrices stored as (A, B, C, D); ``x`` is the earlier element."""
    a1, b1, c1, d1 = x
    a2, b2, c2, d2 = y
    a = a2 * a1 + b2 * c1
    b = a2 * b1 + b2 * d1
    c = c2 * a1 + d2 * c1
    d = c2 * b1 + d2 * d1
    inv = 1.0 / (a + d)  # > 0: products of non-negative matrices with positive diagonal
    return a * inv, b * inv, c * inv, d * inv


def _affine_combine(x: Elems, y: Elems) -> Elems:
    """``(a1, b1) then (a2, b2)`` = ``(a2 a1, a2 b1 + b2)``."""
    a1, b1 = x
    a2, b2 = y
    return a2 * a1, a2 * b1 + b2


# ----------------------------------------------------------------------------------------------------------
# Torch parallel path on flattened, validated inputs
# ------------------------------------------------------------------------------------------------------------
def _lanes(x: Tensor) -> Tensor:
    """(N,) / (B, N) -> (1|B, 1, N) so it broadcasts against (B, nC, N) chunk slices."""
    return x.reshape(1, 1, -1) if x.dim() == 1 else x.reshape(x.shape[0], 1, -1)


def default_chunk(length: int) -> int:
    """Chunk size ~ sqrt(L): balances the sequential steps inside chunks against the number of chunks."""
    return max(1, math.isqrt(max(length - 1, 0)) + 1)


def kla_scan_torch(
    phi: Tensor,
    r: Tensor,
    a: Tensor,
    p: Tensor,
    lam0: Tensor,
    eta0: Tensor,
    chunk: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Parallel filter on ``phi, r: (B, L, N)``; ``a, p``: ``(N,)`` or ``(B, N)``; ``lam0, eta0``: ``(B, N)``.

    Computes the same ``(lam, eta)`` as :func:`kla_scan_reference` with the two scans of the module docstring,
    organised in chunks of ``chunk`` steps (default ~sqrt(L)):

    1. per chunk, the Moebius product of its leaves (sequential inside the chunk, all chunks at once);
    2. exclusive associative scan of the chunk products across chunks -> ``lam`` entering each chunk;
    3. inside every chunk, the scalar recurrence from that ``lam`` (giving ``lam_t`` and ``alpha_t``) together
       with the local affine prefix ``(prod alpha, R)`` of the information; a second scan across chunks of the
       chunk affine maps gives ``eta`` entering each chunk, and ``eta_t = (prod alpha)_t eta_in + R_t``.

    ``chunk=1`` is a pure log-depth scan over time; ``chunk >= L`` is the sequential loop.  Work is O(L),
    depth O(chunk + log(L / chunk)).  No validation (see :func:`kla_scan`).
    """
    bsz, length, n = phi.shape
    if length == 0:
        return phi.clone(), r.clone()
    c = default_chunk(length) if chunk is None else max(1, min(int(chunk), length))
    n_chunks = -(-length // c)
    pad = n_chunks * c - length
    if pad:
        # Trailing phi = r = 0 leaves only touch outputs that are cut off again; nothing reads their summary.
        phi = torch.nn.functional.pad(phi, (0, 0, 0, pad))
        r = torch.nn.functional.pad(r, (0, 0, 0, pad))
    # unbind, not phi_c[:, :, i]: the backward of one unbind is one stack, whereas every indexed slice would
    # backpropagate through its own full-size zero tensor (c times the memory traffic).
    phi_c = phi.view(bsz, n_chunks, c, n).unbind(2)
    r_c = r.view(bsz, n_chunks, c, n).unbind(2)
    a_, p_, l0, e0 = _lanes(a), _lanes(p), _lanes(lam0), _lanes(eta0)
    a2 = a_ * a_

    if n_chunks > 1:
        # 1. chunk products of the Moebius leaves [[1 + p phi, a^2 phi], [p, a^2]].
        f0 = phi_c[0]
        prod = (1.0 + p_ * f0, a2 * f0, p_.expand_as(f0), a2.expand_as(f0))
        for f in phi_c[1:]:
            prod = _mobius_combine(prod, (1.0 + p_ * f, a2 * f, p_.expand_as(f), a2.expand_as(f)))
        # 2. exclusive prefix over chunks applied to lam0.
        pa, pb, pc, pd = associative_scan(_mobius_combine, tuple(x[:, :-1] for x in prod), dim=1)
        lam_in = torch.cat([l0.expand(bsz, 1, n), (pa * l0 + pb) / (pc * l0 + pd)], dim=1)
    else:
        lam_in = l0.expand(bsz, 1, n)

    # 3. scalar recurrence inside the chunks, plus the local affine prefix of the information.
    lam = lam_in
    gain = acc = None
    lams, gains, accs = [], [], []
    for i in range(c):
        den = a2 + p_ * lam
        alpha = a_ / den
        lam = lam / den + phi_c[i]
        gain = alpha if gain is None else alpha * gain
        acc = r_c[i] if acc is None else alpha * acc + r_c[i]
        lams.append(lam)
        gains.append(gain)
        accs.append(acc)
    if n_chunks > 1:
        ga, gr = associative_scan(_affine_combine, (gains[-1][:, :-1], accs[-1][:, :-1]), dim=1)
        eta_in = torch.cat([e0.expand(bsz, 1, n), ga * e0 + gr], dim=1)
    else:
        eta_in = e0.expand(bsz, 1, n)
    lam_out = torch.stack(lams, dim=2).reshape(bsz, n_chunks * c, n)
    eta_out = (torch.stack(gains, dim=2) * eta_in.unsqueeze(2) + torch.stack(accs, dim=2)).reshape(bsz, n_chunks * c, n)
    if pad:
        lam_out, eta_out = lam_out[:, :length], eta_out[:, :length]
    return lam_out, eta_out


# ----------------------------------------------------------------------------------------------------------
# Validation and dispatch
# ------------------------------------------------------------------------------------------------------------
def _as_param(name: str, x: Tensor | float, like: Tensor, target: tuple[int, ...]) -> Tensor:
    """Float or tensor argument -> tensor on ``like``'s device and dtype that broadcasts to ``target``."""
    if not isinstance(x, Tensor):
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise TypeError(f"{name} must be a float or a torch.Tensor, got {type(x).__name__}")
        return torch.full((), float(x), dtype=like.dtype, device=like.device)
    if x.dtype != like.dtype:
        raise ValueError(f"{name} has dtype {x.dtype} but phi has dtype {like.dtype}; cast them to one dtype")
    if x.device != like.device:
        raise ValueError(f"{name} is on device {x.device} but phi is on {like.device}")
    try:
        ok = torch.broadcast_shapes(x.shape, target) == torch.Size(target)
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(
            f"{name} has shape {tuple(x.shape)}, which does not broadcast to the state shape (B, *D) = {target}"
        )
    return x


def _check_values(phi: Tensor, a: Tensor, p: Tensor, lam0: Tensor, eta0: Tensor, check_phi: bool) -> None:
    with torch.no_grad():
        if not bool(torch.isfinite(lam0).all()) or not bool((lam0 > 0).all()):
            raise ValueError(
                "lam0 (initial precision) must be finite and > 0 everywhere (a positive-definite diagonal "
                f"precision); got min {float(lam0.min()):.4g}"
            )
        if not bool(torch.isfinite(eta0).all()):
            raise ValueError("eta0 (initial information) must be finite")
        if not bool(torch.isfinite(a).all()):
            raise ValueError("a (transition coefficient) must be finite")
        if not bool(torch.isfinite(p).all()) or not bool((p >= 0).all()):
            raise ValueError(f"p (process-noise variance) must be finite and >= 0; got min {float(p.min()):.4g}")
        if not bool((a * a + p > 0).all()):
            raise ValueError("a and p are both zero somewhere: the predict step a^2 + p*lam would divide by zero")
        if check_phi and bool((phi < 0).any()):
            raise ValueError(
                f"phi (observation precision) must be >= 0 (or NaN for a missing observation); "
                f"got min {float(phi.nan_to_num(nan=0.0).min()):.4g}"
            )


def resolve_backend(backend: str, x: Tensor) -> str:
    """Map ``"auto"`` to a concrete backend for tensor ``x``: ``"triton"`` for CUDA tensors when Triton is
    importable, else ``"scan"``.  Explicit names are checked and returned unchanged."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if (x.is_cuda and triton_kernels.HAS_TRITON) else "scan"
    if backend == "triton":
        if not triton_kernels.HAS_TRITON:
            raise ValueError("backend='triton' requested but triton is not installed (pip install triton)")
        if not (x.is_cuda or triton_kernels.INTERPRET):
            raise ValueError(
                "backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 set before importing triton); "
                f"got a tensor on {x.device}"
            )
    return backend


def kla_scan(
    phi: Tensor,
    r: Tensor,
    a: Tensor | float,
    p: Tensor | float,
    lam0: Tensor | float = 1.0,
    eta0: Tensor | float = 0.0,
    *,
    backend: str = "auto",
    mask_nan: bool = True,
    validate: bool = True,
) -> tuple[Tensor, Tensor]:
    """Information-form Kalman filter over a sequence, for many independent scalar lanes at once.

    Per lane (see :mod:`world_models.kla.reference`), for t = 1..L:

        den_t = a^2 + p lam_{t-1};   lam_t = lam_{t-1} / den_t + phi_t;   eta_t = (a / den_t) eta_{t-1} + r_t

    Posterior mean and variance are ``mu_t = eta_t / lam_t`` and ``P_t = 1 / lam_t`` (see :func:`posterior`).

    Args:
        phi: observation precision increments ``>= 0``, shape ``(B, L, *D)`` (``D`` = state shape, e.g. M, S).
        r: observation information increments, same shape and dtype as ``phi``.
        a: transition coefficient (time-invariant), broadcastable to ``(B, *D)``; float or tensor.
        p: process-noise variance ``>= 0``, broadcastable to ``(B, *D)``.
        lam0: initial precision ``> 0`` (default 1: a standard-normal prior), broadcastable to ``(B, *D)``.
        eta0: initial information (default 0), broadcastable to ``(B, *D)``.
        backend: ``"auto"`` (Triton on CUDA when importable, else ``"scan"``), ``"reference"`` (sequential
            loop), ``"scan"`` (parallel PyTorch scan, any device) or ``"triton"`` (fused kernel).
        mask_nan: missing observations. Where ``phi`` or ``r`` is NaN the update of that element is skipped:
            ``phi = r = 0`` there, so the filter only predicts (the mean decays by ``a``, the variance grows
            by ``p``). Gradients with respect to masked entries are zero. With ``False`` NaNs propagate.
        validate: check values (``lam0 > 0``, ``p >= 0``, ``phi >= 0``, finite parameters). Shapes and dtypes
            are always checked. Value checks synchronise with the device; turn them off in hot loops.

    Returns:
        ``(lam, eta)``, each ``(B, L, *D)`` in the dtype of ``phi``.

    Raises:
        ValueError: naming the offending argument for mismatched shapes, dtypes or devices, a non-positive
            initial precision, negative process noise or observation precision, or an unknown backend.
    """
    if not isinstance(phi, Tensor) or not isinstance(r, Tensor):
        raise TypeError("phi and r must be torch.Tensors")
    if not phi.is_floating_point():
        raise ValueError(f"phi must be a floating-point tensor, got dtype {phi.dtype}")
    if phi.dim() < 2:
        raise ValueError(f"phi must have shape (B, L, *D) with at least 2 dims, got {tuple(phi.shape)}")
    if r.shape != phi.shape:
        raise ValueError(f"r has shape {tuple(r.shape)} but phi has shape {tuple(phi.shape)}; they must match")
    if r.dtype != phi.dtype:
        raise ValueError(f"r has dtype {r.dtype} but phi has dtype {phi.dtype}; cast them to one dtype")
    if r.device != phi.device:
        raise ValueError(f"r is on device {r.device} but phi is on {phi.device}")
    name = resolve_backend(backend, phi)
    bsz, length, *dshape = phi.shape
    target = (bsz, *dshape)
    a_t = _as_param("a", a, phi, target)
    p_t = _as_param("p", p, phi, target)
    lam0_t = _as_param("lam0", lam0, phi, target)
    eta0_t = _as_param("eta0", eta0, phi, target)
    if validate:
        _check_values(phi, a_t, p_t, lam0_t, eta0_t, check_phi=True)
    if mask_nan:
        missing = torch.isnan(phi) | torch.isnan(r)
        phi = torch.where(missing, torch.zeros((), dtype=phi.dtype, device=phi.device), phi)
        r = torch.where(missing, torch.zeros((), dtype=r.dtype, device=r.device), r)

    if name == "reference":
        return kla_scan_reference(phi, r, a_t, p_t, lam0_t, eta0_t)

    n = 1
    for d in dshape:
        n *= d
    flat = (bsz, length, n)

    def per_lane(x: Tensor, batched: bool) -> Tensor:
        # Parameters without a batch dim stay (N,) so the kernel can share them across the batch.
        if batched:
            return x.expand(target).reshape(bsz, n)
        return x.expand(target)[0].reshape(n)

    def is_batched(x: Tensor) -> bool:
        return x.dim() == len(target) and x.shape[0] != 1 and bsz != 1

    a_f = per_lane(a_t, is_batched(a_t) or is_batched(p_t))
    p_f = per_lane(p_t, is_batched(a_t) or is_batched(p_t))
    lam0_f = lam0_t.expand(target).reshape(bsz, n)
    eta0_f = eta0_t.expand(target).reshape(bsz, n)
    phi_f = phi.reshape(flat)
    r_f = r.reshape(flat)
    if name == "triton":
        lam, eta = triton_kernels.kla_scan_triton(phi_f, r_f, a_f, p_f, lam0_f, eta0_f)
    else:
        lam, eta = kla_scan_torch(phi_f, r_f, a_f, p_f, lam0_f, eta0_f)
    return lam.reshape(phi.shape), eta.reshape(phi.shape)


def posterior(lam: Tensor, eta: Tensor) -> tuple[Tensor, Tensor]:
    """Posterior mean and variance from information form: ``mu = eta / lam``, ``P = 1 / lam``."""
    return eta / lam, 1.0 / lam


def kla_readout(mean: Tensor, var: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
    """Query read-out of a ``(B, L, M, S)`` belief with ``q: (B, L, S)``.

    ``y[m] = sum_s q[s] mu[m, s]`` and, treating the lanes as independent Gaussians,
    ``y_var[m] = sum_s q[s]^2 P[m, s]``.  Returns ``(y, y_var)``, each ``(B, L, M)``.
    """
    return torch.einsum("blms,bls->blm", mean, q), torch.einsum("blms,bls->blm", var, q * q)


class KLAFilterOutput(NamedTuple):
    """Result of :func:`kla_filter`: beliefs ``(B, L, M, S)``; read-outs ``(B, L, M)`` if ``q`` was given."""

    mean: Tensor
    var: Tensor
    lam: Tensor
    eta: Tensor
    y: Tensor | None
    y_var: Tensor | None


def kla_filter(
    v: Tensor,
    obs_precision: Tensor,
    k: Tensor,
    a: Tensor | float,
    p: Tensor | float,
    *,
    q: Tensor | None = None,
    lam0: Tensor | float = 1.0,
    eta0: Tensor | float = 0.0,
    backend: str = "auto",
    validate: bool = True,
) -> KLAFilterOutput:
    """KLA filter driven by observations, with an optional query read-out.

    Channel m's value observes every state lane ``(m, s)`` separately through the key:
    ``v_t[m] = k_t[s] x_t[m, s] + noise``, noise variance ``1 / obs_precision_t[m]``.  The information update
    is

        phi_t[m, s] = obs_precision_t[m] * k_t[s]^2,      r_t[m, s] = obs_precision_t[m] * v_t[m] * k_t[s]

    and the filter itself is :func:`kla_scan`.

    Missing observations: a NaN in ``v`` skips the update of channel m at step t for all its lanes (the filter
    only predicts there). This is the documented masking behaviour; gradients through masked entries are zero.

    Args:
        v: observed values ``(B, L, M)``; NaN marks a missing observation.
        obs_precision: observation precision ``>= 0``, ``(B, L, M)``.
        k: observation coefficients (keys) ``(B, L, S)``.
        a, p: transition coefficient and process noise, broadcastable to ``(B, M, S)``.
        q: optional query ``(B, L, S)`` for :func:`kla_readout`.
        lam0, eta0, backend, validate: as in :func:`kla_scan`.

    Returns:
        :class:`KLAFilterOutput` with ``mean = eta / lam`` and ``var = 1 / lam``.
    """
    for name, x in (("v", v), ("obs_precision", obs_precision), ("k", k)):
        if not isinstance(x, Tensor) or x.dim() != 3:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name} must be a 3-d tensor (B, L, ·), got {shape}")
        if x.dtype != v.dtype:
            raise ValueError(f"{name} has dtype {x.dtype} but v has dtype {v.dtype}; cast them to one dtype")
    if obs_precision.shape != v.shape:
        raise ValueError(f"obs_precision has shape {tuple(obs_precision.shape)} but v has {tuple(v.shape)}")
    if k.shape[:2] != v.shape[:2]:
        raise ValueError(f"k has shape {tuple(k.shape)}; its (B, L) must match v's {tuple(v.shape[:2])}")
    if q is not None and (q.shape != k.shape or q.dtype != k.dtype):
        raise ValueError(
            f"q has shape {tuple(q.shape)} / dtype {q.dtype}; it must match k {tuple(k.shape)} / {k.dtype}"
        )
    if validate and bool((obs_precision < 0).any()):
        raise ValueError("obs_precision must be >= 0")
    missing = torch.isnan(v)
    zero = torch.zeros((), dtype=v.dtype, device=v.device)
    prec = torch.where(missing, zero, obs_precision)
    v = torch.where(missing, zero, v)
    phi = prec.unsqueeze(-1) * (k * k).unsqueeze(-2)
    r = (prec * v).unsqueeze(-1) * k.unsqueeze(-2)
    lam, eta = kla_scan(phi, r, a, p, lam0, eta0, backend=backend, mask_nan=False, validate=validate)
    mean, var = posterior(lam, eta)
    y = y_var = None
    if q is not None:
        y, y_var = kla_readout(mean, var, q)
    return KLAFilterOutput(mean, var, lam, eta, y, y_var)
