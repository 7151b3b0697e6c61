"""iQRL: the consistency loss is what the paper intends, and the agent learns a real task."""

import pytest
import torch
from conftest import train_vs_random

from agents.iqrl import IQRLConfig
from common.config import build_config
from world_models.iqrl import IQRLModelConfig, IQRLWorldModel


def _batch(B=32, H=5, obs_dim=4, act_dim=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    from tensordict import TensorDict

    return TensorDict(
        {
            "obs": torch.randn(B, H + 1, obs_dim, generator=g),
            "action": torch.rand(B, H, act_dim, generator=g) * 2 - 1,
            "reward": torch.zeros(B, H),
            "terminated": torch.zeros(B, H),
        },
        batch_size=[B],
    )


def test_consistency_loss_is_negative_discounted_cosine():
    torch.manual_seed(0)
    cfg = IQRLModelConfig(latent_groups=4, enc_mlp_dims=[16], dyn_mlp_dims=[16], horizon=3, rho=0.5)
    wm = IQRLWorldModel(4, 2, cfg)
    batch = _batch(H=3)
    loss, _ = wm.loss(batch)
    # Independent recomputation of -(1/H) sum_h rho^h cos(z_{h+1}, target_{h+1}).
    with torch.no_grad():
        z = wm.fsq(wm.encoder(batch["obs"][:, 0]))
        expected = 0.0
        for h in range(3):
            z = wm.fsq(z + wm.dynamics(torch.cat([z, batch["action"][:, h]], -1)))
            tgt = wm.fsq(wm.target_encoder(batch["obs"][:, h + 1]))
            expected += -(0.5**h) * torch.nn.functional.cosine_similarity(z, tgt, dim=-1).mean() / 3
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)


def test_training_the_representation_raises_similarity_and_moves_only_encoder_side():
    torch.manual_seed(0)
    cfg = IQRLModelConfig(latent_groups=8, enc_mlp_dims=[32], dyn_mlp_dims=[32], horizon=3)
    wm = IQRLWorldModel(4, 2, cfg)
    opt = torch.optim.Adam(list(wm.encoder.parameters()) + list(wm.dynamics.parameters()), lr=3e-3)
    batch = _batch(H=3)
    target_before = [p.clone() for p in wm.target_encoder.parameters()]
    first, m0 = wm.loss(batch)
    for _ in range(150):
        loss, m = wm.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert m["cos_sim_h1"] > m0["cos_sim_h1"] + 0.2 and loss.item() < first.item() - 0.2
    # The target is only moved by EMA, never by gradients.
    assert all(torch.equal(a, b) for a, b in zip(target_before, wm.target_encoder.parameters()))
    wm.after_update()  # the EMA step
    assert not all(torch.equal(a, b) for a, b in zip(target_before, wm.target_encoder.parameters()))


@pytest.mark.parametrize(
    "values, path, field",
    [
        ({"optim": {"batch_size": 0}}, "agent.optim", "batch_size"),
        ({"actor_critic": {"q_sample_size": 6}}, "agent.actor_critic", "q_sample_size"),
        ({"world_model": {"name": "iqrl", "horizon": 0}}, "world_model", "horizon"),
        ({"world_model": {"name": "iqrl", "fsq_levels": [1]}}, "world_model", "levels"),
    ],
)
def test_invalid_settings_name_the_key_path(values, path, field):
    with pytest.raises(ValueError, match=rf"^{path}: .*{field}"):
        build_config(IQRLConfig, values, "agent")


@pytest.mark.slow
def test_iqrl_learns_pendulum_far_beyond_random(tmp_path):
    """A fixed seed, 4k env steps on gym/Pendulum-v1: random scores ~-1200, a swing-up ~-200."""
    _, trained, random_ret = train_vs_random(
        [
            "env=gym/Pendulum-v1",
            "agent=iqrl",
            "agent.size=small",
            "agent.exploration.episodes=20",
            "trainer.steps=4000",
            "trainer.seed_steps=1000",
        ],
        tmp_path,
        "iQRL",
    )
    assert trained > random_ret + 600
    assert trained > -500
