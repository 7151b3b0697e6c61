"""Offline meta-RL variants (a)-(d) x seeds on one dataset: held-out-task return, mean ± std over seeds.

    python benchmarks/offline_meta.py --dataset data/cheetah_vel --seeds 1,2,3 --steps 20000
    python benchmarks/offline_meta.py --make-toy data/toy_reach --dataset data/toy_reach --steps 2000 --seeds 1,2
    python benchmarks/offline_meta.py --dataset ... --variants b_context,c_ertrl -o agent.task_loss.entropy_coef=5

Variants (``agents.meta_rl.VARIANTS``): ``a_none`` (no task representation), ``b_context`` (context
encoder, FOCAL only), ``c_ertrl`` (context encoder + entropy regulariser), ``d_world_model`` (contextual
latent world model). Every run goes through ``training.offline.run_offline`` with
``experiment=offline_meta`` and the given overrides, one after the other in this process; the table
reports each variant's held-out return before training (update 0) and after (online context protocol
of ``training/offline.py``), mean ± std over seeds, the per-group means (moderate / extreme OOD, where the
family has them), the success rate (Meta-World) and the wall time per run.

``--make-toy DIR`` first writes a small two-policy dataset (one file per task, see
:func:`envs.toy_datasets.make_toy_dataset`) on ``--toy-tasks`` evenly spaced training tasks of
``--toy-family`` (default ml1_reach, whose hidden goal must be inferred from the rewards in the context):
uniform random actions, and a fixed deterministic policy: for ml1_reach the hand-to-goal-box-centre
controller (:func:`envs.toy_datasets.reach_centre_policy`, task-agnostic), otherwise a linear policy
``a = tanh(gain (W s + b))`` with ``W, b`` drawn once from ``--toy-policy-seed``.
"""

from __future__ import annotations

import argparse
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

from agents.meta_rl import VARIANTS  # noqa: E402
from envs.toy_datasets import make_toy_dataset  # noqa: E402
from training.offline import run_offline  # noqa: E402
from training.setup import compose_config  # noqa: E402


def run_variant(dataset: str, variant: str, seed: int, overrides: Sequence[str], out: Path) -> dict[str, Any]:
    """One offline run of ``variant`` (a key of ``agents.meta_rl.VARIANTS``); returns its final eval + time."""
    if variant not in VARIANTS:
        raise SystemExit(f"unknown variant {variant!r}; valid: {sorted(VARIANTS)}")
    var = [f"agent.{k}={v}" for k, v in VARIANTS[variant].items()]
    args = [
        "experiment=offline_meta",
        f"dataset={dataset}",
        f"seed={seed}",
        f"run_dir={out / variant / f's{seed}'}",
        "wandb.mode=disabled",
        "offline.progress_bar=false",
        *var,
        *overrides,
    ]
    cfg = compose_config(args)
    t0 = time.perf_counter()
    final = run_offline(cfg)
    assert final is not None
    seconds = time.perf_counter() - t0
    rows = (Path(cfg.run_dir) / "eval.csv").read_text().splitlines()
    col = rows[0].split(",").index("return_mean")
    initial = float(rows[1].split(",")[col]) if rows[1].split(",")[0] in ("0", "0.0") else float("nan")
    return {**final, "initial_return": initial, "seconds": seconds}


def format_table(results: dict[str, list[dict[str, Any]]]) -> str:
    """``variant | seeds | initial and final held-out return mean ± std | per-group | success | s/run``."""
    skip = {"return_mean", "return_std"}
    groups = sorted({k for rs in results.values() for r in rs for k in r if k.startswith("return_")} - skip)
    groups += ["success_rate"] if any("success_rate" in r for rs in results.values() for r in rs) else []
    head = f"{'variant':<16} {'seeds':>5} {'initial return':>18} {'held-out return':>18}"
    head += "".join(f" {g:>18}" for g in groups) + f" {'s/run':>7}"
    lines = [head, "-" * len(head)]
    for name, rs in results.items():
        r = np.array([x["return_mean"] for x in rs])
        r0 = np.array([x["initial_return"] for x in rs])
        line = (
            f"{name:<16} {len(rs):>5} {f'{r0.mean():.1f} ± {r0.std():.1f}':>18} {f'{r.mean():.1f} ± {r.std():.1f}':>18}"
        )
        for g in groups:
            v = np.array([x[g] for x in rs if g in x])
            line += f" {f'{v.mean():.2f} ± {v.std():.2f}' if len(v) else '-':>18}"
        line += f" {np.mean([x['seconds'] for x in rs]):>7.0f}"
        lines.append(line)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="dataset file or directory (with attrs/family)")
    p.add_argument("--make-toy", metavar="DIR", help="first write the two-policy toy dataset into DIR")
    p.add_argument("--toy-family", default="ml1_reach", help="family of the toy dataset (default ml1_reach)")
    p.add_argument("--toy-tasks", type=int, default=8, help="evenly spaced train tasks in the toy dataset")
    p.add_argument("--toy-episodes", type=int, default=2, help="episodes per policy and task (toy)")
    p.add_argument("--toy-policy", default="auto", help="deterministic policy: auto | linear | centre (ml1_reach)")
    p.add_argument("--toy-policy-seed", type=int, default=0, help="seed of the linear policy's W, b")
    p.add_argument("--toy-policy-gain", type=float, default=1.0, help="gain of the linear policy")
    p.add_argument("--variants", default="a_none,b_context,c_ertrl,d_world_model")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--steps", type=int, default=20000, help="gradient updates per run (offline.steps)")
    p.add_argument("--eval-max-tasks", type=int, default=None, help="evenly spaced held-out tasks (default all)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/bench_offline_meta", help="run directories go here")
    p.add_argument("-o", "--override", action="append", default=[], help="extra Hydra override (repeatable)")
    args = p.parse_args(argv)
    if args.make_toy:
        files = make_toy_dataset(
            args.make_toy,
            family=args.toy_family,
            tasks=args.toy_tasks,
            episodes_per_policy=args.toy_episodes,
            deterministic=args.toy_policy,
            policy_seed=args.toy_policy_seed,
            policy_gain=args.toy_policy_gain,
        )
        print(f"toy dataset: {len(files)} files in {args.make_toy}")
    overrides = [
        f"offline.steps={args.steps}",
        f"offline.eval_every={args.steps}",
        f"offline.checkpoint_every={args.steps}",
        f"offline.log_every={max(args.steps // 10, 1)}",
        f"threads={args.threads}",
        *([f"offline.eval_max_tasks={args.eval_max_tasks}"] if args.eval_max_tasks else []),
        *args.override,
    ]
    out = Path(args.out)
    results: dict[str, list[dict[str, Any]]] = {}
    for variant in args.variants.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            res = run_variant(args.dataset, variant, seed, overrides, out)
            results.setdefault(variant, []).append(res)
            print(f"{variant} seed {seed}: held-out return {res['return_mean']:.1f} ({res['seconds']:.0f} s)")
    print()
    print(f"dataset {args.dataset} | {args.steps} updates | overrides {args.override or '-'}")
    print(format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
