"""Offline meta-RL variants (a)-(d) x seeds on one dataset: held-out-task return, mean ± std over seeds.

    python benchmarks/offline_meta.py --dataset data/cheetah_vel --seeds 1,2,3 --steps 20000
    python benchmarks/offline_meta.py --make-toy data/toy_reach --dataset data/toy_reach --steps 2000 --seeds 1,2
    python benchmarks/offline_meta.py --dataset ... --variants b_context,c_ertrl -o agent.hparams.entropy_coef=5

Variants (``agents.meta_rl.VARIANTS``): ``a_none`` (no task representation), ``b_context`` (context
encoder, FOCAL only), ``c_ertrl`` (context encoder + entropy regulariser), ``d_world_model`` (contextual
latent world model). Every run goes through ``training.offline.run_offline`` with
``experiment=offline_meta`` and the given overrides, one after the other in this process; the table
reports each variant's held-out return before training (update 0) and after (online context protocol
of ``training/offline.py``), mean ± std over seeds, the per-group means (moderate / extreme OOD, where the
family has them), the success rate (Meta-World) and the wall time per run.

``--make-toy DIR`` first writes a small two-policy dataset (one file per task, see
:func:`make_toy_dataset`) on ``--toy-tasks`` evenly spaced training tasks of ``--toy-family`` (default
ml1_reach, whose hidden goal must be inferred from the rewards in the context): uniform random actions,
and a fixed deterministic policy: for ml1_reach the hand-to-goal-box-centre controller
(:func:`reach_centre_policy`, task-agnostic), otherwise a linear policy ``a = tanh(gain (W s + b))``
with ``W, b`` drawn once from ``--toy-policy-seed``.
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

import envs.task_families as task_families  # noqa: E402
from agents.meta_rl import VARIANTS  # noqa: E402
from envs.datasets import save_dataset  # noqa: E402
from scripts import collect_dataset  # noqa: E402
from training.offline import run_offline  # noqa: E402
from training.setup import compose_config  # noqa: E402

LINEAR_POLICY_ID = 5
CENTRE_POLICY_ID = 6
"""``policy_ids`` of the toy datasets' deterministic policies (random is 0, as in collect_dataset)."""


def linear_policy(obs_dim: int, action_dim: int, seed: int, gain: float = 1.0) -> Any:
    """The fixed deterministic policy ``a = tanh(gain * (W s + b))``, ``W ~ N(0, 1)``, ``b ~ N(0, 0.25)``."""
    cd = collect_dataset
    rng = np.random.default_rng(seed)
    W = rng.normal(0.0, 1.0, (action_dim, obs_dim))
    b = rng.normal(0.0, 0.5, action_dim)
    return cd.Policy(
        "linear",
        lambda obs: np.tanh(gain * (W @ np.asarray(obs, dtype=np.float64) + b)).astype(np.float32),
        info={"description": f"deterministic a = tanh({gain} (W s + b)), W, b from seed {seed}", "seed": seed},
    )


def reach_centre_policy(gain: float = 10.0) -> Any:
    """ml1_reach's fixed deterministic controller: hand to the centre of the goal box, whatever the goal.

    ``a_xyz = tanh(gain * (c - hand_xyz))`` with ``c`` the centre of reach-v3's goal box and the hand
    position ``obs[:3]``; gripper action 0. Linear in the observation before the tanh, like :func:`linear_policy`.
    """
    cd = collect_dataset
    centre = (np.asarray(task_families.ML1_REACH_GOAL_LOW) + np.asarray(task_families.ML1_REACH_GOAL_HIGH)) / 2

    def act(obs: np.ndarray) -> np.ndarray:
        a = np.zeros(4, dtype=np.float32)
        a[:3] = np.tanh(gain * (centre - np.asarray(obs[:3], dtype=np.float64)))
        return a

    return cd.Policy(
        "centre",
        act,
        info={"description": f"deterministic a_xyz = tanh({gain} (goal-box centre - hand)), gripper 0"},
    )


def make_toy_dataset(
    out_dir: str | Path,
    *,
    family: str = "ml1_reach",
    tasks: Sequence[str] | int = 4,
    episodes_per_policy: int = 2,
    deterministic_episodes: int | None = None,
    deterministic: str = "auto",
    max_episode_steps: int = 200,
    seed: int = 0,
    policy_seed: int = 0,
    policy_gain: float = 1.0,
) -> list[Path]:
    """Collect a two-policy dataset (random + one fixed deterministic policy) with one file per task.

    ``tasks`` are task ids of ``family``, or a number of evenly spaced train tasks. The deterministic
    policy is ``"linear"`` (:func:`linear_policy` with ``policy_seed``, ``policy_gain``) or ``"centre"``
    (:func:`reach_centre_policy`, ml1_reach only); ``"auto"`` picks ``centre`` for ml1_reach, else
    ``linear``. ``episodes_per_policy`` episodes of each policy per task (``deterministic_episodes``
    overrides the deterministic policy's count) of ``max_episode_steps`` env steps. Episode ``k`` of a
    task resets with ``seed + k``; random actions come from ``collect_dataset.random_policy(seed, task
    index)``. Returns the written files (``<family>_<split>-<i>.h5``, as ``collect_dataset --tasks`` writes).
    """
    cd = collect_dataset
    fam = task_families.get_family(family)
    if isinstance(tasks, int):
        train = fam.train_tasks()
        tasks = [train[i] for i in np.unique(np.round(np.linspace(0, len(train) - 1, tasks)).astype(int))]
    written = []
    for task_id in tasks:
        task = fam.task(task_id)
        env = fam.make(task.task_id, seed=seed, max_episode_steps=max_episode_steps)
        try:
            obs_dim, action_dim = int(np.prod(env.observation_space.shape)), int(np.prod(env.action_space.shape))
            n_det = episodes_per_policy if deterministic_episodes is None else deterministic_episodes
            kind = ("centre" if fam.name == "ml1_reach" else "linear") if deterministic == "auto" else deterministic
            if kind == "centre":
                if fam.name != "ml1_reach":
                    raise ValueError("the 'centre' policy is for ml1_reach only")
                det = (CENTRE_POLICY_ID, reach_centre_policy(), n_det)
            elif kind == "linear":
                det = (LINEAR_POLICY_ID, linear_policy(obs_dim, action_dim, policy_seed, policy_gain), n_det)
            else:
                raise ValueError(f"deterministic policy must be auto, linear or centre, got {deterministic!r}")
            policies = [
                (cd.POLICY_IDS["random"], cd.random_policy(action_dim, seed, task.global_index), episodes_per_policy),
                det,
            ]
            total = sum(n for _, _, n in policies)
            out = cd.Collected()
            described, episode = [], 0
            for pid, policy, count in policies:
                for _ in range(count):
                    arrays, ret = cd.rollout_episode(env, policy, seed=seed + episode)
                    n = len(arrays["rewards"])
                    for k, v in arrays.items():
                        out.add(k, v)
                    out.add("policy_ids", np.full(n, pid, dtype=np.int16))
                    out.add("task_ids", np.full(n, task.global_index, dtype=np.int64))
                    out.add("task_params", np.repeat(task.param_vector()[None], n, axis=0))
                    out.returns.setdefault(policy.name, []).append(ret)
                    episode += 1
                described.append(
                    {"id": pid, "name": policy.name, "episodes": count, "fraction": count / total, **policy.info}
                )
            attrs = {
                "env_id": task.task_id,
                "collection_policy": {
                    "source": "rollout",
                    "mix": {p["name"]: p["fraction"] for p in described},
                    "policies": described,
                },
                "created_by": "benchmarks/offline_meta.py",
                "action_repeat": int(env.action_repeat),
                "max_episode_steps": int(env.max_episode_steps),
                "seed": int(seed),
                "family": fam.name,
                "task_param_names": list(task.param_names),
            }
            path = Path(out_dir) / f"{fam.name}_{task.split}-{task.index:02d}.h5"
            written.append(save_dataset(path, out.arrays(), attrs))
        finally:
            env.close()
    return written


def run_variant(dataset: str, variant: str, seed: int, overrides: Sequence[str], out: Path) -> dict[str, Any]:
    """One offline run of ``variant`` (a key of ``agents.meta_rl.VARIANTS``); returns its final eval + time."""
    if variant not in VARIANTS:
        raise SystemExit(f"unknown variant {variant!r}; valid: {sorted(VARIANTS)}")
    var = [f"agent.hparams.{k}={v}" for k, v in VARIANTS[variant].items()]
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
