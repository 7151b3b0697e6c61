"""Tests for envs/: spaces, action repeat, time limits, seeding, rendering, names, obs_mask, registry."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from envs import EnvConfig, canonical_env_name, make_env, name_key, register_env, unregister_env
from envs.dmc import DMCEnv, resolve_dmc_name
from envs.metaworld import MetaWorldEnv

SUITE_EXAMPLES = ["dmc/walker-walk", "metaworld/reach-v3", "gym/Pendulum-v1"]


def rollout(env: gym.Env, actions: np.ndarray, seed: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Reset with ``seed``, apply ``actions``; return the stacked observations and rewards."""
    obs, _ = env.reset(seed=seed)
    observations, rewards = [obs], []
    for a in actions:
        obs, reward, _, _, _ = env.step(a)
        observations.append(obs)
        rewards.append(reward)
    return np.stack(observations), np.asarray(rewards)


@pytest.fixture
def make():
    """make_env that closes every env it made at the end of the test."""
    made: list[gym.Env] = []

    def _make(cfg: Any, **kwargs: Any) -> gym.Env:
        env = make_env(cfg, **kwargs)
        made.append(env)
        return env

    yield _make
    for env in made:
        env.close()


# --------------------------------------------------------------------------------------------------
# a tiny custom env, to test the generic wrappers and register_env exactly


class CountingEnv(gym.Env):
    """Reward = index of the step (1, 2, ...); success only at ``success_at``; ends at ``end_at``."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, success_at: int = -1, end_at: int = 10_000, low: float = -1.0, high: float = 1.0):
        self.success_at, self.end_at = success_at, end_at
        self.action_space = gym.spaces.Box(low, high, shape=(1,), dtype=np.float64)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(2, 1), dtype=np.float64)
        self.render_mode = "rgb_array"
        self.t = 0
        self.last_action = np.zeros(1)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros((2, 1)), {}

    def step(self, action):
        self.t += 1
        self.last_action = np.asarray(action)
        obs = np.array([[self.t], [float(action[0])]])
        info = {"success": float(self.t == self.success_at)}
        return obs, float(self.t), self.t >= self.end_at, False, info

    def render(self):
        frame = np.zeros((10, 20, 3), dtype=np.uint8)
        frame[:, :10] = 255
        return frame


@pytest.fixture
def counting_env():
    """Register ``test/counting`` for the duration of a test; yields the list of created envs."""
    created: list[CountingEnv] = []

    def factory(cfg: EnvConfig) -> gym.Env:
        env = CountingEnv(success_at=3, end_at=5, low=-2.0, high=6.0)
        created.append(env)
        return env

    register_env("test/counting", factory)
    yield created
    unregister_env("test/counting")


# --------------------------------------------------------------------------------------------------
# spaces, dtypes, suite defaults


@pytest.mark.parametrize("name", SUITE_EXAMPLES)
def test_spaces_and_dtypes(make, name):
    env = make(EnvConfig(name))
    space = env.observation_space
    assert isinstance(space, gym.spaces.Box) and space.dtype == np.float32 and len(space.shape) == 1
    act = env.action_space
    assert isinstance(act, gym.spaces.Box) and act.dtype == np.float32
    assert np.all(act.low == -1.0) and np.all(act.high == 1.0)
    obs, info = env.reset(seed=0)
    assert obs.dtype == np.float32 and obs.shape == space.shape and isinstance(info, dict)
    obs, reward, terminated, truncated, info = env.step(act.sample())
    assert obs.dtype == np.float32 and obs.shape == space.shape
    assert isinstance(reward, float) and np.isfinite(reward)
    assert isinstance(terminated, bool) and isinstance(truncated, bool)


def test_suite_defaults_and_resolved_attributes(make):
    walker = make(EnvConfig("dmc/walker-walk"))
    assert (walker.spec_name, walker.suite) == ("dmc/walker-walk", "dmc")
    assert (walker.action_repeat, walker.max_episode_steps) == (2, 1000)
    assert walker.observation_space.shape == (24,) and walker.action_space.shape == (6,)
    reach = make({"name": "metaworld/reach-v3"})  # a mapping works too (e.g. a Hydra DictConfig)
    assert (reach.action_repeat, reach.max_episode_steps) == (2, 200)
    assert reach.observation_space.shape == (39,) and reach.action_space.shape == (4,)
    pendulum = make(EnvConfig("gym/Pendulum-v1"))
    assert (pendulum.action_repeat, pendulum.max_episode_steps) == (1, 200)  # gymnasium's registered limit
    # a partial override table changes only what it names
    fast = make(EnvConfig("dmc/walker-walk"), suite_defaults={"dmc": {"action_repeat": 4}})
    assert (fast.action_repeat, fast.max_episode_steps) == (4, 1000)
    explicit = make(EnvConfig("dmc/walker-walk", action_repeat=1, max_episode_steps=50))
    assert (explicit.action_repeat, explicit.max_episode_steps) == (1, 50)
    assert explicit.config.action_repeat == 1


@pytest.mark.parametrize(
    "kwargs", [{"action_repeat": 0}, {"max_episode_steps": 0}, {"action_repeat": 1.5}, {"render_size": 0}]
)
def test_invalid_settings_raise(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        EnvConfig("dmc/walker-walk", **kwargs)


def test_invalid_suite_default_and_unknown_field_raise():
    with pytest.raises(ValueError, match="action_repeat must be an integer >= 1"):
        make_env(EnvConfig("dmc/walker-walk"), suite_defaults={"dmc": {"action_repeat": 0}})
    with pytest.raises(ValueError, match="unknown EnvConfig field.*repeat"):
        make_env({"name": "dmc/walker-walk", "repeat": 2})


# --------------------------------------------------------------------------------------------------
# action repeat, action rescaling, time limits


def test_action_repeat_sums_rewards_like_the_raw_env(make):
    env = make(EnvConfig("dmc/walker-walk", seed=5, action_repeat=3))
    raw = DMCEnv("walker", "walk", seed=5)
    try:
        actions = np.random.default_rng(0).uniform(-1, 1, size=(4, 6)).astype(np.float32)
        obs, _ = env.reset(seed=11)
        raw_obs, _ = raw.reset(seed=11)
        np.testing.assert_array_equal(obs, raw_obs)
        for a in actions:
            obs, reward, _, _, info = env.step(a)
            raw_rewards = []
            for _ in range(3):
                raw_obs, r, _, _, _ = raw.step(a)
                raw_rewards.append(r)
            np.testing.assert_array_equal(obs, raw_obs)
            assert reward == pytest.approx(sum(raw_rewards), rel=1e-12)
            assert info["sub_steps"] == 3
            assert reward != pytest.approx(raw_rewards[-1])  # really a sum, not the last reward
    finally:
        raw.close()


def test_actions_rescaled_to_env_bounds(make):
    env = make(EnvConfig("gym/Pendulum-v1", seed=3))  # native torque bounds [-2, 2]
    raw = gym.make("Pendulum-v1")
    try:
        obs, _ = env.reset(seed=3)
        raw_obs, _ = raw.reset(seed=3)
        np.testing.assert_allclose(obs, raw_obs, rtol=1e-6)
        for a in [1.0, -1.0, 0.5, 7.0]:  # 7.0 is clipped to 1.0
            obs, reward, *_ = env.step(np.array([a], dtype=np.float32))
            raw_obs, raw_reward, *_ = raw.step(np.array([2.0 * min(a, 1.0)], dtype=np.float32))
            np.testing.assert_allclose(obs, raw_obs, rtol=1e-6)
            assert reward == pytest.approx(raw_reward)
    finally:
        raw.close()


@pytest.mark.parametrize(("name", "decisions"), [("dmc/walker-walk", 500), ("metaworld/reach-v3", 100)])
def test_default_time_limit_in_env_steps(make, name, decisions):
    env = make(EnvConfig(name))
    env.reset(seed=0)
    action = np.zeros(env.action_space.shape, dtype=np.float32)
    for i in range(1, decisions + 1):
        _, _, terminated, truncated, _ = env.step(action)
        assert not terminated
        assert truncated == (i == decisions), f"truncated={truncated} at decision {i}"


def test_time_limit_can_end_inside_a_repeat(make):
    env = make(EnvConfig("dmc/cartpole-balance", action_repeat=2, max_episode_steps=7))
    env.reset(seed=0)
    flags = [env.step(np.zeros(1, np.float32)) for _ in range(4)]
    assert [f[3] for f in flags] == [False, False, False, True]
    assert [f[4]["sub_steps"] for f in flags] == [2, 2, 2, 1]  # 7 env steps in all


def test_repeat_stops_early_on_termination_and_success_is_any_substep(make, counting_env):
    env = make(EnvConfig("test/counting", action_repeat=2))
    assert env.suite == "test" and env.max_episode_steps is None
    env.reset()
    _, r1, term1, _, info1 = env.step(np.zeros(1))  # env steps 1, 2
    _, r2, term2, _, info2 = env.step(np.zeros(1))  # env steps 3 (success), 4
    _, r3, term3, _, info3 = env.step(np.zeros(1))  # env step 5 terminates: 6 is never taken
    assert (r1, r2, r3) == (3.0, 7.0, 5.0)
    assert (info1["success"], info2["success"], info3["success"]) == (0.0, 1.0, 0.0)
    assert (term1, term2, term3) == (False, False, True)
    assert info3["sub_steps"] == 1 and counting_env[0].t == 5


def test_gym_keeps_terminations(make):
    env = make(EnvConfig("gym/InvertedPendulum-v5", seed=0))
    env.reset()
    terminated = False
    for _ in range(200):
        _, _, terminated, truncated, _ = env.step(np.ones(1, np.float32))  # full push: the pole falls
        if terminated or truncated:
            break
    assert terminated


# --------------------------------------------------------------------------------------------------
# seeding


@pytest.mark.parametrize("name", SUITE_EXAMPLES)
def test_reset_seed_determinism(make, name):
    env = make(EnvConfig(name))
    actions = np.random.default_rng(1).uniform(-1, 1, size=(10, *env.action_space.shape)).astype(np.float32)
    obs_a, rew_a = rollout(env, actions, seed=7)
    rollout(env, actions, seed=123)  # something in between must not matter
    obs_b, rew_b = rollout(env, actions, seed=7)
    obs_c, _ = rollout(env, actions, seed=8)
    np.testing.assert_array_equal(obs_a, obs_b)
    np.testing.assert_array_equal(rew_a, rew_b)
    assert not np.array_equal(obs_a, obs_c)


@pytest.mark.parametrize("name", SUITE_EXAMPLES)
def test_config_seed_fixes_first_reset_and_unseeded_resets_vary(make, name):
    first = [make(EnvConfig(name, seed=s)).reset()[0] for s in (4, 4, 5)]
    np.testing.assert_array_equal(first[0], first[1])
    assert not np.array_equal(first[0], first[2])
    env = make(EnvConfig(name, seed=4))
    env.reset()
    assert not np.array_equal(env.reset()[0], env.reset()[0])  # fresh initial state / goal per episode


def test_metaworld_goal_is_observed_and_random_per_seed(make):
    env = make(EnvConfig("metaworld/reach-v3"))
    goals = {tuple(env.reset(seed=s)[0][-3:]) for s in range(5)}
    assert len(goals) == 5  # continuous random goals, the last 3 observation entries
    mw = env.unwrapped
    assert isinstance(mw, MetaWorldEnv)
    obs, _ = env.reset(seed=9)
    np.testing.assert_allclose(obs[-3:], mw.goal, rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# rendering and info


@pytest.mark.parametrize("name", ["dmc/walker-walk", "metaworld/reach-v3", "gym/InvertedPendulum-v5"])
def test_render_square_rgb(make, name):
    env = make(EnvConfig(name, render_size=64))
    env.reset(seed=0)
    env.step(env.action_space.sample())
    frame = env.render()
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
    assert frame.std() > 5.0  # an actual image, not a constant


def test_render_resizes_custom_frames(make, counting_env):
    env = make(EnvConfig("test/counting", render_size=8))
    env.reset()
    frame = env.render()  # CountingEnv renders 10x20, left half white
    assert frame.shape == (8, 8, 3) and frame.dtype == np.uint8
    assert frame[:, 0].min() == 255 and frame[:, -1].max() == 0


def test_metaworld_info_success(make):
    env = make(EnvConfig("metaworld/reach-v3"))
    env.reset(seed=0)
    _, _, terminated, _, info = env.step(env.action_space.sample())
    assert isinstance(info["success"], float) and info["success"] in (0.0, 1.0)
    assert terminated is False


def test_close_releases_and_exit_is_quiet(tmp_path: Path):
    """A script that renders dmc, Meta-World and gym MuJoCo envs exits without EGL noise.

    Once with explicit close() and once relying on the exit-time safety net.
    """
    script = tmp_path / "render_and_exit.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            from envs import EnvConfig, make_env
            envs = []
            for name in ["dmc/walker-walk", "metaworld/reach-v3", "gym/InvertedPendulum-v5"]:
                env = make_env(EnvConfig(name, render_size=32))
                env.reset(seed=0)
                env.step(env.action_space.sample())
                assert env.render().shape == (32, 32, 3)
                envs.append(env)
            if sys.argv[1] == "close":
                for env in envs:
                    env.close()
                    env.close()  # idempotent
            print("done")
            """
        )
    )
    for mode in ("close", "no-close"):
        proc = subprocess.run(
            [sys.executable, str(script), mode],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "done"
        assert proc.stderr.strip() == "", f"stderr not empty ({mode}):\n{proc.stderr}"


def test_closed_env_refuses_use():
    env = make_env(EnvConfig("dmc/walker-walk"))
    env.close()
    with pytest.raises(RuntimeError, match="closed"):
        env.reset()


# --------------------------------------------------------------------------------------------------
# names


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("dmc/walker-walk", "dmc/walker-walk"),
        ("dmc/cup-catch", "dmc/ball_in_cup-catch"),
        ("dmc/ball_in_cup-catch", "dmc/ball_in_cup-catch"),
        ("metaworld/reach", "metaworld/reach-v3"),
    ],
)
def test_aliases_resolve_to_canonical_names(make, name, expected):
    assert make(EnvConfig(name)).spec_name == expected
    assert canonical_env_name(name) == expected  # the same name without building the env


def test_canonical_env_name_of_other_and_unknown_names():
    assert canonical_env_name("gym/Pendulum-v1") == "gym/Pendulum-v1"
    assert canonical_env_name("dmc/humanoid_cmu-run") == "dmc/humanoid_CMU-run"
    with pytest.raises(ValueError, match="walker: stand, walk, run"):
        canonical_env_name("dmc/walker-fly")


def test_name_key_ignores_space_case_and_separators():
    assert name_key(" DMC/Ball-In_Cup-Catch ") == name_key("dmc/ball_in_cup_catch") == "dmc/ball_in_cup_catch"
    assert name_key("dmc/walker-walk") != name_key("dmc/walker-run")


@pytest.mark.parametrize(
    ("alias", "expected"),
    [
        ("cartpole-swingup-sparse", ("cartpole", "swingup_sparse")),
        ("finger-turn-hard", ("finger", "turn_hard")),
        ("pointmass-easy", ("point_mass", "easy")),
        ("humanoid_cmu-run", ("humanoid_CMU", "run")),
        ("ball-in-cup-catch", ("ball_in_cup", "catch")),
    ],
)
def test_dmc_td_mpc2_spellings(alias, expected):
    assert resolve_dmc_name(alias) == expected


@pytest.mark.parametrize(
    ("name", "fragments"),
    [
        ("dmc/walker-fly", ["walker: stand, walk, run", "cheetah: run", "ball_in_cup (alias cup): catch"]),
        ("dmc/cup-spin", ["ball_in_cup (alias cup): catch", "register_env"]),
        ("metaworld/flying-v3", ["reach", "pick-place", "window-close"]),
        ("metaworld/reach-v2", ["metaworld/reach-v3"]),
        ("gym/NotAnEnv-v0", ["Pendulum-v1", "MountainCarContinuous-v0"]),
        ("gym/Pendulum-v9", ["Did you mean: gym/Pendulum-v1"]),
        ("atari/pong", ["'dmc'", "'metaworld'", "'gym'"]),
        ("walker-walk", ["'dmc'", "'metaworld'", "'gym'"]),
    ],
)
def test_unknown_names_list_valid_names(name, fragments):
    with pytest.raises(ValueError) as err:
        make_env(EnvConfig(name))
    for fragment in fragments:
        assert fragment in str(err.value)


@pytest.mark.parametrize(("name", "module"), [("dmc/walker-walk", "dm_control"), ("metaworld/reach-v3", "metaworld")])
def test_suite_import_error_shows_the_real_cause(monkeypatch, name, module):
    monkeypatch.setitem(sys.modules, module, None)  # makes ``import <module>`` fail
    with pytest.raises(ImportError, match=module) as err:
        make_env(EnvConfig(name))
    assert isinstance(err.value.__cause__, ImportError)  # the original error is chained, not swallowed
    assert module in str(err.value.__cause__)


def test_discrete_gym_env_rejected():
    with pytest.raises(ValueError, match="Box"):
        make_env(EnvConfig("gym/CartPole-v1"))


# --------------------------------------------------------------------------------------------------
# obs_mask


def test_obs_mask_drops_velocity(make):
    full = make(EnvConfig("dmc/walker-walk", seed=2))
    masked = make(EnvConfig("dmc/walker-walk", seed=2, obs_mask=["velocity"]))
    dmc = full.unwrapped
    assert isinstance(dmc, DMCEnv) and dmc.obs_keys == ["orientations", "height", "velocity"]
    assert masked.observation_space.shape == (24 - 9,)
    obs_full, _ = full.reset(seed=0)
    obs_masked, _ = masked.reset(seed=0)
    assert obs_masked.shape == (15,)
    np.testing.assert_array_equal(obs_masked, obs_full[:15])  # orientations (14) + height (1)


def test_obs_mask_errors(make):
    with pytest.raises(ValueError, match="orientations.*height.*velocity"):
        make_env(EnvConfig("dmc/walker-walk", obs_mask=["velocities"]))
    with pytest.raises(ValueError, match="obs_mask is only supported"):
        make_env(EnvConfig("metaworld/reach-v3", obs_mask=["velocity"]))


# --------------------------------------------------------------------------------------------------
# register_env


def test_register_env_applies_the_standard_wrappers(make, counting_env):
    env = make(EnvConfig("test/counting", seed=3, max_episode_steps=4))
    assert env.spec_name == "test/counting"
    assert env.observation_space.shape == (2,) and env.observation_space.dtype == np.float32
    assert np.all(env.action_space.low == -1.0) and np.all(env.action_space.high == 1.0)
    obs, _ = env.reset()
    assert obs.dtype == np.float32 and obs.shape == (2,)
    env.step(np.array([1.0], np.float32))
    assert counting_env[0].last_action[0] == pytest.approx(6.0)  # rescaled to the env's [-2, 6]
    env.step(np.array([-1.0], np.float32))
    assert counting_env[0].last_action[0] == pytest.approx(-2.0)
    *_, terminated, truncated, _ = env.step(np.zeros(1))
    assert not truncated
    *_, terminated, truncated, _ = env.step(np.zeros(1))
    assert truncated and not terminated  # 4 env steps


def test_register_env_prefix_and_rules(make):
    seen: list[EnvConfig] = []

    def factory(cfg: EnvConfig) -> gym.Env:
        seen.append(cfg)
        return CountingEnv()

    register_env("family/*", factory)
    try:
        env = make(EnvConfig("family/any-task"), suite_defaults={"family": {"action_repeat": 3}})
        assert env.action_repeat == 3 and seen[0].name == "family/any-task" and seen[0].action_repeat == 3
        with pytest.raises(ValueError, match="already registered"):
            register_env("family/*", factory)
        with pytest.raises(ValueError, match="built in"):
            register_env("dmc/my-walker", factory)
        with pytest.raises(ValueError, match="<prefix>/<name>"):
            register_env("no-prefix", factory)
        with pytest.raises(ValueError, match="obs_mask is only supported"):
            make_env(EnvConfig("family/x", obs_mask=["a"]))
    finally:
        unregister_env("family/*")
    with pytest.raises(ValueError, match="Unknown env name"):
        make_env(EnvConfig("family/any-task"))
