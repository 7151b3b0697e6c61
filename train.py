"""Train an agent: ``python train.py agent=iqrl env=dmc/walker-walk seed=1``.

Resume a run from its latest checkpoint: ``python train.py resume=<run_dir>`` (optionally with
``trainer.steps=N``, or ``offline.steps=N`` for an offline run, to extend it). Sweep seeds locally:
``python train.py -m seed=1,2,3``. Offline meta-RL from a dataset: ``python train.py experiment=offline_meta
dataset=<file or dir>``. ``trainer.loop`` (online | offline, set by the experiment presets) picks the loop
(:mod:`training.loop`).
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from training.loop import SetupError, TrainingStopped, run_training

__all__ = ["SetupError", "TrainingStopped", "main", "run"]


def run(cfg: DictConfig) -> dict | None:
    """Train (or resume) as ``cfg`` says; returns the final evaluation. Raises :class:`SetupError` for bad input
    found before training, :class:`TrainingStopped` when training cannot go on."""
    return run_training(cfg)


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
