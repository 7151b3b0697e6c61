"""Tests for envs/task_families.py: fixed disjoint splits, members built from ids, parameters that matter."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import envs.task_families as tf
from envs import EnvConfig, make_env
from envs.task_families import FAMILIES, TaskFamily, cheetah_vel_reward, get_family, resolve_task, task_of

ROOT_CMD = "import json, envs.task_families as tf; print(json.dumps({n: [[t.task_id, t.global_index, list(t.params)] for t in f.tasks()] for n, f in tf.FAMILIES.items()}))"  # noqa: E501


def snapshot() -> dict[str, list]:
    return {n: [[t.task_id, t.global_index, list(t.params)] for t in f.tasks()] for n, f in FAMILIES.items()}


def rollout(task_id: str, actions: np.ndarray, seed: int = 3) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Observations, rewards and infos of ``actions`` from ``reset(seed)`` (action repeat 1)."""
    env = make_env(EnvConfig(task_id, action_repeat=1, max_episode_steps=len(actions) + 1))
    try:
        obs, _ = env.reset(seed=seed)
        observations, rewards, infos = [obs], [], []
        for a in actions:
            obs, r, _, _, info = env.step(a)
            observations.append(obs)
            rewards.append(r)
            infos.append(info)
        return np.stack(observations), np.asarray(rewards), infos
    finally:
        env.close()


# --------------------------------------------------------------------------------------------------
# splits


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_splits_are_disjoint_and_cover_distinct_parameters(name: str) -> None:
    fam = get_family(name)
    train, test = fam.train_tasks(), fam.test_tasks()
    assert train and test
    assert not set(train) & set(test)
    train_params = {fam.task(t).params for t in train}
    test_params = {fam.task(t).params for t in test}
    assert len(train_params) == len(train) and len(test_params) == len(test)
    assert not train_params & test_params
    indices = [fam.task(t).global_index for t in train + test]
    assert len(set(indices)) == len(indices)
    for t in train + test:  # ids, global indices and parameters agree with each other
        task = fam.task_by_index(fam.task(t).global_index)
        assert task.task_id == t and task.split == t.split("/")[1].split("-")[0]
        assert fam.task_params(t) == dict(zip(fam.param_names, task.params))
        assert fam.param_vector(t).dtype == np.float32 and fam.param_vector(t).shape == (fam.num_params,)


def test_splits_are_fixed_across_calls_and_processes() -> None:
    here = snapshot()
    assert here == snapshot()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", ROOT_CMD], capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == json.loads(json.dumps(here))


def test_documented_split_values() -> None:
    cv = get_family("cheetah_vel")
    train_v = [cv.task_params(t)["target_velocity"] for t in cv.train_tasks()]
    test_v = [cv.task_params(t)["target_velocity"] for t in cv.test_tasks()]
    np.testing.assert_allclose(train_v, np.linspace(1.1, 3.0, 20))
    np.testing.assert_allclose(sorted(test_v), np.r_[np.linspace(0.1, 1.0, 10), np.linspace(3.1, 4.0, 10)])
    assert [cv.task(t).group for t in cv.test_tasks()] == ["extreme"] * 5 + ["moderate"] * 10 + ["extreme"] * 5
    wm = get_family("walker_mass")
    np.testing.assert_allclose(
        [t.params_dict()["mass_scale"] for t in wm.tasks("all")][:20], 1.5 ** np.linspace(-2, 2, 40)[10:30]
    )
    wp = get_family("walker_param")
    assert len(wp.train_tasks()) == 13 and len(wp.test_tasks()) == 12
    assert wp.task_params("walker_param/train-0") == {"mass_scale": 0.75, "damping_scale": 0.75}
    ml1 = get_family("ml1_reach")
    assert len(ml1.train_tasks()) == 40 and len(ml1.test_tasks()) == 10
    np.testing.assert_allclose(ml1.task(ml1.train_tasks()[0]).params, (0.0, 0.8 + 0.1 / 3, 0.1))
    goals = np.array([t.params for t in ml1.tasks("all")])
    assert (goals >= np.array(tf.ML1_REACH_GOAL_LOW)).all() and (goals <= np.array(tf.ML1_REACH_GOAL_HIGH)).all()


def test_overlapping_splits_are_rejected() -> None:
    with pytest.raises(ValueError, match="more than one split"):
        TaskFamily(
            "bad",
            description="",
            param_names=("x",),
            params=[(0.0,), (1.0,)],
            splits={"train": [0, 1], "test": [1]},
            builder=lambda cfg, task: None,
            defaults={},
        )


# --------------------------------------------------------------------------------------------------
# names


def test_unknown_family_lists_valid_names() -> None:
    with pytest.raises(ValueError) as e:
        get_family("cheetah_speed")
    for name in FAMILIES:
        assert name in str(e.value)
    with pytest.raises(ValueError) as e:
        make_env(EnvConfig("cheetah_speed/train-0"))
    assert "cheetah_vel" in str(e.value)


@pytest.mark.parametrize("bad", ["cheetah_vel/train-20", "cheetah_vel/val-0", "cheetah_vel/3", "ml1_reach/test-10"])
def test_unknown_task_id_lists_valid_ids(bad: str) -> None:
    family = bad.partition("/")[0]
    with pytest.raises(ValueError) as e:
        resolve_task(bad)
    assert f"{family}/train-0" in str(e.value) and f"{family}/test-0" in str(e.value)
    with pytest.raises(ValueError, match=f"{family}/train-0"):
        make_env(EnvConfig(bad))
    with pytest.raises(ValueError, match="is a family, not a task id"):
        resolve_task(family)


# --------------------------------------------------------------------------------------------------
# members


@pytest.mark.parametrize(
    ("task_id", "obs_dim", "repeat", "limit"),
    [
        ("cheetah_vel/train-3", 17, 2, 400),
        ("walker_mass/test-0", 24, 2, 400),
        ("walker_friction/train-5", 24, 2, 400),
        ("walker_param/test-11", 24, 2, 400),
        ("ml1_reach/test-9", 39, 2, 200),
    ],
)
def test_make_env_builds_members_from_ids(task_id: str, obs_dim: int, repeat: int, limit: int) -> None:
    env = make_env(EnvConfig(task_id, seed=1))
    try:
        assert env.spec_name == task_id and env.suite == task_id.partition("/")[0]
        assert (env.action_repeat, env.max_episode_steps) == (repeat, limit)  # the family's documented defaults
        assert env.observation_space.shape == (obs_dim,) and env.observation_space.dtype == np.float32
        assert (env.action_space.low == -1).all() and (env.action_space.high == 1).all()
        task = task_of(env)
        assert task is not None and task.task_id == task_id
        obs, _ = env.reset()
        assert obs.dtype == np.float32 and obs.shape == (obs_dim,)
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        assert obs.dtype == np.float32 and np.isfinite(reward) and not terminated and not truncated
    finally:
        env.close()
    fam = get_family(task_id)
    env = fam.make(task_id, max_episode_steps=4, action_repeat=1)  # TaskFamily.make: same builder, overrides
    try:
        env.reset(seed=0)
        steps = 0
        done = False
        while not done:
            *_, terminated, truncated, _ = env.step(env.action_space.sample())
            done = terminated or truncated
            steps += 1
        assert steps == 4
    finally:
        env.close()


def test_target_velocity_changes_reward_not_dynamics() -> None:
    actions = np.random.default_rng(0).uniform(-1, 1, (12, 6)).astype(np.float32)
    obs_a, rew_a, info_a = rollout("cheetah_vel/train-0", actions)  # 1.1 m/s
    obs_b, rew_b, info_b = rollout("cheetah_vel/test-19", actions)  # 4.0 m/s
    np.testing.assert_array_equal(obs_a, obs_b)  # same transitions ...
    assert np.abs(rew_a - rew_b).min() > 0.1  # ... different rewards
    v = np.array([i["velocity"] for i in info_a])
    assert [i["target_velocity"] for i in info_b] == [4.0] * len(actions)
    np.testing.assert_allclose(rew_a, -np.abs(v - 1.1) - 0.05 * (actions.astype(np.float64) ** 2).sum(1), rtol=1e-6)
    np.testing.assert_allclose(rew_b, cheetah_vel_reward(v, 4.0, actions), rtol=1e-6)


@pytest.mark.parametrize(("family", "steps"), [("walker_mass", 3), ("walker_param", 3), ("walker_friction", 20)])
def test_dynamics_parameter_changes_next_observation(family: str, steps: int) -> None:
    fam = get_family(family)
    actions = np.random.default_rng(1).uniform(-1, 1, (steps, 6)).astype(np.float32)
    first, last = fam.train_tasks()[0], fam.test_tasks()[-1]
    obs_a, _, _ = rollout(first, actions)
    obs_a2, _, _ = rollout(first, actions)
    obs_b, _, _ = rollout(last, actions)
    np.testing.assert_array_equal(obs_a, obs_a2)  # deterministic: a difference can only come from the parameter
    np.testing.assert_array_equal(obs_a[0], obs_b[0])  # same initial state
    assert np.abs(obs_a[-1] - obs_b[-1]).max() > 1e-3


def test_dynamics_scales_are_applied_to_the_model() -> None:
    from envs.dmc import DMCEnv

    base = DMCEnv("walker", "walk").dm_env.physics.model
    for task_id in ("walker_param/test-0", "walker_friction/test-19"):
        env = make_env(EnvConfig(task_id))
        try:
            model = env.unwrapped.dm_env.physics.model
            p = {
                "mass_scale": 1.0,
                "friction_scale": 1.0,
                "damping_scale": 1.0,
                **tf.resolve_task(task_id)[1].params_dict(),
            }
            np.testing.assert_allclose(model.body_mass, base.body_mass * p["mass_scale"])
            np.testing.assert_allclose(model.body_inertia, base.body_inertia * p["mass_scale"])
            np.testing.assert_allclose(model.geom_friction, base.geom_friction * p["friction_scale"])
            np.testing.assert_allclose(model.dof_damping, base.dof_damping * p["damping_scale"])
            env.reset(seed=5)  # resets keep the changed model
            np.testing.assert_allclose(model.dof_damping, base.dof_damping * p["damping_scale"])
        finally:
            env.close()


def test_ml1_goal_is_fixed_hidden_and_changes_reward() -> None:
    fam = get_family("ml1_reach")
    actions = np.random.default_rng(2).uniform(-1, 1, (6, 4)).astype(np.float32)
    rewards = []
    for task_id in (fam.train_tasks()[0], fam.test_tasks()[0]):
        env = make_env(EnvConfig(task_id, action_repeat=1, max_episode_steps=20))
        try:
            for seed in (0, 7):  # the goal is the task's, whatever the reset seed
                obs, _ = env.reset(seed=seed)
                np.testing.assert_allclose(env.unwrapped.goal, fam.task(task_id).params, rtol=1e-6)
                assert (obs[-3:] == 0).all()  # goal not observed
            env.reset(seed=0)
            rewards.append([env.step(a)[1] for a in actions])
        finally:
            env.close()
    assert np.abs(np.subtract(*rewards)).max() > 1e-3
