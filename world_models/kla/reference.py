"""Sequential reference for the KLA information-form Kalman filter.

Every (state) lane is its own scalar linear-Gaussian system

    x_t = a * x_{t-1} + w_t,            w_t ~ N(0, p)          (time-invariant a, p)

whose belief is kept in information form: precision ``lam = 1/P`` and information ``eta = lam * mu``.
One step (predict from t-1, then update with token t):

    den_t  = a^2 + p * lam_{t-1}
    lam_t  = lam_{t-1} / den_t + phi_t          (predicted precision plus the observation precision)
    alpha_t = a / den_t
    eta_t  = alpha_t * eta_{t-1} + r_t          (propagated information plus the observation information)

For a scalar observation ``y_t = h_t x_t + noise`` with noise precision ``rho_t`` the update terms are
``phi_t = rho_t h_t^2`` and ``r_t = rho_t h_t y_t``.  ``phi_t = r_t = 0`` is exactly a skipped update (the
filter only predicts).

This module is deliberately a plain Python loop over time: it is the oracle the parallel scan and the Triton
kernel are tested against, so it must be obviously correct rather than fast.  It keeps the dtype of its
inputs, so it runs in float64 for tight comparisons and for ``torch.autograd.gradcheck``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["kla_scan_reference"]


def kla_scan_reference(
    phi: Tensor,
    r: Tensor,
    a: Tensor | float,
    p: Tensor | float,
    lam0: Tensor | float = 1.0,
    eta0: Tensor | float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Run the information-form filter step by step.

    Args:
        phi: observation precision increments, shape ``(B, L, *D)``; ``phi >= 0``.
        r: observation information increments, shape ``(B, L, *D)``.
        a: transition coefficient, broadcastable to ``(B, *D)`` (usually ``D``).
        p: process-noise variance ``>= 0``, broadcastable to ``(B, *D)``.
        lam0: initial precision ``> 0``, broadcastable to ``(B, *D)``.
        eta0: initial information, broadcastable to ``(B, *D)``.

    Returns:
        ``(lam, eta)``, each ``(B, L, *D)``: the filtered precision and information after the update with
        token t, i.e. ``lam_t = lam_{t-1} / (a^2 + p lam_{t-1}) + phi_t`` and
        ``eta_t = a / (a^2 + p lam_{t-1}) * eta_{t-1} + r_t``.

    No validation and no NaN masking happens here; use :func:`world_models.kla.kla_scan` for that.
    """
    if phi.shape[1] == 0:
        return phi.clone(), r.clone()
    state_shape = (phi.shape[0], *phi.shape[2:])
    like = phi[:, 0]
    a = torch.as_tensor(a, dtype=phi.dtype, device=phi.device)
    p = torch.as_tensor(p, dtype=phi.dtype, device=phi.device)
    lam = torch.as_tensor(lam0, dtype=phi.dtype, device=phi.device).expand(state_shape) + torch.zeros_like(like)
    eta = torch.as_tensor(eta0, dtype=phi.dtype, device=phi.device).expand(state_shape) + torch.zeros_like(like)
    lams, etas = [], []
    # unbind rather than phi[:, t]: each indexed slice would backpropagate through a full-size zero tensor,
    # making the backward pass O(L^2).
    for phi_t, r_t in zip(phi.unbind(1), r.unbind(1)):
        den = a * a + p * lam
        # Information propagates with a / den (not a): predicting shrinks the precision by den.
        eta = (a / den) * eta + r_t
        lam = lam / den + phi_t
        lams.append(lam)
        etas.append(eta)
    return torch.stack(lams, dim=1), torch.stack(etas, dim=1)
