"""FSQ against the hand-computed table of the FSQ paper's formulas (the iQRL paper's FSQ equations)."""

import pytest
import torch

from world_models.quantizers import FSQ

# levels, z, expected integer levels q, expected index (first channel least significant)
TABLE = [
    ([8, 8], (0.0, 0.0), (0, 0), 36),
    ([8, 8], (0.3, -0.3), (1, -1), 29),
    ([8, 8], (1.0, -1.0), (2, -3), 14),
    ([8, 8], (-5.0, 5.0), (-4, 3), 56),
    ([5, 3], (-0.5, 0.6), (-1, 1), 11),
    ([5, 3], (2.0, -2.0), (2, -1), 4),
    ([3, 5, 4], (0.25, 0.6, -7.0), (0, 1, -2), 10),
]


@pytest.mark.parametrize("levels,z,q,index", TABLE)
def test_codes_and_indices_match_table(levels, z, q, index):
    fsq = FSQ(levels, num_groups=1)
    codes = fsq(torch.tensor([z]))
    half = torch.tensor([lv // 2 for lv in levels], dtype=torch.float32)
    assert torch.allclose(codes[0], torch.tensor(q, dtype=torch.float32) / half)
    assert fsq.codes_to_indices(codes).item() == index


def test_bound_values_match_table():
    fsq = FSQ([8, 8], num_groups=1)
    b = fsq.bound(torch.tensor([[0.3, -0.3], [1.0, -1.0], [-5.0, 5.0]]))
    expected = torch.tensor([[0.958, -1.041], [2.352, -2.927], [-3.996, 2.996]])
    assert torch.allclose(b, expected, atol=2e-3)


@pytest.mark.parametrize("levels", [[8, 8], [5, 3], [8, 6, 5], [2, 2]])
def test_outputs_on_level_grid_and_round_trip(levels):
    torch.manual_seed(0)
    fsq = FSQ(levels, num_groups=7)
    codes = fsq(3 * torch.randn(64, fsq.dim))
    grouped = codes.reshape(64, 7, len(levels))
    for i, lv in enumerate(levels):
        q = grouped[..., i] * (lv // 2)
        assert torch.allclose(q, q.round(), atol=1e-6), "codes must lie on the integer level grid"
        lo, hi = -(lv // 2), (lv - 1) - lv // 2
        assert q.min() >= lo - 1e-6 and q.max() <= hi + 1e-6
    idx = fsq.codes_to_indices(codes)
    assert idx.min() >= 0 and idx.max() < fsq.codebook_size
    assert torch.equal(fsq.indices_to_codes(idx), codes)
    all_idx = torch.arange(fsq.codebook_size)
    assert torch.equal(FSQ(levels, num_groups=1).codes_to_indices(fsq.codebook).squeeze(-1), all_idx)
    assert fsq.codebook.unique(dim=0).shape[0] == fsq.codebook_size


@pytest.mark.parametrize("L,expected", [(5, 0.999), (8, 0.856)])
def test_straight_through_gradient(L, expected):
    fsq = FSQ([L], num_groups=1)
    z = torch.zeros(1, 1, requires_grad=True)
    fsq(z).sum().backward()
    assert z.grad.item() == pytest.approx(expected, abs=2e-3)


@pytest.mark.parametrize("levels", [[], [1, 8], [8, 0], [2.5]])
def test_invalid_levels_rejected(levels):
    with pytest.raises(ValueError, match="levels"):
        FSQ(levels, num_groups=4)


def test_wrong_input_width_rejected():
    with pytest.raises(ValueError, match="last dimension of 8"):
        FSQ([8, 8], num_groups=4)(torch.zeros(3, 9))
