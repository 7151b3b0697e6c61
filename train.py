"""Train an agent: ``python train.py agent=iqrl env=dmc/walker-walk seed=1``.

Resume a run from its latest checkpoint: ``python train.py resume=<run_dir>`` (optionally with
``trainer.steps=N`` to extend it). Sweep seeds locally: ``python train.py -m seed=1,2,3``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from training.checkpoint import CheckpointError
from training.setup import (
    build_agent,
    build_buffer,
    build_env,
    build_logger,
    resume_config,
    setup_process,
    trainer_config,
    wandb_id,
)
from training.trainer import Trainer, TrainingStopped


class SetupError(Exception):
    """Bad input found before training starts (config, names, checkpoint)."""


def run(cfg: DictConfig) -> dict | None:
    try:
        if cfg.get("dataset") or "offline" in cfg:  # offline training from data on disk (experiment=offline_meta)
            from training.offline import run_offline

            return run_offline(cfg)
        ckpt = None
        if cfg.resume:
            cfg, ckpt = resume_config(cfg, "trainer.steps")
        run_dir = Path(cfg.run_dir)
        if cfg.wandb.id is None:
            cfg.wandb.id = wandb_id(run_dir)
        device = setup_process(cfg)
        tcfg = trainer_config(cfg)
        env = build_env(cfg)
    except (CheckpointError, ValueError, OmegaConfBaseException) as e:
        raise SetupError(str(e)) from e
    eval_env = build_env(cfg, seed_offset=10_000)
    try:
        try:
            agent = build_agent(cfg, env, device)
        except (ValueError, OmegaConfBaseException) as e:
            raise SetupError(str(e)) from e
        run_dir.mkdir(parents=True, exist_ok=True)
        buffer = build_buffer(cfg, env, run_dir)
        config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
        if ckpt is None:
            (run_dir / "config.yaml").write_text(config_yaml)
        n_params = sum(p.numel() for p in agent.nets.parameters())
        print(
            f"run {run_dir} | agent {cfg.agent.name} ({n_params / 1e6:.2f}M params) on {device} | env {cfg.env} "
            f"obs {env.observation_space.shape} act {env.action_space.shape} | buffer {buffer.capacity} "
            f"transitions, {buffer.nbytes / 2**20:.0f} MiB ({cfg.buffer.storage})"
        )
        title = f"{cfg.agent.name} on {cfg.env} (seed {cfg.seed})"
        logger = build_logger(cfg, run_dir, ckpt.step if ckpt is not None else None, title)
        trainer = Trainer(
            tcfg,
            agent=agent,
            env=env,
            eval_env=eval_env,
            buffer=buffer,
            logger=logger,
            run_dir=run_dir,
            config_yaml=config_yaml,
            seed=int(cfg.seed),
        )
        if ckpt is not None:
            try:
                trainer.load_state_dict(ckpt.state, ckpt.buffer)
            except (KeyError, RuntimeError, ValueError) as e:
                raise SetupError(f"{ckpt.path}: does not match this run's agent/buffer ({e})") from e
            print(f"resumed from {ckpt.path} at env step {trainer.env_step}")
        try:
            final = trainer.train()
        finally:
            logger.close()
        if final is not None:
            print(
                f"done: {trainer.env_step} env steps | final eval return {final['return_mean']:.1f} "
                f"± {final['return_std']:.1f} | run dir {run_dir}"
            )
        return final
    finally:
        env.close()
        eval_env.close()


@hydra.main(config_path="configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    try:
        final = run(cfg)
    except SetupError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except TrainingStopped as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    return None if final is None else final["return_mean"]


if __name__ == "__main__":
    main()
