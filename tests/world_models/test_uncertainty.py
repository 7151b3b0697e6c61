"""DCWM's uncertainty estimators (world_models/uncertainty.py): each checked against a direct computation,
the ensemble's members in one batched pass equal to a loop over members, estimators never touching the main
model's gradients, the SFR estimator rebuilt on schedule and restored by a checkpoint, and bad settings refused
naming the key."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from common.config import build_config
from common.nn import EnsembleLayerNorm, EnsembleLinear
from tests.world_models.test_dcwm import ACT, OBS, linear_system_batch, random_batch
from world_models.dcwm import DCWMConfig, DCWorldModel
from world_models.uncertainty import UncertaintyConfig


def make(estimator: str, seed: int = 0, **unc) -> DCWorldModel:
    torch.manual_seed(seed)
    cfg = DCWMConfig(
        latent_groups=8,
        enc_mlp_dims=[32],
        dyn_mlp_dims=[32, 32],
        reward_mlp_dims=[32],
        horizon=3,
        uncertainty=UncertaintyConfig(estimator=estimator, ensemble_mlp_dims=[32], **unc),
    )
    return DCWorldModel(OBS, ACT, cfg)


def inputs(wm: DCWorldModel, n: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return wm.encode(torch.randn(n, OBS, generator=g)), torch.rand(n, ACT, generator=g) * 2 - 1


def test_none_reports_nothing_and_builds_no_extra_weights():
    wm, ent = make("none"), make("entropy")
    assert wm.uncertainty(*inputs(wm)) is None and wm.ensemble is None and wm.reward_sfr is None
    # same init stream: an estimator without weights leaves every weight as it was
    for (k, v), (k2, v2) in zip(wm.state_dict().items(), ent.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)


def test_entropy_is_the_exact_next_code_entropy():
    wm = make("entropy")
    z, a = inputs(wm)
    with torch.no_grad():
        u = wm.uncertainty(z, a)
        p = torch.softmax(wm.next_logits(z, a), dim=1)  # [N, K, G]
        want = torch.stack(
            [
                torch.stack([-sum(p[i, k, g] * math.log(p[i, k, g]) for k in range(wm.num_codes)) for g in range(8)])
                for i in range(z.shape[0])
            ]
        ).mean(-1)
    torch.testing.assert_close(u, want.float(), rtol=1e-5, atol=1e-6)
    assert (u > 0).all() and (u <= math.log(wm.num_codes) + 1e-6).all()
    with torch.no_grad():  # a uniform next-code distribution has the largest entropy, log K
        wm.dynamics[-1].weight.zero_()
        wm.dynamics[-1].bias.zero_()
        torch.testing.assert_close(wm.uncertainty(z, a), torch.full((6,), math.log(wm.num_codes)))


def test_ensemble_disagreement_equals_a_loop_over_members():
    wm = make("ensemble", ensemble_size=4)
    z, a = inputs(wm)
    x = torch.cat([z, a], -1)
    with torch.no_grad():
        z_std, r_std = wm.ensemble.disagreement(x)
        latents, rewards = [], []
        for e in range(4):  # member e by hand: its slice of every layer, in plain torch ops
            h = x
            for layer in wm.ensemble.net.net:
                if isinstance(layer, EnsembleLinear):
                    h = h @ layer.weight[e] + layer.bias[e, 0]
                elif isinstance(layer, EnsembleLayerNorm):
                    h = F.layer_norm(h, h.shape[-1:]) * layer.weight[e, 0] + layer.bias[e, 0]
                else:
                    h = layer(h)
            latents.append(h[:, :-1])
            rewards.append(wm.squash_reward(h[:, -1]))
        want_z = torch.stack(latents).var(0).mean(-1).sqrt()
        want_r = torch.stack(rewards).std(0)
    assert latents[0].shape == (6, wm.latent_dim)
    torch.testing.assert_close(z_std, want_z, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(r_std, want_r, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(wm.uncertainty(z, a), want_z + want_r, rtol=1e-5, atol=1e-6)
    assert (z_std > 0).all() and (r_std > 0).all()


def test_identical_members_do_not_disagree():
    wm = make("ensemble", ensemble_size=3)
    with torch.no_grad():
        for p in wm.ensemble.parameters():
            p.copy_(p[:1].expand_as(p))
    u = wm.uncertainty(*inputs(wm))
    assert u.abs().max().item() < 1e-5


def test_estimators_leave_the_main_models_gradients_alone():
    """The estimator's heads read detached latents: the encoder's, dynamics' and reward head's gradients are
    those of the plain loss."""
    batch = random_batch()
    plain = make("none")
    grads = {}
    for est in ("ensemble", "sfr"):
        wm = make(est, sfr_inducing=8, sfr_memory=64)
        wm.load_state_dict(plain.state_dict(), strict=False)
        for m in (plain, wm):
            m.zero_grad()
            m.loss(batch, generator=torch.Generator().manual_seed(0))[0].backward()
        grads = {n: p.grad for n, p in plain.named_parameters()}
        for n, p in wm.named_parameters():
            if n in grads:
                assert torch.equal(p.grad, grads[n]), (est, n)
            elif n.startswith("ensemble."):
                assert p.grad is not None and p.grad.abs().sum() > 0
            else:  # the SFR's frozen snapshot of the reward head
                assert n.startswith("reward_sfr.sfr.snapshot.") and not p.requires_grad and p.grad is None


def test_the_ensemble_is_more_uncertain_off_the_data():
    """Trained on a deterministic system's windows, the members agree on those states more than on far ones."""
    wm = make("ensemble", ensemble_size=5)
    opt = torch.optim.Adam(wm.parameters(), lr=3e-3)
    batch = linear_system_batch(B=128)
    first = wm.loss(batch)[1]["ensemble_loss"]
    for _ in range(300):
        loss, metrics = wm.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert metrics["ensemble_loss"] < first / 2, (first, metrics["ensemble_loss"])
    with torch.no_grad():
        z_in, a_in = wm.encode(batch["obs"][:, 0]), batch["action"][:, 0]
        # latents off the data: every group's code drawn uniformly from the codebook
        codes = torch.randint(0, wm.num_codes, (128, 8), generator=torch.Generator().manual_seed(5))
        z_off = wm.codebook[codes].reshape(128, -1)
        u_in, u_off = wm.uncertainty(z_in, a_in).mean(), wm.uncertainty(z_off, a_in).mean()
    assert u_off > 1.6 * u_in, (u_in.item(), u_off.item())


def test_sfr_estimator_rebuilds_on_schedule_and_survives_a_checkpoint():
    wm = make("sfr", sfr_inducing=16, sfr_memory=64, sfr_rebuild_every=3)
    z, a = inputs(wm)
    assert torch.equal(wm.uncertainty(z, a), torch.zeros(6))  # no data absorbed yet
    rebuilt = []
    for i in range(7):
        _, metrics = wm.loss(random_batch(seed=i))
        rebuilt.append("sfr_rebuild_ms" in metrics)
    assert rebuilt == [True, False, False, True, False, False, True]
    assert int(wm.reward_sfr.mem_size) == 64  # 7 batches of 16 windows, one transition each, in a ring of 64
    with torch.no_grad():
        u = wm.uncertainty(z, a)
        assert (u > 0).all()
        far = wm.uncertainty(wm.encode(20 * torch.randn(6, OBS)), a)
        assert far.mean() > u.mean()
    clone = make("sfr", seed=9, sfr_inducing=16, sfr_memory=64, sfr_rebuild_every=3)
    clone.load_state_dict(copy.deepcopy(wm.state_dict()))
    with torch.no_grad():
        assert torch.equal(clone.uncertainty(z, a), u)
    # the next batch is absorbed by a dual update in both, identically
    for m in (wm, clone):
        m.loss(random_batch(seed=20))
    with torch.no_grad():
        assert torch.equal(clone.uncertainty(z, a), wm.uncertainty(z, a))


@pytest.mark.parametrize("estimator", ["entropy", "ensemble", "sfr"])
def test_planning_scores_equal_a_per_step_loop(estimator):
    """The planner's uncertainty term ``Σ_h ρ^h u(z_h, a_h)`` on this model (SFR's steps scored in one call per
    rollout, the others from the dynamics pass) equals a loop that calls ``uncertainty`` step by step."""
    from agents.planning import MPPIConfig, MPPIPlanner

    wm = make(estimator, sfr_inducing=16, sfr_memory=64, sfr_rebuild_every=3)
    for i in range(4):
        wm.loss(random_batch(seed=i))  # SFR absorbs data and is fitted

    class Model:  # the world model's steps, a zero reward and value: J is the uncertainty term alone
        next, uncertainty, next_and_uncertainty = wm.next, wm.uncertainty, wm.next_and_uncertainty

        def reward(self, z, a):
            return torch.zeros(z.shape[0])

        def value(self, z):
            return torch.zeros(z.shape[0])

    horizon, rho = 3, 0.8
    z, _ = inputs(wm, n=7)
    acts = torch.rand(7, horizon, ACT, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        planner = MPPIPlanner(MPPIConfig(horizon=horizon, discount=rho, optimism=1.0), action_dim=ACT)
        got = planner.estimate_value(z, acts, Model(), unc_coef=1.0)
        want, zh = torch.zeros(7), z
        for h in range(horizon):
            want += rho**h * wm.uncertainty(zh, acts[:, h])
            zh = wm.next(zh, acts[:, h])
    assert (want > 0).all()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "values, key",
    [
        ({"estimator": "ensembel"}, r"unknown estimator 'ensembel'; valid estimators: \['none', 'entropy'"),
        ({"estimator": "ensemble", "ensemble_size": 1}, "ensemble_size"),
        ({"estimator": "sfr", "sfr_inducing": 0}, "sfr_inducing"),
        ({"sfr_prior_precision": 0.0}, "sfr_prior_precision"),
        ({"sfr_memory": 8, "sfr_inducing": 16}, "sfr_memory"),
        ({"estimator": "sfr", "sfr_rebuild_every": 0}, "sfr_rebuild_every"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(values, key):
    with pytest.raises(ValueError, match=rf"^world_model.uncertainty: .*{key}"):
        build_config(DCWMConfig, {"uncertainty": values}, "world_model")
