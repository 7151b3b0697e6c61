"""Replay buffer: windows inside one episode, ring overwrite, exact save/restore."""

import numpy as np
import pytest
import torch

from training.buffer import ReplayBuffer


def fill(buf, lengths, terminal_last=False):
    """Episodes whose obs encode (episode, t) as 1000*e + t so windows can be checked exactly."""
    for e, T in enumerate(lengths):
        for t in range(T):
            o = np.full(buf.obs_dim, 1000 * e + t, dtype=np.float32)
            buf.add(o, np.full(buf.action_dim, t), float(t), o + 1, terminal_last and t == T - 1, t == T - 1)


def assert_windows_consistent(batch, horizon):
    obs = batch["obs"][..., 0]
    assert obs.shape[1] == horizon + 1
    ep = torch.div(obs[:, 0], 1000, rounding_mode="floor")
    # Consecutive time steps of one episode: obs increases by exactly 1 along the window.
    assert torch.equal(obs[:, 1:] - obs[:, :-1], torch.ones_like(obs[:, 1:]))
    assert torch.equal(torch.div(obs[:, :-1], 1000, rounding_mode="floor"), ep[:, None].expand(-1, horizon))
    t0 = obs[:, 0] - 1000 * ep
    assert torch.equal(batch["reward"], t0[:, None] + torch.arange(horizon))
    assert torch.equal(batch["action"][..., 0], batch["reward"])


def test_windows_never_cross_episode_boundaries():
    buf = ReplayBuffer(10_000, 3, 2, seed=0)
    fill(buf, [7, 3, 12, 5, 9])  # short episodes: many starts are invalid for horizon 5
    for _ in range(20):
        assert_windows_consistent(buf.sample(64, 5), 5)


def test_episode_shorter_than_horizon_never_sampled():
    buf = ReplayBuffer(100, 1, 1, seed=0)
    fill(buf, [3, 6])
    b = buf.sample(200, 5)
    assert torch.all(b["obs"][:, 0, 0] >= 1000), "episode 0 (length 3) cannot hold a window of 5"
    assert set(b["obs"][:, 0, 0].tolist()) <= {1000.0, 1001.0}


def test_ring_overwrite_respects_cursor_and_capacity():
    buf = ReplayBuffer(50, 1, 1, seed=1)
    fill(buf, [20, 20, 20, 20])  # 80 transitions into 50 slots
    assert len(buf) == 50 and buf.num_added == 80
    for _ in range(20):
        b = buf.sample(128, 4)
        assert_windows_consistent(b, 4)
        # Only the newest 50 transitions survive: episodes 1 (t >= 10), 2 and 3.
        assert torch.all(b["obs"][:, 0, 0] >= 1010)


def test_terminal_flag_only_on_last_transition():
    buf = ReplayBuffer(1000, 1, 1, seed=0)
    fill(buf, [6, 6, 6], terminal_last=True)
    b = buf.sample(500, 3)
    term = b["terminated"]
    t_last = b["obs"][:, -2, 0] % 1000
    assert torch.equal(term[:, -1], (t_last == 5).float())
    assert term[:, :-1].sum() == 0
    assert term[:, -1].sum() > 0


def test_state_dict_restores_contents_and_sampling_stream():
    a = ReplayBuffer(64, 2, 1, seed=3)
    fill(a, [30, 30, 30])
    state = a.state_dict()
    b = ReplayBuffer(64, 2, 1, seed=99)
    b.load_state_dict(state)
    for _ in range(3):
        x, y = a.sample(16, 5), b.sample(16, 5)
        assert all(torch.equal(x[k], y[k]) for k in x.keys())
    fill(a, [5])
    fill(b, [5])
    assert torch.equal(a.sample(8, 2)["obs"], b.sample(8, 2)["obs"])


def test_restore_rejects_mismatched_buffer():
    a = ReplayBuffer(64, 2, 1)
    fill(a, [10])
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(32, 2, 1).load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="obs"):
        ReplayBuffer(64, 3, 1).load_state_dict(a.state_dict())


def test_memmap_storage(tmp_path):
    buf = ReplayBuffer(100, 2, 1, storage="memmap", storage_dir=tmp_path / "buf")
    fill(buf, [10, 10])
    assert_windows_consistent(buf.sample(32, 4), 4)
    assert any((tmp_path / "buf").rglob("*.memmap"))


def test_memory_estimate_matches_allocation():
    buf = ReplayBuffer(1000, 24, 6)
    assert buf.nbytes == ReplayBuffer.estimate_nbytes(1000, 24, 6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(0, 1, 1)
    buf = ReplayBuffer(10, 1, 1)
    fill(buf, [10])
    with pytest.raises(ValueError, match="batch_size"):
        buf.sample(-1, 2)
    with pytest.raises(ValueError, match="horizon"):
        buf.sample(4, 0)
