"""Finite Scalar Quantization (Mentzer et al. 2023), applied per group of channels.

The one FSQ in the code base: iQRL quantises its latent with it and DCWM uses its implicit
codebook as the state space of a categorical dynamics model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class FSQ(nn.Module):
    """Finite Scalar Quantization over ``num_groups`` groups of ``len(levels)`` channels.

    A flat input ``z`` of size ``num_groups * len(levels)`` is viewed as ``(num_groups, C)``.
    Channel ``i`` with ``L_i`` levels is bounded and rounded (FSQ paper, App. A.1)::

        half_l = (L - 1)(1 - eps) / 2,  offset = 0.5 if L even else 0,  shift = tan(offset / half_l)
        bound(z) = tanh(z + shift) * half_l - offset
        q = round_ste(bound(z))                # x + sg(round(x) - x)
        c = q / floor(L / 2)                   # normalised code in [-1, 1]

    There is no learned codebook and no auxiliary loss. Each group's code has an index in
    ``[0, prod(L))``: ``index = sum_i digit_i * prod(L_<i)``, ``digit_i = q_i + floor(L_i / 2)``
    (the first channel is the least significant digit).
    """

    def __init__(self, levels: Sequence[int], num_groups: int, eps: float = 1e-3) -> None:
        super().__init__()
        levels = list(levels)
        if len(levels) == 0:
            raise ValueError("FSQ levels must be a non-empty list of integers >= 2, got []")
        if any(int(lv) != lv or lv < 2 for lv in levels):
            raise ValueError(f"FSQ levels must all be integers >= 2, got {levels}")
        if num_groups < 1:
            raise ValueError(f"FSQ num_groups must be >= 1, got {num_groups}")
        self.levels = levels
        self.num_groups = int(num_groups)
        self.num_channels = len(levels)
        self.codebook_size = int(torch.tensor(levels).prod().item())
        lv = torch.tensor(levels, dtype=torch.float32)
        half_l = (lv - 1) * (1 - eps) / 2
        offset = torch.where(lv % 2 == 0, 0.5, 0.0)
        basis = torch.cumprod(torch.tensor([1] + levels[:-1], dtype=torch.long), dim=0)
        self.register_buffer("_half_l", half_l, persistent=False)
        self.register_buffer("_offset", offset, persistent=False)
        self.register_buffer("_shift", torch.tan(offset / half_l), persistent=False)
        self.register_buffer("_half_width", torch.floor(lv / 2), persistent=False)
        self.register_buffer("_basis", basis, persistent=False)
        self.register_buffer("_levels", torch.tensor(levels, dtype=torch.long), persistent=False)
        self.register_buffer(
            "codebook", self.indices_to_codes_grouped(torch.arange(self.codebook_size)), persistent=False
        )

    @property
    def dim(self) -> int:
        """Size of the flat latent: ``num_groups * len(levels)``."""
        return self.num_groups * self.num_channels

    def grouped(self, z: Tensor) -> Tensor:
        """Flat ``[..., G*C]`` -> per-group ``[..., G, C]``; a wrong last dimension is an error."""
        if z.shape[-1] != self.dim:
            raise ValueError(f"FSQ expects a last dimension of {self.dim}, got shape {tuple(z.shape)}")
        return z.reshape(*z.shape[:-1], self.num_groups, self.num_channels)

    def bound(self, z: Tensor) -> Tensor:
        """Squash each channel into its level range (before rounding)."""
        return torch.tanh(z + self._shift) * self._half_l - self._offset

    def forward(self, z: Tensor) -> Tensor:
        """Quantise a flat latent ``[..., G*C]`` to normalised codes ``[..., G*C]`` (straight-through)."""
        b = self.bound(self.grouped(z))
        q = b + (torch.round(b) - b).detach()
        return (q / self._half_width).reshape(z.shape)

    def codes_to_indices(self, codes: Tensor) -> Tensor:
        """Normalised codes ``[..., G*C]`` -> integer indices ``[..., G]``."""
        digits = torch.round(self.grouped(codes) * self._half_width + self._half_width).long()
        return (digits * self._basis).sum(-1)

    def indices_to_codes_grouped(self, indices: Tensor) -> Tensor:
        """Integer indices ``[...]`` -> normalised codes ``[..., C]`` (one group's code per index)."""
        digits = (indices.unsqueeze(-1) // self._basis) % self._levels
        return (digits.float() - self._half_width) / self._half_width

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """Integer indices ``[..., G]`` -> flat normalised codes ``[..., G*C]``."""
        return self.indices_to_codes_grouped(indices).flatten(-2)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, num_groups={self.num_groups}, codebook_size={self.codebook_size}"
