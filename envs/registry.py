"""``make_env``: one entry point from a name such as ``"dmc/walker-walk"`` to a ready gymnasium env.

Built-in prefixes: ``dmc/<domain>-<task>`` (:mod:`envs.dmc`), ``metaworld/<task>-v3``
(:mod:`envs.metaworld`), ``gym/<id>`` (:mod:`envs.gym_env`). More with :func:`register_env`.

Every env returned follows the Env contract of DESIGN.md: gymnasium API, observation a 1-D float32
Box, actions ``Box(-1, 1, float32)`` (rescaled to the env's bounds), ``render()`` an
``(render_size, render_size, 3)`` uint8 frame, ``close()`` frees the GL contexts. One ``step()`` is one
*decision* = ``action_repeat`` env steps (rewards summed); the time limit counts *env* steps and sets
``truncated=True``. The outermost wrapper (:class:`envs.wrappers.ResolvedEnv`) carries ``spec_name``,
``suite``, ``action_repeat``, ``max_episode_steps`` and the resolved ``config``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import gymnasium as gym

from envs.wrappers import (
    ActionRepeat,
    NormalizeActions,
    ResolvedEnv,
    SquareFrames,
    VectorObservation,
    is_float32_vector,
)

SUITE_DEFAULTS: dict[str, dict[str, int | None]] = {
    "dmc": {"action_repeat": 2, "max_episode_steps": 1000},
    "metaworld": {"action_repeat": 2, "max_episode_steps": 200},
    "gym": {"action_repeat": 1, "max_episode_steps": None},
}
"""Per-suite defaults (TD-MPC2 / DC-MPC conventions) used where an EnvConfig field is ``None``.

``max_episode_steps`` is in env steps: DMC 1000 env steps = 500 decisions at repeat 2; Meta-World 200 =
100 decisions. For ``gym`` ``None`` keeps the id's registered limit. Prefixes missing here (custom
envs) default to ``action_repeat=1`` and no time limit.
"""

_FALLBACK_DEFAULTS: dict[str, int | None] = {"action_repeat": 1, "max_episode_steps": None}
BUILTIN_SUITES: tuple[str, ...] = ("dmc", "metaworld", "gym")


@dataclass
class EnvConfig:
    """What to build: an env name and the settings that change its dynamics, seeding or frames.

    ``None`` means "the suite default" (:data:`SUITE_DEFAULTS`, or the table given to ``make_env``).

    Attributes:
        name: ``"<prefix>/<task>"``, e.g. ``"dmc/walker-walk"``, ``"metaworld/reach-v3"``,
            ``"gym/Pendulum-v1"``, or a name/prefix added with :func:`register_env`.
        seed: seeds the env at construction and the first ``reset()`` that has no seed.
        action_repeat: env steps per decision (>= 1).
        max_episode_steps: time limit in env steps, i.e. before dividing by ``action_repeat`` (>= 1).
        render_size: side of the square RGB frames returned by ``render()``.
        obs_mask: DMC only: observation keys to drop, e.g. ``["velocity"]`` (partially observed).
    """

    name: str
    seed: int = 0
    action_repeat: int | None = None
    max_episode_steps: int | None = None
    render_size: int = 224
    obs_mask: list[str] | None = None

    def __post_init__(self) -> None:
        _validate(self)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _validate(cfg: EnvConfig) -> None:
    if not isinstance(cfg.name, str) or not cfg.name:
        raise ValueError(f"EnvConfig.name must be a non-empty string like 'dmc/walker-walk', got {cfg.name!r}")
    if not _is_int(cfg.seed) or cfg.seed < 0:
        raise ValueError(f"EnvConfig.seed must be an integer >= 0, got {cfg.seed!r}")
    if cfg.action_repeat is not None and (not _is_int(cfg.action_repeat) or cfg.action_repeat < 1):
        raise ValueError(f"action_repeat must be an integer >= 1 (or None), got {cfg.action_repeat!r}")
    if cfg.max_episode_steps is not None and (not _is_int(cfg.max_episode_steps) or cfg.max_episode_steps < 1):
        raise ValueError(
            f"max_episode_steps must be an integer >= 1 (env steps) or None, got {cfg.max_episode_steps!r}"
        )
    if not _is_int(cfg.render_size) or cfg.render_size < 1:
        raise ValueError(f"render_size must be an integer >= 1, got {cfg.render_size!r}")
    if cfg.obs_mask is not None:
        if isinstance(cfg.obs_mask, str) or not all(isinstance(k, str) for k in cfg.obs_mask):
            raise ValueError(f"obs_mask must be a list of observation key names, got {cfg.obs_mask!r}")
        cfg.obs_mask = list(cfg.obs_mask)


def _as_config(cfg: EnvConfig | Mapping[str, Any]) -> EnvConfig:
    if isinstance(cfg, EnvConfig):
        return dataclasses.replace(cfg)
    if not isinstance(cfg, Mapping):
        raise TypeError(f"make_env expects an EnvConfig or a mapping, got {type(cfg).__name__}")
    fields = {f.name for f in dataclasses.fields(EnvConfig)}
    unknown = sorted(str(k) for k in cfg if k not in fields)
    if unknown:
        raise ValueError(f"unknown EnvConfig field(s) {unknown}; valid fields: {sorted(fields)}")
    values = dict(cfg)
    if values.get("obs_mask") is not None:  # e.g. an omegaconf ListConfig
        values["obs_mask"] = [str(k) for k in values["obs_mask"]]
    return EnvConfig(**values)


# ---------------------------------------------------------------------------------------------------
# user registrations

EnvFactory = Callable[[EnvConfig], gym.Env]


@dataclass(frozen=True)
class _Registration:
    factory: EnvFactory
    supports_obs_mask: bool


_EXACT: dict[str, _Registration] = {}
_PREFIXES: dict[str, _Registration] = {}


def register_env(name: str, factory: EnvFactory, *, supports_obs_mask: bool = False, overwrite: bool = False) -> None:
    """Make ``make_env`` build your own env under ``name``.

    ``name`` is either an exact name with a prefix (``"custom/my-reacher"``) or a whole prefix
    (``"custom/*"``: every ``custom/<anything>`` goes to ``factory``, which reads ``cfg.name``). Built-in
    prefixes (dmc, metaworld, gym) cannot be registered. ``factory(cfg)`` receives the resolved
    :class:`EnvConfig` (suite defaults filled in) and returns a gymnasium env with a Box action space;
    create it with ``render_mode="rgb_array"`` for videos and seed it from ``cfg.seed``. ``make_env``
    then adds the usual wrappers: [-1, 1] actions, float32 vector observations, the time limit (env
    steps), action repeat and square frames. Defaults for a prefix come from the ``suite_defaults``
    table (key = prefix), else ``action_repeat=1`` and no time limit. ``obs_mask`` is passed through
    only when ``supports_obs_mask=True`` (otherwise it is an error to set it).

    Example::

        import gymnasium as gym
        from envs import EnvConfig, make_env, register_env

        def make_my_env(cfg: EnvConfig) -> gym.Env:
            env = gym.make("Pendulum-v1", render_mode="rgb_array", g=5.0)  # any gymnasium.Env
            env.reset(seed=cfg.seed)
            return env

        register_env("custom/low-gravity-pendulum", make_my_env)
        env = make_env(EnvConfig("custom/low-gravity-pendulum", action_repeat=2))
    """
    if not callable(factory):
        raise TypeError(f"factory must be callable, got {factory!r}")
    prefix, sep, rest = name.partition("/")
    if not sep or not prefix or not rest:
        raise ValueError(f"register_env name must look like '<prefix>/<name>' or '<prefix>/*', got {name!r}")
    if prefix in BUILTIN_SUITES:
        raise ValueError(f"prefix {prefix!r} is built in; register under another prefix, e.g. 'custom/'")
    table, key = (_PREFIXES, prefix) if rest == "*" else (_EXACT, name)
    if key in table and not overwrite:
        raise ValueError(f"{name!r} is already registered (pass overwrite=True to replace it)")
    table[key] = _Registration(factory, supports_obs_mask)


def unregister_env(name: str) -> None:
    """Remove a registration made with :func:`register_env` (``KeyError`` if absent)."""
    prefix, _, rest = name.partition("/")
    if rest == "*":
        del _PREFIXES[prefix]
    else:
        del _EXACT[name]


def valid_prefixes() -> list[str]:
    """Built-in prefixes plus the prefixes of registered envs."""
    custom = {n.partition("/")[0] for n in _EXACT} | set(_PREFIXES)
    return list(BUILTIN_SUITES) + sorted(custom - set(BUILTIN_SUITES))


def list_envs(suite: str | None = None) -> list[str]:
    """Valid full names (``"dmc/walker-walk"``, ...) for one prefix, or for all when ``suite`` is None.

    ``gym`` lists gymnasium's current registry (including ids with discrete actions, which make_env
    rejects); a wildcard registration appears as ``"<prefix>/*"``.
    """
    suites = valid_prefixes() if suite is None else [suite]
    names: list[str] = []
    for s in suites:
        if s == "dmc":
            from envs.dmc import dmc_task_names

            names += [f"dmc/{n}" for n in dmc_task_names()]
        elif s == "metaworld":
            from envs.metaworld import metaworld_task_names

            names += [f"metaworld/{n}" for n in metaworld_task_names()]
        elif s == "gym":
            from envs.gym_env import gym_env_ids

            names += [f"gym/{n}" for n in gym_env_ids()]
        elif s in valid_prefixes():
            names += sorted(n for n in _EXACT if n.startswith(f"{s}/"))
            names += [f"{s}/*"] if s in _PREFIXES else []
        else:
            raise ValueError(f"unknown prefix {s!r}; valid prefixes: {valid_prefixes()}")
    return names


# ---------------------------------------------------------------------------------------------------
# make_env


def resolve_defaults(
    cfg: EnvConfig | Mapping[str, Any], suite_defaults: Mapping[str, Mapping[str, Any]] | None = None
) -> EnvConfig:
    """Return a copy of ``cfg`` with ``action_repeat`` / ``max_episode_steps`` filled from the suite table.

    ``suite_defaults`` entries override :data:`SUITE_DEFAULTS` key by key (a partial table is fine).
    For ``gym`` a resolved ``max_episode_steps`` of ``None`` means "the id's registered limit".
    """
    cfg = _as_config(cfg)
    prefix = cfg.name.partition("/")[0]
    table: dict[str, Any] = dict(SUITE_DEFAULTS.get(prefix, _FALLBACK_DEFAULTS))
    if suite_defaults is not None and prefix in suite_defaults:
        override = dict(suite_defaults[prefix])
        unknown = sorted(set(override) - set(_FALLBACK_DEFAULTS))
        if unknown:
            raise ValueError(
                f"suite_defaults[{prefix!r}] has unknown key(s) {unknown}; valid: {sorted(_FALLBACK_DEFAULTS)}"
            )
        table.update(override)
    if cfg.action_repeat is None:
        cfg.action_repeat = table.get("action_repeat", 1)
    if cfg.max_episode_steps is None:
        cfg.max_episode_steps = table.get("max_episode_steps")
    try:
        _validate(cfg)
    except ValueError as e:
        raise ValueError(f"{e} (after applying the suite defaults for {prefix!r})") from None
    return cfg


def _bad_prefix(name: str) -> ValueError:
    return ValueError(
        f"Unknown env name {name!r}: names look like '<prefix>/<task>' with prefix one of "
        f"{valid_prefixes()}, "
        "e.g. 'dmc/walker-walk', 'metaworld/reach-v3', 'gym/Pendulum-v1'. "
        "Use envs.list_envs('<prefix>') to see the valid names."
    )


def canonical_env_name(name: str) -> str:
    """The name :func:`make_env` reports as ``spec_name`` for ``name``, without building the env.

    Resolves spellings and aliases of suite tasks (``dmc/cup-Catch`` -> ``dmc/ball_in_cup-catch``,
    ``metaworld/reach`` -> ``metaworld/reach-v3``); other names come back unchanged.

    Raises:
        ValueError: an unknown dmc or Meta-World task (the message lists the valid names).
    """
    prefix, sep, rest = name.partition("/")
    if sep and rest and prefix == "dmc":
        from envs.dmc import resolve_dmc_name

        domain, task = resolve_dmc_name(rest)
        return f"dmc/{domain}-{task}"
    if sep and rest and prefix == "metaworld":
        from envs.metaworld import resolve_metaworld_name

        return f"metaworld/{resolve_metaworld_name(rest)}"
    return name


def make_env(
    cfg: EnvConfig | Mapping[str, Any], suite_defaults: Mapping[str, Mapping[str, Any]] | None = None
) -> ResolvedEnv:
    """Build the env named ``cfg.name`` with the suite defaults applied and the standard wrappers.

    Args:
        cfg: an :class:`EnvConfig` or a mapping with its fields (e.g. a Hydra ``DictConfig``).
        suite_defaults: per-prefix ``{"action_repeat": ..., "max_episode_steps": ...}`` overriding
            :data:`SUITE_DEFAULTS` (the Hydra config passes its own copy of the table).

    Returns:
        A :class:`envs.wrappers.ResolvedEnv` (a ``gymnasium.Wrapper``) exposing ``spec_name``,
        ``suite``, ``action_repeat``, ``max_episode_steps`` (env steps) and ``config``.

    Raises:
        ValueError: unknown prefix or task (the message lists the valid names), invalid settings,
            ``obs_mask`` for a suite that does not support it, non-Box action space.
        ImportError: the suite's package failed to import (the original error is chained).
    """
    cfg = resolve_defaults(cfg, suite_defaults)
    prefix, sep, rest = cfg.name.partition("/")
    if not sep or not rest:
        raise _bad_prefix(cfg.name)
    registration = _EXACT.get(cfg.name) or _PREFIXES.get(prefix)
    if prefix not in BUILTIN_SUITES and registration is None:
        raise _bad_prefix(cfg.name)
    supports_mask = prefix == "dmc" or (registration is not None and registration.supports_obs_mask)
    if cfg.obs_mask and not supports_mask:
        raise ValueError(
            f"obs_mask is only supported for dmc/ envs (and registered envs that opt in); got {cfg.name!r}"
        )

    time_limit_applied = False
    if prefix == "dmc":
        from envs.dmc import DMCEnv

        spec_name = canonical_env_name(cfg.name)
        domain, task = spec_name.removeprefix("dmc/").split("-", 1)  # dm_control names use '_' only
        env: gym.Env = DMCEnv(domain, task, seed=cfg.seed, render_size=cfg.render_size, obs_mask=cfg.obs_mask)
    elif prefix == "metaworld":
        from envs.metaworld import MetaWorldEnv

        spec_name = canonical_env_name(cfg.name)
        task = spec_name.removeprefix("metaworld/")
        env = MetaWorldEnv(task, seed=cfg.seed, render_size=cfg.render_size, max_episode_steps=cfg.max_episode_steps)
    elif prefix == "gym":
        from envs.gym_env import make_gym_env, resolve_gym_id

        env_id = resolve_gym_id(rest)
        spec_name = f"gym/{rest}"
        env = make_gym_env(env_id, cfg.max_episode_steps)
        cfg.max_episode_steps = env.spec.max_episode_steps if env.spec is not None else cfg.max_episode_steps
        time_limit_applied = True  # gymnasium.make's TimeLimit, innermost, counts env steps
    else:
        assert registration is not None
        spec_name = cfg.name
        env = registration.factory(dataclasses.replace(cfg))
        if not isinstance(env, gym.Env):
            raise TypeError(
                f"the factory registered for {cfg.name!r} returned {type(env).__name__}, not a gymnasium.Env"
            )

    try:
        env = NormalizeActions(env, name=spec_name)
        if not is_float32_vector(env.observation_space):
            env = VectorObservation(env)
        if cfg.max_episode_steps is not None and not time_limit_applied:
            env = gym.wrappers.TimeLimit(env, cfg.max_episode_steps)
        env = ActionRepeat(env, cfg.action_repeat)
        env = SquareFrames(env, cfg.render_size)
        return ResolvedEnv(
            env,
            spec_name=spec_name,
            suite=prefix,
            action_repeat=cfg.action_repeat,
            max_episode_steps=cfg.max_episode_steps,
            config=cfg,
        )
    except Exception:
        env.close()
        raise
