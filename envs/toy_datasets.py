"""Small two-policy task-family datasets in the schema of :mod:`envs.datasets`, for tests and benchmarks.

:func:`make_toy_dataset` writes one HDF5 file per task (``<family>_<split>-<i>.h5``, as
``scripts/collect_dataset.py --tasks`` does) with two behaviour policies: uniform random actions
(:func:`envs.rollouts.random_policy`) and one fixed deterministic policy, either the hand-to-goal-box-
centre controller of ml1_reach (:func:`reach_centre_policy`, task-agnostic) or a linear policy
``a = tanh(gain (W s + b))`` with ``W, b`` drawn once from a seed (:func:`linear_policy`).

    from envs.toy_datasets import make_toy_dataset
    files = make_toy_dataset("data/toy_reach", family="ml1_reach", tasks=4, episodes_per_policy=2)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

import envs.task_families as task_families
from envs.datasets import save_dataset
from envs.rollouts import POLICY_IDS, Collected, Policy, random_policy, rollout_episode

LINEAR_POLICY_ID = 5
CENTRE_POLICY_ID = 6
"""``policy_ids`` of the toy datasets' deterministic policies (random is 0, as in :data:`envs.rollouts.POLICY_IDS`)."""
CREATED_BY = "envs.toy_datasets.make_toy_dataset"


def linear_policy(obs_dim: int, action_dim: int, seed: int, gain: float = 1.0) -> Policy:
    """The fixed deterministic policy ``a = tanh(gain * (W s + b))``, ``W ~ N(0, 1)``, ``b ~ N(0, 0.25)``."""
    rng = np.random.default_rng(seed)
    W = rng.normal(0.0, 1.0, (action_dim, obs_dim))
    b = rng.normal(0.0, 0.5, action_dim)
    return Policy(
        "linear",
        lambda obs: np.tanh(gain * (W @ np.asarray(obs, dtype=np.float64) + b)).astype(np.float32),
        info={"description": f"deterministic a = tanh({gain} (W s + b)), W, b from seed {seed}", "seed": seed},
    )


def reach_centre_policy(gain: float = 10.0) -> Policy:
    """ml1_reach's fixed deterministic controller: hand to the centre of the goal box, whatever the goal.

    ``a_xyz = tanh(gain * (c - hand_xyz))`` with ``c`` the centre of reach-v3's goal box and the hand
    position ``obs[:3]``; gripper action 0. Linear in the observation before the tanh, like :func:`linear_policy`.
    """
    centre = (np.asarray(task_families.ML1_REACH_GOAL_LOW) + np.asarray(task_families.ML1_REACH_GOAL_HIGH)) / 2

    def act(obs: np.ndarray) -> np.ndarray:
        a = np.zeros(4, dtype=np.float32)
        a[:3] = np.tanh(gain * (centre - np.asarray(obs[:3], dtype=np.float64)))
        return a

    return Policy(
        "centre",
        act,
        info={"description": f"deterministic a_xyz = tanh({gain} (goal-box centre - hand)), gripper 0"},
    )


def make_toy_dataset(
    out_dir: str | Path,
    *,
    family: str = "ml1_reach",
    tasks: Sequence[str] | int = 4,
    episodes_per_policy: int = 2,
    deterministic_episodes: int | None = None,
    deterministic: str = "auto",
    max_episode_steps: int = 200,
    seed: int = 0,
    policy_seed: int = 0,
    policy_gain: float = 1.0,
) -> list[Path]:
    """Collect a two-policy dataset (random + one fixed deterministic policy) with one file per task.

    ``tasks`` are task ids of ``family``, or a number of evenly spaced train tasks. The deterministic
    policy is ``"linear"`` (:func:`linear_policy` with ``policy_seed``, ``policy_gain``) or ``"centre"``
    (:func:`reach_centre_policy`, ml1_reach only); ``"auto"`` picks ``centre`` for ml1_reach, else
    ``linear``. ``episodes_per_policy`` episodes of each policy per task (``deterministic_episodes``
    overrides the deterministic policy's count) of ``max_episode_steps`` env steps. Episode ``k`` of a
    task resets with ``seed + k``; random actions come from ``random_policy(action_dim, seed, task
    index)``. Returns the written files (``<family>_<split>-<i>.h5``, as ``collect_dataset --tasks`` writes).
    """
    fam = task_families.get_family(family)
    if isinstance(tasks, int):
        train = fam.train_tasks()
        tasks = [train[i] for i in np.unique(np.round(np.linspace(0, len(train) - 1, tasks)).astype(int))]
    written = []
    for task_id in tasks:
        task = fam.task(task_id)
        env = fam.make(task.task_id, seed=seed, max_episode_steps=max_episode_steps)
        try:
            obs_dim, action_dim = int(np.prod(env.observation_space.shape)), int(np.prod(env.action_space.shape))
            n_det = episodes_per_policy if deterministic_episodes is None else deterministic_episodes
            kind = ("centre" if fam.name == "ml1_reach" else "linear") if deterministic == "auto" else deterministic
            if kind == "centre":
                if fam.name != "ml1_reach":
                    raise ValueError("the 'centre' policy is for ml1_reach only")
                det = (CENTRE_POLICY_ID, reach_centre_policy(), n_det)
            elif kind == "linear":
                det = (LINEAR_POLICY_ID, linear_policy(obs_dim, action_dim, policy_seed, policy_gain), n_det)
            else:
                raise ValueError(f"deterministic policy must be auto, linear or centre, got {deterministic!r}")
            policies = [
                (POLICY_IDS["random"], random_policy(action_dim, seed, task.global_index), episodes_per_policy),
                det,
            ]
            total = sum(n for _, _, n in policies)
            out = Collected()
            described, episode = [], 0
            for pid, policy, count in policies:
                for _ in range(count):
                    arrays, ret = rollout_episode(env, policy, seed=seed + episode)
                    n = len(arrays["rewards"])
                    for k, v in arrays.items():
                        out.add(k, v)
                    out.add("policy_ids", np.full(n, pid, dtype=np.int16))
                    out.add("task_ids", np.full(n, task.global_index, dtype=np.int64))
                    out.add("task_params", np.repeat(task.param_vector()[None], n, axis=0))
                    out.returns.setdefault(policy.name, []).append(ret)
                    episode += 1
                described.append(
                    {"id": pid, "name": policy.name, "episodes": count, "fraction": count / total, **policy.info}
                )
            attrs = {
                "env_id": task.task_id,
                "collection_policy": {
                    "source": "rollout",
                    "mix": {p["name"]: p["fraction"] for p in described},
                    "policies": described,
                },
                "created_by": CREATED_BY,
                "action_repeat": int(env.action_repeat),
                "max_episode_steps": int(env.max_episode_steps),
                "seed": int(seed),
                "family": fam.name,
                "task_param_names": list(task.param_names),
            }
            path = Path(out_dir) / f"{fam.name}_{task.split}-{task.index:02d}.h5"
            written.append(save_dataset(path, out.arrays(), attrs))
        finally:
            env.close()
    return written
