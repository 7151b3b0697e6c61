"""Changing-dynamics environments: a task family whose task is re-drawn at every reset (and optionally mid-run).

``make_env`` builds them from names ``changing/<family>[-<split>][-every<N>]``::

    env = make_env(EnvConfig("changing/walker_param", seed=1))            # a new task at every reset
    env = make_env(EnvConfig("changing/walker_mass-test-every100"))      # test split; a new task every 100 env steps
    obs, info = env.reset(seed=7)      # info["task_id"] == "walker_param/train-4" (say), same for seed 7 every time

* ``<family>``: a registered :mod:`envs.task_families` family with a *task setter* (below): ``walker_mass``,
  ``walker_friction``, ``walker_param`` (body mass / friction / joint damping) and ``cheetah_vel`` (target
  velocity: a reward change, not a dynamics change; an agent that never sees rewards cannot infer it).
* ``<split>``: ``train``, ``test`` or ``all`` (default ``all``): the pool of tasks drawn from (the family's fixed
  split, see :mod:`envs.task_families`).
* ``every<N>``: also re-draw every ``N`` env steps inside an episode (counted before the action repeat);
  the physics state (positions, velocities, time) is kept across the change.

**Draws.** ``reset(seed=s)`` re-seeds the draw generator with ``s`` (``numpy.random.default_rng(s)``) and draws
the episode's task uniformly from the pool; mid-episode draws continue that generator. So the task sequence of
an episode is a function of its reset seed alone (the trainer resets episode ``k`` with ``seed + k``). A reset
without a seed continues the stream (the first one uses the env's config seed, like every ``make_env`` env).

**Reporting.** ``reset`` and ``step`` add to ``info``: ``task_id``, ``task_index`` (the family's global index) and
every task parameter by name (``mass_scale``, ...), all for the task that was in force for that transition,
and ``task_changed`` (``True`` on the step after which a new task took over).

**Building and re-parameterising.** The member env is built once by the family's own builder, with the family's
*nominal* task (every parameter ``1.0``: for the walker families, the unscaled model). A task setter then applies
each drawn task in place: for the physics families it restores the nominal ``body_mass``, ``body_inertia``,
``geom_friction``, ``dof_damping`` and calls :func:`envs.task_families.scale_physics` with the task's
parameters (the same function the families use, so ``changing/walker_mass`` with task ``k`` has the physics
of ``walker_mass/<k>``); for ``cheetah_vel`` it sets the reward wrapper's target velocity. Add a family with
:func:`register_task_setter`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

import envs.task_families as task_families
from envs.registry import SUITE_DEFAULTS, EnvConfig, register_env
from envs.task_families import Task, TaskEnv, TaskFamily

PREFIX = "changing"
POOLS = ("train", "test", "all")
_NAME = re.compile(r"^(?P<family>[A-Za-z0-9_]+)(?:-(?P<split>train|test|all))?(?:-every(?P<every>[0-9]+))?$")

TaskSetter = Callable[[Task], None]
SetterFactory = Callable[[gym.Env], TaskSetter]
"""``factory(env) -> setter``: called once per built env; ``setter(task)`` re-parameterises that env in place."""

_SETTERS: dict[str, SetterFactory] = {}
PHYSICS_FIELDS = ("body_mass", "body_inertia", "geom_friction", "dof_damping")


def register_task_setter(family: str, factory: SetterFactory, *, overwrite: bool = False) -> None:
    """Let ``changing/<family>`` re-parameterise members of ``family`` in place (``factory`` as in SetterFactory)."""
    if family in _SETTERS and not overwrite:
        raise ValueError(f"a task setter for {family!r} is already registered (pass overwrite=True)")
    _SETTERS[family] = factory


def unregister_task_setter(family: str) -> None:
    """Undo :func:`register_task_setter` (``KeyError`` if absent)."""
    del _SETTERS[family]


def _find(env: gym.Env, cls: type) -> Any:
    e: Any = env
    while e is not None:
        if isinstance(e, cls):
            return e
        e = getattr(e, "env", None)
    return None


def physics_setter(env: gym.Env) -> TaskSetter:
    """Setter for dm_control families whose parameters are ``mass_scale`` / ``friction_scale`` / ``damping_scale``."""
    physics = env.unwrapped.dm_env.physics
    model = physics.model
    nominal = {k: np.array(getattr(model, k), copy=True) for k in PHYSICS_FIELDS}  # the env was built unscaled

    def apply(task: Task) -> None:
        state = physics.get_state()  # mj_setConst (inside scale_physics) overwrites qpos: keep the motion
        for k, v in nominal.items():
            getattr(model, k)[:] = v
        task_families.scale_physics(physics, **task.params_dict())
        physics.set_state(state)
        physics.forward()

    return apply


def target_velocity_setter(env: gym.Env) -> TaskSetter:
    """Setter for ``cheetah_vel``: the reward's target velocity (dynamics unchanged)."""
    wrapper = _find(env, task_families.TargetVelocityReward)
    if wrapper is None:
        raise ValueError("target_velocity_setter needs a TargetVelocityReward in the wrapper chain")

    def apply(task: Task) -> None:
        wrapper.target_velocity = float(task.params_dict()["target_velocity"])

    return apply


for _fam in ("walker_mass", "walker_friction", "walker_param"):
    register_task_setter(_fam, physics_setter, overwrite=True)
register_task_setter("cheetah_vel", target_velocity_setter, overwrite=True)


def parse_name(name: str) -> tuple[TaskFamily, str, int]:
    """``changing/<family>[-<split>][-every<N>]`` -> ``(family, split, every)`` (``every = 0``: only at resets)."""
    prefix, _, rest = name.partition("/")
    m = _NAME.match(rest) if prefix == PREFIX else None
    if m is None:
        raise ValueError(
            f"bad changing-dynamics env name {name!r}: expected '{PREFIX}/<family>[-<split>][-every<N>]' with "
            f"split in {POOLS}, e.g. '{PREFIX}/walker_param' or '{PREFIX}/walker_mass-test-every100'"
        )
    family = task_families.get_family(m["family"])
    if family.name not in _SETTERS:
        raise ValueError(
            f"family {family.name!r} has no task setter; changing-dynamics families: {sorted(_SETTERS)} "
            "(add one with envs.changing.register_task_setter)"
        )
    every = int(m["every"] or 0)
    if m["every"] is not None and every < 1:
        raise ValueError(f"{name!r}: every<N> needs N >= 1")
    return family, m["split"] or "all", every


def nominal_task(family: TaskFamily) -> Task:
    """The family's nominal member: every parameter 1.0 (the unscaled model of the physics families)."""
    ones = tuple(1.0 for _ in family.param_names)
    return Task(f"{family.name}/nominal", family.name, "nominal", -1, -1, family.param_names, ones, "nominal")


class ChangingTask(gym.Wrapper):
    """Re-draw the task of a family member at every reset and every ``change_every`` env steps (module docstring).

    ``task_t ~ Uniform(pool)`` with the generator re-seeded by ``reset(seed=s)``; ``setter(task_t)`` applies it.
    """

    def __init__(
        self, env: gym.Env, family: TaskFamily, pool: list[Task], setter: TaskSetter, change_every: int, seed: int
    ) -> None:
        super().__init__(env)
        if not pool:
            raise ValueError(f"{family.name}: empty task pool")
        self.family, self.pool, self.setter = family, pool, setter
        self.change_every = int(change_every)
        self._rng = np.random.default_rng(seed)
        self._steps = 0
        self.task: Task = pool[0]
        self._set(self._draw())

    def _draw(self) -> Task:
        return self.pool[int(self._rng.integers(len(self.pool)))]

    def _set(self, task: Task) -> None:
        self.setter(task)
        self.task = task
        inner = _find(self.env, TaskEnv)
        if inner is not None:  # task_families.task_of(env) then names the task in force
            inner.task = task

    def task_info(self) -> dict[str, Any]:
        return {"task_id": self.task.task_id, "task_index": self.task.global_index, **self.task.params_dict()}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._set(self._draw())
        self._steps = 0
        obs, info = self.env.reset(seed=seed, options=options)
        return obs, {**info, **self.task_info(), "task_changed": False}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        info = {**info, **self.task_info(), "task_changed": False}
        self._steps += 1
        if self.change_every and self._steps % self.change_every == 0 and not (terminated or truncated):
            self._set(self._draw())
            info["task_changed"] = True
        return obs, reward, terminated, truncated, info


def make_changing_env(cfg: EnvConfig) -> gym.Env:
    """``register_env`` factory for ``changing/*`` names (raw env; ``make_env`` adds the usual wrappers)."""
    family, split, every = parse_name(cfg.name)
    env = family.builder(cfg, nominal_task(family))
    try:
        return ChangingTask(env, family, family.tasks(split), _SETTERS[family.name](env), every, cfg.seed)
    except Exception:
        env.close()
        raise


register_env(f"{PREFIX}/*", make_changing_env, supports_obs_mask=True, overwrite=True)
SUITE_DEFAULTS[PREFIX] = dict(task_families.DMC_FAMILY_DEFAULTS)  # 200-decision episodes, as the DMC families

__all__ = [
    "PREFIX",
    "ChangingTask",
    "make_changing_env",
    "nominal_task",
    "parse_name",
    "physics_setter",
    "register_task_setter",
    "target_velocity_setter",
]
