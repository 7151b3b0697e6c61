"""Meta-World v3 tasks as gymnasium envs (``metaworld/<task>-v3``), goal-observable with random goals.

Names: the 50 tasks of ``metaworld.env_dict.ALL_V3_ENVIRONMENTS`` (``reach-v3``, ``pick-place-v3``,
...). The ``-v3`` suffix may be omitted; v2 names are rejected (Meta-World 3.x ships v3 only).

Setup (DC-MPC's, as in TD-MPC2): goal-observable observations (39-D: hand, gripper, objects, the
previous frame, and the goal position), a fresh goal/object layout sampled at *every* reset from the
continuous task distribution (not MT1's fixed list of 50 goals), ``terminated`` always False,
``info["success"]`` a float at every step. The goal is drawn from the env's generator, which
``reset(seed=s)`` re-seeds, so a seed fixes the goal and the episode.

Deviations from DC-MPC's code, on purpose: no extra zero-action step after ``reset`` (DC-MPC/TD-MPC2
step the env once with zeros and still return the reset observation, so the first observation is one
step stale); images come from the ``corner4`` camera (TD-MPC2's moved ``corner2``) rotated by 180°
because that camera is mounted upside down in the v3 model.

Why not ``gymnasium.make('Meta-World/MT1', ...)``: MT1 pre-samples 50 goals at construction and its
``RandomTaskSelectWrapper`` picks the next goal *before* the reset seed is applied (and the Sawyer
env ignores ``reset(seed=...)``), so ``reset(seed=s)`` would not determine the episode. We configure the
env class the way Meta-World's own ``*-goal-observable`` classes do, but with seeded random goals and
a caller-chosen render size (those classes always render at 480x480).
"""

from __future__ import annotations

import sys
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.rendering import close_at_exit, forget_at_exit

CAMERA_NAME = "corner4"
"""Camera used for ``render()``; same pose as TD-MPC2's ``corner2`` with ``cam_pos = (0.75, 0.075, 0.7)``."""


def _env_dict() -> Any:
    try:
        import metaworld.env_dict as env_dict
    except ImportError as e:
        raise ImportError(
            f"metaworld/ environments need Meta-World (pip install 'metaworld==3.1.1'); importing it failed: {e}"
        ) from e
    return env_dict


def metaworld_task_names() -> list[str]:
    """The 50 Meta-World v3 task names (``assembly-v3`` ... ``window-close-v3``)."""
    return list(_env_dict().ALL_V3_ENVIRONMENTS)


def resolve_metaworld_name(name: str) -> str:
    """Map ``reach-v3`` (or ``reach``) to the Meta-World v3 task name; ValueError listing valid names."""
    valid = metaworld_task_names()
    key = name.strip().lower()
    if key in valid:
        return key
    if f"{key}-v3" in valid:
        return f"{key}-v3"
    hint = ""
    if key.endswith("-v2") and f"{key[:-3]}-v3" in valid:
        hint = f" Meta-World 3.x has v3 tasks only: use metaworld/{key[:-3]}-v3."
    else:
        import difflib

        close = difflib.get_close_matches(key, valid, n=3)
        if close:
            hint = " Did you mean: " + ", ".join(f"metaworld/{c}" for c in close) + "?"
    compact = ", ".join(n.removesuffix("-v3") for n in valid)
    raise ValueError(
        f"Unknown Meta-World task {name!r}.{hint} Valid metaworld/<task>-v3 tasks (shown without '-v3'): {compact}."
    )


class MetaWorldEnv(gym.Env):
    """One Meta-World v3 task, goal-observable, with a new random goal drawn at every reset.

    Observation: the 39-D Sawyer state as float32. Actions: 4-D in [-1, 1] (xyz delta, gripper).
    ``info["success"]`` is 1.0 when the task's success criterion holds at this step, else 0.0.
    ``max_episode_steps`` lifts the Sawyer env's own 500-step cap so longer limits work; the time limit
    itself is applied by ``make_env``.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}

    def __init__(
        self,
        task: str,
        *,
        seed: int = 0,
        render_size: int = 224,
        max_episode_steps: int | None = None,
    ) -> None:
        env_dict = _env_dict()
        self.task = task
        self.render_mode = "rgb_array"
        cls = env_dict.ALL_V3_ENVIRONMENTS[task]
        raw = cls(render_mode="rgb_array", camera_name=CAMERA_NAME, width=int(render_size), height=int(render_size))
        # Goal-observable + a random goal per reset, as Meta-World's *-goal-observable classes set it up,
        # but with the goal drawn from the env's (seedable) generator instead of the global np.random.
        raw._partially_observable = False
        raw.__dict__.pop("sawyer_observation_space", None)  # cached_property: recompute with the goal
        raw._set_task_called = True
        raw._freeze_rand_vec = False
        raw.seeded_rand_vec = True
        raw.max_path_length = max_episode_steps if max_episode_steps is not None else sys.maxsize
        raw.seed(seed)
        self._raw = raw
        dim = raw.sawyer_observation_space.shape[0]
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(dim,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=raw.action_space.shape, dtype=np.float32)
        self._rendered = False
        self._closed = False

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        self._check_open()
        super().reset(seed=seed)
        if seed is not None:
            self._raw.seed(seed)
        obs, info = self._raw.reset()
        return obs.astype(np.float32), dict(info)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self._check_open()
        obs, reward, _terminated, truncated, info = self._raw.step(np.asarray(action, dtype=np.float32))
        info = dict(info)
        info["success"] = float(info.get("success", 0.0))
        return obs.astype(np.float32), float(reward), False, bool(truncated), info

    def render(self) -> np.ndarray:
        self._check_open()
        frame = self._raw.render()
        if not self._rendered:
            self._rendered = True
            close_at_exit(self)
        return np.ascontiguousarray(frame[::-1, ::-1])

    def close(self) -> None:
        """Close the MuJoCo renderer (its EGL context); the env cannot be used afterwards."""
        if self._closed:
            return
        self._closed = True
        forget_at_exit(self)
        self._raw.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"metaworld/{self.task} is closed")

    @property
    def goal(self) -> np.ndarray:
        """The current episode's goal position (also the last 3 observation entries)."""
        return np.asarray(self._raw._target_pos, dtype=np.float32)

    @property
    def sawyer_env(self) -> Any:
        """The underlying Meta-World ``SawyerXYZEnv``."""
        return self._raw
