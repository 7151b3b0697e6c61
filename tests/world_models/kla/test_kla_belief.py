"""KLA belief-state world model (world_models/kla/belief.py) and DC-MPC with ``world_model=kla``: the belief
against an independent filter, online vs batch filtering, variance behaviour, training, checkpoints, config
errors, the planner's uncertainty term and a learning test through the real trainer."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from conftest import random_windows, train_vs_random
from tensordict import TensorDict

from agents.dcmpc import DCMPCAgent, DCMPCConfig
from common.config import build_config
from training.setup import agent_settings, build_agent, build_env, compose_config
from world_models.kla import KLABeliefConfig, KLABeliefWorldModel, kla_scan_reference, posterior

F64 = torch.float64
OBS, ACT = 5, 2
WM_TINY = dict(belief_lanes=6, enc_mlp_dims=[16], dyn_mlp_dims=[16], reward_mlp_dims=[16], dec_mlp_dims=[16])
KLA_TINY = dict(
    name="kla", belief_lanes=8, burn_in=3, enc_mlp_dims=[32], dyn_mlp_dims=[32, 32], reward_mlp_dims=[32],
    dec_mlp_dims=[32],
)  # fmt: skip
AGENT_TINY = {
    "actor_critic": {"mlp_dims": [32, 32]},
    "optim": {"batch_size": 16},
    "planner": {"num_samples": 32, "num_elites": 8, "num_pi_trajs": 4, "iterations": 2},
}


def tiny_wm(dtype: torch.dtype = F64, **kw) -> KLABeliefWorldModel:
    torch.manual_seed(0)
    return KLABeliefWorldModel(OBS, ACT, KLABeliefConfig(**{**WM_TINY, **kw})).to(dtype)


def tiny_agent(wm: dict | None = None, **sections) -> DCMPCAgent:
    values = {k: {**v, **sections.pop(k, {})} for k, v in AGENT_TINY.items()}
    values.update(sections, world_model={**KLA_TINY, **(wm or {})})
    return DCMPCAgent(OBS, ACT, build_config(DCMPCConfig, values, "agent"), torch.device("cpu"))


def batch(agent: DCMPCAgent, seed: int = 0) -> TensorDict:
    return random_windows(agent.batch_size, agent.sample_horizon, OBS, ACT, seed)


# --------------------------------------------------------------------------- the belief
def test_belief_equals_an_independent_filter_on_the_encoder_outputs():
    """float64: the model's belief is the textbook scalar Kalman filter (reference loop) on (v, Λ)."""
    wm = tiny_wm()
    obs = torch.randn(3, 13, OBS, dtype=F64)
    out = wm.filter(obs)
    with torch.no_grad():
        v, prec = wm.measure(obs)
        a, p = wm.transition()
        lam, eta = kla_scan_reference(prec, prec * v, a, p)  # phi = Λ k², r = Λ v k with k = 1
    mean, var = posterior(lam, eta)
    torch.testing.assert_close(out.belief.mean, mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.belief.variance, var, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.z, torch.cat([mean, var.log()], -1), rtol=1e-10, atol=1e-12)
    # and the covariance form by hand for one lane: P⁻ = ā²P + p̄, K = P⁻/(P⁻ + 1/Λ), μ = μ⁻ + K(v − μ⁻)
    m, P = 0.0, 1.0
    for t in range(obs.shape[1]):
        p_minus = float(a[0]) ** 2 * P + float(p[0])
        k = p_minus / (p_minus + 1.0 / float(prec[1, t, 0]))
        m = float(a[0]) * m + k * (float(v[1, t, 0]) - float(a[0]) * m)
        P = (1 - k) * p_minus
        assert out.belief.mean[1, t, 0].item() == pytest.approx(m, rel=1e-9, abs=1e-12)
        assert out.belief.variance[1, t, 0].item() == pytest.approx(P, rel=1e-9)
    assert wm.split(out.z).variance.allclose(out.belief.variance)


def test_transition_is_ou_with_the_prior_as_stationary_law():
    wm = tiny_wm(belief_dt_min=0.1, belief_dt_max=0.5)
    a, p = wm.transition()
    assert ((a > 0) & (a < 1)).all() and (p > 0).all()
    assert a.min() >= np.exp(-0.5) - 1e-9 and a.max() <= np.exp(-0.1) + 1e-9
    torch.testing.assert_close(p / (1 - a**2), torch.ones_like(p))  # stationary variance 1 at init


def test_online_steps_equal_the_batch_filter():
    wm = tiny_wm()
    obs = torch.randn(2, 17, OBS, dtype=F64)
    obs[0, 6] = float("nan")  # a missing observation in the middle
    batch_out = wm.filter(obs)
    state = None
    for t in range(obs.shape[1]):
        z, state = wm.observe(obs[:, t], state)
        torch.testing.assert_close(z, batch_out.z[:, t], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(state.lam, batch_out.state.lam)
    # splitting the episode and carrying the state gives the same beliefs as one pass
    first = wm.filter(obs[:, :9])
    second = wm.filter(obs[:, 9:], first.state)
    torch.testing.assert_close(second.z, batch_out.z[:, 9:], rtol=1e-10, atol=1e-12)


def test_agent_acting_belief_equals_the_batch_filter_and_resets_per_episode():
    """The DC-MPC agent's carried belief after each ``act`` is the batch filter's belief on the episode so far."""
    torch.manual_seed(0)
    agent = tiny_agent(plan_mode="policy")
    obs = np.random.default_rng(0).standard_normal((12, OBS)).astype(np.float32)
    with torch.no_grad():
        ref = agent.wm.filter(torch.as_tensor(obs)[None])
    for eval_mode in (True, False):
        agent.begin_episode(3)
        assert agent.wm_state[eval_mode] is None
        for t, o in enumerate(obs):
            action = agent.act(o, eval_mode=eval_mode, step=0)
            mean, var = posterior(*agent.wm_state[eval_mode])
            torch.testing.assert_close(mean, ref.belief.mean[:, t], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(var, ref.belief.variance[:, t], rtol=1e-5, atol=1e-7)
            if eval_mode:  # no noise: the action is π of the *filtered* belief's latent
                with torch.no_grad():
                    np.testing.assert_allclose(action, agent.td3.pi(ref.z[:, t])[0].numpy(), atol=1e-5)
                    memoryless = agent.td3.pi(agent.wm.encode(torch.as_tensor(o)[None]))[0].numpy()
                if t > 0:
                    assert not np.allclose(action, memoryless, atol=1e-6)
    agent.begin_episode(4)
    assert agent.wm_state == {False: None, True: None}


def test_variance_shrinks_with_observations_and_grows_while_they_are_missing():
    wm = tiny_wm()
    o = torch.randn(1, 1, OBS, dtype=F64).expand(1, 12, OBS).clone()  # the same observation again and again
    var = wm.filter(o).belief.variance[0]  # [T, L]
    assert (var[0] < 1.0).all()  # one observation beats the prior N(0, 1)
    assert (var[1:] <= var[:-1] * (1 + 1e-12)).all() and (var[-1] < var[0]).all()
    masked = o.clone()
    masked[:, 4:9] = float("nan")
    vm = wm.filter(masked).belief.variance[0]
    torch.testing.assert_close(vm[:4], var[:4])
    assert (vm[4:9] > vm[3:8]).all()  # predict only: the belief relaxes towards the prior
    assert (vm[4:9] < 1.0).all()
    assert (vm[9] < vm[8]).all()  # observing again shrinks it
    mean = wm.filter(masked).belief.mean[0]
    a, _ = wm.transition()
    torch.testing.assert_close(mean[4], a * mean[3])  # skipped update: the mean only decays by ā
    # a missing observation gives no NaN in the loss gradients either
    cfg_b = dict(WM_TINY, burn_in=2, horizon=2)
    wm2 = tiny_wm(**{k: v for k, v in cfg_b.items() if k not in WM_TINY})
    b = TensorDict(
        {"obs": torch.randn(4, 5, OBS, dtype=F64), "action": torch.rand(4, 4, ACT, dtype=F64),
         "reward": torch.rand(4, 4, dtype=F64)}, batch_size=[4],
    )  # fmt: skip
    b["obs"][1, 1] = float("nan")
    b["obs"][2, 3] = float("nan")  # also inside the decoder's targets
    loss, _ = wm2.loss(b)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in wm2.parameters() if p.grad is not None)


def test_random_burn_in_reads_the_right_positions():
    """Row b filtered from offset s_b: its latents equal a filter over obs[b, s_b:] read at burn_in − s_b + j."""
    wm = tiny_wm(burn_in=4)
    obs = torch.randn(6, 9, OBS, dtype=F64)
    torch.manual_seed(3)
    z, belief = wm.filtered_window(obs, 3)
    torch.manual_seed(3)
    start = torch.randint(0, 5, (6,))
    assert len(set(start.tolist())) > 1
    for b in range(6):
        s = int(start[b])
        ref = wm.filter(obs[b : b + 1, s:]).z[0]
        torch.testing.assert_close(z[b], ref[4 - s : 4 - s + 3])
    z_fixed, _ = wm.filtered_window(obs, 3, random_start=False)
    torch.testing.assert_close(z_fixed, wm.filter(obs).z[:, 4:7])


# --------------------------------------------------------------------------- agent
def test_update_trains_every_part_and_uses_the_window_after_burn_in():
    torch.manual_seed(0)
    agent = tiny_agent(actor_critic={"actor_update_freq": 1})
    wm_cfg = agent.cfg.world_model
    assert agent.sample_horizon == wm_cfg.burn_in + max(wm_cfg.horizon, agent.cfg.actor_critic.nstep)
    before = {k: v.clone() for k, v in agent.nets.state_dict().items()}
    metrics = agent.update(batch(agent))
    after = agent.nets.state_dict()
    assert {"wm_loss", "consistency_loss", "reward_loss", "obs_loss", "critic_loss", "belief_var"} <= metrics.keys()
    assert np.isfinite(list(metrics.values())).all()
    for prefix in ("wm.encoder", "wm.transition.", "wm.dynamics", "wm.reward_head", "wm.decoder", "td3.actor.",
                   "td3.critic."):  # fmt: skip
        keys = [k for k in before if k.startswith(prefix)]
        assert keys and any(not torch.equal(before[k], after[k]) for k in keys), prefix
    # the world-model loss needs the burn-in part of the window
    short = TensorDict({k: v[:, : wm_cfg.horizon + 1] for k, v in batch(agent).items()}, batch_size=[16])
    with pytest.raises(ValueError, match="burn_in"):
        agent.wm.loss(short)


def test_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    agent = tiny_agent(wm={"random_burn_in": False}, optim={"wm_lr": 1e-3})
    b = batch(agent)
    first = agent.update(b)["wm_loss"]
    for _ in range(40):
        last = agent.update(b)["wm_loss"]
    assert last < 0.5 * first


def test_checkpoint_round_trip_gives_identical_actions():
    torch.manual_seed(0)
    agent = tiny_agent()
    for s in range(3):
        agent.update(batch(agent, seed=s))
    buf = io.BytesIO()
    torch.save(agent.state_dict(), buf)  # what the trainer's checkpoint writes
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    torch.manual_seed(123)
    clone = tiny_agent()
    assert not torch.equal(clone.wm.encoder[0].weight, agent.wm.encoder[0].weight)
    clone.load_state_dict(state)
    obs = np.random.default_rng(0).standard_normal((6, OBS)).astype(np.float32)
    for eval_mode in (False, True):
        acts = []
        for ag in (agent, clone):
            ag.begin_episode(7)
            torch.manual_seed(42)
            acts.append(np.stack([ag.act(o, eval_mode=eval_mode, step=0) for o in obs]))
        np.testing.assert_array_equal(acts[0], acts[1])
    torch.manual_seed(5)
    agent.update(batch(agent, seed=9))
    torch.manual_seed(5)
    clone.update(batch(clone, seed=9))
    for k, v in agent.nets.state_dict().items():
        assert torch.equal(v, clone.nets.state_dict()[k]), k


def test_uncertainty_is_the_predicted_variance_and_enters_the_plan_score():
    torch.manual_seed(0)
    agent = tiny_agent(planner={"caution": 0.5})
    assert agent.planner.cfg.caution == 0.5
    pm = agent.planning_model
    z, a = agent.wm.encode(torch.randn(4, OBS)), torch.rand(4, ACT) * 2 - 1
    with torch.no_grad():
        u = pm.uncertainty(z, a)
        torch.testing.assert_close(u, agent.wm.next(z, a)[:, 8:].exp().mean(-1))
        assert u.shape == (4,) and (u > 0).all()
        acts = torch.rand(4, agent.cfg.planner.horizon, ACT) * 2 - 1
        torch.manual_seed(1)
        with_u = agent.planner.estimate_value(z, acts, pm, unc_coef=-0.5)
        torch.manual_seed(1)
        without = agent.planner.estimate_value(z, acts, pm)
        zh, total = z, torch.zeros(4)
        for h in range(agent.cfg.planner.horizon):
            total += agent.cfg.planner.discount**h * pm.uncertainty(zh, acts[:, h])
            zh = pm.next(zh, acts[:, h])
    torch.testing.assert_close(with_u - without, -0.5 * total)
    agent.begin_episode(0)
    assert np.abs(agent.act(np.zeros(OBS, np.float32), eval_mode=True, step=0)).max() <= 1
    assert agent.act_info()["plan_uncertainty"] > 0  # evaluation reports it along the executed plan


@pytest.mark.parametrize(
    "field, value",
    [
        ("belief_lanes", 0),
        ("burn_in", -1),
        ("belief_dt_min", 0.0),
        ("belief_dt_max", 0.01),  # < belief_dt_min
        ("belief_p_init", 0.0),
        ("belief_min_obs_var", 0.0),
        ("obs_coef", -1.0),
        ("dec_mlp_dims", [0]),
        ("filter_backend", "cuda"),
    ],
)
def test_invalid_config_raises_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"^world_model: .*{field}"):
        build_config(DCMPCConfig, {"world_model": {"name": "kla", field: value}}, "agent")


def test_the_belief_model_supplies_the_planners_uncertainty():
    agent = tiny_agent(planner={"optimism": 1.0, "caution": 1.0})
    assert agent.has_uncertainty and (agent.planner.cfg.optimism, agent.planner.cfg.caution) == (1.0, 1.0)


def test_hydra_group_composes_for_dcmpc_and_iqrl():
    cfg = compose_config(["agent=dcmpc", "world_model=kla", "agent.size=small", "device=cpu"])
    env = build_env(cfg)
    agent = build_agent(cfg, env, torch.device("cpu"))
    assert isinstance(agent.wm, KLABeliefWorldModel) and agent.wm.lanes == 64
    assert agent.cfg.world_model.reward_bound == [0.0, 2.0] and agent.cfg.world_model.burn_in == 16
    cfg = compose_config(["agent=dcmpc", "device=cpu"])
    assert cfg.world_model.name == "dcwm"
    assert not isinstance(build_agent(cfg, env, torch.device("cpu")).wm, KLABeliefWorldModel)
    assert compose_config(["agent=iqrl"]).world_model.name == "iqrl"  # each agent picks its own default
    cfg = compose_config(["agent=iqrl", "world_model=kla", "agent.size=small"])
    assert isinstance(agent_settings(cfg).world_model, KLABeliefConfig)  # iQRL on the belief latent: allowed
    env.close()


# --------------------------------------------------------------------------- learning
@pytest.mark.slow
def test_kla_dcmpc_learns_inverted_pendulum_far_beyond_random(tmp_path):
    """Fixed seed, the real trainer, gym/InvertedPendulum-v5 capped at 300 steps (+1 per step while the pole is
    up; random drops it within ~5 steps). DC-MPC with the KLA belief world model, acting with MPPI over the
    belief latent, must hold the pole for tens of steps after 2k env steps (~90 s on one thread)."""
    cfg, trained, random_ret = train_vs_random(
        [
            "env=gym/InvertedPendulum-v5",
            "env_settings.max_episode_steps=300",
            "agent=dcmpc",
            "world_model=kla",
            "agent.size=small",
            "world_model.belief_lanes=32",
            "world_model.burn_in=4",
            "agent.optim.batch_size=64",
            "agent.optim.wm_lr=1.0e-4",  # pinned: the test's margin was measured with it
            "agent.exploration.episodes=30",
            "trainer.steps=2000",
            "trainer.seed_steps=500",
        ],
        tmp_path,
        "DC-MPC/KLA",
    )
    assert cfg.agent.plan_mode == "mppi" and cfg.world_model.name == "kla"
    assert random_ret < 20
    assert trained > max(10 * random_ret, random_ret + 50)
