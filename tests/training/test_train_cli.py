"""End to end through train.py / eval.py: resume after SIGKILL, determinism, bad input, NaN, eval videos."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import ROOT, SMALL_PLANNER, TINY, run_script

import eval as eval_script
import train as train_script
from envs import register_env, unregister_env
from training.checkpoint import CheckpointError, load_checkpoint
from training.setup import compose_config
from training.trainer import TrainingStopped


def _final_state(run_dir):
    ck = load_checkpoint(run_dir)
    return ck, ck.state["agent"]["nets"]


def test_resume_after_sigkill_reproduces_uninterrupted_run(tmp_path):
    args = [*TINY, "trainer.steps=2000"]
    straight = tmp_path / "straight"
    res = run_script("train.py", [*args, f"run_dir={straight}"])
    assert res.returncode == 0, res.stderr

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args, f"run_dir={killed}"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    latest = killed / "checkpoints" / "latest"
    deadline = time.time() + 240
    while time.time() < deadline and not latest.exists():
        time.sleep(0.05)
    assert latest.exists(), "no checkpoint appeared before the deadline"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ck = load_checkpoint(killed)
    assert 0 < ck.step < 2000, f"kill landed after the run finished (step {ck.step})"

    res = run_script("train.py", [f"resume={killed}"])
    assert res.returncode == 0, res.stderr
    assert f"resumed from {ck.path}" in res.stdout

    ck_a, nets_a = _final_state(straight)
    ck_b, nets_b = _final_state(killed)
    assert ck_a.step == ck_b.step == ck_b.state["trainer"]["env_step"] >= 2000
    assert nets_a.keys() == nets_b.keys()
    for k in nets_a:
        assert torch.equal(nets_a[k], nets_b[k]), f"weights differ after resume: {k}"
    # No transition lost: same count, same contents.
    assert ck_a.buffer["num_added"] == ck_b.buffer["num_added"] == 2000
    for k, v in ck_a.buffer["data"].items():
        assert torch.equal(v, ck_b.buffer["data"][k]), f"buffer field {k} differs"
    # The CSV logs of the resumed run tell the same story as the uninterrupted one.
    assert (straight / "train.csv").read_text().count("\n") == (killed / "train.csv").read_text().count("\n")
    assert (killed / "learning_curve.png").stat().st_size > 0


def test_run_outputs_and_eval_video(tmp_path):
    run_dir = tmp_path / "run"
    final = train_script.run(compose_config([*TINY, f"run_dir={run_dir}", "trainer.video=final"]))
    assert np.isfinite(final["return_mean"])
    for name in ("config.yaml", "train.csv", "eval.csv", "learning_curve.png"):
        assert (run_dir / name).stat().st_size > 0, name
    videos = list((run_dir / "videos").glob("*.mp4"))
    assert len(videos) == 1
    header = (run_dir / "eval.csv").read_text().splitlines()[0].split(",")
    for col in ("step", "return_mean", "return_std", "rank@0.1", "rank@0.01", "rank@0.001", "code_usage"):
        assert col in header
    train_header = (run_dir / "train.csv").read_text().splitlines()[0].split(",")
    for col in ("episode_return", "env_steps_per_s", "updates_per_s", "consistency_loss", "critic_loss"):
        assert col in train_header

    res = run_script("eval.py", [f"checkpoint={run_dir}", "episodes=2", "video=true", "device=cpu"])
    assert res.returncode == 0, res.stderr
    assert "mean" in res.stdout and "return" in res.stdout
    mp4s = sorted((run_dir / "eval").glob("*.mp4"))
    assert len(mp4s) == 2
    frames = iio.imread(mp4s[0])
    assert frames.shape[0] == 201 and frames.shape[-1] == 3  # reset frame + 200 steps
    assert frames.std() > 1.0, "video frames are blank"


def test_same_seed_same_weights_on_cpu(tmp_path):
    outs = []
    for name in ("a", "b"):
        train_script.run(compose_config([*TINY, "trainer.steps=800", f"run_dir={tmp_path / name}"]))
        outs.append(_final_state(tmp_path / name)[1])
    for k in outs[0]:
        assert torch.equal(outs[0][k], outs[1][k]), k
    train_script.run(compose_config([*TINY, "trainer.steps=800", "seed=2", f"run_dir={tmp_path / 'c'}"]))
    other = _final_state(tmp_path / "c")[1]
    assert any(not torch.equal(outs[0][k], other[k]) for k in other), "a different seed gave identical weights"


@pytest.mark.parametrize(
    "override,message",
    [
        ("env=dmc/walker-wlak", "walker-walk"),
        ("env=nosuchsuite/foo", "dmc"),
        ("agent.optim.batch_size=-1", "agent.optim: .*batch_size"),
        ("agent.optim.batch_size=0", "agent.optim: .*batch_size"),
        ("world_model.horizon=0", "world_model: .*horizon"),
        ("world_model.fsq_levels=[1,8]", "world_model: .*levels"),
        ("world_model.fsq_levels=[]", "world_model: .*levels"),
        ("+agent.not_a_key=3", "agent: unknown key.*not_a_key"),
        ("+agent.actor_critic.not_a_key=3", "agent.actor_critic: unknown key.*not_a_key"),
        ("agent.size=huge", "agent.size"),
        ("trainer.eval_episodes=0", "eval_episodes"),
        ("env_settings.action_repeat=0", "action_repeat"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path, override, message):
    res = run_script("train.py", [*TINY, override, f"run_dir={tmp_path / 'r'}"], timeout=120)
    assert res.returncode != 0
    assert "error:" in res.stderr and re.search(message, res.stderr), res.stderr[-2000:]
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize(
    "override,message",
    [
        ("world_model.uncertainty.estimator=ensembel", r"world_model.uncertainty: unknown estimator 'ensembel'"),
        ("world_model.uncertainty.ensemble_size=1", r"world_model.uncertainty: .*ensemble_size"),
        ("world_model.uncertainty.sfr_inducing=0", r"world_model.uncertainty: .*sfr_inducing"),
        ("agent.planner.optimism=-1", r"agent.planner: .*optimism must be >= 0"),
        ("agent.planner.caution=0.5", r"agent.planner settings .*caution.* need a world model with an uncertainty"),
    ],
)
def test_bad_uncertainty_settings_stop_the_run_at_start_up(tmp_path, override, message):
    res = run_script("train.py", [*TINY, "agent=dcmpc", override, f"run_dir={tmp_path / 'r'}"], timeout=120)
    assert res.returncode != 0
    assert "error:" in res.stderr and re.search(message, res.stderr), res.stderr[-2000:]
    assert "Traceback" not in res.stderr and not (tmp_path / "r" / "checkpoints").exists()


def test_unknown_agent_lists_valid_ones(tmp_path):
    res = run_script("train.py", [*TINY, "agent=nope", f"run_dir={tmp_path / 'r'}"], timeout=120)
    assert res.returncode != 0
    assert "iqrl" in res.stderr
    res = run_script("train.py", [*TINY, "world_model=nope", f"run_dir={tmp_path / 'r'}"], timeout=120)
    assert res.returncode != 0
    assert "Available options in 'world_model'" in res.stderr and "kla" in res.stderr


def test_resume_bad_inputs(tmp_path):
    res = run_script("train.py", [f"resume={tmp_path / 'missing'}"], timeout=120)
    assert res.returncode == 2 and "no such run" in res.stderr

    run_dir = tmp_path / "run"
    train_script.run(compose_config([*TINY, "trainer.steps=400", f"run_dir={run_dir}"]))
    ck = load_checkpoint(run_dir)
    data = (ck.path / "state.pt").read_bytes()
    (ck.path / "state.pt").write_bytes(data[:100])
    res = run_script("train.py", [f"resume={run_dir}"], timeout=120)
    assert res.returncode == 2 and "state.pt: truncated" in res.stderr
    res = run_script("eval.py", [f"checkpoint={run_dir}"], timeout=120)
    assert res.returncode == 2 and "state.pt: truncated" in res.stderr


class NaNRewardPendulum:
    """Factory for Pendulum whose reward turns NaN after 700 steps (a corrupted sensor, say)."""

    def __call__(self, cfg):
        import gymnasium as gym

        class Corrupt(gym.Wrapper):
            t = 0

            def step(self, a):
                obs, r, term, trunc, info = self.env.step(a)
                Corrupt.t += 1
                return obs, (float("nan") if Corrupt.t > 700 else r), term, trunc, info

        return Corrupt(gym.make("Pendulum-v1", max_episode_steps=200))


def test_nan_loss_stops_training_and_keeps_a_good_checkpoint(tmp_path):
    register_env("test/nan-pendulum", NaNRewardPendulum(), overwrite=True)
    try:
        cfg = compose_config([*TINY, "env=test/nan-pendulum", f"run_dir={tmp_path / 'r'}", "trainer.steps=2000"])
        with pytest.raises(TrainingStopped, match="critic_loss") as e:
            train_script.run(cfg)
    finally:
        unregister_env("test/nan-pendulum")
    assert "Last good state saved" in str(e.value)
    ck = load_checkpoint(tmp_path / "r")
    assert ck.step >= 800
    for k, t in ck.state["agent"]["nets"].items():
        assert torch.isfinite(t).all(), k


def test_multirun_sweeps_seeds_locally(tmp_path):
    res = run_script(
        "train.py",
        ["-m", *TINY, "trainer.steps=400", "seed=1,2", f"run_dir={tmp_path}/s${{seed}}"],
        timeout=300,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    for s in (1, 2):
        assert load_checkpoint(tmp_path / f"s{s}").step == 400


@pytest.mark.parametrize(
    ("agent", "env", "extra", "expected"),
    [
        ("dcmpc", "dmc/walker-walk", [], {"actor_critic.nstep": 1, "exploration.std_end": 0.1}),
        ("dcmpc", "dmc/reacher-easy", [], {"actor_critic.nstep": 3}),
        ("dcmpc", "dmc/finger-turn_hard", [], {"actor_critic.nstep": 2}),  # '_' and '-' match alike
        ("dcmpc", "metaworld/reach-v3", [], {"actor_critic.nstep": 3, "exploration.std_end": 0.05}),
        ("dcmpc", "dmc/reacher-easy", ["agent.actor_critic.nstep=2"], {"actor_critic.nstep": 2}),  # explicit wins
        ("dcmpc", "dmc/reacher-easy", ["agent.size=small"], {"planner.num_samples": 128}),
        ("dcmpc", "dmc/reacher-easy", ["agent.size=paper"], {"planner.num_samples": 512}),
        ("iqrl", "dmc/acrobot-swingup", [], {"actor_critic.nstep": 3, "world_model.enc_tau": 0.0005}),
        ("iqrl", "dmc/dog-run", ["agent.size=paper"], {"world_model.latent_groups": 1024}),
        ("iqrl", "dmc/dog-run", ["agent.size=small"], {"world_model.latent_groups": 64}),
    ],
)
def test_per_task_defaults_follow_the_env(agent, env, extra, expected):
    from operator import attrgetter

    from training.setup import agent_settings

    settings = agent_settings(compose_config([f"agent={agent}", f"env={env}", *extra]))
    assert {k: attrgetter(k)(settings) for k in expected} == expected


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ("dmc/ball_in_cup-catch", 4),
        ("dmc/cup-catch", 4),  # the alias is resolved before matching
        ("dmc/Ball-In-Cup-Catch", 4),
        ("dmc/walker-walk", 1),
        ("dmc/no-such-task", 1),  # unknown names fall through; make_env reports them
    ],
)
def test_per_task_rules_match_the_canonical_env_name(env, expected):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"env": env, "n": "${by_task:1,'dmc/ball_in_cup-*=4'}"})
    assert cfg.n == expected


@pytest.mark.parametrize(
    "rules",
    ["'dmc/walker-*'", "'dmc/walker-*=2','dmc/cheetah-*'", "'dmc/walker-*=2','=3'"],  # bad rule after a match too
)
def test_malformed_per_task_rule_is_a_clear_error(rules):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"env": "dmc/walker-walk", "n": f"${{by_task:1,{rules}}}"})
    with pytest.raises(Exception, match="not '<env glob>=<value>'"):
        _ = cfg.n


def test_slurm_launcher_preset_composes():
    cfg = compose_config(["hydra/launcher=slurm"], return_hydra_config=True)
    assert "SlurmLauncher" in cfg.hydra.launcher._target_
    assert cfg.hydra.launcher.gpus_per_node == 1


def test_eval_requires_checkpoint():
    assert compose_config([]).env  # sanity: the train config composes without overrides
    with pytest.raises(ValueError, match="checkpoint="):
        eval_script.run(compose_config([], config_name="eval"))


SMALL_KLA = [
    "agent.size=small",
    "world_model=kla",
    "world_model.belief_lanes=8",
    "world_model.burn_in=2",
    "world_model.enc_mlp_dims=[32]",
    "world_model.dyn_mlp_dims=[32,32]",
    "world_model.reward_mlp_dims=[32]",
    "world_model.dec_mlp_dims=[32]",
    *SMALL_PLANNER[5:],
]


@pytest.mark.parametrize(
    "agent",
    [
        ["agent=iqrl"],
        ["agent=dcmpc", *SMALL_PLANNER],
        ["agent=dcmpc", *SMALL_KLA],
    ],
    ids=["iqrl", "dcmpc", "dcmpc-kla"],
)
def test_every_online_agent_runs_through_trainer_and_evaluation(tmp_path, agent):
    """The trainer's whole contract (begin_episode, act, observe, update, state_dict) with the agent acting
    after the seed phase, an evaluation and a checkpoint: a tiny real run of each online agent."""
    tiny = [o for o in TINY if not o.startswith("world_model.")] if "world_model=kla" in agent else TINY
    overrides = [*tiny, *agent, "trainer.steps=600", "trainer.seed_steps=200", f"run_dir={tmp_path}"]
    final = train_script.run(compose_config(overrides))
    assert np.isfinite(final["return_mean"]) and final["episode_length"] == 200
    assert load_checkpoint(tmp_path).step == 600


def test_eval_changes_hyperparameters_for_that_evaluation_only(tmp_path):
    """``+agent.plan_mode=policy`` evaluates the same DC-MPC weights with the policy prior instead of MPPI."""
    overrides = [*TINY, "agent=dcmpc", *SMALL_PLANNER, "trainer.steps=600", "trainer.seed_steps=200"]
    train_script.run(compose_config([*overrides, f"run_dir={tmp_path}"]))
    base = [f"checkpoint={tmp_path}", "episodes=2", "video=false", "device=cpu", "threads=1"]
    mppi = eval_script.run(compose_config(base, config_name="eval"))
    policy = eval_script.run(compose_config([*base, "+agent.plan_mode=policy"], config_name="eval"))
    assert policy == eval_script.run(compose_config([*base, "+agent.plan_mode=policy"], config_name="eval"))
    assert policy["return_mean"] != mppi["return_mean"]
    # nothing of the change stuck to the checkpoint
    assert mppi == eval_script.run(compose_config(base, config_name="eval"))
    with pytest.raises(ValueError, match="not_a_key"):
        eval_script.run(compose_config([*base, "+agent.not_a_key=1"], config_name="eval"))
    with pytest.raises(CheckpointError, match="do not match"):
        eval_script.run(compose_config([*base, "+agent.actor_critic.mlp_dims=[16,16]"], config_name="eval"))
