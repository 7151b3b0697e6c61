"""Tests for agents/meta_rl.py and training/offline.py: config validation, every variant updates and round-trips,
the grouped sampler, the ER-TRL entropy regulariser removing behaviour-policy information from z (a trained probe,
against entropy_coef=0, on real two-policy data), a CI-sized offline meta-RL run that beats its initial policy on
held-out tasks, exact resume through train.py, eval.py on an offline run (held-out tasks, per-task table, videos,
without the dataset), bad input and the NaN guard."""

from __future__ import annotations

import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import run_script

import train as train_script
from agents.common import NonFiniteLossError
from agents.meta_rl import VARIANTS, MetaRLAgent, MetaRLConfig
from common.config import build_config
from envs.toy_datasets import make_toy_dataset
from training.checkpoint import load_checkpoint
from training.loop import SetupError, TrainingStopped
from training.offline import TaskSampler, load_any_dataset, run_offline
from training.seeds import EVAL_EPISODE_SEED_OFFSET
from training.setup import agent_settings, compose_config
from world_models.contextual import ContextualWMConfig

CHEETAH_TASKS = ["cheetah_vel/train-0", "cheetah_vel/train-6", "cheetah_vel/train-13", "cheetah_vel/train-19"]
REACH_TASKS = ["ml1_reach/train-0", "ml1_reach/train-13", "ml1_reach/train-26", "ml1_reach/train-39"]
TINY_HP = {  # agent.<key>, dotted like the command line
    "context.z_dim": 8,
    "context.ctx_mlp_dims": [64, 64],
    "task_loss.behaviour_mlp_dims": [64, 64],
    "task_loss.behaviour_updates": 2,
    "task_loss.behaviour_lr": 1e-3,
    "actor_critic.mlp_dims": [32, 32],
    "optim.batch_size": 64,
    "sampling.tasks_per_batch": 4,
    "sampling.contexts_per_task": 2,
    "sampling.context_size": 32,
}
TINY_WM = {"latent_dim": 32, "enc_mlp_dims": [32], "dyn_mlp_dims": [32, 32], "reward_mlp_dims": [32, 32], "horizon": 3}


def nested(flat: dict) -> dict:
    """``{"a.b": 1}`` -> ``{"a": {"b": 1}}``."""
    out: dict = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


@pytest.fixture(scope="module")
def cheetah_data(tmp_path_factory) -> Path:
    """4 cheetah_vel train tasks x (2 random + 2 deterministic linear-policy episodes of 100 decisions)."""
    out = tmp_path_factory.mktemp("cheetah_two_policy")
    make_toy_dataset(
        out, family="cheetah_vel", tasks=CHEETAH_TASKS, episodes_per_policy=2, max_episode_steps=200,
        deterministic="linear", policy_seed=0, policy_gain=0.3,
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def reach_data(tmp_path_factory) -> Path:
    """4 ml1_reach train goals x (2 random + 2 hand-to-goal-box-centre episodes of 100 decisions)."""
    out = tmp_path_factory.mktemp("reach_two_policy")
    make_toy_dataset(
        out, family="ml1_reach", tasks=REACH_TASKS, episodes_per_policy=2, max_episode_steps=200,
        deterministic="centre",
    )  # fmt: skip
    return out


def make_agent(ds, seed: int = 0, overrides: dict | None = None) -> tuple[MetaRLAgent, TaskSampler]:
    """A tiny agent; ``overrides`` are dotted agent keys (``{"task_loss.entropy_coef": 0.0}``)."""
    torch.manual_seed(seed)
    values = nested({**TINY_HP, **(overrides or {})})
    cfg = build_config(MetaRLConfig, {**values, "world_model": {"name": "contextual", **TINY_WM}}, "agent")
    agent = MetaRLAgent(ds.obs_dim, ds.action_dim, cfg, torch.device("cpu"), num_tasks=50)
    s = cfg.sampling
    sampler = TaskSampler(
        ds, horizon=agent.sample_horizon, tasks_per_batch=s.tasks_per_batch, batch_size=agent.batch_size,
        contexts_per_task=s.contexts_per_task, context_size=s.context_size, context_source=s.context_source,
        seed=seed,
    )  # fmt: skip
    agent.set_normalizer(*sampler.stats())
    return agent, sampler


def offline_args(dataset: Path, run_dir: Path, steps: int, *extra: str) -> list[str]:
    return [
        "experiment=offline_meta",
        f"dataset={dataset}",
        f"run_dir={run_dir}",
        "agent.size=small",
        *[f"agent.{k}={v}".replace(" ", "") for k, v in TINY_HP.items()],
        *[f"world_model.{k}={v}".replace(" ", "") for k, v in TINY_WM.items()],
        f"offline.steps={steps}",
        f"offline.eval_every={steps}",
        f"offline.checkpoint_every={steps}",
        f"offline.log_every={max(steps // 4, 1)}",
        "offline.eval_max_tasks=4",
        "offline.progress_bar=false",
        "wandb.mode=disabled",
        "threads=1",
        *extra,
    ]


# ---------------------------------------------------------------------------------------------------
# config, variants, sampler


def test_config_rejects_bad_values():
    """Every bad value is named with its key path in the ``agent`` section."""
    for key, value, where in [
        ("representation", "vae", r"agent: .*'representation'"),
        ("sampling.context_source", "episode", r"agent\.sampling: .*'context_source'"),
        ("task_loss.behaviour_model", "flow", r"agent\.task_loss: .*'behaviour_model'"),
        ("task_loss.entropy_coef", -1.0, r"agent\.task_loss: .*'entropy_coef'"),
        ("context.pooling", "max", r"agent\.context: .*'pooling'"),
        ("prior_prob", 1.5, r"agent: .*'prior_prob'"),
        ("actor_critic.nstep", 3, r"agent: .*'actor_critic\.nstep'"),
        ("optim.batch_size", 1, r"agent: .*'optim\.batch_size'"),
        ("optim.ctx_lr", 0.0, r"agent\.optim: .*'ctx_lr'"),
    ]:
        with pytest.raises(ValueError, match=where):
            build_config(MetaRLConfig, nested({key: value}), "agent")
    with pytest.raises(ValueError, match=r"agent\.task_loss: unknown key\(s\) \['entropy_weight'\]"):
        build_config(MetaRLConfig, {"task_loss": {"entropy_weight": 1.0}}, "agent")
    with pytest.raises(ValueError, match="needs world_model=contextual"):
        build_config(MetaRLConfig, {"representation": "world_model", "world_model": {"name": "dcwm"}}, "agent")
    # the shipped config composes into a valid MetaRLConfig (both sizes), its world model the contextual one
    for size in ("small", "paper"):
        cfg = compose_config(["experiment=offline_meta", "dataset=x.h5", f"agent.size={size}"])
        assert cfg.trainer.loop == "offline" and cfg.world_model.name == "contextual"
        hp = agent_settings(cfg)
        assert hp.representation == "context" and hp.task_loss.entropy_coef == 2.5
        assert isinstance(hp.world_model, ContextualWMConfig)
        assert hp.context.z_dim == (20 if size == "paper" else 8)


@pytest.mark.parametrize(
    "variant,behaviour_model",
    [("a_none", "gan"), ("b_context", "gan"), ("c_ertrl", "gan"), ("c_ertrl", "gaussian"), ("d_world_model", "gan")],
)
def test_every_variant_updates_and_round_trips(cheetah_data, variant, behaviour_model):
    ds = load_any_dataset(cheetah_data)
    overrides = {**VARIANTS[variant], "task_loss.behaviour_model": behaviour_model}
    agent, sampler = make_agent(ds, overrides=overrides)
    metrics = {}
    for _ in range(4):  # the actor steps every 2nd update
        metrics.update(agent.update(sampler.sample()))
    assert all(np.isfinite(v) for v in metrics.values()), metrics
    expected = {
        "a_none": {"critic_loss", "actor_loss", "bc_loss"},
        "b_context": {"focal_loss", "encoder_loss", "z_separation"},
        "c_ertrl": {"focal_loss", "behaviour_entropy"} | ({"gan_d_loss"} if behaviour_model == "gan" else set()),
        "d_world_model": {"consistency_loss", "reward_loss", "world_model_loss"},
    }[variant]
    assert expected <= set(metrics), f"missing {expected - set(metrics)}"
    # task inference + acting; a restored agent acts identically
    ctx = sampler.contexts_of(*sampler.group_keys()[0], 1, 16)[0]
    z = agent.infer_task({k: ctx[k].numpy() for k in ("obs", "action", "reward", "next_obs")})
    assert z.shape == (0 if variant == "a_none" else 8,)
    agent.set_task(z)
    obs = ds.observations[:5]
    acts = np.stack([agent.act(o, eval_mode=True, step=0) for o in obs])
    assert acts.shape == (5, ds.action_dim) and np.abs(acts).max() <= 1.0
    clone, _ = make_agent(ds, seed=99, overrides=overrides)
    clone.load_state_dict(agent.state_dict())
    clone.set_task(z)
    np.testing.assert_array_equal(np.stack([clone.act(o, eval_mode=True, step=0) for o in obs]), acts)
    if variant != "a_none":  # the task representation matters to the policy
        agent.set_task(None)
        assert not np.allclose(np.stack([agent.act(o, eval_mode=True, step=0) for o in obs]), acts)
    with pytest.raises(ValueError, match="dataset="):
        agent.update(sampler.sample().exclude("context"))


def test_sampler_draws_windows_and_contexts_of_one_group(cheetah_data):
    ds = load_any_dataset(cheetah_data)
    sampler = TaskSampler(ds, horizon=3, tasks_per_batch=4, batch_size=16, contexts_per_task=2, context_size=8, seed=5)
    assert len(sampler.group_keys()) == 8  # 4 tasks x {random, linear}
    episode_of = np.cumsum(np.concatenate([[0], ds.episode_ends[:-1]]))
    # a row is identified by (observation, reward): tasks share dynamics, rewards tell them apart
    key = lambda o, r: (*np.round(o, 5), round(float(r), 5))  # noqa: E731
    row_of = {key(o, r): i for i, (o, r) in enumerate(zip(ds.observations, ds.rewards))}
    assert len(row_of) == len(ds)
    state = sampler.state_dict()
    b = sampler.sample()
    assert b["obs"].shape == (4, 16, 4, ds.obs_dim) and b["context"]["obs"].shape == (4, 2, 8, ds.obs_dim)
    assert len(set(b["task_id"].tolist())) == 4  # distinct tasks while there are enough
    for t in range(4):
        task, policy = int(b["task_id"][t]), int(b["policy_id"][t])
        for w in range(16):
            rows = [row_of[key(o, r)] for o, r in zip(b["obs"][t, w, :3].numpy(), b["reward"][t, w].numpy())]
            assert rows == list(range(rows[0], rows[0] + 3)), "a window is consecutive rows"
            assert len({episode_of[r] for r in rows}) == 1, "a window stays inside one episode"
            assert ds.task_ids[rows[0]] == task and ds.policy_ids[rows[0]] == policy
            np.testing.assert_array_equal(b["obs"][t, w, 3].numpy(), ds.next_observations[rows[-1]])
        ctx = b["context"][t].reshape(-1)
        for o, rew in zip(ctx["obs"].numpy(), ctx["reward"].numpy()):
            r = row_of[key(o, rew)]
            assert ds.task_ids[r] == task and ds.policy_ids[r] == policy
    sampler.load_state_dict(state)  # the generator state reproduces the draw exactly
    again = sampler.sample()
    assert all(torch.equal(again[k], b[k]) for k in ("obs", "action", "reward", "task_id"))


# ---------------------------------------------------------------------------------------------------
# the entropy regulariser


def _policy_information(agent: MetaRLAgent, sampler: TaskSampler, K: int = 1) -> dict[str, float]:
    """A probe trained to predict the behaviour policy from z (held-out accuracy), and geometry of z."""
    zs, policy, task = [], [], []
    for t, p in sampler.group_keys():
        with torch.no_grad():
            zs.append(agent.encode_context(sampler.contexts_of(t, p, 100, K)))
        policy += [int(p != 0)] * 100
        task += [t] * 100
    z, y, tid = torch.cat(zs), torch.tensor(policy), torch.tensor(task)
    accs = []
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(z), generator=g)
        tr, te = perm[: len(z) // 2], perm[len(z) // 2 :]
        zn = (z - z[tr].mean(0)) / (z[tr].std(0) + 1e-6)
        torch.manual_seed(seed)
        probe = torch.nn.Sequential(torch.nn.Linear(z.shape[1], 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
        opt = torch.optim.Adam(probe.parameters(), lr=1e-2)
        for _ in range(300):
            loss = torch.nn.functional.cross_entropy(probe(zn[tr]), y[tr])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            accs.append((probe(zn[te]).argmax(-1) == y[te]).float().mean().item())
    pol_dist = [(z[(tid == t) & (y == 0)].mean(0) - z[(tid == t) & (y == 1)].mean(0)).norm() for t in tid.unique()]
    means = torch.stack([z[tid == t].mean(0) for t in tid.unique()])
    n = len(means)
    return {
        "probe_accuracy": float(np.mean(accs)),
        "policy_distance": float(torch.stack(pol_dist).mean()),
        "task_distance": float(torch.cdist(means, means).sum() / (n * (n - 1))),
    }


@pytest.mark.slow
def test_entropy_regulariser_removes_behaviour_policy_from_z(cheetah_data):
    """Same data, seed and budget; only entropy_coef differs. The probe sees z of single-transition contexts
    (K=1: the least averaged, so the probe is not saturated; with K=4 the same trend, smaller margins)."""
    ds = load_any_dataset(cheetah_data)
    info = {}
    for coef in (0.0, 2.5):
        agent, sampler = make_agent(ds, seed=0, overrides={"task_loss.entropy_coef": coef})
        for _ in range(1000):
            agent.update(sampler.sample())
        info[coef] = _policy_information(agent, sampler)
    plain, reg = info[0.0], info[2.5]
    print(f"\nentropy_coef 0: {plain}\nentropy_coef 2.5: {reg}")
    assert plain["probe_accuracy"] > 0.95, "without the regulariser z identifies the behaviour policy"
    assert reg["probe_accuracy"] < plain["probe_accuracy"] - 0.05
    assert reg["policy_distance"] < 0.5 * plain["policy_distance"]
    assert reg["task_distance"] > 0.5 * plain["task_distance"], "the tasks stay apart: no collapse"


# ---------------------------------------------------------------------------------------------------
# offline training runs


@pytest.mark.slow
def test_offline_meta_rl_improves_held_out_return(reach_data, tmp_path):
    """ER-TRL (variant c) on 4 training goals of ml1_reach; held-out: 4 of the 10 test goals, online context."""
    run_dir = tmp_path / "run"
    final = run_offline(compose_config(offline_args(reach_data, run_dir, 1200)))
    rows = (run_dir / "eval.csv").read_text().splitlines()
    header = rows[0].split(",")
    returns = {int(float(r.split(",")[0])): float(r.split(",")[header.index("return_mean")]) for r in rows[1:]}
    assert sorted(returns) == [0, 1200]
    print(f"\nheld-out return: initial {returns[0]:.1f} -> trained {returns[1200]:.1f}")
    assert final["return_mean"] == pytest.approx(returns[1200])
    assert returns[1200] > 2 * returns[0], returns  # the untrained policy is the zero action (TD3BC)
    assert "success_rate" in header
    for name in ("config.yaml", "train.csv", "learning_curve.png"):
        assert (run_dir / name).stat().st_size > 0
    assert load_checkpoint(run_dir).step == 1200


def test_resume_through_train_py_matches_uninterrupted_run(cheetah_data, tmp_path):
    extra = ("env_settings.max_episode_steps=40", "offline.eval_max_tasks=1", "offline.eval_initial=false")
    straight = tmp_path / "straight"
    run_offline(compose_config(offline_args(cheetah_data, straight, 30, *extra)))
    split = tmp_path / "split"
    run_offline(compose_config(offline_args(cheetah_data, split, 15, *extra)))
    args = ["experiment=offline_meta", f"resume={split}", "offline.steps=30"]  # the saved dataset path is used
    res = run_script("train.py", args, timeout=240)
    assert res.returncode == 0, res.stderr
    assert "resumed from" in res.stdout and "at update 15" in res.stdout
    a, b = load_checkpoint(straight), load_checkpoint(split)
    assert a.step == b.step == 30
    nets_a, nets_b = a.state["agent"]["nets"], b.state["agent"]["nets"]
    assert nets_a.keys() == nets_b.keys()
    for k in nets_a:
        assert torch.equal(nets_a[k], nets_b[k]), f"weights differ after resume: {k}"


def test_eval_py_evaluates_an_offline_run_on_its_held_out_tasks(tmp_path):
    """``eval.py checkpoint=<offline run> video=true``: the run's held-out tasks with the online-context protocol
    (given the final evaluation's seed it reproduces that evaluation), a per-task table and one mp4 per task; the
    dataset is not needed any more."""
    data = tmp_path / "data"
    make_toy_dataset(
        data, family="cheetah_vel", tasks=CHEETAH_TASKS[:2], episodes_per_policy=1, max_episode_steps=60,
        deterministic="linear", policy_seed=0, policy_gain=0.3,
    )  # fmt: skip
    run_dir = tmp_path / "run"
    extra = ("env_settings.max_episode_steps=40", "offline.eval_max_tasks=2", "offline.context_steps=5")
    final = run_offline(compose_config(offline_args(data, run_dir, 10, "offline.eval_initial=false", *extra)))
    shutil.rmtree(data)
    tasks = list(final["per_task"])
    assert len(tasks) == 2 and all(t.startswith("cheetah_vel/test-") for t in tasks)
    seed = 1 + EVAL_EPISODE_SEED_OFFSET  # the run's seed 1: the final evaluation's episodes
    args = [f"checkpoint={run_dir}", "episodes=1", "video=true", "device=cpu", "threads=1", f"seed={seed}"]
    res = run_script("eval.py", [*args, "env_settings.render_size=64"], timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.splitlines()
    assert any("held-out" in line or "test tasks of cheetah_vel" in line for line in lines), res.stdout
    for tid in tasks:  # task  group  return  length  video
        row = next(line for line in lines if line.startswith(tid + " "))
        assert float(row.split()[2]) == pytest.approx(final["per_task"][tid], abs=0.051), row
        assert int(row.split()[3]) == 20  # 40 env steps at action repeat 2
    mean = next(line for line in lines if line.startswith("mean"))
    assert float(mean.split()[1]) == pytest.approx(final["return_mean"], abs=0.051), mean
    videos = sorted((run_dir / "eval").glob("*.mp4"))
    assert [v.name for v in videos] == sorted(f"step_000000000010_{t.replace('/', '_')}.mp4" for t in tasks)
    frames = iio.imread(videos[0])
    assert frames.shape == (21, 64, 64, 3) and frames.std() > 1.0  # reset frame + 20 decisions, not blank


def test_bad_input_is_reported(cheetah_data, tmp_path):
    res = run_script("train.py", ["experiment=offline_meta", f"dataset={tmp_path / 'missing.h5'}"], timeout=120)
    assert res.returncode == 2
    assert "missing.h5" in res.stderr and "no such file" in res.stderr
    with pytest.raises(ValueError, match="needs dataset="):
        run_offline(compose_config(["experiment=offline_meta", f"run_dir={tmp_path / 'r0'}"]))
    cfg = compose_config(offline_args(cheetah_data, tmp_path / "r1", 5))
    cfg.agent.name = "iqrl"
    with pytest.raises(ValueError, match="agent=meta_rl"):
        run_offline(cfg)
    with pytest.raises(ValueError, match="not the dataset's family"):
        run_offline(compose_config([*offline_args(cheetah_data, tmp_path / "r2", 5), "env=walker_mass"]))
    # the loop is picked by trainer.loop alone (the presets set it), never guessed from the other keys
    with pytest.raises(SetupError, match=r"dataset=.* is data for the offline loop \(trainer.loop=offline"):
        train_script.run(compose_config([f"dataset={cheetah_data}", f"run_dir={tmp_path / 'r3'}"]))
    with pytest.raises(SetupError, match="trainer.loop must be one of"):
        train_script.run(compose_config([*offline_args(cheetah_data, tmp_path / "r4", 5), "trainer.loop=batch"]))
    with pytest.raises(SetupError, match="agent=meta_rl learns offline.*experiment=offline_meta"):
        train_script.run(compose_config(["agent=meta_rl", "env=gym/Pendulum-v1", f"run_dir={tmp_path / 'r5'}"]))


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_state(cheetah_data, tmp_path, monkeypatch):
    from agents.meta_rl import TD3BC

    calls = {"n": 0}
    update = TD3BC.update

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise NonFiniteLossError("critic_loss", float("nan"))
        return update(self, *args, **kwargs)

    monkeypatch.setattr(TD3BC, "update", failing)
    run_dir = tmp_path / "nan"
    with pytest.raises(TrainingStopped, match="non-finite.*update 3.*Last good state saved"):
        run_offline(compose_config(offline_args(cheetah_data, run_dir, 10, "offline.eval_initial=false")))
    ck = load_checkpoint(run_dir)
    assert ck.step == 3
    assert all(torch.isfinite(v).all() for v in ck.state["agent"]["nets"].values() if v.is_floating_point())
