"""Evaluation episodes: the same ``agent.act`` path as training, with eval_mode on."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from agents.common import Agent
from training.video import save_video


def evaluate(
    agent: Agent,
    env: gym.Env,
    *,
    episodes: int,
    seed: int,
    episode_index: int,
    step: int,
    video_path: str | Path | None = None,
    video_fps: int = 30,
) -> dict[str, float]:
    """Run ``episodes`` deterministic-policy episodes and return mean/std return and success rate.

    Episode ``i`` resets with seed ``seed + i``, so every evaluation of a run sees the same initial
    states. Any randomness the agent uses while acting (e.g. a planner's samples) is drawn from a
    forked RNG seeded with ``seed``: evaluation neither perturbs nor depends on the training stream.
    If ``video_path`` is given the first episode is rendered and written there as mp4. What the agent's
    ``act_info()`` reports (e.g. ``plan_uncertainty``) is averaged over each episode's steps: the mean over
    episodes under its own name and the per-episode means under ``<name>_per_episode``.
    """
    returns, successes, lengths = [], [], []
    info_means: dict[str, list[float]] = {}
    reports_success = False
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i in range(episodes):
            agent.begin_episode(episode_index)
            obs, _ = env.reset(seed=seed + i)
            frames = [env.render()] if (video_path is not None and i == 0) else None
            ep_ret, success, t, done = 0.0, 0.0, 0, False
            info_sums: dict[str, float] = {}
            while not done:
                action = agent.act(obs, eval_mode=True, step=step)
                for key, value in agent.act_info().items():
                    info_sums[key] = info_sums.get(key, 0.0) + value
                obs, reward, terminated, truncated, info = env.step(action)
                agent.observe(float(reward))
                ep_ret += float(reward)
                if "success" in info:
                    reports_success = True
                    success = max(success, float(info["success"]))
                done = terminated or truncated
                t += 1
                if frames is not None:
                    frames.append(env.render())
            returns.append(ep_ret)
            for key, total in info_sums.items():
                info_means.setdefault(key, []).append(total / max(t, 1))
            successes.append(success)
            lengths.append(t)
            if frames is not None:
                save_video(frames, video_path, fps=video_fps)
    out = {
        "return_mean": float(np.mean(returns)),
        "return_std": float(np.std(returns)),
        "episode_length": float(np.mean(lengths)),
        "returns": returns,
    }
    for key, means in info_means.items():
        out[key] = float(np.mean(means))
        out[f"{key}_per_episode"] = means
    if reports_success:  # Meta-World and any env that reports info["success"]
        out["success_rate"] = float(np.mean(successes))
        out["successes"] = successes
    return out
