"""Build a run's pieces from a resolved config: the one place train.py and eval.py share."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from agents import make_agent
from agents.common import Agent, build_config
from envs import make_env
from training.buffer import ReplayBuffer
from training.seeding import resolve_device, seed_everything
from training.trainer import TrainerConfig

SIZES = ("auto", "paper", "small")


def agent_hparams(agent_cfg: DictConfig, device: torch.device) -> dict[str, Any]:
    """The agent's hparams with its size preset applied (``auto``: paper on CUDA, small on CPU)."""
    size = agent_cfg.get("size", "paper")
    if size not in SIZES:
        raise ValueError(f"agent.size must be one of {SIZES}, got {size!r}")
    if size == "auto":
        size = "paper" if device.type == "cuda" else "small"
    hp = OmegaConf.to_container(agent_cfg.hparams, resolve=True)
    presets = OmegaConf.to_container(agent_cfg.get("presets", {}), resolve=True) or {}
    if size not in presets:
        raise ValueError(f"agent {agent_cfg.name!r} has no size preset {size!r}; presets: {sorted(presets)}")
    hp.update(presets[size] or {})
    return hp


def env_config(cfg: DictConfig, seed_offset: int = 0) -> dict[str, Any]:
    settings = OmegaConf.to_container(cfg.env_settings, resolve=True)
    return {"name": cfg.env, "seed": int(cfg.seed) + seed_offset, **settings}


def build_env(cfg: DictConfig, seed_offset: int = 0) -> gym.Env:
    return make_env(env_config(cfg, seed_offset), OmegaConf.to_container(cfg.suite_defaults, resolve=True))


def setup_process(cfg: DictConfig) -> torch.device:
    """Threads, seeds and device for this process, from the config."""
    if int(cfg.threads) < 1:
        raise ValueError(f"threads must be >= 1, got {cfg.threads}")
    torch.set_num_threads(int(cfg.threads))
    seed_everything(int(cfg.seed), deterministic=bool(cfg.deterministic))
    return resolve_device(str(cfg.device))


def build_agent(cfg: DictConfig, env: gym.Env, device: torch.device) -> Agent:
    obs_dim = int(np.prod(env.observation_space.shape))
    action_dim = int(np.prod(env.action_space.shape))
    return make_agent(cfg.agent.name, obs_dim, action_dim, agent_hparams(cfg.agent, device), device)


def build_buffer(cfg: DictConfig, env: gym.Env, run_dir: Path) -> ReplayBuffer:
    obs_dim = int(np.prod(env.observation_space.shape))
    action_dim = int(np.prod(env.action_space.shape))
    return ReplayBuffer(
        int(cfg.buffer.capacity),
        obs_dim,
        action_dim,
        seed=int(cfg.seed),
        storage=str(cfg.buffer.storage),
        storage_dir=run_dir / "buffer",
    )


def trainer_config(cfg: DictConfig) -> TrainerConfig:
    return build_config(TrainerConfig, OmegaConf.to_container(cfg.trainer, resolve=True), "trainer")


def wandb_id(run_dir: str | Path) -> str:
    """A stable run id derived from the run directory, so a resumed run logs to the same wandb run."""
    return hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]
