"""Task families for offline meta-RL: parameterised task distributions with a fixed train/test split.

Importing this module registers every family with :func:`envs.register_env`, so ``make_env`` builds any
member from its **task id** ``"<family>/<split>-<i>"``::

    import envs.task_families  # noqa: F401  (registers the families)
    from envs import EnvConfig, make_env

    env = make_env(EnvConfig("cheetah_vel/train-3", seed=1))     # target velocity 1.4 m/s
    fam = envs.task_families.get_family("walker_mass")
    fam.train_tasks()[:2]            # ['walker_mass/train-0', 'walker_mass/train-1']
    fam.task_params("walker_mass/test-0")   # {'mass_scale': 0.444...}
    env = fam.make("walker_mass/test-0", seed=3, max_episode_steps=100)

``<split>`` is ``train`` or ``test``; ``<i>`` counts from 0 inside the split. Every task also has a
``global_index`` (its position in the family's full parameter list, stable forever): that integer is
what offline datasets store in ``task_ids`` (see :mod:`envs.datasets`).

The families (parameters and splits are fixed in this file; nothing is drawn at run time):

| family | task parameters | tasks | split (fixed) |
|---|---|---|---|
| ``cheetah_vel`` | ``target_velocity`` 0.1, 0.2, ..., 4.0 m/s | 40 | ER-TRL: train 1.1-3.0, test the rest |
| ``walker_mass`` | ``mass_scale`` 1.5^linspace(-2, 2, 40) | 40 | ER-TRL: train 0.67-1.48, test the rest |
| ``walker_friction`` | ``friction_scale`` 1.5^linspace(-2, 2, 40) | 40 | ER-TRL, as walker_mass |
| ``walker_param`` | ``mass_scale`` x ``damping_scale``, 5 x 5 grid | 25 | checkerboard: train 13, test 12 |
| ``ml1_reach`` | ``goal_x, goal_y, goal_z`` of reach-v3 | 50 | Halton points 0-39 train, 40-49 test |

* ER-TRL split (the 40-task families): sort the 40 parameters; train = the middle 20 (indices 10-29),
  test = the outer 20: "moderate" OOD = the next 5 on each side (5-9, 30-34), "extreme" OOD = the outer
  5 on each side (0-4, 35-39). ``test-0 .. test-9`` are the low side, ``test-10 .. test-19`` the high.
* ``walker_param`` grid: both scales in {0.75, 0.85, 1, 1.15, 1.25} (the L4DC residual paper's online
  changes); global index ``5 * i + j`` for mass value ``i`` and damping value ``j``; train = cells with
  ``i + j`` even, test = ``i + j`` odd (interpolation between training tasks).
* ``ml1_reach``: the first 50 points of the 3-D Halton sequence (bases 2, 3, 5; exact, no RNG) mapped
  onto reach-v3's goal box ``[-0.1, 0.1] x [0.8, 0.9] x [0.05, 0.3]``: 40 train goals and 10 disjoint
  test goals from the same distribution (Meta-World ML1).

The ``group`` of a task refines its split: ``train``; ``moderate`` / ``extreme`` (OOD test tasks of the
40-task families); ``interpolation`` (``walker_param`` test tasks); ``test`` (``ml1_reach``).

Dynamics and rewards:

* ``cheetah_vel``: dm_control ``cheetah`` (run) physics and observation (17-D, the target is *not*
  observed). The reward is replaced by the PEARL cheetah-vel reward, per env step::

      r_t = -|v_t - v*| - 0.05 * ||a_t||^2

  with ``v_t`` the torso's forward velocity after the step (dm_control's ``physics.speed()``, m/s),
  ``v*`` the task's target velocity and ``a_t`` the native action (cheetah's bounds are [-1, 1], so it
  equals the agent's action). ``info`` carries ``velocity`` and ``target_velocity``.
* ``walker_*``: dm_control ``walker-walk`` (24-D observation, standard walk reward), with the MuJoCo
  model changed once after load: ``body_mass`` and ``body_inertia`` times ``mass_scale``,
  ``geom_friction`` (all three coefficients) times ``friction_scale``, ``dof_damping`` times
  ``damping_scale`` (then ``mj_setConst`` recomputes the derived constants). Resets keep the model.
* ``ml1_reach``: Meta-World ``reach-v3`` with the task's goal fixed at every reset and the goal
  **hidden** from the observation (the last 3 entries are zeros, Meta-World's ML1 convention; 39-D);
  the object (irrelevant to reaching) sits at ``(0, 0.6, 0.02)`` in every task. Reward and
  ``info["success"]`` are Meta-World's. Every episode of a task starts from the same state.

Episode length and action repeat come from :data:`envs.registry.SUITE_DEFAULTS` entries added here
(override them per env with ``EnvConfig``): DMC families ``action_repeat=2``, ``max_episode_steps=400``
env steps (= 200 decisions, the 200-step episodes of the offline meta-RL papers; 4 s of cheetah, 10 s
of walker); ``ml1_reach`` ``action_repeat=2``, ``max_episode_steps=200`` (Meta-World's suite default).
Every env goes through ``make_env``'s usual wrapper stack (float32 vector obs, [-1, 1] actions, time
limit in env steps, action repeat, square frames).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from envs.registry import SUITE_DEFAULTS, EnvConfig, make_env, register_env, unregister_env
from envs.wrappers import ResolvedEnv

SPLITS: tuple[str, ...] = ("train", "test")
"""Split names used in task ids (``<family>/<split>-<i>``)."""

CTRL_COST = 0.05
"""Weight of the squared-action penalty of the cheetah-vel reward."""

DMC_FAMILY_DEFAULTS: dict[str, int] = {"action_repeat": 2, "max_episode_steps": 400}
METAWORLD_FAMILY_DEFAULTS: dict[str, int] = {"action_repeat": 2, "max_episode_steps": 200}


@dataclass(frozen=True)
class Task:
    """One member of a family.

    Attributes:
        task_id: ``"<family>/<split>-<index>"``, the name ``make_env`` accepts.
        family: the family's name.
        split: ``"train"`` or ``"test"``.
        index: position inside the split (the ``<i>`` of the id).
        global_index: position in the family's full parameter list; the integer stored in datasets'
            ``task_ids``. Stable: it never depends on the split.
        param_names: names of the task parameters, e.g. ``("target_velocity",)``.
        params: their values, in ``param_names`` order.
        group: finer label of the split, e.g. ``"moderate"`` / ``"extreme"`` OOD for test tasks.
    """

    task_id: str
    family: str
    split: str
    index: int
    global_index: int
    param_names: tuple[str, ...]
    params: tuple[float, ...]
    group: str

    def params_dict(self) -> dict[str, float]:
        """``{name: value}`` of the task parameters."""
        return dict(zip(self.param_names, self.params))

    def param_vector(self) -> np.ndarray:
        """The parameters as a float32 vector ``[P]`` (the row stored in datasets' ``task_params``)."""
        return np.asarray(self.params, dtype=np.float32)


TaskBuilder = Callable[[EnvConfig, Task], gym.Env]


class TaskFamily:
    """A fixed, finite set of tasks (parameter vectors) split into train and test, and how to build one.

    Args:
        name: family name, also the ``make_env`` prefix (``"cheetah_vel"``).
        description: one line shown in listings.
        param_names: names of the task parameters.
        params: the full parameter list; ``params[k]`` belongs to the task with ``global_index == k``.
        splits: ``{"train": [global indices], "test": [...]}``; disjoint; order gives ``<i>``.
        groups: optional finer label per global index (default: the split name).
        builder: ``builder(cfg, task) -> gym.Env``: the raw env of a member (``make_env`` wraps it).
        defaults: ``action_repeat`` / ``max_episode_steps`` used where the EnvConfig leaves them ``None``.
        supports_obs_mask: whether ``EnvConfig.obs_mask`` is passed to the builder (DMC families).
    """

    def __init__(
        self,
        name: str,
        *,
        description: str,
        param_names: Sequence[str],
        params: Sequence[Sequence[float]],
        splits: Mapping[str, Sequence[int]],
        builder: TaskBuilder,
        defaults: Mapping[str, int | None],
        groups: Mapping[int, str] | None = None,
        supports_obs_mask: bool = False,
    ) -> None:
        if "/" in name or not name:
            raise ValueError(f"family name must be a non-empty string without '/', got {name!r}")
        self.name = name
        self.description = description
        self.param_names = tuple(param_names)
        self.builder = builder
        self.defaults = dict(defaults)
        self.supports_obs_mask = supports_obs_mask
        rows = [tuple(float(v) for v in p) for p in params]
        if any(len(r) != len(self.param_names) for r in rows):
            raise ValueError(f"{name}: every parameter row needs {len(self.param_names)} values")
        unknown = sorted(set(splits) - set(SPLITS))
        if unknown:
            raise ValueError(f"{name}: unknown split name(s) {unknown}; valid: {list(SPLITS)}")
        seen: set[int] = set()
        self._tasks: dict[str, Task] = {}
        self._by_split: dict[str, list[Task]] = {s: [] for s in SPLITS}
        self._by_index: dict[int, Task] = {}
        for split in SPLITS:
            for i, g in enumerate(splits.get(split, [])):
                if g in seen:
                    raise ValueError(f"{name}: task {g} is in more than one split")
                if not 0 <= g < len(rows):
                    raise ValueError(f"{name}: split {split!r} names task {g}, outside 0..{len(rows) - 1}")
                seen.add(g)
                group = (groups or {}).get(g, split)
                task = Task(f"{name}/{split}-{i}", name, split, i, int(g), self.param_names, rows[g], group)
                self._tasks[task.task_id] = task
                self._by_split[split].append(task)
                self._by_index[int(g)] = task

    # -- listing -------------------------------------------------------------------------------
    @property
    def num_params(self) -> int:
        """Number of task parameters ``P`` (width of datasets' ``task_params``)."""
        return len(self.param_names)

    def tasks(self, split: str = "all") -> list[Task]:
        """The :class:`Task` objects of ``split`` (``"train"``, ``"test"`` or ``"all"``), in id order."""
        if split == "all":
            return [t for s in SPLITS for t in self._by_split[s]]
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {[*SPLITS, 'all']}")
        return list(self._by_split[split])

    def task_ids(self, split: str = "all") -> list[str]:
        """Task ids of ``split`` (``"train"``, ``"test"`` or ``"all"``)."""
        return [t.task_id for t in self.tasks(split)]

    def train_tasks(self) -> list[str]:
        """Ids of the training tasks (fixed; identical in every process)."""
        return self.task_ids("train")

    def test_tasks(self) -> list[str]:
        """Ids of the held-out test tasks (disjoint from :meth:`train_tasks`)."""
        return self.task_ids("test")

    def describe_ids(self) -> str:
        """Compact listing of valid ids, e.g. ``cheetah_vel/train-0 .. cheetah_vel/train-19, ...``."""
        parts = []
        for s in SPLITS:
            n = len(self._by_split[s])
            if n:
                parts.append(f"{self.name}/{s}-0 .. {self.name}/{s}-{n - 1}")
        return ", ".join(parts)

    # -- look-ups ------------------------------------------------------------------------------
    def task(self, task_id: str) -> Task:
        """The :class:`Task` for ``"<family>/<split>-<i>"`` (or just ``"<split>-<i>"``); ValueError if unknown."""
        key = task_id if "/" in task_id else f"{self.name}/{task_id}"
        if key in self._tasks:
            return self._tasks[key]
        raise ValueError(f"unknown task id {task_id!r} for family {self.name!r}; valid ids: {self.describe_ids()}")

    def task_by_index(self, global_index: int) -> Task:
        """The task whose ``global_index`` (dataset ``task_ids`` value) is ``global_index``."""
        if int(global_index) not in self._by_index:
            raise ValueError(
                f"family {self.name!r} has no task with global index {global_index}; valid: {sorted(self._by_index)}"
            )
        return self._by_index[int(global_index)]

    def task_params(self, task_id: str) -> dict[str, float]:
        """``{parameter name: value}`` of a task, e.g. ``{"target_velocity": 1.4}``."""
        return self.task(task_id).params_dict()

    def param_vector(self, task_id: str) -> np.ndarray:
        """The task's parameters as a float32 vector ``[P]``."""
        return self.task(task_id).param_vector()

    # -- building ------------------------------------------------------------------------------
    def make(self, task_id: str, **env_cfg: Any) -> ResolvedEnv:
        """Build a member through ``make_env`` (all wrappers); ``env_cfg`` are other EnvConfig fields."""
        task = self.task(task_id)
        return make_env(EnvConfig(task.task_id, **env_cfg))

    def _factory(self, cfg: EnvConfig) -> gym.Env:
        """``register_env`` factory: parse ``cfg.name`` and build the raw env of that member."""
        return self.builder(dataclasses.replace(cfg), self.task(cfg.name))

    def __repr__(self) -> str:
        n_train, n_test = len(self._by_split["train"]), len(self._by_split["test"])
        return f"TaskFamily({self.name!r}, params={self.param_names}, train={n_train}, test={n_test})"


# ---------------------------------------------------------------------------------------------------
# registry of families

FAMILIES: dict[str, TaskFamily] = {}
"""Every registered family by name."""


def register_family(family: TaskFamily, *, overwrite: bool = False) -> None:
    """Add ``family`` to :data:`FAMILIES` and make ``make_env`` build ``"<family>/<split>-<i>"`` ids.

    Registers the wildcard ``"<family>/*"`` with :func:`envs.register_env` and the family's episode
    defaults in :data:`envs.registry.SUITE_DEFAULTS` (key = the family name, used when an EnvConfig
    leaves ``action_repeat`` / ``max_episode_steps`` as ``None``).
    """
    if family.name in FAMILIES and not overwrite:
        raise ValueError(f"task family {family.name!r} is already registered (pass overwrite=True)")
    FAMILIES[family.name] = family
    register_env(f"{family.name}/*", family._factory, supports_obs_mask=family.supports_obs_mask, overwrite=True)
    SUITE_DEFAULTS[family.name] = dict(family.defaults)


def unregister_family(name: str) -> None:
    """Undo :func:`register_family` (``KeyError`` if ``name`` is not registered)."""
    del FAMILIES[name]
    unregister_env(f"{name}/*")
    SUITE_DEFAULTS.pop(name, None)


def get_family(name: str) -> TaskFamily:
    """The family called ``name`` (a task id ``"<family>/..."`` also works); ValueError listing valid names."""
    key = name.partition("/")[0]
    if key in FAMILIES:
        return FAMILIES[key]
    raise ValueError(f"unknown task family {name!r}; valid families: {sorted(FAMILIES)}")


def is_task_id(name: str) -> bool:
    """True when ``name`` is ``"<family>/<split>-<i>"`` of a registered family and that task exists."""
    family, sep, rest = name.partition("/")
    return bool(sep) and family in FAMILIES and f"{family}/{rest}" in FAMILIES[family]._tasks


def resolve_task(task_id: str) -> tuple[TaskFamily, Task]:
    """``(family, task)`` of a task id; ValueError (listing valid families or ids) when unknown."""
    family = get_family(task_id)
    if "/" not in task_id:
        raise ValueError(f"{task_id!r} is a family, not a task id; valid ids: {family.describe_ids()}")
    return family, family.task(task_id)


def task_of(env: gym.Env) -> Task | None:
    """The :class:`Task` of an env built from a task id (walks the wrapper chain), else ``None``."""
    e: Any = env
    while e is not None:
        if isinstance(e, TaskEnv):
            return e.task
        e = getattr(e, "env", None)
    return None


# ---------------------------------------------------------------------------------------------------
# env pieces


class TaskEnv(gym.Wrapper):
    """Innermost wrapper of a family member: carries its :class:`Task` (see :func:`task_of`)."""

    def __init__(self, env: gym.Env, task: Task) -> None:
        super().__init__(env)
        self.task = task


def cheetah_vel_reward(velocity: float | np.ndarray, target: float, action: np.ndarray) -> float | np.ndarray:
    """PEARL cheetah-vel reward ``-|v - v*| - 0.05 * ||a||^2`` (``action`` in its last axis)."""
    a = np.asarray(action, dtype=np.float64)
    return -np.abs(np.asarray(velocity, dtype=np.float64) - target) - CTRL_COST * np.sum(a * a, axis=-1)


class TargetVelocityReward(TaskEnv):
    """Replace a dm_control cheetah's reward by :func:`cheetah_vel_reward` for the task's target."""

    def __init__(self, env: gym.Env, task: Task) -> None:
        super().__init__(env, task)
        self.target_velocity = float(task.params_dict()["target_velocity"])

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, _reward, terminated, truncated, info = self.env.step(action)
        velocity = float(self.env.unwrapped.dm_env.physics.speed())
        reward = float(cheetah_vel_reward(velocity, self.target_velocity, np.asarray(action)))
        info = dict(info, velocity=velocity, target_velocity=self.target_velocity)
        return obs, reward, terminated, truncated, info


def scale_physics(
    physics: Any, *, mass_scale: float = 1.0, friction_scale: float = 1.0, damping_scale: float = 1.0
) -> None:
    """Scale a dm_control physics' model in place: mass+inertia, geom friction, joint damping.

    The scales multiply the model's current values, so call it once, right after loading.
    ``mj_setConst`` then recomputes the constants MuJoCo derives from masses (subtree masses,
    inverse weights).
    """
    import mujoco

    model = physics.model
    model.body_mass[:] = model.body_mass * mass_scale
    model.body_inertia[:] = model.body_inertia * mass_scale
    model.geom_friction[:] = model.geom_friction * friction_scale
    model.dof_damping[:] = model.dof_damping * damping_scale
    mujoco.mj_setConst(model.ptr, physics.data.ptr)


def _dmc(domain: str, task: str, cfg: EnvConfig) -> gym.Env:
    from envs.dmc import DMCEnv

    return DMCEnv(domain, task, seed=cfg.seed, render_size=cfg.render_size, obs_mask=cfg.obs_mask)


def _build_cheetah_vel(cfg: EnvConfig, task: Task) -> gym.Env:
    return TargetVelocityReward(_dmc("cheetah", "run", cfg), task)


def _build_walker_dynamics(cfg: EnvConfig, task: Task) -> gym.Env:
    env = _dmc("walker", "walk", cfg)
    p = task.params_dict()
    try:
        scale_physics(
            env.dm_env.physics,
            mass_scale=p.get("mass_scale", 1.0),
            friction_scale=p.get("friction_scale", 1.0),
            damping_scale=p.get("damping_scale", 1.0),
        )
    except Exception:
        env.close()
        raise
    return TaskEnv(env, task)


ML1_REACH_OBJECT = (0.0, 0.6, 0.02)
"""Object position used in every ``ml1_reach`` task (reach-v3 needs >= 0.15 m from the goal in xy)."""
ML1_REACH_GOAL_LOW = (-0.1, 0.8, 0.05)
ML1_REACH_GOAL_HIGH = (0.1, 0.9, 0.3)
"""reach-v3's goal box (Meta-World 3.1.1)."""


def _build_ml1_reach(cfg: EnvConfig, task: Task) -> gym.Env:
    from envs.metaworld import MetaWorldEnv

    env = MetaWorldEnv("reach-v3", seed=cfg.seed, render_size=cfg.render_size, max_episode_steps=cfg.max_episode_steps)
    raw = env.sawyer_env
    raw._partially_observable = True  # ML1: the goal is not observed (zeros)
    raw.__dict__.pop("sawyer_observation_space", None)  # cached_property: recompute without the goal
    raw._freeze_rand_vec = True  # every reset uses exactly this object/goal vector
    raw._last_rand_vec = np.array([*ML1_REACH_OBJECT, *task.params], dtype=np.float64)
    return TaskEnv(env, task)


# ---------------------------------------------------------------------------------------------------
# parameter lists and splits


def _halton(n: int, bases: Sequence[int]) -> np.ndarray:
    """First ``n`` points (indices 1..n) of the Halton sequence in ``[0, 1)^d``: exact and deterministic."""
    out = np.zeros((n, len(bases)))
    for i in range(n):
        for d, b in enumerate(bases):
            k, f, x = i + 1, 1.0, 0.0
            while k > 0:
                f /= b
                x += f * (k % b)
                k //= b
            out[i, d] = x
    return out


def _ertrl_split(n: int = 40) -> tuple[dict[str, list[int]], dict[int, str]]:
    """ER-TRL split of ``n`` sorted parameters: middle half train; next quarter moderate OOD; rest extreme."""
    q = n // 4
    e = n // 8
    train = list(range(q, n - q))
    test = list(range(0, q)) + list(range(n - q, n))
    groups = {g: ("extreme" if g < e or g >= n - e else "moderate") for g in test}
    groups.update({g: "train" for g in train})
    return {"train": train, "test": test}, groups


def _builtin_families() -> list[TaskFamily]:
    split40, groups40 = _ertrl_split(40)
    velocities = [round(0.1 * (k + 1), 10) for k in range(40)]  # 0.1, 0.2, ..., 4.0 (= linspace(0.1, 4, 40))
    scales = [1.5 ** float(x) for x in np.linspace(-2.0, 2.0, 40)]
    grid_values = (0.75, 0.85, 1.0, 1.15, 1.25)
    grid = [(m, d) for m in grid_values for d in grid_values]  # row-major: global index = 5 * i + j
    grid_train = [5 * i + j for i in range(5) for j in range(5) if (i + j) % 2 == 0]
    grid_test = [5 * i + j for i in range(5) for j in range(5) if (i + j) % 2 == 1]
    lo, hi = np.asarray(ML1_REACH_GOAL_LOW), np.asarray(ML1_REACH_GOAL_HIGH)
    goals = lo + _halton(50, (2, 3, 5)) * (hi - lo)
    return [
        TaskFamily(
            "cheetah_vel",
            description="dm_control cheetah running at a target velocity (PEARL reward)",
            param_names=("target_velocity",),
            params=[(v,) for v in velocities],
            splits=split40,
            groups=groups40,
            builder=_build_cheetah_vel,
            defaults=DMC_FAMILY_DEFAULTS,
            supports_obs_mask=True,
        ),
        TaskFamily(
            "walker_mass",
            description="dm_control walker-walk with body mass and inertia scaled",
            param_names=("mass_scale",),
            params=[(s,) for s in scales],
            splits=split40,
            groups=groups40,
            builder=_build_walker_dynamics,
            defaults=DMC_FAMILY_DEFAULTS,
            supports_obs_mask=True,
        ),
        TaskFamily(
            "walker_friction",
            description="dm_control walker-walk with every geom's friction scaled",
            param_names=("friction_scale",),
            params=[(s,) for s in scales],
            splits=split40,
            groups=groups40,
            builder=_build_walker_dynamics,
            defaults=DMC_FAMILY_DEFAULTS,
            supports_obs_mask=True,
        ),
        TaskFamily(
            "walker_param",
            description="dm_control walker-walk on a 5x5 grid of body-mass x joint-damping scales",
            param_names=("mass_scale", "damping_scale"),
            params=grid,
            splits={"train": grid_train, "test": grid_test},
            groups={**{g: "train" for g in grid_train}, **{g: "interpolation" for g in grid_test}},
            builder=_build_walker_dynamics,
            defaults=DMC_FAMILY_DEFAULTS,
            supports_obs_mask=True,
        ),
        TaskFamily(
            "ml1_reach",
            description="Meta-World ML1 reach-v3 with fixed hidden goals (40 train, 10 test)",
            param_names=("goal_x", "goal_y", "goal_z"),
            params=[tuple(g) for g in goals],
            splits={"train": list(range(40)), "test": list(range(40, 50))},
            builder=_build_ml1_reach,
            defaults=METAWORLD_FAMILY_DEFAULTS,
        ),
    ]


for _family in _builtin_families():
    register_family(_family, overwrite=True)
del _family

__all__ = [
    "FAMILIES",
    "unregister_family",
    "SPLITS",
    "Task",
    "TaskEnv",
    "TaskFamily",
    "cheetah_vel_reward",
    "get_family",
    "is_task_id",
    "register_family",
    "resolve_task",
    "scale_physics",
    "task_of",
]
