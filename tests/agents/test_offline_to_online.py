"""Tests for envs/changing.py and agents/offline_to_online.py: per-reset (and mid-episode) re-drawn dynamics that
really change the physics, deterministically by seed; the residual starting as the offline policy; the rolling
context window; exact resume through the shared trainer; self-contained checkpoints (eval.py and resume after the
base run is gone); clear errors for a bad base checkpoint; and online adaptation that beats the frozen offline
policy on changed dynamics.

Two base policies: a real offline meta-RL run (``run_offline`` on a toy walker_param dataset, the checkpoint
format ``experiment=offline_meta`` writes) for the plumbing tests, and for the adaptation test a TD3+BC policy
trained in-test on a 1-D "gain" family registered here (``x' = clip(x + c g a)``, ``r = -|x'|``) whose gain ``g``
the offline data only saw near 1. Online, ``g`` is re-drawn at every reset from {0.25, 3}: the offline
controller overshoots and oscillates at ``g = 3`` and is sluggish at ``g = 0.25``; only a policy that infers
``g`` from its recent transitions can fix both.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import run_script
from omegaconf import OmegaConf
from tensordict import TensorDict

import envs.changing as changing
import envs.task_families as task_families
import train as train_script
from agents import agent_config, make_agent
from agents.meta_rl import MetaRLAgent, MetaRLConfig
from agents.offline_to_online import OfflineToOnlineAgent, OfflineToOnlineConfig
from common.config import build_config
from envs import EnvConfig, make_env
from envs.toy_datasets import make_toy_dataset
from training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from training.evaluation import evaluate
from training.offline import run_offline
from training.seeds import EVAL_ENV_SEED_OFFSET, EVAL_EPISODE_SEED_OFFSET
from training.setup import build_agent, compose_config, load_offline_base

# ---------------------------------------------------------------------------------------------------
# a cheap changing-gain family (registered for this test module)

GAIN_STEP = 0.5  # c in x' = x + c g a
GAINS = (0.25, 0.8, 0.9, 1.0, 1.1, 1.25, 3.0)


class GainEnv(gym.Env):
    """``x' = clip(x + c g a, -2, 2)``, ``r = -|x'|``, ``x_0 ~ U(-1.5, 1.5)``; ``g`` (the task) is not observed."""

    def __init__(self, gain: float, seed: int) -> None:
        self.gain = gain
        self.observation_space = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.x = 0.0
        self.np_random = np.random.default_rng(seed)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = float(self.np_random.uniform(-1.5, 1.5))
        return np.array([self.x], np.float32), {}

    def step(self, action):
        self.x = float(np.clip(self.x + GAIN_STEP * self.gain * float(np.asarray(action).reshape(-1)[0]), -2, 2))
        return np.array([self.x], np.float32), -abs(self.x), False, False, {}

    def render(self):
        return np.zeros((8, 8, 3), np.uint8)


def _build_gain(cfg: EnvConfig, task: task_families.Task) -> gym.Env:
    return task_families.TaskEnv(GainEnv(task.params_dict()["gain"], cfg.seed), task)


def _gain_setter(env: gym.Env):
    def apply(task: task_families.Task) -> None:
        env.unwrapped.gain = task.params_dict()["gain"]

    return apply


@pytest.fixture
def toy_gain_family():
    """Registers the test-only ``toy_gain`` family (and its changing-dynamics setter) for one test, then removes
    it, so the global family registry other tests snapshot stays the built-in one."""
    task_families.register_family(
        task_families.TaskFamily(
            "toy_gain",
            description="1-D point with an unobserved actuator gain (test only)",
            param_names=("gain",),
            params=[(g,) for g in GAINS],
            splits={"train": [1, 2, 3, 4, 5], "test": [0, 6]},
            builder=_build_gain,
            defaults={"action_repeat": 1, "max_episode_steps": 40},
        ),
        overwrite=True,
    )
    changing.register_task_setter("toy_gain", _gain_setter, overwrite=True)
    yield
    changing.unregister_task_setter("toy_gain")
    task_families.unregister_family("toy_gain")


def gain_base_checkpoint(run_dir: Path, seed: int = 0, updates: int = 1500) -> Path:
    """A TD3+BC policy (meta_rl, representation none) trained on nominal-gain data, saved like an offline run."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    hp = {
        "representation": "none",
        "task_loss": {"entropy_coef": 0.0},
        "actor_critic": {"mlp_dims": [64, 64], "num_critics": 2},
        "optim": {"batch_size": 256},
    }
    agent = MetaRLAgent(1, 1, build_config(MetaRLConfig, hp, "agent"), torch.device("cpu"))
    n = 20_000
    x = rng.uniform(-2, 2, n)
    g = rng.choice(GAINS[1:6], n)  # the offline tasks: gains near 1
    a = np.clip(-x / GAIN_STEP + rng.normal(0, 0.3, n), -1, 1)  # a noisy dead-beat controller for g = 1
    x2 = np.clip(x + GAIN_STEP * g * a, -2, 2)
    t = lambda v: torch.as_tensor(v, dtype=torch.float32)  # noqa: E731
    agent.set_normalizer(np.array([0.0]), np.array([1.0]), 0.0, 1.0)
    for _ in range(updates):
        i = torch.as_tensor(rng.integers(0, n, 256))
        agent.td3.update(t(x)[i, None], t(a)[i, None], -t(np.abs(x2))[i], torch.full((256,), 0.9), t(x2)[i, None])
    config = OmegaConf.to_yaml({"agent": {"name": "meta_rl", **dataclasses.asdict(agent.cfg)}})
    save_checkpoint(run_dir, updates, {"agent": agent.state_dict()}, config)
    return run_dir


@pytest.fixture(scope="module")
def walker_base(tmp_path_factory) -> Path:
    """A real (tiny) `experiment=offline_meta` run on walker_param data: the checkpoint format users pass."""
    root = tmp_path_factory.mktemp("walker_base")
    make_toy_dataset(
        root / "data", family="walker_param", tasks=2, episodes_per_policy=1, max_episode_steps=100,
        deterministic="linear", policy_seed=0, policy_gain=0.3,
    )  # fmt: skip
    args = [
        "experiment=offline_meta", f"dataset={root / 'data'}", f"run_dir={root / 'run'}", "agent.size=small",
        "agent.actor_critic.mlp_dims=[32,32]", "agent.context.ctx_mlp_dims=[32]", "agent.task_loss.entropy_coef=0",
        "agent.optim.batch_size=16", "agent.sampling.tasks_per_batch=2", "agent.sampling.context_size=8",
        "offline.steps=20", "offline.eval_every=20", "offline.checkpoint_every=20", "offline.eval_initial=false",
        "offline.eval_max_tasks=1", "env_settings.max_episode_steps=40", "offline.progress_bar=false",
        "wandb.mode=disabled", "threads=1",
    ]  # fmt: skip
    run_offline(compose_config(args))
    return root / "run"


def online_args(base: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        "experiment=offline_to_online",
        f"agent.base_checkpoint={base}",
        f"run_dir={run_dir}",
        "agent.size=small",
        "agent.actor_critic.mlp_dims=[32,32]",
        "agent.context.ctx_mlp_dims=[32]",
        "agent.context.decoder_mlp_dims=[32]",
        "agent.optim.batch_size=16",
        "agent.context.context_size=4",
        "env_settings.max_episode_steps=60",  # 30 decisions
        "trainer.eval_episodes=1",
        "trainer.progress_bar=false",
        "buffer.capacity=2000",
        "wandb.mode=disabled",
        "threads=1",
        *extra,
    ]


# ---------------------------------------------------------------------------------------------------
# the changing-dynamics env


def _rollout(env: gym.Env, seed: int, actions: np.ndarray) -> tuple[np.ndarray, list[dict]]:
    obs, info = env.reset(seed=seed)
    out, infos = [obs], [info]
    for a in actions:
        obs, _, _, _, info = env.step(a)
        out.append(obs)
        infos.append(info)
    return np.stack(out), infos


def test_env_redraws_dynamics_per_reset_deterministically():
    env = make_env(EnvConfig("changing/walker_param", seed=0))
    fam = task_families.get_family("walker_param")
    actions = np.random.default_rng(0).uniform(-1, 1, (30, 6)).astype(np.float32)
    try:
        physics = env.unwrapped.dm_env.physics
        tasks = {s: env.reset(seed=s)[1]["task_id"] for s in range(12)}
        assert len(set(tasks.values())) >= 4, "resets draw different tasks"
        assert all(env.reset(seed=s)[1]["task_id"] == t for s, t in tasks.items()), "the draw is a function of the seed"
        seed_a = 3
        seed_b = next(s for s in range(12) if tasks[s] != tasks[seed_a])
        trajs = {}
        for seed in (seed_a, seed_b):
            trajs[seed], infos = _rollout(env, seed, actions)
            task = fam.task(infos[0]["task_id"])
            assert [i["task_id"] for i in infos] == [task.task_id] * len(infos)
            assert infos[0]["mass_scale"] == task.params_dict()["mass_scale"]
            assert task_families.task_of(env).task_id == task.task_id
            ref = fam.make(task.task_id, seed=0)  # the family's own member: same model, same episode
            try:
                ref_physics = ref.unwrapped.dm_env.physics
                for field in changing.PHYSICS_FIELDS:
                    np.testing.assert_allclose(getattr(physics.model, field), getattr(ref_physics.model, field))
                np.testing.assert_allclose(_rollout(ref, seed, actions)[0], trajs[seed], atol=1e-4)
            finally:
                ref.close()
        # the parameters change the physics: task b's model from episode a's initial state moves differently
        ref_b = fam.make(tasks[seed_b], seed=0)
        try:
            traj_b_from_a = _rollout(ref_b, seed_a, actions)[0]
        finally:
            ref_b.close()
        np.testing.assert_array_equal(traj_b_from_a[0], trajs[seed_a][0])
        assert np.abs(traj_b_from_a - trajs[seed_a]).max() > 1e-2, "different mass/damping, same motion"
    finally:
        env.close()


def test_env_changes_mid_episode_every_n_steps():
    env = make_env(EnvConfig("changing/walker_param-test-every20", seed=0))  # 20 env steps = 10 decisions
    fam = task_families.get_family("walker_param")
    try:
        actions = np.zeros((35, 6), np.float32)
        traj, infos = _rollout(env, 5, actions)
        changed = [t for t, i in enumerate(infos[1:], 1) if i["task_changed"]]
        assert changed == [10, 20, 30]
        ids = [i["task_id"] for i in infos]
        assert all(fam.task(t).split == "test" for t in ids)
        assert len(set(ids)) >= 2, "a new task took over mid-episode"
        assert ids[:11] == [ids[0]] * 11, "the first task governs the first 10 decisions"
        # a change keeps the motion (time, positions, velocities) and changes only the model
        fixed = make_env(EnvConfig("changing/walker_param-test", seed=0))
        try:
            env.reset(seed=5)
            fixed.reset(seed=5)
            physics, ref_physics = env.unwrapped.dm_env.physics, fixed.unwrapped.dm_env.physics
            for t in range(10):
                obs, _, _, _, info = env.step(actions[t])
                np.testing.assert_array_equal(obs, fixed.step(actions[t])[0])
            assert info["task_changed"]
            np.testing.assert_array_equal(physics.get_state(), ref_physics.get_state())
            mass = fam.task(ids[11]).params_dict()["mass_scale"] / fam.task(ids[0]).params_dict()["mass_scale"]
            np.testing.assert_allclose(physics.model.body_mass, mass * ref_physics.model.body_mass)
        finally:
            fixed.close()
        again, infos2 = _rollout(env, 5, actions)
        assert [i["task_id"] for i in infos2] == ids
        np.testing.assert_array_equal(again, traj)
    finally:
        env.close()
    with pytest.raises(ValueError, match="no task setter"):
        make_env(EnvConfig("changing/ml1_reach"))
    with pytest.raises(ValueError, match="changing-dynamics env name"):
        make_env(EnvConfig("changing/walker_param-valid"))


# ---------------------------------------------------------------------------------------------------
# the agent


def test_config_and_bad_base_checkpoint_errors(tmp_path, walker_base):
    for key, value, where in [
        ("mode", "distill", r"agent: .*'mode'"),
        ("residual", {"scale": 0.0}, r"agent\.residual: .*'scale'"),
        ("context", {"use_next_obs": False}, r"agent\.context: .*'use_next_obs'"),
        ("actor_critic", {"nstep": 3}, r"agent: .*'actor_critic\.nstep'"),
    ]:
        with pytest.raises(ValueError, match=where):
            build_config(OfflineToOnlineConfig, {key: value}, "agent")
    cpu = torch.device("cpu")
    missing = tmp_path / "no_such_run"
    with pytest.raises(CheckpointError, match=str(missing)):
        load_offline_base(missing, 24, 6, cpu)
    with pytest.raises(CheckpointError, match="obs_dim=5"):  # a base trained on another family
        load_offline_base(walker_base, 5, 6, cpu)
    base = load_offline_base(walker_base, 24, 6, cpu)
    with pytest.raises(ValueError, match="obs_dim=24.*obs_dim=5"):  # the agent checks what it is handed too
        make_agent("offline_to_online", 5, 6, OfflineToOnlineConfig(), cpu, base=base)
    # not an offline meta-RL run: the config file is named
    ck = load_checkpoint(walker_base)
    other = tmp_path / "iqrl_run"
    save_checkpoint(other, 1, ck.state, ck.config_yaml.replace("name: meta_rl", "name: iqrl"))
    with pytest.raises(CheckpointError, match=r"config.yaml.*agent=meta_rl"):
        load_offline_base(other, 24, 6, cpu)
    # through train.py: exit code 2 and the path in the message, before any training
    res = run_script("train.py", ["experiment=offline_to_online", f"agent.base_checkpoint={missing}"])
    assert res.returncode == 2 and str(missing) in res.stderr, res.stderr
    res = run_script("train.py", ["experiment=offline_to_online", f"run_dir={tmp_path / 'r'}"])
    assert res.returncode == 2 and "base_checkpoint" in res.stderr, res.stderr


def test_residual_starts_as_the_offline_policy_and_context_resets(walker_base):
    ck = load_checkpoint(walker_base)  # the offline agent, rebuilt independently of the code under test
    saved = OmegaConf.to_container(OmegaConf.create(ck.config_yaml), resolve=True)
    hp = {k: v for k, v in saved["agent"].items() if k not in ("name", "size")}
    offline = MetaRLAgent(24, 6, build_config(MetaRLConfig, hp, "agent"), torch.device("cpu"))
    offline.load_state_dict(ck.state["agent"])
    torch.manual_seed(0)
    hp = {"context": {"context_size": 4, "z_dim": 8}, "actor_critic": {"mlp_dims": [32, 32]}}
    base = load_offline_base(walker_base, 24, 6, torch.device("cpu"))
    agent = make_agent(
        "offline_to_online", 24, 6, agent_config("offline_to_online", hp), torch.device("cpu"), base=base
    )
    assert isinstance(agent, OfflineToOnlineAgent) and agent.sample_horizon == 5
    env = make_env(EnvConfig("changing/walker_param", seed=0, max_episode_steps=40))
    K, T = 4, 9
    try:
        for episode in range(2):
            agent.begin_episode(episode)
            assert len(agent.window) == 0 and torch.equal(agent.context_z(), torch.zeros(8))
            obs, _ = env.reset(seed=episode)
            sizes, zs, states, actions, rewards = [], [], [obs], [], []
            for _ in range(T):
                a = agent.act(obs, eval_mode=False, step=0)  # exploration noise: the window holds the taken action
                sizes.append(len(agent.window))
                zs.append(agent.context_z())
                obs, r = env.step(a)[:2]
                agent.observe(r)
                states.append(obs)
                actions.append(a)
                rewards.append(r)
            assert sizes == [0, 1, 2, 3, 4, 4, 4, 4, 4], "the last K transitions of this episode"
            assert [float(t[2]) for t in agent.window] == pytest.approx(rewards[-K - 1 : -1]), "observed rewards"
            assert any(r != 0 for r in rewards[-K - 1 : -1])
            assert zs[-1].abs().sum() > 0
            s_last = agent.norm.obs(torch.as_tensor(obs))
            a = agent.act(obs, eval_mode=True, step=0)
            np.testing.assert_allclose(a, offline.act(obs, eval_mode=True, step=0), atol=1e-6)  # a == a_base
            assert torch.allclose(agent.window[-1][3], s_last), "the newest transition ends at the current state"
            # update() sees the same contexts: windows of K+1 transitions from the buffer, position j
            s = agent.norm.obs(torch.as_tensor(np.stack(states)))
            act = torch.as_tensor(np.stack(actions))
            rew = torch.as_tensor(rewards, dtype=torch.float32)
            for start, j in [(0, 0), (0, 2), (0, K), (T - K - 1, K)]:
                steps = slice(start, start + K + 1)
                window = (s[None, start : start + K + 2], act[None, steps], rew[None, steps])
                z, z_next = agent.window_z(*window, torch.tensor([j]))
                torch.testing.assert_close(z[0], zs[start + j], atol=1e-6, rtol=0)
                torch.testing.assert_close(z_next[0], zs[start + j + 1] if start + j + 1 < T else agent.context_z())
    finally:
        env.close()


def _window_batch(B: int, K: int, seed: int = 0) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    return TensorDict(
        {
            "obs": torch.randn(B, K + 2, 24, generator=g),
            "action": torch.rand(B, K + 1, 6, generator=g) * 2 - 1,
            "reward": torch.rand(B, K + 1, generator=g),
            "terminated": torch.zeros(B, K + 1),
        },
        batch_size=[B],
    )


def _changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(v, module.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("finetune_base", [False, True])
def test_base_actor_is_frozen_unless_asked(walker_base, finetune_base):
    hp = {
        "context": {"context_size": 3, "z_dim": 4},
        "actor_critic": {"mlp_dims": [16, 16]},
        "residual": {"finetune_base": finetune_base},
    }
    cpu = torch.device("cpu")
    base = load_offline_base(walker_base, 24, 6, cpu)
    agent = make_agent("offline_to_online", 24, 6, agent_config("offline_to_online", hp), cpu, base=base)
    assert all(p.requires_grad == finetune_base for p in agent.td3.actor.base.parameters())
    base = {k: v.clone() for k, v in agent.td3.actor.base.state_dict().items()}
    residual = {k: v.clone() for k, v in agent.td3.actor.residual.state_dict().items()}
    encoder = {k: v.clone() for k, v in agent.encoder.state_dict().items()}
    for i in range(4):  # the actor steps every 2nd update
        metrics = agent.update(_window_batch(8, 3, seed=i))
    assert {"dynamics_loss", "critic_loss", "actor_loss"} <= set(metrics)
    assert _changed(residual, agent.td3.actor.residual) and _changed(encoder, agent.encoder)
    assert _changed(base, agent.td3.actor.base) == finetune_base


@pytest.mark.parametrize("mode", ["residual", "finetune"])
def test_resume_through_the_shared_trainer_matches_an_uninterrupted_run(walker_base, tmp_path, mode):
    common = ("trainer.eval_every=1000", "trainer.checkpoint_every=60", f"agent.mode={mode}")
    straight = tmp_path / "straight"
    train_script.run(compose_config(online_args(walker_base, straight, "trainer.steps=180", *common)))
    split = tmp_path / "split"
    train_script.run(compose_config(online_args(walker_base, split, "trainer.steps=120", *common)))
    res = run_script("train.py", [f"resume={split}", "trainer.steps=180"], timeout=240)
    assert res.returncode == 0, res.stderr
    assert "at env step 120" in res.stdout
    a, b = load_checkpoint(straight), load_checkpoint(split)
    assert a.step == b.step == 180 and a.state["agent"]["num_updates"] > 0
    nets_a, nets_b = a.state["agent"]["nets"], b.state["agent"]["nets"]
    assert nets_a.keys() == nets_b.keys()
    if mode == "residual":
        assert any("encoder" in k for k in nets_a) and any("residual" in k for k in nets_a)
    for k in nets_a:
        assert torch.equal(nets_a[k], nets_b[k]), f"weights differ after resume: {k}"


@pytest.mark.parametrize("mode", ["residual", "finetune"])
def test_checkpoints_carry_the_base_policy_so_eval_and_resume_work_without_the_base_run(walker_base, tmp_path, mode):
    import eval as eval_script

    base = tmp_path / "base"
    shutil.copytree(walker_base, base)
    run = tmp_path / "online"
    common = ("trainer.eval_every=1000", "trainer.checkpoint_every=60", f"agent.mode={mode}", "trainer.video=none")
    train_script.run(compose_config(online_args(base, run, "trainer.steps=120", *common)))
    ck, offline = load_checkpoint(run), load_checkpoint(base)
    assert ck.state["agent"]["base"]["config"]["representation"] == "context"  # the base's own config
    actor = "td3.actor.base.actor.0.weight" if mode == "residual" else "td3.actor.0.weight"
    if mode == "residual":  # the frozen base policy's weights, unchanged by the online phase
        assert torch.equal(ck.state["agent"]["nets"][actor], offline.state["agent"]["nets"]["td3.actor.0.weight"])
    assert torch.equal(ck.state["agent"]["nets"]["norm.obs_mean"], offline.state["agent"]["nets"]["norm.obs_mean"])
    evaluation = [f"checkpoint={run}", "episodes=2", "video=false", "device=cpu", "threads=1"]
    before = eval_script.run(compose_config(evaluation, config_name="eval"))
    shutil.move(base, tmp_path / "moved")
    shutil.rmtree(tmp_path / "moved")
    assert not base.exists()
    assert eval_script.run(compose_config(evaluation, config_name="eval")) == before
    res = run_script("eval.py", evaluation, timeout=240)
    assert res.returncode == 0 and "mean" in res.stdout, res.stderr[-3000:]
    res = run_script("train.py", [f"resume={run}", "trainer.steps=180"], timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "at env step 120" in res.stdout
    resumed = load_checkpoint(run)
    assert resumed.step == 180 and resumed.state["agent"]["num_updates"] > ck.state["agent"]["num_updates"]
    if mode == "residual":
        assert torch.equal(resumed.state["agent"]["nets"][actor], ck.state["agent"]["nets"][actor])


# ---------------------------------------------------------------------------------------------------
# adaptation


@pytest.mark.slow
def test_residual_adapts_to_changed_dynamics_beyond_the_frozen_offline_policy(tmp_path, toy_gain_family):
    """Online phase on changing/toy_gain-test (g in {0.25, 3} per reset) through the shared trainer."""
    base = gain_base_checkpoint(tmp_path / "base")
    steps, seed = 2000, 1
    args = [
        "experiment=offline_to_online", f"agent.base_checkpoint={base}", f"run_dir={tmp_path / 'online'}",
        "env=changing/toy_gain-test", "env_settings.action_repeat=1", "env_settings.max_episode_steps=40",
        "agent.size=small", "agent.actor_critic.mlp_dims=[64,64]",
        "agent.context.ctx_mlp_dims=[32,32]", "agent.context.decoder_mlp_dims=[32,32]",
        "agent.context.context_size=4", "agent.residual.scale=1.0", "agent.optim.batch_size=64",
        "agent.exploration.std_start=0.2", "agent.exploration.std_end=0.2", f"trainer.steps={steps}",
        f"trainer.eval_every={steps}", f"trainer.checkpoint_every={steps}", "trainer.eval_episodes=20",
        "trainer.progress_bar=false", "buffer.capacity=10000", "wandb.mode=disabled", "threads=1", f"seed={seed}",
    ]  # fmt: skip
    cfg = compose_config(args)
    # the frozen offline policy on exactly the trainer's evaluation episodes (same seeds -> same tasks and starts)
    env = make_env(
        EnvConfig("changing/toy_gain-test", seed=seed + EVAL_ENV_SEED_OFFSET, action_repeat=1, max_episode_steps=40)
    )
    try:
        frozen = build_agent(cfg, env, torch.device("cpu"))
        before = evaluate(frozen, env, episodes=20, seed=seed + EVAL_EPISODE_SEED_OFFSET, episode_index=0, step=0)
    finally:
        env.close()
    after = train_script.run(cfg)
    b, a = before["return_mean"], after["return_mean"]
    print(f"\nfrozen offline policy {b:.2f} -> residual after {steps} online steps: {a:.2f}")
    assert a > b + 0.3 * abs(b), (before, after)
