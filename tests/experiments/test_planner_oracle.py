"""training/planner_oracle.py (the oracle of benchmarks/planner_oracle.py): the simulator-scored J must equal an
independent replay of the same actions in a second environment, and scoring candidates must leave the episode's
physics exactly where it was."""

from __future__ import annotations

import numpy as np
import torch

from experiments.planner_oracle import real_value_estimator
from training.setup import build_agent, build_env, compose_config


def test_real_j_matches_an_independent_replay_and_restores_the_state():
    cfg = compose_config(["env=dmc/reacher-easy", "agent=dcmpc", "agent.size=small", "device=cpu"])
    env, twin = build_env(cfg), build_env(cfg)
    agent = build_agent(cfg, env, torch.device("cpu"))
    # the planner's value draws 2 random critics per call; use all of them so both sides see one function
    agent.td3.q_mean_random = lambda z, a: agent.td3.q(z, a).mean(0)
    obs, _ = env.reset(seed=7)
    twin.reset(seed=7)
    for _ in range(5):  # move off the initial state so velocities are non-zero
        a = np.full(2, 0.8, dtype=np.float32)
        obs, *_ = env.step(a)
        twin.step(a)
    physics = env.unwrapped.dm_env.physics
    before = physics.get_state().copy()

    g = torch.Generator().manual_seed(0)
    horizon, rho = agent.planner.cfg.horizon, agent.planner.cfg.discount
    actions = torch.rand(4, horizon, 2, generator=g) * 2 - 1
    z = agent.wm.encode(torch.as_tensor(obs).reshape(1, -1)).expand(4, -1)
    with torch.no_grad():
        j = real_value_estimator(agent, env)(z, actions, agent.planning_model)

    assert np.array_equal(physics.get_state(), before)
    twin_physics = twin.unwrapped.dm_env.physics
    start = twin_physics.get_state().copy()
    for i in (0, 3):
        twin_physics.set_state(start)
        twin_physics.forward()  # set_state alone leaves derived quantities stale for the next step
        ret, weight = 0.0, 1.0
        for h in range(horizon):  # the wrapper's step sums the action repeat
            o, r, *_ = twin.step(actions[i, h].numpy())
            ret += weight * r
            weight *= rho
        with torch.no_grad():
            z_h = agent.wm.encode(torch.as_tensor(o).reshape(1, -1))
            want = ret + weight * float(agent.planning_model.value(z_h)[0])
            got = float(real_value_estimator(agent, env)(z[:1], actions[i : i + 1], agent.planning_model)[0])
        assert abs(got - want) < 1e-4, (i, got, want)
    assert j.shape == (4,) and torch.isfinite(j).all()


def test_the_oracle_is_a_drop_in_for_the_planners_estimator():
    """Planning with the oracle in place of the model rollout goes through ``MPPIPlanner.plan`` unchanged."""
    cfg = compose_config(
        ["env=dmc/reacher-easy", "agent=dcmpc", "agent.size=small", "device=cpu", "agent.planner.num_samples=8",
         "agent.planner.num_pi_trajs=2", "agent.planner.num_elites=4", "agent.planner.iterations=1"]
    )  # fmt: skip
    env = build_env(cfg)
    agent = build_agent(cfg, env, torch.device("cpu"))
    agent.planner.estimate_value = real_value_estimator(agent, env)
    obs, _ = env.reset(seed=3)
    agent.begin_episode(0)
    for eval_mode in (False, True):
        a = agent.act(obs, eval_mode=eval_mode, step=0)
        assert a.shape == (2,) and np.abs(a).max() <= 1
