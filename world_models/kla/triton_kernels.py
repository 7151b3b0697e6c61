"""Fused Triton kernels for the KLA filter (forward and backward), with an autograd wrapper.

Layout: ``phi, r, lam, eta`` are contiguous ``(B, L, N)``; ``N`` = flattened state lanes (M*S).  One program
owns a block of ``BLOCK_N`` contiguous lanes of one sequence and walks time in chunks of ``BLOCK_T`` steps,
carrying the state between chunks in registers (the "chunk" scheme: parallel inside a chunk, serial across).

Forward, per chunk starting at t0 (equations in :mod:`world_models.kla.reference`):
    * exclusive precision prefix by ``tl.associative_scan`` over Moebius leaves built from ``phi_{t-1}``
      (a shifted load; row 0 is the identity), applied to the carried ``lam_{t0-1}`` -> ``lam_{t-1}``;
    * ``den_t = a^2 + p lam_{t-1}``, ``lam_t = lam_{t-1}/den_t + phi_t``, ``alpha_t = a/den_t`` elementwise;
    * affine scan of ``(alpha_t, r_t)`` applied to the carried ``eta_{t0-1}`` -> ``eta_t``.
    All arithmetic is float32 (float64 for float64 inputs); only ``phi, r`` are read and ``lam, eta`` written.

Backward (adjoints ``H = dL/deta``, ``G = dL/dlam``, upstream ``gH, gG``), chunks last to first, rows loaded
in reversed time order so every reverse recurrence is a *forward* ``tl.associative_scan`` (reverse scans with
non-commutative combines have been unreliable on some GPUs):
    * ``zeta_t = alpha_{t+1} H_{t+1} = alpha_{t+1} (gH_{t+1} + zeta_{t+1})``; ``H_t = gH_t + zeta_t`` (dr = H)
    * ``G_t = gG_t - p eta_t zeta_t / den_{t+1} + (a / den_{t+1})^2 G_{t+1}``  (dphi = G)
    * ``da += G_t (-2 a lam_{t-1} / den_t^2) + H_t eta_{t-1} (den_t - 2 a^2) / den_t^2``
    * ``dp += G_t (-lam_{t-1}^2 / den_t^2) + H_t eta_{t-1} (-a lam_{t-1} / den_t^2)``
    ``alpha_{t+1}, den_{t+1}`` need only the saved ``lam_t``; ``zeta`` is scanned directly (not ``H - gH``) so
    nothing cancels.  ``dlam0, deta0`` follow from ``G_0, H_0`` on the host.

Triton is optional: without it ``HAS_TRITON`` is False and :func:`kla_scan_triton` raises.  Set
``TRITON_INTERPRET=1`` before the first import of triton to run the kernels on CPU (slow; tests only).
Set ``KLA_TRITON_POISON=1`` (or :data:`POISON` = True) to fill every output buffer with NaN before launch so
that elements a kernel fails to write show up in tests.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

try:  # Triton is an optional dependency; the PyTorch scan is the fallback everywhere.
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only where triton is absent
    triton = None
    tl = None
    HAS_TRITON = False

__all__ = ["HAS_TRITON", "INTERPRET", "POISON", "kla_scan_triton"]

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
POISON = os.environ.get("KLA_TRITON_POISON", "0") == "1"

# Defaults for GPUs: 64-step chunks (as the reference kernels), 32 lanes per program.
BLOCK_T = 64
BLOCK_N = 32
NUM_WARPS = 4


def _empty(shape: tuple[int, ...], like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    if POISON:
        return torch.full(shape, float("nan"), dtype=dtype or like.dtype, device=like.device)
    return torch.empty(shape, dtype=dtype or like.dtype, device=like.device)


if HAS_TRITON:

    @triton.jit
    def _mobius_combine(a1, b1, c1, d1, a2, b2, c2, d2):
        # later @ earlier, divided by its trace (a positive rescale the projective action ignores)
        na = a2 * a1 + b2 * c1
        nb = a2 * b1 + b2 * d1
        nc = c2 * a1 + d2 * c1
        nd = c2 * b1 + d2 * d1
        inv = 1.0 / (na + nd)
        return na * inv, nb * inv, nc * inv, nd * inv

    @triton.jit
    def _affine_combine(g1, b1, g2, b2):
        return g2 * g1, g2 * b1 + b2

    @triton.jit
    def _load_lanes(a_ptr, p_ptr, lam0_ptr, eta0_ptr, N, stride_ab, ACC: tl.constexpr, BLOCK_N: tl.constexpr):
        # This program's sequence and block of lanes, with their parameters and initial state.
        # Out-of-range lanes get a = 1, p = 0, lam0 = 1 so they compute harmless finite values.
        pid_b = tl.program_id(0).to(tl.int64)
        offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        a = tl.load(a_ptr + pid_b * stride_ab + offs_n, mask=mask_n, other=1.0).to(ACC)
        p = tl.load(p_ptr + pid_b * stride_ab + offs_n, mask=mask_n, other=0.0).to(ACC)
        lam0 = tl.load(lam0_ptr + pid_b * N + offs_n, mask=mask_n, other=1.0).to(ACC)
        eta0 = tl.load(eta0_ptr + pid_b * N + offs_n, mask=mask_n, other=0.0).to(ACC)
        return pid_b, offs_n, mask_n, a, p, lam0, eta0

    @triton.jit
    def _kla_fwd_kernel(
        phi_ptr,
        r_ptr,
        a_ptr,
        p_ptr,
        lam0_ptr,
        eta0_ptr,
        lam_ptr,
        eta_ptr,
        L,
        N,
        stride_ab,
        ACC: tl.constexpr,
        BLOCK_T: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        pid_b, offs_n, mask_n, a, p, lam_c, eta_c = _load_lanes(
            a_ptr, p_ptr, lam0_ptr, eta0_ptr, N, stride_ab, ACC, BLOCK_N
        )
        rows = tl.arange(0, BLOCK_T)
        a2 = a * a
        zero = tl.zeros([BLOCK_T, BLOCK_N], dtype=ACC)
        a_t = zero + a[None, :]
        a2_t = zero + a2[None, :]
        p_t = zero + p[None, :]
        first = (rows == 0)[:, None] & (offs_n >= 0)[None, :]
        last = (rows == BLOCK_T - 1)[:, None] & (offs_n >= 0)[None, :]
        base = pid_b * L * N
        for t0 in range(0, L, BLOCK_T):
            t = t0 + rows
            mask = (t < L)[:, None] & mask_n[None, :]
            offs = base + t.to(tl.int64)[:, None] * N + offs_n[None, :]
            phi = tl.load(phi_ptr + offs, mask=mask, other=0.0).to(ACC)
            r = tl.load(r_ptr + offs, mask=mask, other=0.0).to(ACC)
            # phi_{t-1}: row 0 of the chunk takes the identity leaf instead (its lam_{t-1} is the carry).
            mask_prev = ((rows >= 1) & (t < L))[:, None] & mask_n[None, :]
            phi_prev = tl.load(phi_ptr + offs - N, mask=mask_prev, other=0.0).to(ACC)
            la = tl.where(first, 1.0, 1.0 + p_t * phi_prev)
            lb = tl.where(first, 0.0, a2_t * phi_prev)
            lc = tl.where(first, 0.0, p_t)
            ld = tl.where(first, 1.0, a2_t)
            pa, pb, pc, pd = tl.associative_scan((la, lb, lc, ld), 0, _mobius_combine)
            lam_prev = (pa * lam_c[None, :] + pb) / (pc * lam_c[None, :] + pd)
            den = a2_t + p_t * lam_prev
            lam = lam_prev / den + phi
            alpha = a_t / den
            ga, gr = tl.associative_scan((alpha, r), 0, _affine_combine)
            eta = ga * eta_c[None, :] + gr
            tl.store(lam_ptr + offs, lam.to(lam_ptr.dtype.element_ty), mask=mask)
            tl.store(eta_ptr + offs, eta.to(eta_ptr.dtype.element_ty), mask=mask)
            lam_c = tl.sum(tl.where(last, lam, 0.0), axis=0)
            eta_c = tl.sum(tl.where(last, eta, 0.0), axis=0)

    @triton.jit
    def _kla_bwd_kernel(
        lam_ptr,
        eta_ptr,
        glam_ptr,
        geta_ptr,
        a_ptr,
        p_ptr,
        lam0_ptr,
        eta0_ptr,
        dphi_ptr,
        dr_ptr,
        da_ptr,
        dp_ptr,
        L,
        N,
        stride_ab,
        ACC: tl.constexpr,
        BLOCK_T: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        pid_b, offs_n, mask_n, a, p, lam0, eta0 = _load_lanes(
            a_ptr, p_ptr, lam0_ptr, eta0_ptr, N, stride_ab, ACC, BLOCK_N
        )
        rows = tl.arange(0, BLOCK_T)
        zero = tl.zeros([BLOCK_T, BLOCK_N], dtype=ACC)
        a_t = zero + a[None, :]
        a2_t = a_t * a_t
        p_t = zero + p[None, :]
        lam0_t = zero + lam0[None, :]
        eta0_t = zero + eta0[None, :]
        last = (rows == BLOCK_T - 1)[:, None] & (offs_n >= 0)[None, :]
        zeta_c = tl.zeros([BLOCK_N], dtype=ACC)
        g_c = tl.zeros([BLOCK_N], dtype=ACC)
        da_acc = tl.zeros([BLOCK_N], dtype=ACC)
        dp_acc = tl.zeros([BLOCK_N], dtype=ACC)
        base = pid_b * L * N
        n_chunks = tl.cdiv(L, BLOCK_T)
        for c in range(0, n_chunks):
            t0 = (n_chunks - 1 - c) * BLOCK_T
            t = t0 + (BLOCK_T - 1 - rows)  # reversed time inside the chunk
            valid = (t < L)[:, None] & mask_n[None, :]
            offs = base + t.to(tl.int64)[:, None] * N + offs_n[None, :]
            lam = tl.load(lam_ptr + offs, mask=valid, other=1.0).to(ACC)
            eta = tl.load(eta_ptr + offs, mask=valid, other=0.0).to(ACC)
            glam = tl.load(glam_ptr + offs, mask=valid, other=0.0).to(ACC)
            geta = tl.load(geta_ptr + offs, mask=valid, other=0.0).to(ACC)
            valid_next = (t + 1 < L)[:, None] & mask_n[None, :]
            geta_next = tl.load(geta_ptr + offs + N, mask=valid_next, other=0.0).to(ACC)
            valid_prev = ((t >= 1) & (t < L))[:, None] & mask_n[None, :]
            lam_prev = tl.load(lam_ptr + offs - N, mask=valid_prev, other=1.0).to(ACC)
            eta_prev = tl.load(eta_ptr + offs - N, mask=valid_prev, other=0.0).to(ACC)
            at_start = (t == 0)[:, None] & (offs_n >= 0)[None, :]
            lam_prev = tl.where(at_start, lam0_t, lam_prev)
            eta_prev = tl.where(at_start, eta0_t, eta_prev)
            # step t+1 quantities from the saved lam_t
            den_next = a2_t + p_t * lam
            alpha_next = a_t / den_next
            zg, zb = tl.associative_scan((alpha_next, alpha_next * geta_next), 0, _affine_combine)
            zeta = zg * zeta_c[None, :] + zb
            h = geta + zeta
            gb = glam - p_t * eta * zeta / den_next
            gg, gs = tl.associative_scan((alpha_next * alpha_next, gb), 0, _affine_combine)
            g = gg * g_c[None, :] + gs
            tl.store(dr_ptr + offs, h.to(dr_ptr.dtype.element_ty), mask=valid)
            tl.store(dphi_ptr + offs, g.to(dphi_ptr.dtype.element_ty), mask=valid)
            # step t quantities for the parameter gradients
            den = a2_t + p_t * lam_prev
            inv_den2 = 1.0 / (den * den)
            he = h * eta_prev
            da_row = (g * (-2.0) * a_t * lam_prev + he * (den - 2.0 * a2_t)) * inv_den2
            dp_row = -(g * lam_prev * lam_prev + he * a_t * lam_prev) * inv_den2
            da_acc += tl.sum(tl.where(valid, da_row, 0.0), axis=0)
            dp_acc += tl.sum(tl.where(valid, dp_row, 0.0), axis=0)
            zeta_c = tl.sum(tl.where(last, zeta, 0.0), axis=0)
            g_c = tl.sum(tl.where(last, g, 0.0), axis=0)
        tl.store(da_ptr + pid_b * N + offs_n, da_acc, mask=mask_n)
        tl.store(dp_ptr + pid_b * N + offs_n, dp_acc, mask=mask_n)


def _acc_dtype(dtype: torch.dtype):  # noqa: ANN202 - returns a triton dtype
    return tl.float64 if dtype == torch.float64 else tl.float32


def _fwd(phi: Tensor, r: Tensor, a: Tensor, p: Tensor, lam0: Tensor, eta0: Tensor) -> tuple[Tensor, Tensor]:
    bsz, length, n = phi.shape
    lam = _empty(phi.shape, phi)
    eta = _empty(phi.shape, phi)
    grid = (bsz, triton.cdiv(n, BLOCK_N))
    _kla_fwd_kernel[grid](
        phi, r, a, p, lam0, eta0, lam, eta, length, n, n if a.dim() == 2 else 0,
        ACC=_acc_dtype(phi.dtype), BLOCK_T=BLOCK_T, BLOCK_N=BLOCK_N, num_warps=NUM_WARPS,
    )  # fmt: skip
    return lam, eta


def _bwd(
    lam: Tensor, eta: Tensor, glam: Tensor, geta: Tensor, a: Tensor, p: Tensor, lam0: Tensor, eta0: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    bsz, length, n = lam.shape
    acc = torch.float64 if lam.dtype == torch.float64 else torch.float32
    dphi = _empty(lam.shape, lam)
    dr = _empty(lam.shape, lam)
    da = _empty((bsz, n), lam, acc)
    dp = _empty((bsz, n), lam, acc)
    grid = (bsz, triton.cdiv(n, BLOCK_N))
    _kla_bwd_kernel[grid](
        lam, eta, glam, geta, a, p, lam0, eta0, dphi, dr, da, dp, length, n, n if a.dim() == 2 else 0,
        ACC=_acc_dtype(lam.dtype), BLOCK_T=BLOCK_T, BLOCK_N=BLOCK_N, num_warps=NUM_WARPS,
    )  # fmt: skip
    return dphi, dr, da, dp


class _KLAScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, phi: Tensor, r: Tensor, a: Tensor, p: Tensor, lam0: Tensor, eta0: Tensor):  # noqa: ANN205
        lam, eta = _fwd(phi, r, a, p, lam0, eta0)
        ctx.save_for_backward(lam, eta, a, p, lam0, eta0)
        return lam, eta

    @staticmethod
    def backward(ctx, glam: Tensor | None, geta: Tensor | None):  # noqa: ANN205
        lam, eta, a, p, lam0, eta0 = ctx.saved_tensors
        glam = torch.zeros_like(lam) if glam is None else glam.contiguous()
        geta = torch.zeros_like(eta) if geta is None else geta.contiguous()
        dphi, dr, da, dp = _bwd(lam, eta, glam, geta, a, p, lam0, eta0)
        if a.dim() == 1:  # parameters shared across the batch: sum the per-sequence partials
            da, dp = da.sum(0), dp.sum(0)
        # dlam0, deta0 from the adjoints at t = 0: step 1 is the only place lam0 and eta0 enter.
        acc = da.dtype
        a_, p_ = a.to(acc), p.to(acc)
        l0, e0 = lam0.to(acc), eta0.to(acc)
        den0 = a_ * a_ + p_ * l0
        alpha0 = a_ / den0
        zeta0 = alpha0 * dr[:, 0].to(acc)
        deta0 = zeta0
        dlam0 = alpha0 * alpha0 * dphi[:, 0].to(acc) - p_ * e0 * zeta0 / den0
        return dphi, dr, da.to(a.dtype), dp.to(p.dtype), dlam0.to(lam0.dtype), deta0.to(eta0.dtype)


def kla_scan_triton(phi: Tensor, r: Tensor, a: Tensor, p: Tensor, lam0: Tensor, eta0: Tensor) -> tuple[Tensor, Tensor]:
    """Fused-kernel KLA filter on flattened lanes; differentiable (custom backward kernel).

    Args:
        phi, r: ``(B, L, N)`` observation precision / information increments.
        a, p: transition coefficient and process noise, ``(N,)`` (shared by the batch) or ``(B, N)``.
        lam0, eta0: initial precision and information, ``(B, N)``.

    Returns ``(lam, eta)``, ``(B, L, N)``, with the recurrences of :mod:`world_models.kla.reference`.
    Inputs are made contiguous; float16/bfloat16/float32 compute in float32, float64 in float64.
    """
    if not HAS_TRITON:
        raise RuntimeError("triton is not installed; use backend='scan'")
    if phi.shape[1] == 0:
        return phi.clone(), r.clone()
    return _KLAScanFn.apply(
        phi.contiguous(), r.contiguous(), a.contiguous(), p.contiguous(), lam0.contiguous(), eta0.contiguous()
    )
