"""DC-MPC planning with world-model uncertainty: off means bit-identical training, caution touches evaluation
only, optimism changes training, the evaluation fallback to the prior, settings refused at start-up naming the
key, and the mean uncertainty along executed plans in eval.csv and eval.py's per-episode table."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from conftest import SMALL_PLANNER, TINY

import eval as eval_script
import train as train_script
from agents.dcmpc import DCMPCAgent, DCMPCConfig
from common.config import build_config
from training.checkpoint import load_checkpoint
from training.setup import compose_config

OBS, ACT = 5, 2
SMALL = [
    "agent=dcmpc",
    *SMALL_PLANNER,
    "trainer.steps=600",
    "trainer.seed_steps=200",
    "trainer.eval_every=200",
]


def short_run(run_dir, *extra: str) -> tuple[dict, list[str], list[dict]]:
    train_script.run(compose_config([*TINY, *SMALL, *extra, f"run_dir={run_dir}"]))
    nets = load_checkpoint(run_dir, load_buffer=False).state["agent"]["nets"]
    with open(run_dir / "train.csv") as f:
        returns = [r["episode_return"] for r in csv.DictReader(f)]
    with open(run_dir / "eval.csv") as f:
        evals = list(csv.DictReader(f))
    return nets, returns, evals


@pytest.mark.slow
def test_uncertainty_off_trains_bit_identically_and_caution_touches_evaluation_only(tmp_path):
    base_nets, base_returns, base_evals = short_run(tmp_path / "off")
    # An estimator that builds no weights, with caution: evaluation plans change, training does not.
    est = ["world_model.uncertainty.estimator=entropy"]
    nets, returns, evals = short_run(tmp_path / "caution", *est, "agent.planner.caution=1.0")
    assert returns == base_returns
    assert nets.keys() == base_nets.keys() and all(torch.equal(nets[k], base_nets[k]) for k in nets)
    assert [float(r["plan_uncertainty"]) > 0 for r in evals] == [True] * 3
    assert "plan_uncertainty" not in base_evals[0]
    # Optimism shapes the training plans: the same seed now learns different weights.
    opt_nets, _, _ = short_run(tmp_path / "optimism", *est, "agent.planner.optimism=1.0")
    assert any(not torch.equal(opt_nets[k], base_nets[k]) for k in base_nets)

    # eval.py prints the mean uncertainty along each episode's executed plans
    base = [f"checkpoint={tmp_path / 'caution'}", "episodes=2", "video=false", "device=cpu", "threads=1"]
    out = eval_script.run(compose_config([*base, "+agent.planner.prior_fallback=true"], config_name="eval"))
    assert out["plan_uncertainty"] > 0
    with pytest.raises(ValueError, match=r"agent.planner settings .*'caution': 1.0.* need a world model with an unc"):
        eval_script.run(
            compose_config([f"checkpoint={tmp_path / 'off'}", "+agent.planner.caution=1.0"], config_name="eval")
        )


def test_eval_table_prints_the_plan_uncertainty(tmp_path, capsys):
    train_script.run(
        compose_config(
            [*TINY, *SMALL, "trainer.steps=400", "world_model.uncertainty.estimator=entropy", f"run_dir={tmp_path}"]
        )
    )
    capsys.readouterr()
    args = [f"checkpoint={tmp_path}", "episodes=2", "video=false", "device=cpu", "threads=1"]
    eval_script.run(compose_config(args, config_name="eval"))
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if "plan_uncertainty" in line)
    rows = [line.split() for line in lines[header + 1 : header + 3]]
    assert [r[0] for r in rows] == ["0", "1"] and all(float(r[3]) > 0 for r in rows)


TINY_AGENT = {
    "world_model": {"name": "dcwm", "latent_groups": 8, "enc_mlp_dims": [32], "dyn_mlp_dims": [32, 32],
                    "reward_mlp_dims": [32], "uncertainty": {"estimator": "entropy"}},
    "actor_critic": {"mlp_dims": [32, 32]},
    "optim": {"batch_size": 16},
    "planner": {"num_samples": 32, "num_elites": 8, "num_pi_trajs": 4, "iterations": 2, "prior_fallback": True},
}  # fmt: skip


@pytest.mark.parametrize("prior_is_certain", [True, False])
def test_prior_fallback_acts_with_the_prior_when_its_rollout_is_less_uncertain(prior_is_certain):
    torch.manual_seed(0)
    agent = DCMPCAgent(OBS, ACT, build_config(DCMPCConfig, TINY_AGENT, "agent"), torch.device("cpu"))
    pi, wm = agent.td3.pi, agent.wm

    def next_and_uncertainty(z, a):  # zero exactly along the prior, positive elsewhere (or the reverse)
        gap = (a - pi(z)).abs().sum(-1)
        return wm.next(z, a), (gap if prior_is_certain else 1.0 / (1.0 + gap))

    wm.next_and_uncertainty = next_and_uncertainty
    obs = np.random.default_rng(0).standard_normal(OBS).astype(np.float32)
    agent.begin_episode(0)
    a = agent.act(obs, eval_mode=True, step=0)
    with torch.no_grad():
        z, _ = wm.observe(torch.as_tensor(obs).reshape(1, -1))
        prior_action = pi(z)[0].numpy()
        plan_action = agent.planner.last_plan[0, 0].clamp(-1, 1).numpy()
    info = agent.act_info()
    assert info["prior_fallback"] == float(prior_is_certain)
    np.testing.assert_array_equal(a, prior_action if prior_is_certain else plan_action)
    assert not np.array_equal(prior_action, plan_action)
    if prior_is_certain:
        assert info["plan_uncertainty"] == 0.0


def test_settings_that_need_an_estimate_are_refused_without_one():
    for key, value in (("optimism", 0.5), ("caution", 0.5), ("prior_fallback", True)):
        wm = {k: v for k, v in TINY_AGENT["world_model"].items() if k != "uncertainty"}  # estimator: none
        cfg = build_config(DCMPCConfig, {"planner": {key: value}, "world_model": wm}, "agent")
        with pytest.raises(ValueError, match=rf"agent.planner settings .*'{key}': {value}.* need a world model"):
            DCMPCAgent(OBS, ACT, cfg, torch.device("cpu"))
