"""Tests for world_models/contextual.py: the context encoder is permutation invariant (mean and attention
pooling, with padding masks, float64-exact up to rounding); the contextual world model is a
world_models.WorldModel built by the registry (planning latent [h || z]); and training it on tiny real datasets
makes its task representation separate tasks: by reward (cheetah_vel) and by dynamics alone (walker_mass with the
reward loss switched off), against a control whose contexts come from other tasks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tensordict import TensorDict

from envs.toy_datasets import make_toy_dataset
from training.offline import TaskSampler, load_any_dataset
from world_models import WorldModel, make_world_model, world_model_config
from world_models.contextual import ContextEncoder, ContextEncoderConfig, ContextualWMConfig, ContextualWorldModel

# ---------------------------------------------------------------------------------------------------
# permutation invariance, masks, prior


def _encoder(pooling: str) -> ContextEncoder:
    torch.manual_seed(0)
    cfg = ContextEncoderConfig(z_dim=6, ctx_mlp_dims=[32, 32], pooling=pooling, attn_heads=2, attn_dim=16)
    return ContextEncoder(obs_dim=5, action_dim=2, cfg=cfg).double()


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_context_encoder_is_permutation_invariant(pooling):
    enc = _encoder(pooling)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 10, enc.in_dim, generator=g, dtype=torch.float64)  # [..., K, F]
    z = enc(x)
    assert z.shape == (3, 4, 6)
    assert z.abs().max() <= 1.0
    for _ in range(5):
        perm = torch.randperm(10, generator=g)
        torch.testing.assert_close(enc(x[..., perm, :]), z, rtol=0, atol=1e-12)
    # ... and not because it ignores its input: other transitions or other sets give other z
    x2 = x.clone()
    x2[..., 0, :] += 1.0
    assert (enc(x2) - z).abs().min() > 1e-6
    assert torch.cdist(z.reshape(12, 6), z.reshape(12, 6)).add(torch.eye(12)).min() > 1e-3


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_context_encoder_masks_padding_and_empty_context_is_the_prior(pooling):
    enc = _encoder(pooling)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 7, enc.in_dim, generator=g, dtype=torch.float64)
    z = enc(x)
    junk = 100 * torch.randn(4, 5, enc.in_dim, generator=g, dtype=torch.float64)
    padded = torch.cat([x, junk], dim=1)
    mask = torch.cat([torch.ones(4, 7, dtype=torch.bool), torch.zeros(4, 5, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(enc(padded, mask), z, rtol=0, atol=1e-12)
    perm = torch.randperm(12, generator=g)  # padding anywhere, permuted together with its mask
    torch.testing.assert_close(enc(padded[:, perm], mask[:, perm]), z, rtol=0, atol=1e-12)
    assert (enc(padded) - z).abs().max() > 1e-3  # the junk does matter when it is not masked
    # empty context (no rows, or all masked): the prior z = 0
    assert torch.equal(enc(x[:, :0]), torch.zeros(4, 6, dtype=torch.float64))
    assert torch.equal(enc(x, torch.zeros(4, 7, dtype=torch.bool)), torch.zeros(4, 6, dtype=torch.float64))


def test_context_encoder_rejects_wrong_feature_width():
    enc = _encoder("mean")
    with pytest.raises(ValueError, match="width"):
        enc(torch.zeros(2, 3, enc.in_dim + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="pooling"):
        ContextEncoderConfig(pooling="max")


# ---------------------------------------------------------------------------------------------------
# the WorldModel view


def test_contextual_model_is_a_world_model_whose_latent_carries_the_task():
    cfg = world_model_config(
        {"name": "contextual", "latent_dim": 16, "enc_mlp_dims": [16], "dyn_mlp_dims": [16], "reward_mlp_dims": [16]}
    )
    with pytest.raises(ValueError, match=r"world_model: .*'rho'"):
        world_model_config({"name": "contextual", "rho": 0.0})
    torch.manual_seed(0)
    wm = make_world_model(cfg, 5, 2, context=ContextEncoderConfig(z_dim=3, ctx_mlp_dims=[8]), num_tasks=4)
    assert isinstance(wm, ContextualWorldModel) and isinstance(wm, WorldModel)
    assert wm.latent_dim == 16 + 3 and wm.predicts_reward and wm.window_offset == 0 and wm.window_length == 5
    g = torch.Generator().manual_seed(1)
    obs, a, task = torch.randn(4, 5, generator=g), torch.rand(4, 2, generator=g) * 2 - 1, torch.rand(4, 3, generator=g)
    with torch.no_grad():
        x, state = wm.observe(obs, task)
        assert state is task and torch.equal(x, torch.cat([wm.encode(obs), task], -1))
        prior, none = wm.observe(obs)
        assert none is None and torch.equal(prior[:, 16:], torch.zeros(4, 3))  # no context yet: the prior z = 0
        x1 = wm.next(x, a)
        torch.testing.assert_close(x1[:, :16], wm.step(wm.encode(obs), a, task))
        assert torch.equal(x1[:, 16:], task), "the task rides along the planning rollout"
        torch.testing.assert_close(wm.reward(x, a), wm.task_reward(wm.encode(obs), a, task))
        assert not torch.allclose(wm.reward(x, a), wm.reward(prior, a)), "the reward depends on the task"
        windows = torch.randn(4, 6, 5, generator=g)
        z = wm.window_latents(windows, [0, 2], task)
        assert z.shape == (4, 2, 19) and torch.equal(z[:, 1, 16:], task)
        torch.testing.assert_close(z[:, 1, :16], wm.encode(windows[:, 2]))
    assert wm.uncertainty(x, a) is None and set(wm.diagnostics(obs)) == {"latent_std"}
    before = [p.clone() for p in wm.target_encoder.parameters()]
    with torch.no_grad():
        for p in wm.encoder.parameters():
            p.add_(1.0)
    wm.after_update()  # the EMA target follows the online encoder
    assert all(not torch.equal(b, p) for b, p in zip(before, wm.target_encoder.parameters()))


# ---------------------------------------------------------------------------------------------------
# training on tiny real datasets


def _normalised_context(ctx: TensorDict, stats) -> TensorDict:
    om, osd, rm, rsd = stats
    return TensorDict(
        {
            "obs": (ctx["obs"] - om) / osd,
            "action": ctx["action"],
            "reward": (ctx["reward"] - rm) / rsd,
            "next_obs": (ctx["next_obs"] - om) / osd,
        },
        batch_size=ctx.batch_size,
    )


def _normalised(b: TensorDict, stats) -> TensorDict:
    om, osd = stats[0], stats[1]
    return TensorDict(
        {
            "obs": (b["obs"] - om) / osd,
            "action": b["action"],
            "reward": b["reward"],
            "context": _normalised_context(b["context"], stats),
        },
        batch_size=b.batch_size,
    )


def _separation(wm: ContextualWorldModel, sampler: TaskSampler, stats, K: int = 8) -> tuple[float, float]:
    """(nearest-centroid task accuracy on held-out contexts, between/within-task spread of z)."""
    zs, labels = [], []
    for task, policy in sampler.group_keys():
        ctx = _normalised_context(sampler.contexts_of(task, policy, 50, K), stats)
        with torch.no_grad():
            zs.append(wm.infer_task(wm.context_features(ctx)))
        labels += [task] * 50
    z, t = torch.cat(zs), torch.tensor(labels)
    ids = t.unique()
    train = torch.arange(len(z)) % 2 == 0
    centroids = torch.stack([z[train & (t == k)].mean(0) for k in ids])
    accuracy = (ids[torch.cdist(z[~train], centroids).argmin(1)] == t[~train]).float().mean().item()
    means = torch.stack([z[t == k].mean(0) for k in ids])
    within = torch.stack([(z[t == k] - means[i]).pow(2).sum(-1).mean() for i, k in enumerate(ids)]).mean()
    between = (means - means.mean(0)).pow(2).sum(-1).mean()
    return accuracy, float(between / within)


def _train_world_model(path: Path, steps: int, *, reward_coef: float, shuffle_contexts: bool = False):
    """Train a small contextual world model; returns (separation before, after, first and last losses)."""
    torch.manual_seed(0)
    ds = load_any_dataset(path)
    cfg = ContextualWMConfig(
        latent_dim=32, enc_mlp_dims=[64], dyn_mlp_dims=[64, 64], reward_mlp_dims=[64, 64], horizon=3, proto_coef=0.0,
        reward_coef=reward_coef,
    )  # fmt: skip
    context = ContextEncoderConfig(z_dim=8, ctx_mlp_dims=[64, 64])
    wm = ContextualWorldModel(ds.obs_dim, ds.action_dim, cfg, context=context, num_tasks=64)
    sampler = TaskSampler(
        ds, horizon=3, tasks_per_batch=4, batch_size=32, contexts_per_task=2, context_size=16,
        context_source="task", seed=0,
    )  # fmt: skip
    stats = [torch.as_tensor(x) for x in sampler.stats()]
    opt = torch.optim.AdamW([p for n, p in wm.named_parameters() if not n.startswith("target")], lr=1e-3)
    before = _separation(wm, sampler, stats)
    losses = []
    for _ in range(steps):
        b = sampler.sample()
        if shuffle_contexts:  # control: each slot gets the contexts of a random slot (mostly another task)
            b["context"] = b["context"][torch.randperm(b.shape[0])]
        loss, metrics = wm.loss(_normalised(b, stats))
        opt.zero_grad()
        loss.backward()
        opt.step()
        wm.update_target()
        losses.append(metrics)
    return before, _separation(wm, sampler, stats), losses


@pytest.mark.slow
def test_world_model_representation_separates_tasks_by_reward(tmp_path):
    """cheetah_vel tasks share dynamics and differ in reward: z must learn the target velocity."""
    tasks = ["cheetah_vel/train-0", "cheetah_vel/train-6", "cheetah_vel/train-13", "cheetah_vel/train-19"]
    make_toy_dataset(tmp_path, family="cheetah_vel", tasks=tasks, episodes_per_policy=2, max_episode_steps=200)
    (acc0, sep0), (acc1, sep1), losses = _train_world_model(tmp_path, 400, reward_coef=1.0)
    assert acc1 >= 0.9, f"nearest-centroid task accuracy {acc1:.2f} (before training {acc0:.2f}, chance 0.25)"
    assert sep1 >= 10 * sep0, f"between/within-task spread of z {sep1:.2f}, before training {sep0:.2f}"
    first = np.mean([m["reward_loss"] for m in losses[:20]])
    last = np.mean([m["reward_loss"] for m in losses[-20:]])
    assert last < 0.5 * first, f"reward loss {first:.3f} -> {last:.3f}"


@pytest.mark.slow
def test_world_model_representation_captures_dynamics(tmp_path):
    """walker_mass tasks (mass x0.44 vs x2.25), reward loss off: only predicting the latent dynamics shapes z."""
    tasks = ["walker_mass/test-0", "walker_mass/test-19"]
    make_toy_dataset(tmp_path, family="walker_mass", tasks=tasks, episodes_per_policy=2, max_episode_steps=200)
    (_, sep0), (acc, sep), _ = _train_world_model(tmp_path, 300, reward_coef=0.0)
    (_, _), (_, sep_control), _ = _train_world_model(tmp_path, 300, reward_coef=0.0, shuffle_contexts=True)
    assert acc >= 0.95
    assert sep >= 10 * sep0, f"between/within-task spread of z {sep:.2f}, before training {sep0:.2f}"
    assert sep >= 5 * sep_control, f"matched contexts {sep:.2f} vs contexts of random tasks {sep_control:.2f}"
