"""DC-MPC agent (agents/dcmpc.py): config validation, planning model, acting, the update's gradient
paths, checkpoint round trip, and a learning test through the real trainer."""

from __future__ import annotations

import copy
import io
import itertools

import numpy as np
import pytest
import torch
from conftest import random_windows, train_vs_random
from tensordict import TensorDict

from agents.dcmpc import DCMPCAgent, DCMPCConfig, DCMPCPlanningModel
from common.config import build_config
from training.setup import agent_settings, build_agent, build_env, compose_config

OBS, ACT = 5, 2
TINY = {
    "world_model": {"name": "dcwm", "latent_groups": 8, "enc_mlp_dims": [32], "dyn_mlp_dims": [32, 32],
                    "reward_mlp_dims": [32]},
    "actor_critic": {"mlp_dims": [32, 32]},
    "optim": {"batch_size": 16},
    "planner": {"num_samples": 32, "num_elites": 8, "num_pi_trajs": 4, "iterations": 2},
}  # fmt: skip


def merged(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merged(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def tiny_config(**kw) -> DCMPCConfig:
    return build_config(DCMPCConfig, merged(TINY, kw), "agent")


def tiny_agent(**kw) -> DCMPCAgent:
    return DCMPCAgent(OBS, ACT, tiny_config(**kw), torch.device("cpu"))


def batch(agent: DCMPCAgent, seed: int = 0) -> TensorDict:
    return random_windows(agent.batch_size, agent.sample_horizon, OBS, ACT, seed)


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "section, field, value",
    [
        ("world_model", "fsq_levels", []),
        ("world_model", "fsq_levels", [1, 5]),
        ("world_model", "horizon", 0),
        ("world_model", "reward_bound", [1.0, 1.0]),
        ("planner", "horizon", 0),
        ("planner", "num_elites", 600),  # > num_samples + num_pi_trajs = 536
        ("planner", "iterations", 0),
        ("planner", "discount", 1.5),
        ("planner", "min_std", 0.0),
        ("optim", "batch_size", 0),
        ("optim", "batch_size", -3),
        ("optim", "wm_lr", 0.0),
        ("actor_critic", "q_sample_size", 6),
        ("exploration", "episodes", -1),
        (None, "plan_mode", "greedy"),
    ],
)
def test_invalid_config_raises_naming_the_key_path(section, field, value):
    values = {field: value} if section is None else {section: {field: value}}
    if section == "world_model":
        values["world_model"]["name"] = "dcwm"
    path = "agent" if section is None else ("world_model" if section == "world_model" else f"agent.{section}")
    with pytest.raises(ValueError, match=rf"^{path}: .*{field}"):
        build_config(DCMPCConfig, values, "agent")


def test_unknown_keys_and_names_list_the_valid_ones():
    unknown = r"agent.planner: unknown key\(s\) \['num_sample'\]; valid keys: .*num_samples"
    with pytest.raises(ValueError, match=unknown):
        build_config(DCMPCConfig, {"planner": {"num_sample": 3}}, "agent")
    with pytest.raises(ValueError, match=r"unknown world model 'dcmw'; valid world models: \['contextual', 'dcwm'"):
        build_config(DCMPCConfig, {"world_model": {"name": "dcmw"}}, "agent")
    iqrl = {"name": "iqrl", "latent_groups": 8, "enc_mlp_dims": [32], "dyn_mlp_dims": [32]}
    with pytest.raises(ValueError, match="predicts no reward"):
        DCMPCAgent(OBS, ACT, build_config(DCMPCConfig, {**TINY, "world_model": iqrl}, "agent"), torch.device("cpu"))
    with pytest.raises(ValueError, match=r"agent.planner settings .*'optimism': 0.5.* need a world model with an unc"):
        tiny_agent(planner={"optimism": 0.5})  # dcwm's default estimator is none


def test_invalid_config_through_hydra_names_the_key():
    cfg = compose_config(["agent=dcmpc", "agent.size=small", "agent.planner.num_elites=1000"])
    with pytest.raises(ValueError, match="agent.planner: .*num_elites"):
        agent_settings(cfg)
    cfg = compose_config(["agent=dcmpc", "+agent.planner.plann_horizon=3"])
    with pytest.raises(ValueError, match="plann_horizon"):  # a typo is an unknown key, not ignored
        agent_settings(cfg)


def test_defaults_are_the_paper_values():
    c = DCMPCConfig()
    wm = c.world_model
    assert (wm.name, wm.latent_groups, wm.fsq_levels, wm.horizon, wm.rho) == ("dcwm", 512, [5, 3], 5, 0.9)
    m = c.planner
    assert (m.horizon, m.iterations, m.num_samples, m.num_elites, m.num_pi_trajs) == (3, 6, 512, 64, 24)
    assert (m.min_std, m.max_std, m.temperature, m.discount) == (0.05, 2.0, 0.5, 0.9)
    assert (m.optimism, m.caution, m.prior_fallback, wm.uncertainty.estimator) == (0.0, 0.0, False, "none")
    ac, o = c.actor_critic, c.optim
    assert (ac.num_critics, ac.q_sample_size, ac.actor_update_freq, o.wm_lr, o.lr, o.batch_size) == (
        5, 2, 2, 1e-4, 3e-4, 512,
    )  # fmt: skip


def test_yaml_presets_resolve_and_build():
    for size, groups, samples in [("paper", 512, 512), ("small", 64, 128)]:
        cfg = compose_config(["agent=dcmpc", f"agent.size={size}", "device=cpu"])
        env = build_env(cfg)
        agent = build_agent(cfg, env, torch.device("cpu"))
        env.close()
        assert agent.cfg.world_model.latent_groups == groups and agent.cfg.planner.num_samples == samples
        assert agent.cfg.world_model.reward_bound == [0.0, 2.0]  # auto on DMC: [0, action_repeat]
    cfg = compose_config(["agent=dcmpc", "env=gym/Pendulum-v1", "device=cpu"])
    env = build_env(cfg)
    assert build_agent(cfg, env, torch.device("cpu")).cfg.world_model.reward_bound is None  # auto elsewhere
    env.close()
    # per-task values match the canonical env name (dmc/cup-catch is dmc/ball_in_cup-catch)
    assert agent_settings(compose_config(["env=dmc/reacher-easy"])).actor_critic.nstep == 3
    assert agent_settings(compose_config(["env=dmc/cartpole-balance"])).actor_critic.nstep == 1
    cfg = compose_config(["world_model=kla", "agent.size=small"])
    assert agent_settings(cfg).world_model.belief_lanes == 64


def test_a_world_model_plugs_in_by_config_alone():
    """A test-only world model (tests/linear_world_model.py, not registered anywhere) drives DC-MPC through
    ``world_model.name=<module>:<Class>``: the agent never asks which model it holds."""
    cfg = compose_config(
        ["~world_model", "+world_model.name=linear_world_model:LinearWorldModel", "+world_model.latent_dim=6",
         "agent.size=small", "env=gym/Pendulum-v1", "device=cpu"]
    )  # fmt: skip
    env = build_env(cfg)
    agent = build_agent(cfg, env, torch.device("cpu"))
    assert type(agent.wm).__name__ == "LinearWorldModel" and agent.wm.latent_dim == 6
    agent.begin_episode(0)
    obs, _ = env.reset(seed=0)
    a = agent.act(obs, eval_mode=False, step=0)
    assert a.shape == (1,) and np.abs(a).max() <= 1
    assert agent.wm.observed == 1  # the agent went through the model's observe
    metrics = agent.update(random_windows(agent.batch_size, agent.sample_horizon, 3, 1))
    assert "linear_wm_loss" in metrics and np.isfinite(metrics["critic_loss"])
    env.close()


# --------------------------------------------------------------------------- planning model
def test_prior_trajectories_get_one_noise_row_each():
    torch.manual_seed(0)
    agent = tiny_agent()
    pm = agent.planning_model
    z = agent.wm.encode(torch.randn(1, OBS)).expand(24, -1)
    pm.prior_std = 0.0
    a0 = pm.policy(z)
    torch.testing.assert_close(a0, agent.td3.pi(z))
    assert torch.equal(a0, a0[:1].expand_as(a0))
    pm.prior_std = 0.3
    a = pm.policy(z)
    assert a.shape == (24, ACT)
    assert len({tuple(r) for r in a.tolist()}) == 24  # every row its own noise (fault 6 of the public code)
    assert a.abs().max() <= 1.0
    # and inside a real plan (eval mode too): every prior trajectory gets its own noise at every step
    calls = []

    def recording_policy(zr):
        out = DCMPCPlanningModel.policy(pm, zr)
        calls.append(out)
        return out

    pm.policy = recording_policy
    agent.begin_episode(0)  # σ_0 = 1
    agent.act(np.zeros(OBS, np.float32), eval_mode=True, step=0)
    assert len(calls) == agent.cfg.planner.horizon
    for out in calls:
        assert out.shape == (agent.cfg.planner.num_pi_trajs, ACT)
        assert len({tuple(r) for r in out.tolist()}) == agent.cfg.planner.num_pi_trajs


def test_planning_value_is_mean_of_two_of_the_critics_at_pi():
    torch.manual_seed(0)
    agent = tiny_agent()
    with torch.no_grad():
        z = agent.wm.encode(torch.randn(7, OBS))
        v = agent.planning_model.value(z)
        q = agent.td3.q(z, agent.td3.pi(z))  # [5, 7]
    pair_means = [q[list(p)].mean(0) for p in itertools.combinations(range(5), 2)]
    assert any(torch.allclose(v, m, atol=1e-6) for m in pair_means)
    assert not torch.allclose(v, q.mean(0), atol=1e-6)  # not the mean of all five


def test_planning_rollout_uses_expected_codes():
    torch.manual_seed(0)
    agent = tiny_agent()
    z, a = agent.wm.encode(torch.randn(3, OBS)), torch.rand(3, ACT) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(agent.planning_model.next(z, a), agent.wm.expected_code(agent.wm.next_logits(z, a)))
        torch.testing.assert_close(agent.planning_model.reward(z, a), agent.wm.reward(z, a))


# --------------------------------------------------------------------------- acting
def test_act_shapes_noise_and_warm_start():
    torch.manual_seed(0)
    agent = tiny_agent()
    obs = np.random.default_rng(0).standard_normal(OBS).astype(np.float32)
    agent.begin_episode(0)
    a = agent.act(obs, eval_mode=False, step=0)
    assert a.shape == (ACT,) and a.dtype == np.float32 and np.abs(a).max() <= 1
    assert agent.planner.prev_mean(eval_mode=False) is not None
    agent.begin_episode(1)
    assert agent.planner.prev_mean(eval_mode=False) is None
    # exploration noise: σ_t = 1 at episode 0, 0.1 after explore_episodes
    agent.begin_episode(0)
    assert agent.explore_std() == pytest.approx(1.0)
    agent.begin_episode(agent.cfg.exploration.episodes)
    assert agent.explore_std() == pytest.approx(0.1)


def test_policy_mode_acts_with_the_prior_and_noise_only_in_training():
    torch.manual_seed(0)
    agent = tiny_agent(plan_mode="policy")
    obs = np.random.default_rng(0).standard_normal(OBS).astype(np.float32)
    agent.begin_episode(0)
    with torch.no_grad():
        pi = agent.td3.pi(agent.wm.encode(torch.as_tensor(obs)[None]))[0].numpy()
    np.testing.assert_allclose(agent.act(obs, eval_mode=True, step=0), pi, atol=1e-6)
    train_a = np.stack([agent.act(obs, eval_mode=False, step=0) for _ in range(200)])
    assert train_a.std(0).min() > 0.3  # σ_0 = 1, clipped to [-1, 1]
    assert agent.planner.prev_mean(eval_mode=False) is None  # the planner was not used


def test_planning_beats_a_bad_policy_prior_on_the_model():
    """With a known reward model (r = -|a - 0.5|² per step) the planner finds a ≈ 0.5 although the
    policy prior always proposes -0.9: the executed action comes from planning, not the prior."""
    torch.manual_seed(0)
    agent = tiny_agent(planner={"num_samples": 256, "num_elites": 32, "iterations": 4})

    class Model:
        def next(self, z, a):
            return z

        def reward(self, z, a):
            return -((a - 0.5) ** 2).sum(-1)

        def value(self, z):
            return torch.zeros(z.shape[0])

        def policy(self, z):
            return torch.full((z.shape[0], ACT), -0.9)

    agent.planning_model = Model()
    a = agent.act(np.zeros(OBS, np.float32), eval_mode=True, step=0)
    np.testing.assert_allclose(a, [0.5, 0.5], atol=0.1)


# --------------------------------------------------------------------------- update
def test_only_the_world_model_loss_reaches_the_encoder():
    """The encoder's gradient after a full agent update equals that of the world-model loss alone."""
    torch.manual_seed(0)
    agent = tiny_agent()
    reference = copy.deepcopy(agent)
    b = batch(agent)
    torch.manual_seed(1)
    metrics = agent.update(b)
    torch.manual_seed(1)
    loss, _ = reference.wm.loss(b)
    reference.wm_opt.zero_grad()
    loss.backward()
    for (n, p), q in zip(agent.wm.encoder.named_parameters(), reference.wm.encoder.parameters()):
        assert torch.equal(p.grad, q.grad), n
    assert {"wm_loss", "consistency_loss", "reward_loss", "critic_loss", "explore_std"} <= metrics.keys()
    assert np.isfinite(list(metrics.values())).all()
    # the TD3 optimisers hold no world-model parameter
    wm_ids = {id(p) for p in agent.wm.parameters()}
    td3_ids = {
        id(p) for opt in (agent.td3.actor_opt, agent.td3.critic_opt) for g in opt.param_groups for p in g["params"]
    }
    assert not wm_ids & td3_ids
    assert wm_ids == {id(p) for g in agent.wm_opt.param_groups for p in g["params"]}


def test_update_changes_all_trained_parts():
    torch.manual_seed(0)
    agent = tiny_agent(actor_critic={"actor_update_freq": 1})
    before = {k: v.clone() for k, v in agent.nets.state_dict().items()}
    agent.update(batch(agent))
    after = agent.nets.state_dict()
    for prefix in ("wm.encoder", "wm.dynamics", "wm.reward_head", "td3.actor.", "td3.critic.", "td3.critic_target"):
        keys = [k for k in before if k.startswith(prefix) and before[k].is_floating_point()]
        assert keys and any(not torch.equal(before[k], after[k]) for k in keys), prefix


def test_diagnostics():
    torch.manual_seed(0)
    agent = tiny_agent()
    d = agent.diagnostics(torch.randn(256, OBS))
    assert 0 < d["code_usage"] <= 1 and 1 <= d["rank@0.1"] <= 16


# --------------------------------------------------------------------------- checkpoint
def test_checkpoint_round_trip_gives_identical_actions():
    torch.manual_seed(0)
    agent = tiny_agent()
    for s in range(3):
        agent.update(batch(agent, seed=s))
    agent.begin_episode(7)
    buf = io.BytesIO()
    torch.save(agent.state_dict(), buf)  # what the trainer's checkpoint writes
    buf.seek(0)
    state = torch.load(buf, weights_only=True)

    torch.manual_seed(123)  # a new agent with different initial weights
    clone = tiny_agent()
    assert not torch.equal(clone.wm.encoder[0].weight, agent.wm.encoder[0].weight)
    clone.load_state_dict(state)
    clone.begin_episode(7)
    agent.begin_episode(7)
    assert clone.explore_std() == agent.explore_std() < 1.0
    obs = np.random.default_rng(0).standard_normal((6, OBS)).astype(np.float32)
    for eval_mode in (False, True):
        torch.manual_seed(42)
        a = [agent.act(o, eval_mode=eval_mode, step=0) for o in obs]
        torch.manual_seed(42)
        b = [clone.act(o, eval_mode=eval_mode, step=0) for o in obs]
        np.testing.assert_array_equal(np.stack(a), np.stack(b))
    # optimiser states travel too: one more identical update on both gives identical weights
    torch.manual_seed(5)
    agent.update(batch(agent, seed=9))
    torch.manual_seed(5)
    clone.update(batch(clone, seed=9))
    for k, v in agent.nets.state_dict().items():
        assert torch.equal(v, clone.nets.state_dict()[k]), k


# --------------------------------------------------------------------------- learning
@pytest.mark.slow
def test_dcmpc_learns_inverted_pendulum_far_beyond_random(tmp_path):
    """Fixed seed, the real trainer, gym/InvertedPendulum-v5 capped at 300 steps (+1 per step while the
    pole is up): a uniform random policy drops the pole within ~5 steps; DC-MPC (planning) must hold it
    for tens to hundreds of steps after 3k env steps. Pendulum-v1 and
    dmc/cartpole-balance need far more steps before *planning* beats random by a wide margin at the
    CPU size, so they would not fit the CI budget."""
    cfg, trained, random_ret = train_vs_random(
        [
            "env=gym/InvertedPendulum-v5",
            "env_settings.max_episode_steps=300",
            "agent=dcmpc",
            "agent.size=small",
            "agent.exploration.episodes=30",  # episodes are short (tens of steps) early on
            "trainer.steps=3000",
            "trainer.seed_steps=500",
        ],
        tmp_path,
        "DC-MPC",
    )
    assert cfg.agent.plan_mode == "mppi"  # the planner acted, not the policy prior alone
    assert random_ret < 20
    assert trained > max(10 * random_ret, random_ret + 50)
