"""The one training loop: seed steps, acting, updates at a UTD ratio, evaluation, logging, checkpoints."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from tqdm import tqdm

from agents.common import Agent, NonFiniteLossError
from common.config import check_fields
from common.seeding import rng_state, set_rng_state
from training.buffer import ReplayBuffer
from training.checkpoint import save_checkpoint, save_if_finite
from training.evaluation import evaluate
from training.logger import Logger


class TrainingStopped(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message says why and what was saved."""


@dataclass
class TrainerConfig:
    """Loop settings. All step counts are *environment* steps (agent decisions x action repeat)."""

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


class Trainer:
    """Runs an agent in an env until ``cfg.steps`` env steps, episode by episode.

    After every episode it runs ``round(utd_ratio * decisions)`` updates on batches of
    within-episode windows from the replay buffer (the first block after the seed phase catches
    up on all seed decisions), then evaluates and checkpoints when due. Training episode ``k``
    resets with seed ``seed + k``; evaluation uses a disjoint seed range. All state that the
    future of the run depends on (weights, optimisers, buffer, RNGs, counters) is in the
    checkpoint, so a resumed run continues exactly where the checkpoint was taken.
    """

    EVAL_SEED_OFFSET = 1_000_003

    def __init__(
        self,
        cfg: TrainerConfig,
        *,
        agent: Agent,
        env: gym.Env,
        eval_env: gym.Env,
        buffer: ReplayBuffer,
        logger: Logger,
        run_dir: str | Path,
        config_yaml: str,
        seed: int,
    ) -> None:
        self.cfg = cfg
        self.agent = agent
        self.env = env
        self.eval_env = eval_env
        self.buffer = buffer
        self.logger = logger
        self.run_dir = Path(run_dir)
        self.config_yaml = config_yaml
        self.seed = seed
        self.action_repeat = int(env.config.action_repeat) if hasattr(env, "config") else 1
        self.action_dim = int(np.prod(env.action_space.shape))
        self.env_step = 0
        self.episode = 0
        self.num_updates = 0
        self.pending_decisions = 0  # decisions not yet matched by updates
        self.last_eval = 0
        self.last_checkpoint = 0
        self.best_eval_return = -math.inf
        self.finished = False

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "agent": self.agent.state_dict(),
            "trainer": {
                "env_step": self.env_step,
                "episode": self.episode,
                "num_updates": self.num_updates,
                "pending_decisions": self.pending_decisions,
                "last_eval": self.last_eval,
                "last_checkpoint": self.last_checkpoint,
                "best_eval_return": self.best_eval_return,
                "finished": self.finished,
            },
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict, buffer_state: dict | None) -> None:
        self.agent.load_state_dict(state["agent"])
        for k, v in state["trainer"].items():
            setattr(self, k, v)
        set_rng_state(state["rng"])
        if buffer_state is not None:
            self.buffer.load_state_dict(buffer_state)
        elif self.buffer.num_added == 0 and self.env_step > 0:
            tqdm.write("resume: checkpoint has no buffer (save_buffer=false); refilling from scratch")

    def save(self) -> Path:
        path = save_checkpoint(
            self.run_dir,
            self.env_step,
            self.state_dict(),
            self.config_yaml,
            buffer=self.buffer.state_dict() if self.cfg.save_buffer else None,
            keep=self.cfg.keep_checkpoints,
        )
        self.last_checkpoint = self.env_step
        return path

    # -- loop ------------------------------------------------------------------------------------
    def _collect_episode(self) -> dict[str, float]:
        self.agent.begin_episode(self.episode)
        obs, _ = self.env.reset(seed=self.seed + self.episode)
        ep_ret, success, decisions, done = 0.0, None, 0, False
        t0 = time.perf_counter()
        while not done:
            acted = self.env_step >= self.cfg.seed_steps
            if acted:
                action = self.agent.act(obs, eval_mode=False, step=self.env_step)
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
            self.env_step += self.action_repeat
            if self.pbar is not None:
                self.pbar.update(self.action_repeat)
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
        batch_size = self.agent.cfg.batch_size
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

    def _evaluate(self, video: bool) -> dict[str, float]:
        video_path = self.run_dir / "videos" / f"eval_step_{self.env_step:09d}.mp4" if video else None
        res = evaluate(
            self.agent,
            self.eval_env,
            episodes=self.cfg.eval_episodes,
            seed=self.seed + self.EVAL_SEED_OFFSET,
            episode_index=self.episode,
            step=self.env_step,
            video_path=video_path,
            video_fps=self.cfg.video_fps,
        )
        metrics = {k: v for k, v in res.items() if not isinstance(v, list)}
        diag = getattr(self.agent, "diagnostics", None)
        if diag is not None and len(self.buffer) > 0:
            metrics.update(diag(self.buffer.recent_obs(self.cfg.diagnostics_samples)))
        self.best_eval_return = max(self.best_eval_return, metrics["return_mean"])
        self.last_eval = self.env_step
        self.logger.log("eval", self.env_step, metrics)
        return metrics

    def train(self) -> dict[str, float] | None:
        """Run (or continue) training; returns the final evaluation's metrics."""
        c = self.cfg
        self.pbar = (
            tqdm(total=c.steps, initial=min(self.env_step, c.steps), unit="step", dynamic_ncols=True)
            if c.progress_bar
            else None
        )
        final = None
        if self.env_step < c.steps:  # a finished run resumed with a larger trainer.steps goes on
            self.finished = False
        try:
            while self.env_step < c.steps:
                ep = self._collect_episode()
                if self.env_step >= c.seed_steps:
                    ep.update(self._update_block())
                self.logger.log("train", self.env_step, ep)
                if self.env_step - self.last_eval >= c.eval_every and self.env_step < c.steps:
                    self._evaluate(video=c.video == "every_eval")
                if self.env_step - self.last_checkpoint >= c.checkpoint_every and self.env_step < c.steps:
                    self.save()
            if not self.finished:
                final = self._evaluate(video=c.video in ("final", "every_eval"))
                self.finished = True
                self.save()
        except NonFiniteLossError as e:
            where = save_if_finite(self.agent.state_dict()["nets"], self.save, self.run_dir)
            raise TrainingStopped(f"{e} (env step {self.env_step}, update {self.num_updates}). {where}") from e
        finally:
            if self.pbar is not None:
                self.pbar.close()
        return final
