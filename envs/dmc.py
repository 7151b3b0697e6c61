"""DeepMind Control Suite tasks as gymnasium envs (``dmc/<domain>-<task>``).

Names: every task of ``dm_control.suite.ALL_TASKS`` as ``<domain>-<task>``, e.g. ``walker-walk``,
``ball_in_cup-catch``, ``cartpole-swingup_sparse``, ``humanoid_CMU-run``. Matching ignores case and
treats ``-`` and ``_`` alike, which also accepts TD-MPC2's spellings (``cartpole-swingup-sparse``,
``finger-turn-hard``, ``acrobot-swingup-sparse``). Domain aliases (TD-MPC2's):

* ``cup`` -> ``ball_in_cup`` (``cup-catch``),
* ``pointmass`` -> ``point_mass`` (``pointmass-easy``).

TD-MPC2's *custom* tasks (``cup-spin``, ``pendulum-spin``, ``walker-walk-backwards``, ...) are not part
of dm_control and are not provided here; add them with :func:`envs.registry.register_env`.

Conventions (TD-MPC2 / DC-MPC): the observation is every array of the task's observation dict
flattened and concatenated in the suite's key order, as float32; dm_control's own time limit is
switched off (the time limit is applied by ``make_env`` in env steps); no standard task terminates
(only the LQR tasks can, when the state reaches the goal).
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.names import name_key
from envs.rendering import close_at_exit, forget_at_exit

DOMAIN_ALIASES: dict[str, str] = {"cup": "ball_in_cup", "pointmass": "point_mass"}
"""TD-MPC2 domain spellings accepted for dm_control domains."""

_CAMERA_IDS: dict[str, int] = {"quadruped": 2}
"""Camera used for rendering per domain (default 0); TD-MPC2's choice for videos."""


def _suite() -> Any:
    try:
        from dm_control import suite
    except ImportError as e:
        raise ImportError(
            f"dmc/ environments need dm_control (pip install 'dm_control==1.0.28'); importing it failed: {e}"
        ) from e
    return suite


class _NumpyWithIn1d(types.ModuleType):
    """numpy, plus ``in1d`` (removed in numpy 2.4), for dm_control modules that still call it."""

    def __init__(self) -> None:
        super().__init__("numpy")

    def __getattr__(self, attr: str) -> Any:
        return getattr(np, attr)

    @staticmethod
    def in1d(ar1: Any, ar2: Any, assume_unique: bool = False, invert: bool = False) -> np.ndarray:
        return np.isin(np.ravel(ar1), ar2, assume_unique=assume_unique, invert=invert)


def _numpy_compat(domain: str) -> None:
    """dm_control 1.0.28's quadruped calls ``np.in1d``, gone in numpy 2.4: give that module a shim.

    Only ``dm_control.suite.quadruped``'s own ``np`` name is replaced; numpy itself is untouched.
    (dm_control >= 1.0.29 needs a newer mujoco than Meta-World 3.1.1 allows, so we cannot upgrade.)
    """
    if domain != "quadruped" or hasattr(np, "in1d"):
        return
    from dm_control.suite import quadruped

    if not isinstance(quadruped.np, _NumpyWithIn1d):
        quadruped.np = _NumpyWithIn1d()


def dmc_tasks() -> list[tuple[str, str]]:
    """All ``(domain, task)`` pairs of ``dm_control.suite.ALL_TASKS``."""
    return [(d, t) for d, t in _suite().ALL_TASKS]


def dmc_task_names() -> list[str]:
    """Canonical names ``<domain>-<task>`` of every dm_control suite task."""
    return [f"{d}-{t}" for d, t in dmc_tasks()]


def describe_dmc_tasks() -> str:
    """Compact listing ``domain: task, task; ...`` of valid names (aliases in parentheses)."""
    by_domain: dict[str, list[str]] = {}
    for d, t in dmc_tasks():
        by_domain.setdefault(d, []).append(t)
    aliases = {v: k for k, v in DOMAIN_ALIASES.items()}
    parts = []
    for d, tasks in by_domain.items():
        label = f"{d} (alias {aliases[d]})" if d in aliases else d
        parts.append(f"{label}: {', '.join(tasks)}")
    return "; ".join(parts)


def resolve_dmc_name(name: str) -> tuple[str, str]:
    """Map a name such as ``cup-catch`` or ``walker-walk`` to dm_control's ``(domain, task)``.

    Raises ValueError listing the valid names when there is no match.
    """
    table: dict[str, tuple[str, str]] = {}
    for d, t in dmc_tasks():
        table[name_key(f"{d}_{t}")] = (d, t)
    for alias, domain in DOMAIN_ALIASES.items():
        for d, t in dmc_tasks():
            if d == domain:
                table.setdefault(name_key(f"{alias}_{t}"), (d, t))
    key = name_key(name)
    if key in table:
        return table[key]
    import difflib

    close = difflib.get_close_matches(key, list(table), n=3)
    hint = ""
    if close:
        hint = " Did you mean: " + ", ".join(f"dmc/{'-'.join(table[c])}" for c in close) + "?"
    raise ValueError(
        f"Unknown DMC task {name!r}.{hint} Valid dmc/<domain>-<task> names (domain: tasks): "
        f"{describe_dmc_tasks()}. ('-' and '_' are interchangeable; TD-MPC2's custom tasks such as "
        "cup-spin are not in dm_control: add them with register_env.)"
    )


class DMCEnv(gym.Env):
    """One dm_control suite task behind the gymnasium API, with a flat float32 observation.

    ``reset(seed=s)`` re-seeds the task's ``RandomState`` (the one passed as ``task_kwargs['random']``),
    so the initial state, and with the same actions the whole episode, is a function of ``s``.
    ``obs_mask`` lists observation keys to drop (e.g. ``["velocity"]`` for a partially observed
    variant). Actions are in the task's native bounds (``make_env`` rescales them to [-1, 1]).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(
        self,
        domain: str,
        task: str,
        *,
        seed: int = 0,
        render_size: int = 224,
        obs_mask: Sequence[str] | None = None,
    ) -> None:
        suite = _suite()
        _numpy_compat(domain)
        self.domain, self.task = domain, task
        self.render_mode = "rgb_array"
        self._env = suite.load(domain, task, task_kwargs={"random": seed, "time_limit": float("inf")})
        spec = self._env.observation_spec()
        keys = list(spec.keys())
        mask = list(obs_mask or [])
        unknown = [k for k in mask if k not in spec]
        if unknown:
            raise ValueError(f"obs_mask {unknown} not in the observation keys of dmc/{domain}-{task}: {keys}")
        self.obs_keys: list[str] = [k for k in keys if k not in mask]
        if not self.obs_keys:
            raise ValueError(f"obs_mask {mask} drops every observation key of dmc/{domain}-{task}")
        self.obs_sizes: dict[str, int] = {k: int(np.prod(spec[k].shape)) for k in keys}
        dim = sum(self.obs_sizes[k] for k in self.obs_keys)
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(dim,), dtype=np.float32)
        aspec = self._env.action_spec()
        self.action_space = spaces.Box(
            np.broadcast_to(aspec.minimum, aspec.shape).astype(np.float32),
            np.broadcast_to(aspec.maximum, aspec.shape).astype(np.float32),
            dtype=np.float32,
        )
        self.render_size = int(render_size)
        self._camera_id = _CAMERA_IDS.get(domain, 0)
        vis = self._env.physics.model.vis.global_
        vis.offwidth = max(int(vis.offwidth), self.render_size)
        vis.offheight = max(int(vis.offheight), self.render_size)
        self.metadata = dict(self.metadata, render_fps=round(1.0 / self._env.control_timestep()))
        self._rendered = False
        self._closed = False

    def flat_observation(self, observation: Any) -> np.ndarray:
        """The flat float32 observation of a dm_env timestep's observation dict (``obs_mask`` keys dropped)."""
        return np.concatenate([np.asarray(observation[k], dtype=np.float32).reshape(-1) for k in self.obs_keys])

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        self._check_open()
        super().reset(seed=seed)
        if seed is not None:
            self._env.task.random.seed(seed)
        ts = self._env.reset()
        return self.flat_observation(ts.observation), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self._check_open()
        ts = self._env.step(np.asarray(action, dtype=np.float64))
        reward = float(ts.reward) if ts.reward is not None else 0.0
        terminated = bool(ts.last() and ts.discount == 0.0)
        truncated = bool(ts.last() and not terminated)
        return self.flat_observation(ts.observation), reward, terminated, truncated, {}

    def render(self) -> np.ndarray:
        self._check_open()
        frame = self._env.physics.render(height=self.render_size, width=self.render_size, camera_id=self._camera_id)
        if not self._rendered:
            self._rendered = True
            close_at_exit(self)
        return frame

    def close(self) -> None:
        """Free the rendering contexts and MuJoCo data; the env cannot be used afterwards."""
        if self._closed:
            return
        self._closed = True
        forget_at_exit(self)
        self._env.close()
        self._env.physics.free()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"dmc/{self.domain}-{self.task} is closed")

    @property
    def dm_env(self) -> Any:
        """The underlying ``dm_control.rl.control.Environment``."""
        return self._env
