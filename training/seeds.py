"""The seed offsets of a run, named once: every env and evaluation episode seeds from ``cfg.seed`` plus one of these.

* Training episode ``k`` (online loop) resets with ``seed + k``; the training env is built with ``seed``.
* Evaluation envs are built with ``seed + EVAL_ENV_SEED_OFFSET`` (the offline loop's held-out task ``i``: ``+ i``).
* Evaluation episode ``i`` resets with ``seed + EVAL_EPISODE_SEED_OFFSET + i`` in both loops, so every evaluation of
  a run sees the same initial states (and, in changing-dynamics envs, the same tasks), disjoint from training's.
* A restored agent's env (eval.py, benchmarks) is built with ``seed + RESTORED_ENV_SEED_OFFSET`` (``+ i`` per held-out
  task); its episodes reset with eval.py's own ``seed + i``.
"""

EVAL_ENV_SEED_OFFSET = 10_000
EVAL_EPISODE_SEED_OFFSET = 1_000_003
RESTORED_ENV_SEED_OFFSET = 20_000

__all__ = ["EVAL_ENV_SEED_OFFSET", "EVAL_EPISODE_SEED_OFFSET", "RESTORED_ENV_SEED_OFFSET"]
