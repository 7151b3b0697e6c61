"""DCWM (world_models/dcwm.py): shapes, the loss against the online encoder's codes, expected-code and
Gumbel straight-through propagation, reward bounds, fitting a fixed batch, config validation."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tensordict import TensorDict

from world_models.dcwm import DCWMConfig, DCWorldModel, gumbel_softmax_st

OBS, ACT = 6, 2


def small_cfg(**kw) -> DCWMConfig:
    base = dict(latent_groups=8, enc_mlp_dims=[32], dyn_mlp_dims=[32, 32], reward_mlp_dims=[32], horizon=3, rho=0.7)
    return DCWMConfig(**{**base, **kw})


def random_batch(B: int = 16, H: int = 3, seed: int = 0) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    return TensorDict(
        {
            "obs": torch.randn(B, H + 1, OBS, generator=g),
            "action": torch.rand(B, H, ACT, generator=g) * 2 - 1,
            "reward": torch.rand(B, H, generator=g) * 2,
            "terminated": torch.zeros(B, H),
        },
        batch_size=[B],
    )


def linear_system_batch(B: int = 64, H: int = 3, seed: int = 0) -> TensorDict:
    """Windows of a fixed deterministic system o' = A o + B a, r = o[0]^2 / 4 (learnable exactly)."""
    g = torch.Generator().manual_seed(seed)
    A = torch.linalg.qr(torch.randn(OBS, OBS, generator=g))[0] * 0.9
    Bm = torch.randn(OBS, ACT, generator=g) * 0.5
    obs = [torch.randn(B, OBS, generator=g)]
    act = torch.rand(B, H, ACT, generator=g) * 2 - 1
    for h in range(H):
        obs.append(obs[-1] @ A.T + act[:, h] @ Bm.T)
    obs_t = torch.stack(obs, 1)
    reward = (obs_t[:, :H, 0] ** 2 / 4).clamp(max=1.9)
    return TensorDict({"obs": obs_t, "action": act, "reward": reward, "terminated": torch.zeros(B, H)}, batch_size=[B])


def test_shapes_and_codebook():
    torch.manual_seed(0)
    wm = DCWorldModel(OBS, ACT, small_cfg())
    G, K, C = 8, 15, 2
    assert wm.codebook.shape == (K, C) and wm.num_codes == K and wm.latent_dim == G * C
    o, a = torch.randn(5, OBS), torch.rand(5, ACT) * 2 - 1
    z = wm.encode(o)
    assert z.shape == (5, G * C)
    # encodings are FSQ codes: channel 0 in {-1, -.5, 0, .5, 1}, channel 1 in {-1, 0, 1}
    zg = z.view(5, G, C)
    assert torch.equal(zg[..., 0] * 2, torch.round(zg[..., 0] * 2)) and zg[..., 0].abs().max() <= 1
    assert torch.equal(zg[..., 1], torch.round(zg[..., 1]))
    assert wm.next_logits(z, a).shape == (5, K, G)
    assert wm.next(z, a).shape == (5, G * C)
    assert wm.sample_next(z, a).shape == (5, G * C)
    assert wm.reward(z, a).shape == (5,)
    assert wm.code_indices(z).shape == (5, G)
    assert torch.equal(wm.fsq.indices_to_codes(wm.code_indices(z)), z)


def test_loss_is_discounted_ce_against_online_encoder_codes_plus_reward_mse():
    """Recompute the loss by hand with CE targets = index(FSQ(e(o_{h+1}))) of the *same* encoder,
    and the same Gumbel draws (same generator seed)."""
    torch.manual_seed(0)
    cfg = small_cfg(consistency_coef=0.8, reward_coef=1.7)
    wm = DCWorldModel(OBS, ACT, cfg)
    batch = random_batch()
    loss, metrics = wm.loss(batch, generator=torch.Generator().manual_seed(5))

    gen = torch.Generator().manual_seed(5)
    H, rho = cfg.horizon, cfg.rho
    with torch.no_grad():
        obs, act, rew = batch["obs"], batch["action"], batch["reward"]
        z = wm.fsq(wm.encoder(obs[:, 0]))
        expected, ces = 0.0, []
        for h in range(H):
            target_codes = wm.fsq(wm.encoder(obs[:, h + 1]))  # online encoder, no EMA copy exists
            target_idx = wm.fsq.codes_to_indices(target_codes)  # [B, G]
            logits = wm.next_logits(z, act[:, h])  # [B, K, G]
            # per group: -log softmax over the 15 codes at the target index, mean over batch and groups
            logp = torch.log_softmax(logits, dim=1)
            ce = -logp.gather(1, target_idx.unsqueeze(1)).mean()
            mse = ((wm.reward(z, act[:, h]) - rew[:, h]) ** 2).mean()
            expected += rho**h * (0.8 * ce + 1.7 * mse)
            ces.append(ce)
            if h < H - 1:
                z = wm.sample_code(logits, gen)
        expected /= H
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert metrics["consistency_loss"] == pytest.approx(torch.stack(ces).mean().item(), rel=1e-5)
    assert not any(n.startswith("target") for n, _ in wm.named_modules())  # no momentum encoder

    # Honesty: targets from a *different* encoder (an EMA-like perturbed copy) give another loss.
    other = DCWorldModel(OBS, ACT, cfg)
    other.load_state_dict(wm.state_dict())
    with torch.no_grad():
        for p in other.encoder.parameters():
            p.add_(0.3 * torch.randn_like(p))
    idx_online = wm.code_indices(wm.encode(batch["obs"][:, 1:]))
    idx_other = other.code_indices(other.encode(batch["obs"][:, 1:]))
    assert (idx_online != idx_other).float().mean() > 0.1


def test_loss_gradient_reaches_encoder_through_the_rollout():
    torch.manual_seed(0)
    wm = DCWorldModel(OBS, ACT, small_cfg(reward_coef=0.0))  # CE only: the encoder is reached via c_0
    loss, _ = wm.loss(random_batch())
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in wm.encoder.parameters())
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in wm.reward_head.parameters())


def test_expected_code_is_softmax_weighted_codebook_by_hand():
    torch.manual_seed(0)
    wm = DCWorldModel(OBS, ACT, small_cfg())
    z, a = wm.encode(torch.randn(4, OBS)), torch.rand(4, ACT) * 2 - 1
    logits = wm.next_logits(z, a)
    with torch.no_grad():
        out = wm.next(z, a).view(4, 8, 2)
        for n in range(4):
            for g in range(8):
                p = torch.exp(logits[n, :, g]) / torch.exp(logits[n, :, g]).sum()
                code = sum(p[k] * wm.codebook[k] for k in range(15))
                torch.testing.assert_close(out[n, g], code, rtol=1e-5, atol=1e-6)
    # and it is not a sample: a second call gives the same latent
    assert torch.equal(wm.next(z, a), wm.next(z, a))


def test_gumbel_st_forward_is_one_hot_with_soft_gradient():
    torch.manual_seed(0)
    logits = torch.randn(64, 15, 8, requires_grad=True)
    y = gumbel_softmax_st(logits, tau=1.0, dim=1)
    assert set(y.detach().unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(y.detach().sum(1), torch.ones(64, 8))  # exactly one 1 per group
    w = torch.randn(64, 15, 8)
    (y * w).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # gradient is the soft sample's: it flows to every logit of a group, not only the chosen one
    assert (logits.grad[:, :, 0].abs() > 0).float().mean() > 0.9


def test_sampled_codes_are_codebook_entries_with_softmax_frequencies():
    torch.manual_seed(0)
    wm = DCWorldModel(OBS, ACT, small_cfg(latent_groups=1))
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0] + [-3.0] * 11).view(1, 15, 1).expand(20000, 15, 1)
    z = wm.sample_code(logits, torch.Generator().manual_seed(0))
    idx = wm.code_indices(z).squeeze(1)
    torch.testing.assert_close(wm.fsq.indices_to_codes(idx.unsqueeze(1)), z)  # exact entries
    freq = torch.bincount(idx, minlength=15).float() / idx.numel()
    torch.testing.assert_close(freq, torch.softmax(logits[0, :, 0], 0), atol=0.012, rtol=0)


def test_fitting_a_fixed_batch_lowers_the_loss():
    torch.manual_seed(0)
    wm = DCWorldModel(OBS, ACT, small_cfg(latent_groups=16, dyn_mlp_dims=[64, 64], reward_mlp_dims=[64]))
    opt = torch.optim.AdamW(wm.parameters(), lr=3e-3)
    batch = linear_system_batch()
    first, m0 = wm.loss(batch)
    for _ in range(200):
        loss, m = wm.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    final, m1 = wm.loss(batch)
    assert final.item() < 0.4 * first.item(), (first.item(), final.item())
    assert m1["reward_loss"] < 0.2 * m0["reward_loss"]
    assert m1["code_acc_h1"] > m0["code_acc_h1"] + 0.3


def test_reward_bound():
    torch.manual_seed(0)
    wm = DCWorldModel(OBS, ACT, small_cfg(reward_bound=[-1.0, 3.0]))
    with torch.no_grad():
        wm.reward_head[-1].bias.fill_(50.0)
        z, a = wm.encode(torch.randn(16, OBS)), torch.rand(16, ACT)
        r_hi = wm.reward(z, a)
        wm.reward_head[-1].bias.fill_(-50.0)
        r_lo = wm.reward(z, a)
    torch.testing.assert_close(r_hi, torch.full_like(r_hi, 3.0))
    torch.testing.assert_close(r_lo, torch.full_like(r_lo, -1.0))
    free = DCWorldModel(OBS, ACT, small_cfg(reward_bound=None))
    free.load_state_dict(wm.state_dict())
    with torch.no_grad():
        assert free.reward(z, a).max() < -10  # unbounded head passes the raw output through
        for m in (wm, free):
            m.reward_head[-1].bias.fill_(0.3)  # away from saturation: check the squashing formula itself
        x = free.reward(z, a)
        assert x.abs().min() > 0.05 and x.abs().max() < 3
        torch.testing.assert_close(wm.reward(z, a), -1.0 + 4.0 * 0.5 * (torch.tanh(x) + 1))


def test_loss_needs_long_enough_windows():
    wm = DCWorldModel(OBS, ACT, small_cfg(horizon=4))
    with pytest.raises(ValueError, match="4 transitions"):
        wm.loss(random_batch(H=3))


@pytest.mark.parametrize(
    "field, value",
    [
        ("fsq_levels", []),
        ("fsq_levels", [5, 1]),
        ("horizon", 0),
        ("latent_groups", 0),
        ("rho", 0.0),
        ("gumbel_tau", 0.0),
        ("reward_bound", [2.0, 0.0]),
        ("reward_bound", [1.0]),
        ("dyn_mlp_dims", [0]),
    ],
)
def test_invalid_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(small_cfg(), **{field: value})
