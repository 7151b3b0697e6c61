"""Network building blocks shared by every world model and agent."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int) -> nn.Sequential:
    """MLP whose hidden layers are ``Linear -> LayerNorm -> Mish`` and whose output layer is a plain Linear."""
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers += [nn.Linear(d, h), nn.LayerNorm(h), nn.Mish()]
        d = h
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


class EnsembleLinear(nn.Module):
    """``E`` independent linear layers evaluated with one batched matmul: ``y_e = x_e W_e + b_e``.

    Input ``[E, N, in]`` (or ``[N, in]``, broadcast to every member) -> output ``[E, N, out]``.
    """

    def __init__(self, num_members: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_members, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(num_members, 1, out_dim))
        bound = 1.0 / math.sqrt(in_dim)
        # Same init distribution as nn.Linear, per member.
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            return torch.einsum("ni,eio->eno", x, self.weight) + self.bias
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleLayerNorm(nn.Module):
    """LayerNorm over the feature dim with a separate affine transform per ensemble member."""

    def __init__(self, num_members: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_members, 1, dim))
        self.bias = nn.Parameter(torch.zeros(num_members, 1, dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, x.shape[-1:]) * self.weight + self.bias


class EnsembleMLP(nn.Module):
    """``E`` MLPs of identical shape (``Linear -> LayerNorm -> Mish`` hidden layers), vectorised.

    ``forward(x)`` maps ``[N, in]`` to ``[E, N, out]``.
    """

    def __init__(self, num_members: int, in_dim: int, hidden: Sequence[int], out_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers += [EnsembleLinear(num_members, d, h), EnsembleLayerNorm(num_members, h), nn.Mish()]
            d = h
        layers.append(EnsembleLinear(num_members, d, out_dim))
        self.net = nn.Sequential(*layers)
        self.num_members = num_members

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging ``theta_target <- (1 - tau) theta_target + tau theta_source``."""
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)
