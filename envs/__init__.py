"""Environments: ``make_env(cfg)`` for ``dmc/``, ``metaworld/``, ``gym/`` and registered names.

Quick start::

    from envs import EnvConfig, make_env

    env = make_env(EnvConfig("dmc/walker-walk", seed=1))   # repeat 2, 1000 env steps = 500 decisions
    obs, info = env.reset()
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    frame = env.render()                                     # (224, 224, 3) uint8
    env.close()                                              # frees the EGL context

Rendering is headless by default: ``MUJOCO_GL`` is set to ``egl`` here unless already set (set it to
``osmesa`` or ``glfw`` before importing this package to override). Suite packages (dm_control,
metaworld) are imported only when an env of that suite is made.
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
# gymnasium's classic-control renderers use pygame/SDL: draw off-screen, never open a window.
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

# MUJOCO_GL must be set before anything imports mujoco, hence the imports below the setdefault calls.
from envs.names import name_key  # noqa: E402
from envs.registry import (  # noqa: E402
    BUILTIN_SUITES,
    SUITE_DEFAULTS,
    EnvConfig,
    canonical_env_name,
    list_envs,
    make_env,
    register_env,
    resolve_defaults,
    unregister_env,
    valid_prefixes,
)
from envs.wrappers import ResolvedEnv  # noqa: E402

__all__ = [
    "BUILTIN_SUITES",
    "SUITE_DEFAULTS",
    "EnvConfig",
    "canonical_env_name",
    "ResolvedEnv",
    "list_envs",
    "make_env",
    "name_key",
    "register_env",
    "resolve_defaults",
    "unregister_env",
    "valid_prefixes",
]

# Task families (cheetah_vel/..., walker_mass/..., ml1_reach/...) register their task ids on import, and the
# changing-dynamics envs (changing/<family>[-<split>][-every<N>], a new task at every reset) register theirs.
import envs.changing  # noqa: E402, F401
import envs.task_families  # noqa: E402, F401
