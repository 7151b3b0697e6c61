"""Evaluate a saved agent: ``python eval.py checkpoint=<run_dir or checkpoint dir> episodes=10 video=true``.

``+agent.<key>=<value>`` changes an agent setting for this evaluation only (the weights stay), e.g.
``+agent.plan_mode=policy`` to act with DC-MPC's policy prior instead of the planner, or
``+agent.planner.num_samples=512``.

The agent is rebuilt from the config saved inside the checkpoint and acts through exactly the
training ``act`` path (eval_mode on). Works across devices (``device=auto|cpu|cuda``).
Prints a table of returns (and success for Meta-World) and writes mp4 videos.

An offline meta-RL run (``trainer.loop=offline``, ``experiment=offline_meta``) is evaluated on its held-out tasks
(the run's ``offline.eval_tasks`` split and ``eval_max_tasks``) with the online-context protocol of its training
evaluations (:func:`training.offline.evaluate_meta`): ``episodes`` episodes per task, a table per task and one video
per task (its first episode). No dataset is needed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from training.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from training.evaluation import evaluate
from training.loop import loop_name
from training.offline import evaluate_meta, restore_offline_run, video_name
from training.setup import restore_run


def run(cfg: DictConfig) -> dict:
    if not cfg.checkpoint:
        raise CheckpointError("checkpoint=<run_dir or checkpoint dir> is required")
    episodes = int(cfg.episodes)
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    ckpt = load_checkpoint(cfg.checkpoint, map_location="cpu", load_buffer=False)
    try:
        offline = loop_name(OmegaConf.create(ckpt.config_yaml)) == "offline"
    except Exception as e:  # noqa: BLE001 - any malformed config is reported with its file
        raise CheckpointError(f"{ckpt.path / 'config.yaml'}: unreadable config ({type(e).__name__}: {e})") from e
    if offline:
        return run_offline(cfg, ckpt)
    restored = restore_run(
        ckpt,
        device=cfg.device,
        threads=cfg.threads,
        agent=cfg.agent,
        render_size=cfg.env_settings.render_size,
    )
    saved, env, agent, device = restored.cfg, restored.env, restored.agent, restored.device
    try:
        out_dir = Path(cfg.output_dir) if cfg.output_dir else ckpt.path.parent.parent / "eval"
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
            unc = res.get("plan_uncertainty")
            results.append((res["returns"][0], res.get("successes", [None])[0], res["episode_length"], unc, video))
    finally:
        env.close()
    changed = f" | agent settings changed: {OmegaConf.to_container(cfg.agent)}" if cfg.agent else ""
    header = f"{saved.agent.name} on {saved.env} | checkpoint {ckpt.path} (env step {ckpt.step}) | device {device}"
    print(f"\n{header}{changed}")
    has_success, has_unc = results[0][1] is not None, results[0][3] is not None
    print(
        f"{'episode':>7} {'return':>10} {'length':>7}"
        + (f" {'success':>8}" if has_success else "")
        + (f" {'plan_uncertainty':>16}" if has_unc else "")
        + "  video"
    )
    for i, (ret, succ, length, unc, video) in enumerate(results):
        line = f"{i:>7} {ret:>10.1f} {int(length):>7}"
        if has_success:
            line += f" {succ:>8.0f}"
        if has_unc:
            line += f" {unc:>16.4g}"
        print(line + f"  {video or '-'}")
    rets = np.array([r[0] for r in results])
    summary = {"return_mean": float(rets.mean()), "return_std": float(rets.std())}
    if has_unc:
        summary["plan_uncertainty"] = float(np.mean([r[3] for r in results]))
    line = f"{'mean':>7} {summary['return_mean']:>10.1f} ± {summary['return_std']:.1f}"
    if has_success:
        summary["success_rate"] = float(np.mean([r[1] for r in results]))
        line += f" | success rate {summary['success_rate']:.2f}"
    print(line)
    return summary


def run_offline(cfg: DictConfig, ckpt: Checkpoint) -> dict:
    """Evaluate an offline meta-RL run on its held-out tasks (module docstring); prints a per-task table."""
    restored = restore_offline_run(
        ckpt, device=cfg.device, threads=cfg.threads, agent=cfg.agent, render_size=cfg.env_settings.render_size
    )
    saved, ocfg = restored.cfg, restored.offline
    out_dir = Path(cfg.output_dir) if cfg.output_dir else ckpt.path.parent.parent / "eval"
    videos = {tid: out_dir / f"{ckpt.path.name}_{video_name(tid)}.mp4" for tid in restored.envs} if cfg.video else None
    try:
        res = evaluate_meta(
            restored.agent,
            restored.envs,
            episodes=int(cfg.episodes),
            context_steps=ocfg.context_steps,
            context_update_every=ocfg.context_update_every,
            seed=int(cfg.seed),
            step=ckpt.step,
            groups=restored.groups,
            video_paths=videos,
        )
    finally:
        restored.close()
    changed = f" | agent settings changed: {OmegaConf.to_container(cfg.agent)}" if cfg.agent else ""
    header = (
        f"{saved.agent.name} ({saved.agent.representation}) on {len(restored.envs)} {ocfg.eval_tasks} tasks of "
        f"{saved.env} | checkpoint {ckpt.path} (update {ckpt.step}) | device {restored.device} | "
        f"{cfg.episodes} episode(s) per task, context {ocfg.context_steps} steps{changed}"
    )
    print(f"\n{header}")
    has_success = bool(res["per_task_success"])
    width = max(len("task"), *(len(t) for t in res["per_task"]))
    print(f"{'task':<{width}} {'group':>10} {'return':>10} {'length':>7}" + (f" {'success':>8}" if has_success else "")
          + "  video")  # fmt: skip
    for tid, ret in res["per_task"].items():
        line = f"{tid:<{width}} {restored.groups[tid] or '-':>10} {ret:>10.1f} {res['per_task_length'][tid]:>7.0f}"
        if has_success:
            line += f" {res['per_task_success'].get(tid, float('nan')):>8.2f}"
        print(line + f"  {videos[tid] if videos else '-'}")
    groups = {k: v for k, v in res.items() if k.startswith("return_") and k != "return_std" and k != "return_mean"}
    line = f"{'mean':<{width}} {'':>10} {res['return_mean']:>10.1f} ± {res['return_std']:.1f}"
    line += f" over {len(res['per_task'])} tasks"
    line += "".join(f" | {k} {v:.1f}" for k, v in groups.items())
    if "success_rate" in res:
        line += f" | success rate {res['success_rate']:.2f}"
    print(line)
    summary = {k: v for k, v in res.items() if not isinstance(v, dict)}
    summary["per_task"] = res["per_task"]
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
