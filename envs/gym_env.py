"""Any environment registered with gymnasium (``gym/<id>``), e.g. ``gym/Pendulum-v1``.

``gym/<module>:<id>`` imports ``<module>`` first (it registers its envs), as ``gymnasium.make`` does.
The env is made with ``render_mode="rgb_array"`` and keeps its own terminations. Its time limit is
gymnasium's (``max_episode_steps`` replaces the registered one when given). Only ``Box`` action spaces
are supported; observations of any space are flattened to float32 by ``make_env``.
"""

from __future__ import annotations

import difflib
import importlib

import gymnasium as gym


def gym_env_ids() -> list[str]:
    """Ids currently in gymnasium's registry (packages that register envs must be imported first)."""
    return sorted(gym.envs.registry.keys())


def resolve_gym_id(name: str) -> str:
    """Check that ``name`` (``<id>`` or ``<module>:<id>``) is a registered id; return the id.

    Raises ValueError listing the registered ids; an import error of ``<module>`` propagates unchanged.
    """
    module, sep, env_id = name.partition(":")
    if sep:
        importlib.import_module(module)
    else:
        env_id = module
    if env_id in gym.envs.registry:
        return env_id
    ids = gym_env_ids()
    close = difflib.get_close_matches(env_id, ids, n=3)
    hint = (" Did you mean: " + ", ".join(f"gym/{c}" for c in close) + "?") if close else ""
    raise ValueError(
        f"Unknown gymnasium id {env_id!r}.{hint} Registered ids ({len(ids)}): {', '.join(ids)}. "
        "Ids from other packages need the package imported first: use gym/<module>:<id>."
    )


def make_gym_env(env_id: str, max_episode_steps: int | None = None) -> gym.Env:
    """``gymnasium.make(env_id, render_mode='rgb_array', max_episode_steps=...)``.

    Raises ValueError for non-Box action spaces (e.g. CartPole's Discrete).
    """
    env = gym.make(env_id, render_mode="rgb_array", max_episode_steps=max_episode_steps)
    if not isinstance(env.action_space, gym.spaces.Box):
        space = env.action_space
        env.close()
        raise ValueError(f"gym/{env_id} has action space {space!r}; only continuous Box action spaces are supported")
    return env
