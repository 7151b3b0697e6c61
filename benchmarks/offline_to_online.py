"""Offline-to-online adaptation curves: residual + context encoder vs plain fine-tuning, x seeds, one offline policy.

    python benchmarks/offline_to_online.py --base runs/walker_param/offline_meta_rl_context/s1_... --steps 20000
    python benchmarks/offline_to_online.py --make-base runs/bench_o2o/base --steps 4000 --seeds 1,2
    python benchmarks/offline_to_online.py --base ... --env changing/walker_mass-test -o agent.context.context_size=20

Every run is ``python train.py experiment=offline_to_online agent.base_checkpoint=<base>
agent.mode=<mode>`` (``train.run`` in this process, one after the other): the shared online trainer in
an env whose dynamics are re-drawn at every reset (``--env``, default ``changing/walker_param``). The offline
policy itself is evaluated at env step 0 on the same evaluation episodes as every later evaluation (the trainer's
fixed evaluation seeds, hence the same tasks and initial states); both modes start from it exactly (the residual
starts as a no-op). Writes ``<out>/curves.csv`` (mode, seed, env_step, return_mean, return_std) and prints the
evaluation return per env step, mean ± std over seeds, for each mode.

``--make-base DIR`` first trains a small offline meta-RL policy into DIR (``experiment=offline_meta`` on a
two-policy toy dataset of ``--base-family`` collected with :func:`envs.toy_datasets.make_toy_dataset`).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensordict  # noqa: F401  (before any MuJoCo env is built: importing it afterwards segfaults here)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import train as train_script  # noqa: E402
from envs.toy_datasets import make_toy_dataset  # noqa: E402
from training.evaluation import evaluate  # noqa: E402
from training.offline import run_offline  # noqa: E402
from training.seeds import EVAL_ENV_SEED_OFFSET, EVAL_EPISODE_SEED_OFFSET  # noqa: E402
from training.setup import build_agent, build_env, compose_config, setup_process  # noqa: E402


def make_base(out: Path, family: str, tasks: int, updates: int, threads: int, overrides: Sequence[str]) -> Path:
    """Toy dataset + a short ``experiment=offline_meta`` run into ``out/run``; returns the run directory."""
    make_toy_dataset(
        out / "data", family=family, tasks=tasks, episodes_per_policy=2, deterministic="linear", policy_gain=0.3
    )
    run_dir = out / "run"
    args = [
        "experiment=offline_meta",
        f"dataset={out / 'data'}",
        f"run_dir={run_dir}",
        "agent.task_loss.entropy_coef=0",
        f"offline.steps={updates}",
        f"offline.eval_every={updates}",
        f"offline.checkpoint_every={updates}",
        f"offline.log_every={max(updates // 4, 1)}",
        "offline.eval_max_tasks=4",
        "offline.progress_bar=false",
        "wandb.mode=disabled",
        f"threads={threads}",
        *overrides,
    ]
    run_offline(compose_config(args))
    return run_dir


def initial_eval(cfg: Any) -> dict[str, float]:
    """The untouched offline policy (the agent before any update) on the trainer's evaluation episodes."""
    device = setup_process(cfg)
    env = build_env(cfg, seed_offset=EVAL_ENV_SEED_OFFSET)  # what the online loop builds as its eval env
    try:
        agent = build_agent(cfg, env, device)
        return evaluate(
            agent,
            env,
            episodes=int(cfg.trainer.eval_episodes),
            seed=int(cfg.seed) + EVAL_EPISODE_SEED_OFFSET,
            episode_index=0,
            step=0,
        )
    finally:
        env.close()


def run_mode(base: str, mode: str, seed: int, overrides: Sequence[str], out: Path) -> list[dict[str, Any]]:
    """One online run; returns its evaluation rows (env step 0 = the offline policy)."""
    run_dir = out / mode / f"s{seed}"
    cfg = compose_config(
        [
            "experiment=offline_to_online",
            f"agent.base_checkpoint={base}",
            f"agent.mode={mode}",
            f"seed={seed}",
            f"run_dir={run_dir}",
            "trainer.progress_bar=false",
            "wandb.mode=disabled",
            *overrides,
        ]
    )
    first = initial_eval(cfg)
    rows = [{"mode": mode, "seed": seed, "env_step": 0, "return_mean": first["return_mean"],
             "return_std": first["return_std"]}]  # fmt: skip
    t0 = time.perf_counter()
    train_script.run(cfg)
    seconds = time.perf_counter() - t0
    with open(run_dir / "eval.csv") as f:
        for r in csv.DictReader(f):
            rows.append(
                {"mode": mode, "seed": seed, "env_step": int(float(r["step"])),
                 "return_mean": float(r["return_mean"]), "return_std": float(r["return_std"])}
            )  # fmt: skip
    print(f"{mode} seed {seed}: return {rows[0]['return_mean']:.1f} -> {rows[-1]['return_mean']:.1f} ({seconds:.0f} s)")
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """``env step | <mode> mean ± std over seeds | ...``."""
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    steps = sorted({r["env_step"] for r in rows})
    head = f"{'env step':>9}" + "".join(f" {m + ' return':>22}" for m in modes)
    lines = [head, "-" * len(head)]
    for s in steps:
        line = f"{s:>9}"
        for m in modes:
            v = np.array([r["return_mean"] for r in rows if r["mode"] == m and r["env_step"] == s])
            cell = f"{v.mean():.1f} ± {v.std():.1f} (n={len(v)})" if len(v) else "-"
            line += f" {cell:>22}"
        lines.append(line)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", help="offline run dir (train.py experiment=offline_meta ...)")
    p.add_argument("--make-base", metavar="DIR", help="instead of --base: first train a small offline policy in DIR")
    p.add_argument("--base-family", default="walker_param", help="family of --make-base's toy dataset")
    p.add_argument("--base-tasks", type=int, default=8, help="train tasks in --make-base's toy dataset")
    p.add_argument("--base-updates", type=int, default=2000, help="offline updates of --make-base")
    p.add_argument("--env", default="changing/walker_param", help="changing-dynamics env of the online phase")
    p.add_argument("--modes", default="residual,finetune")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--steps", type=int, default=20000, help="online env steps per run (trainer.steps)")
    p.add_argument("--eval-every", type=int, default=None, help="env steps between evaluations (default steps/4)")
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/bench_offline_to_online", help="run directories and curves.csv go here")
    p.add_argument("-o", "--override", action="append", default=[], help="extra Hydra override (repeatable)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if bool(args.base) == bool(args.make_base):
        p.error("give exactly one of --base <offline run dir> and --make-base <dir>")
    if args.make_base:
        base_dir = Path(args.make_base)
        run_dir = make_base(base_dir, args.base_family, args.base_tasks, args.base_updates, args.threads, [])
        print(f"offline base policy: {run_dir}")
        base = str(run_dir)
    else:
        base = args.base
    eval_every = args.eval_every or max(args.steps // 4, 1)
    overrides = [
        f"env={args.env}",
        f"trainer.steps={args.steps}",
        f"trainer.eval_every={eval_every}",
        f"trainer.checkpoint_every={args.steps}",
        f"trainer.eval_episodes={args.eval_episodes}",
        f"buffer.capacity={args.steps}",  # every transition of the run fits (decisions <= env steps)
        f"threads={args.threads}",
        *args.override,
    ]
    rows: list[dict[str, Any]] = []
    for mode in args.modes.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            rows += run_mode(base, mode, seed, overrides, out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "curves.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["mode", "seed", "env_step", "return_mean", "return_std"])
        w.writeheader()
        w.writerows(rows)
    print()
    print(f"base {base} | env {args.env} | {args.steps} env steps | overrides {args.override or '-'}")
    print(format_table(rows))
    print(f"curves: {out / 'curves.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
