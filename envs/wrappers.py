"""Suite-independent gymnasium wrappers that turn any env into the project's Env contract.

``make_env`` stacks them, innermost first::

    suite env ─▶ NormalizeActions ─▶ [VectorObservation] ─▶ [TimeLimit (env steps)]
              ─▶ ActionRepeat ─▶ SquareFrames ─▶ ResolvedEnv   (returned to the caller)

The time limit sits *below* the action repeat, so it counts env steps (DMC walker: 1000 env steps =
500 decisions at repeat 2) and an episode can end in the middle of a repeated action.
"""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.rendering import close_at_exit, forget_at_exit, to_square_frame


class NormalizeActions(gym.ActionWrapper):
    """Expose ``Box(-1, 1, float32)`` actions and map them affinely onto the env's own bounds.

    Actions are clipped to ``[-1, 1]`` first (planners add noise), then ``a_env = low + (a + 1) / 2 *
    (high - low)``. Only ``Box`` action spaces with finite bounds are supported.
    """

    def __init__(self, env: gym.Env, name: str = "") -> None:
        super().__init__(env)
        space = env.action_space
        label = f"{name}: " if name else ""
        if not isinstance(space, spaces.Box):
            raise ValueError(
                f"{label}only continuous Box action spaces are supported, got {space!r} "
                "(discrete actions are not supported by the planners yet)"
            )
        low = np.asarray(space.low, dtype=np.float64)
        high = np.asarray(space.high, dtype=np.float64)
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
            raise ValueError(f"{label}action bounds must be finite to rescale to [-1, 1], got {space!r}")
        self._shape = space.shape
        self._dtype = space.dtype
        self._identity = bool(np.all(low == -1.0) and np.all(high == 1.0))
        self._low = low
        self._half_range = 0.5 * (high - low)
        self.action_space = spaces.Box(-1.0, 1.0, shape=space.shape, dtype=np.float32)

    def action(self, action: Any) -> np.ndarray:
        a = np.asarray(action, dtype=np.float64)
        if a.shape != self._shape:
            if a.size != int(np.prod(self._shape)):
                raise ValueError(f"action has shape {a.shape}, expected {self._shape}")
            a = a.reshape(self._shape)
        a = np.clip(a, -1.0, 1.0)
        if not self._identity:
            a = self._low + (a + 1.0) * self._half_range
        return a.astype(self._dtype, copy=False)


class VectorObservation(gym.ObservationWrapper):
    """Flatten any observation (Box of any rank, Dict, Tuple, ...) into a 1-D ``float32`` vector.

    Uses gymnasium's ``flatten``: Dict entries are concatenated in the space's key order, discrete
    entries become one-hot.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._inner_space = env.observation_space
        flat = spaces.flatten_space(env.observation_space)
        if not isinstance(flat, spaces.Box):
            raise ValueError(f"cannot flatten observation space {env.observation_space!r} into a vector")
        self.observation_space = spaces.Box(flat.low.astype(np.float32), flat.high.astype(np.float32), dtype=np.float32)

    def observation(self, observation: Any) -> np.ndarray:
        return np.asarray(spaces.flatten(self._inner_space, observation), dtype=np.float32)


def is_float32_vector(space: gym.Space) -> bool:
    """True when ``space`` is already a 1-D ``float32`` Box (no VectorObservation needed)."""
    return isinstance(space, spaces.Box) and len(space.shape) == 1 and space.dtype == np.float32


class ActionRepeat(gym.Wrapper):
    """Repeat each action ``repeat`` times; the reward is the sum over the sub-steps.

    Stops early when a sub-step terminates or truncates. ``info`` is the last sub-step's, plus
    ``info["sub_steps"]`` (env steps actually taken, so ``env_steps += info["sub_steps"]`` is exact)
    and, when the env reports ``"success"``, ``info["success"] = max`` over the sub-steps as a float:
    success counts if it was reached at *any* sub-step of this decision (DC-MPC's convention; the
    trainer then takes the max over the episode, i.e. "success at any step of the episode").
    """

    def __init__(self, env: gym.Env, repeat: int) -> None:
        super().__init__(env)
        if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
            raise ValueError(f"action_repeat must be an integer >= 1, got {repeat!r}")
        self.repeat = repeat

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        total = 0.0
        success: float | None = None
        sub_steps = 0
        for _ in range(self.repeat):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            sub_steps += 1
            if "success" in info:
                success = max(success or 0.0, float(info["success"]))
            if terminated or truncated:
                break
        info = dict(info)
        info["sub_steps"] = sub_steps
        if success is not None:
            info["success"] = success
        return obs, total, bool(terminated), bool(truncated), info


class SquareFrames(gym.Wrapper):
    """Make ``render()`` return a ``(size, size, 3)`` ``uint8`` RGB frame (resized if needed)."""

    def __init__(self, env: gym.Env, size: int) -> None:
        super().__init__(env)
        self.size = size

    def render(self) -> np.ndarray:
        return to_square_frame(self.env.render(), self.size)


class ResolvedEnv(gym.Wrapper):
    """Outermost wrapper returned by ``make_env``: the env plus the settings it was built with.

    Attributes (read them here; gymnasium 1.x wrappers do not forward attribute look-ups):

    * ``spec_name``: canonical name, e.g. ``"dmc/ball_in_cup-catch"`` for ``"dmc/cup-catch"``;
    * ``suite``: the prefix (``"dmc"``, ``"metaworld"``, ``"gym"`` or a registered one);
    * ``action_repeat``: env steps per ``step()`` call (decision);
    * ``max_episode_steps``: time limit in env steps (``None`` = no limit);
    * ``config``: the resolved :class:`envs.registry.EnvConfig` (suite defaults filled in).

    The first ``reset()`` without a seed uses ``config.seed``, so an env is reproducible from its
    config alone; later unseeded resets continue the env's random stream. ``close()`` is idempotent;
    an env that rendered and was never closed is closed at interpreter exit (see
    :func:`envs.rendering.close_at_exit`).
    """

    def __init__(
        self,
        env: gym.Env,
        *,
        spec_name: str,
        suite: str,
        action_repeat: int,
        max_episode_steps: int | None,
        config: Any,
    ) -> None:
        super().__init__(env)
        self.spec_name = spec_name
        self.suite = suite
        self.action_repeat = action_repeat
        self.max_episode_steps = max_episode_steps
        self.config = config
        self._first_seed: int | None = config.seed
        self._closed = False
        self._rendered = False
        self.action_space.seed(config.seed)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        if seed is None and self._first_seed is not None:
            seed = self._first_seed
        self._first_seed = None
        return self.env.reset(seed=seed, options=options)

    def render(self) -> Any:
        frame = self.env.render()
        if not self._rendered:  # a GL context may exist from now on: close it before EGL teardown
            self._rendered = True
            close_at_exit(self)
        return frame

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            forget_at_exit(self)
            self.env.close()
