"""Evaluate a saved agent: ``python eval.py checkpoint=<run_dir or checkpoint dir> episodes=10 video=true``.

``+hparams.<key>=<value>`` changes an agent hyperparameter for this evaluation only (the weights stay), e.g.
``+hparams.plan_mode=policy`` to act with DC-MPC's policy prior instead of the planner, or planner settings.

The agent is rebuilt from the config saved inside the checkpoint and acts through exactly the
training ``act`` path (eval_mode on). Works across devices (``device=auto|cpu|cuda``).
Prints a table of returns (and success for Meta-World) and writes mp4 videos.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from training.checkpoint import CheckpointError
from training.evaluation import evaluate
from training.setup import agent_from_checkpoint


def run(cfg: DictConfig) -> dict:
    if not cfg.checkpoint:
        raise CheckpointError("checkpoint=<run_dir or checkpoint dir> is required")
    restored = agent_from_checkpoint(
        cfg.checkpoint,
        device=cfg.device,
        threads=cfg.threads,
        hparams=cfg.hparams,
        render_size=cfg.env_settings.render_size,
    )
    saved, ckpt, env, agent, device = (restored.cfg, restored.ckpt, restored.env, restored.agent, restored.device)
    try:
        out_dir = Path(cfg.output_dir) if cfg.output_dir else ckpt.path.parent.parent / "eval"
        episodes = int(cfg.episodes)
        if episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {episodes}")
        results = []
        for i in range(episodes):
            video = out_dir / f"{ckpt.path.name}_episode_{i:02d}.mp4" if cfg.video else None
            res = evaluate(
                agent,
                env,
                episodes=1,
                seed=int(cfg.seed) + i,
                episode_index=int(ckpt.state["trainer"]["episode"]),
                step=ckpt.step,
                video_path=video,
            )
            results.append((res["returns"][0], res.get("successes", [None])[0], res["episode_length"], video))
    finally:
        env.close()
    changed = f" | hparams changed: {OmegaConf.to_container(cfg.hparams)}" if cfg.hparams else ""
    header = f"{saved.agent.name} on {saved.env} | checkpoint {ckpt.path} (env step {ckpt.step}) | device {device}"
    print(f"\n{header}{changed}")
    has_success = results[0][1] is not None
    print(f"{'episode':>7} {'return':>10} {'length':>7}" + (f" {'success':>8}" if has_success else "") + "  video")
    for i, (ret, succ, length, video) in enumerate(results):
        line = f"{i:>7} {ret:>10.1f} {int(length):>7}"
        if has_success:
            line += f" {succ:>8.0f}"
        print(line + f"  {video or '-'}")
    rets = np.array([r[0] for r in results])
    summary = {"return_mean": float(rets.mean()), "return_std": float(rets.std())}
    line = f"{'mean':>7} {summary['return_mean']:>10.1f} ± {summary['return_std']:.1f}"
    if has_success:
        summary["success_rate"] = float(np.mean([r[1] for r in results]))
        line += f" | success rate {summary['success_rate']:.2f}"
    print(line)
    return summary


@hydra.main(config_path="configs", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
