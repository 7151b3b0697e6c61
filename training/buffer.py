"""Replay buffer shared by every agent: transitions in a ring, sampled as within-episode sequences."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tensordict import TensorDict
from torch import Tensor

FIELDS = ("obs", "action", "reward", "next_obs", "terminated", "episode")


class ReplayBuffer:
    """Capacity-bounded ring of transitions ``(o_t, a_t, r_t, o_{t+1}, terminated_t)``.

    Transitions are appended in the order they happen, each tagged with its episode number, so a
    window of consecutive rows with one episode number is a piece of one trajectory.
    ``sample(B, H)`` returns ``B`` such windows of ``H`` transitions as a TensorDict with batch size
    ``[B]``::

        obs        [B, H+1, obs_dim]   o_t .. o_{t+H}
        action     [B, H, act_dim]     a_t .. a_{t+H-1}
        reward     [B, H]
        terminated [B, H]              1 where o_{t+h+1} is terminal (no bootstrap)

    A window never crosses an episode boundary, nor the ring's write position. Sampling draws from
    the buffer's own ``torch.Generator``, whose state is saved with the buffer, so a restored run
    samples exactly what the uninterrupted run would have.

    ``storage="memmap"`` keeps the rows in memory-mapped files under ``storage_dir`` (for buffers
    bigger than RAM); ``"memory"`` keeps them in RAM.
    """

    def __init__(
        self,
        capacity: int,
        obs_dim: int,
        action_dim: int,
        *,
        seed: int = 0,
        storage: str = "memory",
        storage_dir: str | Path | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"buffer capacity must be >= 1, got {capacity}")
        if storage not in ("memory", "memmap"):
            raise ValueError(f"buffer storage must be 'memory' or 'memmap', got {storage!r}")
        self.capacity = int(capacity)
        self.obs_dim = int(obs_dim)
        self.action_dim = int(action_dim)
        data = TensorDict(
            {
                "obs": torch.zeros(capacity, obs_dim),
                "action": torch.zeros(capacity, action_dim),
                "reward": torch.zeros(capacity),
                "next_obs": torch.zeros(capacity, obs_dim),
                "terminated": torch.zeros(capacity),
                "episode": torch.full((capacity,), -1, dtype=torch.long),
            },
            batch_size=[capacity],
        )
        if storage == "memmap":
            if storage_dir is None:
                raise ValueError("buffer storage='memmap' needs a storage_dir")
            data = data.memmap_(prefix=str(storage_dir))
        self._data = data
        self._cursor = 0  # next row to write
        self._size = 0
        self._num_added = 0  # transitions ever added
        self._episode = 0  # episode number of the next transition
        self._gen = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self._size

    @property
    def num_added(self) -> int:
        return self._num_added

    @property
    def num_episodes(self) -> int:
        return self._episode

    @property
    def nbytes(self) -> int:
        """Bytes held by the storage at full capacity."""
        return sum(t.numel() * t.element_size() for t in self._data.values())

    @staticmethod
    def estimate_nbytes(capacity: int, obs_dim: int, action_dim: int) -> int:
        """Bytes a buffer of this size will hold (float32 obs/actions, int64 episode numbers)."""
        per_row = 4 * (2 * obs_dim + action_dim + 2) + 8
        return capacity * per_row

    def add(
        self,
        obs: np.ndarray | Tensor,
        action: np.ndarray | Tensor,
        reward: float,
        next_obs: np.ndarray | Tensor,
        terminated: bool,
        episode_end: bool,
    ) -> None:
        """Append one transition; ``episode_end`` (terminated or truncated) closes the episode."""
        i = self._cursor
        d = self._data
        d["obs"][i] = torch.as_tensor(obs, dtype=torch.float32)
        d["action"][i] = torch.as_tensor(action, dtype=torch.float32)
        d["reward"][i] = float(reward)
        d["next_obs"][i] = torch.as_tensor(next_obs, dtype=torch.float32)
        d["terminated"][i] = float(terminated)
        d["episode"][i] = self._episode
        self._cursor = (i + 1) % self.capacity
        self._size = min(self._size + 1, self.capacity)
        self._num_added += 1
        if episode_end:
            self._episode += 1

    def add_episode(self, episode: TensorDict) -> None:
        """Append a whole episode (fields obs, action, reward, next_obs, terminated; batch ``[T]``)."""
        T = episode.batch_size[0]
        for t in range(T):
            self.add(
                episode["obs"][t],
                episode["action"][t],
                float(episode["reward"][t]),
                episode["next_obs"][t],
                bool(episode["terminated"][t]),
                episode_end=t == T - 1,
            )

    def _valid_starts(self, starts: Tensor, horizon: int) -> Tensor:
        """Which window starts hold ``horizon`` rows of one episode, none of them unwritten."""
        end = (starts + horizon - 1) % self.capacity
        ep = self._data["episode"]
        same_episode = (ep[starts] == ep[end]) & (ep[starts] >= 0)
        # Rows at or after the cursor (in ring order) belong to older data being overwritten.
        oldest = self._cursor if self._size == self.capacity else 0
        rel_start = (starts - oldest) % self.capacity
        fits = rel_start + horizon <= self._size
        return same_episode & fits

    def sample(self, batch_size: int, horizon: int) -> TensorDict:
        """``batch_size`` windows of ``horizon`` consecutive transitions inside one episode each."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        if self._size < horizon:
            raise RuntimeError(f"buffer holds {self._size} transitions, fewer than horizon={horizon}")
        oldest = self._cursor if self._size == self.capacity else 0
        chosen: list[Tensor] = []
        need = batch_size
        for _ in range(1000):
            cand = (oldest + torch.randint(0, self._size, (2 * need,), generator=self._gen)) % self.capacity
            cand = cand[self._valid_starts(cand, horizon)][:need]
            chosen.append(cand)
            need -= cand.numel()
            if need == 0:
                break
        else:
            raise RuntimeError(f"could not find windows of {horizon} transitions inside one episode")
        starts = torch.cat(chosen)
        idx = (starts[:, None] + torch.arange(horizon)) % self.capacity  # [B, H]
        rows = self._data[idx.flatten()].reshape(batch_size, horizon)
        obs = torch.cat([rows["obs"], rows["next_obs"][:, -1:]], dim=1)
        return TensorDict(
            {
                "obs": obs,
                "action": rows["action"],
                "reward": rows["reward"],
                "terminated": rows["terminated"],
            },
            batch_size=[batch_size],
        )

    def recent_obs(self, n: int) -> Tensor:
        """The ``n`` most recently added observations (fewer if the buffer holds fewer)."""
        n = min(n, self._size)
        idx = (self._cursor - 1 - torch.arange(n)) % self.capacity
        return self._data["obs"][idx].clone()

    # -- checkpointing -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to restore the buffer exactly: the filled rows, counters, RNG state."""
        n = self._size
        return {
            "data": {k: self._data[k][:n].clone() for k in FIELDS},
            "cursor": self._cursor,
            "size": n,
            "num_added": self._num_added,
            "episode": self._episode,
            "capacity": self.capacity,
            "rng": self._gen.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["capacity"] != self.capacity:
            raise ValueError(f"buffer in checkpoint has capacity {state['capacity']}, this run has {self.capacity}")
        n = int(state["size"])
        for k in FIELDS:
            src = state["data"][k]
            if src.shape[1:] != self._data[k].shape[1:]:
                raise ValueError(
                    f"buffer field {k!r} in checkpoint has shape {tuple(src.shape[1:])} per row, "
                    f"this run expects {tuple(self._data[k].shape[1:])}"
                )
            self._data[k][:n].copy_(src)
        self._cursor = int(state["cursor"])
        self._size = n
        self._num_added = int(state["num_added"])
        self._episode = int(state["episode"])
        self._gen.set_state(state["rng"])
