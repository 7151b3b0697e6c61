"""The online part of the training loop (``trainer.loop=online``): acting in an env, a replay buffer, updates at
a UTD ratio (:class:`training.loop.TrainingLoop` owns the rest)."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from agents.common import Agent
from common.config import build_config, check_fields
from training.buffer import ReplayBuffer
from training.evaluation import evaluate
from training.logger import Logger
from training.loop import TrainingLoop, TrainingStopped
from training.seeds import EVAL_ENV_SEED_OFFSET, EVAL_EPISODE_SEED_OFFSET
from training.setup import build_agent, build_buffer, build_env


@dataclass
class TrainerConfig:
    """The online loop's settings (``trainer``). All step counts are *environment* steps (decisions x action repeat)."""

    loop: str = "online"  # which loop train.py runs (training.loop.LOOPS); this section's other keys are online's
    steps: int = 100_000
    seed_steps: int = 5_000  # uniform random actions, no updates, before learning starts
    utd_ratio: float = 1.0  # gradient updates per agent decision
    eval_every: int = 10_000
    eval_episodes: int = 10
    checkpoint_every: int = 10_000
    keep_checkpoints: int = 2
    save_buffer: bool = True  # the buffer travels with checkpoints (turn off for huge buffers)
    video: str = "final"  # none | final | every_eval
    video_fps: int = 30
    diagnostics_samples: int = 1024  # observations for the agent's diagnostics at each evaluation
    progress_bar: bool = True

    def __post_init__(self) -> None:
        checks = {
            "loop": self.loop == "online",
            "steps": self.steps >= 1,
            "seed_steps": self.seed_steps >= 0,
            "utd_ratio": self.utd_ratio > 0,
            "eval_every": self.eval_every >= 1,
            "eval_episodes": self.eval_episodes >= 1,
            "checkpoint_every": self.checkpoint_every >= 1,
            "keep_checkpoints": self.keep_checkpoints >= 1,
            "video": self.video in ("none", "final", "every_eval"),
        }
        check_fields(self, checks, "trainer setting")


def trainer_config(cfg: DictConfig) -> TrainerConfig:
    return build_config(TrainerConfig, OmegaConf.to_container(cfg.trainer, resolve=True), "trainer")


class Trainer(TrainingLoop):
    """The online part of :class:`training.loop.TrainingLoop`: episodes in an env, a replay buffer, a UTD ratio.

    ``step`` counts env steps. Each :meth:`advance` collects one episode (uniform random actions during the first
    ``seed_steps``), then runs ``round(utd_ratio * decisions)`` updates on batches of within-episode windows from the
    replay buffer (the first block after the seed phase catches up on all seed decisions). Training episode ``k``
    resets with seed ``seed + k``; evaluation episode ``i`` with ``seed + EVAL_EPISODE_SEED_OFFSET + i``
    (:mod:`training.seeds`) in an env built with ``seed + EVAL_ENV_SEED_OFFSET``. The buffer travels with the
    checkpoints (``save_buffer``).
    """

    steps_key = "trainer.steps"
    step_label = "env step"
    step_state_key = "env_step"
    unit = "step"

    def __init__(
        self,
        cfg: TrainerConfig,
        *,
        agent: Agent,
        env: gym.Env,
        eval_env: gym.Env,
        buffer: ReplayBuffer,
        run_dir: str | Path,
        seed: int,
        logger: Logger | None = None,
        config_yaml: str = "",
        header: str = "",
        title: str = "",
    ) -> None:
        super().__init__(
            cfg,
            agent=agent,
            run_dir=run_dir,
            seed=seed,
            header=header,
            title=title,
            diagnostics_samples=cfg.diagnostics_samples,
        )
        self.cfg = cfg
        self.env = env
        self.eval_env = eval_env
        self.buffer = buffer
        self.logger = logger
        self.config_yaml = config_yaml
        self.action_repeat = int(env.config.action_repeat) if hasattr(env, "config") else 1
        self.action_dim = int(np.prod(env.action_space.shape))
        self.episode = 0
        self.num_updates = 0
        self.pending_decisions = 0  # decisions not yet matched by updates

    # -- building ----------------------------------------------------------------------------------
    @classmethod
    def build(cls, cfg: DictConfig, *, device: torch.device, state: dict | None) -> Trainer:
        tcfg = trainer_config(cfg)
        run_dir = Path(cfg.run_dir)
        if cfg.get("dataset"):
            raise ValueError(
                f"dataset={cfg.dataset} is data for the offline loop (trainer.loop=offline, e.g. "
                "experiment=offline_meta); the online loop collects its own"
            )
        env = build_env(cfg)
        try:
            eval_env = build_env(cfg, seed_offset=EVAL_ENV_SEED_OFFSET)
        except BaseException:
            env.close()
            raise
        try:
            agent = build_agent(cfg, env, device, state=None if state is None else state.get("agent"))
            run_dir.mkdir(parents=True, exist_ok=True)
            buffer = build_buffer(cfg, env, run_dir)
        except BaseException:
            env.close()
            eval_env.close()
            raise
        header = (
            f"run {run_dir} | agent {cfg.agent.name} ({agent.num_params() / 1e6:.2f}M trained params) on {device} | "
            f"env {cfg.env} obs {env.observation_space.shape} act {env.action_space.shape} | buffer "
            f"{buffer.capacity} transitions, {buffer.nbytes / 2**20:.0f} MiB ({cfg.buffer.storage})"
        )
        title = f"{cfg.agent.name} on {cfg.env} (seed {cfg.seed})"
        return cls(
            tcfg,
            agent=agent,
            env=env,
            eval_env=eval_env,
            buffer=buffer,
            run_dir=run_dir,
            seed=int(cfg.seed),
            header=header,
            title=title,
        )

    def close(self) -> None:
        self.env.close()
        self.eval_env.close()

    # -- state -----------------------------------------------------------------------------------
    def part_counters(self) -> dict:
        return {"episode": self.episode, "num_updates": self.num_updates, "pending_decisions": self.pending_decisions}

    def checkpoint_buffer(self) -> dict | None:
        return self.buffer.state_dict() if self.cfg.save_buffer else None

    def load_extra_state(self, state: dict, buffer_state: dict | None) -> None:
        if buffer_state is not None:
            self.buffer.load_state_dict(buffer_state)
        elif self.buffer.num_added == 0 and self.step > 0:
            tqdm.write("resume: checkpoint has no buffer (save_buffer=false); refilling from scratch")

    # -- the loop ----------------------------------------------------------------------------------
    def position(self) -> str:
        return f"env step {self.step}, update {self.num_updates}"

    def summary(self, final: dict) -> str:
        return (
            f"done: {self.step} env steps | final eval return {final['return_mean']:.1f} "
            f"± {final['return_std']:.1f} | run dir {self.run_dir}"
        )

    def video_at(self, final: bool) -> bool:
        return self.cfg.video == "every_eval" or (final and self.cfg.video == "final")

    def advance(self) -> None:
        ep = self._collect_episode()
        if self.step >= self.cfg.seed_steps:
            ep.update(self._update_block())
        self.log("train", ep)

    def _collect_episode(self) -> dict[str, float]:
        self.agent.begin_episode(self.episode)
        obs, _ = self.env.reset(seed=self.seed + self.episode)
        ep_ret, success, decisions, done = 0.0, None, 0, False
        t0 = time.perf_counter()
        while not done:
            acted = self.step >= self.cfg.seed_steps
            if acted:
                action = self.agent.act(obs, eval_mode=False, step=self.step)
            else:
                action = (torch.rand(self.action_dim) * 2 - 1).numpy()
            next_obs, reward, terminated, truncated, info = self.env.step(action)
            if acted:
                self.agent.observe(float(reward))
            done = terminated or truncated
            self.buffer.add(obs, action, reward, next_obs, terminated, episode_end=done)
            obs = next_obs
            ep_ret += float(reward)
            if "success" in info:
                success = max(success or 0.0, float(info["success"]))
            decisions += 1
            self.step += self.action_repeat
            self.progress(self.action_repeat)
        self.episode += 1
        self.pending_decisions += decisions
        dt = time.perf_counter() - t0
        out = {"episode": self.episode, "episode_return": ep_ret, "episode_length": decisions}
        if success is not None:
            out["episode_success"] = success
        out["env_steps_per_s"] = decisions * self.action_repeat / max(dt, 1e-9)
        return out

    def _update_block(self) -> dict[str, float]:
        n = round(self.cfg.utd_ratio * self.pending_decisions)
        self.pending_decisions = 0
        if n == 0:
            return {}
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        batch_size = self.agent.batch_size
        t0 = time.perf_counter()
        for _ in range(n):
            batch = self.buffer.sample(batch_size, self.agent.sample_horizon)
            for k, v in self.agent.update(batch).items():
                sums[k] += v
                counts[k] += 1
            self.num_updates += 1
        dt = time.perf_counter() - t0
        out = {k: sums[k] / counts[k] for k in sums}
        out["updates_per_s"] = n / max(dt, 1e-9)
        out["num_updates"] = self.num_updates
        return out

    def run_evaluation(self, video: bool) -> dict:
        video_path = self.run_dir / "videos" / f"eval_step_{self.step:09d}.mp4" if video else None
        return evaluate(
            self.agent,
            self.eval_env,
            episodes=self.cfg.eval_episodes,
            seed=self.seed + EVAL_EPISODE_SEED_OFFSET,
            episode_index=self.episode,
            step=self.step,
            video_path=video_path,
            video_fps=self.cfg.video_fps,
        )

    def diagnostics_obs(self) -> torch.Tensor | None:
        return self.buffer.recent_obs(self.diagnostics_samples) if len(self.buffer) > 0 else None


__all__ = ["Trainer", "TrainerConfig", "TrainingStopped", "trainer_config"]
