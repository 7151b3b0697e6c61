"""Representation diagnostics shared by agents with quantised latents."""

from __future__ import annotations

import torch
from torch import Tensor

from world_models.quantizers import FSQ


@torch.no_grad()
def collapse_metrics(z: Tensor, fsq: FSQ, tols: tuple[float, ...] = (1e-1, 1e-2, 1e-3)) -> dict[str, float]:
    """Dimensional-collapse measures of a batch of quantised latents ``z [N, D]`` (iQRL paper).

    ``rank@tol`` counts singular values above ``max(tol, tol * sigma_max)``; ``code_usage`` is the
    share of each group's codes used by the batch, averaged over groups.
    """
    zd = z.double().cpu()
    out = {}
    for tol in tols:
        out[f"rank@{tol:g}"] = float(torch.linalg.matrix_rank(zd, atol=tol, rtol=tol))
    idx = fsq.codes_to_indices(z).cpu()  # [N, G]
    used = torch.zeros(idx.shape[1], fsq.codebook_size, dtype=torch.bool)
    used.scatter_(1, idx.T, True)
    out["code_usage"] = float(used.float().mean(1).mean())
    return out
