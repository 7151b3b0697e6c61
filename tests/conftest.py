"""Shared helpers: a tiny but real training configuration, in-process and as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from training.setup import compose_config

ROOT = Path(__file__).resolve().parents[1]

# A real iQRL run on gym/Pendulum-v1 (200-step episodes), shrunk so one run takes seconds on CPU.
TINY = [
    "env=gym/Pendulum-v1",
    "agent=iqrl",
    "agent.size=small",
    "world_model.latent_groups=8",
    "world_model.dyn_mlp_dims=[32,32]",
    "world_model.enc_mlp_dims=[32]",
    "agent.actor_critic.mlp_dims=[32,32]",
    "agent.actor_critic.num_critics=2",
    "agent.optim.batch_size=16",
    "trainer.steps=1200",
    "trainer.seed_steps=400",
    "trainer.utd_ratio=0.5",
    "trainer.eval_every=400",
    "trainer.eval_episodes=1",
    "trainer.checkpoint_every=400",
    "trainer.video=none",
    "trainer.progress_bar=false",
    "trainer.diagnostics_samples=64",
    "buffer.capacity=5000",
    "wandb.mode=disabled",
    "threads=1",
]


# DC-MPC at toy sizes (add agent=dcmpc): a planner run takes seconds.
SMALL_PLANNER = [
    "agent.size=small",
    "world_model.latent_groups=8",
    "world_model.enc_mlp_dims=[32]",
    "world_model.dyn_mlp_dims=[32,32]",
    "world_model.reward_mlp_dims=[32]",
    "agent.actor_critic.mlp_dims=[32,32]",
    "agent.optim.batch_size=16",
    "agent.planner.num_samples=32",
    "agent.planner.num_elites=8",
    "agent.planner.num_pi_trajs=4",
    "agent.planner.iterations=2",
]


def run_script(script: str, args: list[str], timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=kw.pop("cwd", ROOT),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        **kw,
    )


@pytest.fixture
def tiny():
    return list(TINY)


def random_windows(batch_size: int, horizon: int, obs_dim: int, act_dim: int, seed: int = 0):
    """A replay-buffer-shaped batch of random windows: obs ``[B, H+1, O]``, action, reward, terminated ``[B, H]``."""
    import torch
    from tensordict import TensorDict

    g = torch.Generator().manual_seed(seed)
    B, H = batch_size, horizon
    return TensorDict(
        {
            "obs": torch.randn(B, H + 1, obs_dim, generator=g),
            "action": torch.rand(B, H, act_dim, generator=g) * 2 - 1,
            "reward": torch.rand(B, H, generator=g),
            "terminated": torch.zeros(B, H),
        },
        batch_size=[B],
    )


class UniformPolicy:
    """The random baseline of the learning tests: uniform actions in [-1, 1] (the Agent acting interface)."""

    def __init__(self, action_dim: int, seed: int = 0) -> None:
        import numpy as np

        self.rng = np.random.default_rng(seed)
        self.action_dim = action_dim

    def begin_episode(self, episode: int) -> None:
        pass

    def act(self, obs, *, eval_mode: bool, step: int):
        return self.rng.uniform(-1, 1, size=self.action_dim).astype("float32")

    def observe(self, reward: float) -> None:
        pass

    def act_info(self) -> dict[str, float]:
        return {}


# The learning tests' run settings: evaluate only at the end (5 episodes), no checkpoints, videos or wandb.
LEARNING_RUN = [
    "trainer.eval_every=100000",
    "trainer.eval_episodes=5",
    "trainer.checkpoint_every=100000",
    "trainer.video=none",
    "trainer.progress_bar=false",
    "wandb.mode=disabled",
    "threads=1",
    "seed=1",
]


def train_vs_random(overrides: list[str], run_dir: Path, label: str):
    """Train through ``train.py``'s ``run`` (``LEARNING_RUN`` + ``overrides``), then evaluate a uniform random
    policy on the same env with the trainer's eval seeds. Returns ``(cfg, trained return, random return)``."""
    import train as train_script
    from training.evaluation import evaluate
    from training.seeds import EVAL_EPISODE_SEED_OFFSET
    from training.setup import build_env

    cfg = compose_config([*LEARNING_RUN, *overrides, f"run_dir={run_dir}"])
    final = train_script.run(cfg)
    env = build_env(cfg)
    action_dim = env.action_space.shape[0]
    eval_seed = int(cfg.seed) + EVAL_EPISODE_SEED_OFFSET
    random_ret = evaluate(UniformPolicy(action_dim), env, episodes=5, seed=eval_seed, episode_index=0, step=0)
    env.close()
    print(f"{label} {final['return_mean']:.1f} vs random {random_ret['return_mean']:.1f}")
    return cfg, final["return_mean"], random_ret["return_mean"]
