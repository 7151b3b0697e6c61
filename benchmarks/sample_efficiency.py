"""Sample efficiency: eval return vs env steps for an agent on several tasks and seeds, against published curves.

    python benchmarks/sample_efficiency.py --agent dcmpc --tasks dmc/cartpole-swingup,dmc/reacher-easy \\
        --steps 100000 --seeds 1,2,3 --reference path/to/dmc-dcmpc.csv [--reference path/to/base_tdmpc2.csv]
    python benchmarks/sample_efficiency.py ... -o agent.size=paper -o device=cuda      # any train.py override

Every (task, seed) is one ``python train.py`` run in its own process, in ``<out>/<agent>/<task>/s<seed>``; a run
that was interrupted is resumed from its last checkpoint and a finished one is not run again, so the benchmark
itself can be killed and restarted. Runs go one after the other (``--threads`` torch threads each).

Outputs, in ``--out``:

* ``returns.csv``: ``agent, task, seed, env_step, return_mean, return_std`` for every evaluation of every run
  (env steps count the action repeat, as the papers do);
* ``summary.csv`` and a printed table: per task, mean ± std over seeds of the eval return at the last
  evaluated step, the wall time of the runs, and for each reference curve the published mean at that step
  and our mean as a fraction of it;
* ``sample_efficiency.png``: one panel per task, our mean ± std over seeds with the reference curves overlaid.

Reference files are CSVs with at least ``env, env_step, episode_reward`` (and optionally ``agent``, ``seed``)
columns, tasks named ``domain-task`` (DMC) or ``mw-<task>`` (Meta-World) as in the DC-MPC and TD-MPC2
repositories' result files. The published curves are averaged over seeds per env step; the value "at" a step
is linearly interpolated between the two nearest published steps.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common.files import atomic_write_bytes  # noqa: E402

WALL_SAVE_INTERVAL_S = 60.0


def reference_name(task: str) -> str:
    """Our env id -> the reference files' task name: ``dmc/walker-walk`` -> ``walker-walk``,
    ``metaworld/reach-v3`` -> ``mw-reach``."""
    suite, _, name = task.partition("/")
    if suite == "metaworld":
        for suffix in ("-v3", "-v2"):
            name = name.removesuffix(suffix)
        return f"mw-{name}"
    return name


def load_reference(path: Path) -> dict[tuple[str, str], dict[float, list[float]]]:
    """``{(agent, task): {env_step: [return per seed]}}`` from one reference CSV."""
    curves: dict[tuple[str, str], dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"env", "env_step", "episode_reward"} - set(reader.fieldnames or [])
        if missing:
            raise SystemExit(f"error: {path}: reference CSV lacks column(s) {sorted(missing)}")
        for row in reader:
            if row["episode_reward"] in ("", None):
                continue
            agent = row.get("agent") or path.stem
            curves[(agent, row["env"])][float(row["env_step"])].append(float(row["episode_reward"]))
    return curves


def reference_at(curve: dict[float, list[float]], step: float) -> float:
    steps = np.array(sorted(curve))
    means = np.array([np.mean(curve[s]) for s in steps])
    return float(np.interp(step, steps, means))


def run_dir_of(out: Path, agent: str, task: str, seed: int) -> Path:
    return out / agent / task.replace("/", "_") / f"s{seed}"


def finished_step(run_dir: Path) -> int | None:
    """The last evaluated env step of a run, if it has an eval.csv."""
    path = run_dir / "eval.csv"
    if not path.exists():
        return None
    rows = list(csv.DictReader(open(path, newline="")))
    return int(float(rows[-1]["step"])) if rows else None


def train(args: argparse.Namespace, task: str, seed: int) -> float:
    """Run (or resume) one training run to ``args.steps``; return its wall time in seconds (0 if already done)."""
    run_dir = run_dir_of(args.out, args.agent, task, seed)
    done = finished_step(run_dir)
    if done is not None and done >= args.steps and (run_dir / "checkpoints" / "latest").exists():
        print(f"[{task} seed {seed}] done already ({done} env steps): {run_dir}")
        return 0.0
    cmd = [sys.executable, str(ROOT / "train.py")]
    if (run_dir / "checkpoints" / "latest").exists():
        cmd += [f"resume={run_dir}", f"trainer.steps={args.steps}"]
        print(f"[{task} seed {seed}] resuming {run_dir}")
    else:
        cmd += [
            f"agent={args.agent}",
            f"env={task}",
            f"seed={seed}",
            f"trainer.steps={args.steps}",
            f"trainer.eval_every={args.eval_every}",
            f"trainer.eval_episodes={args.eval_episodes}",
            f"threads={args.threads}",
            f"run_dir={run_dir}",
            "trainer.video=none",
            "trainer.progress_bar=false",
            *args.override,
        ]
        print(f"[{task} seed {seed}] {' '.join(cmd[1:])}")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    before = read_wall(run_dir)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    while True:
        # The total is saved while the run goes, so a benchmark killed mid-run loses at most one interval of it.
        try:
            returncode = proc.wait(timeout=WALL_SAVE_INTERVAL_S)
            break
        except subprocess.TimeoutExpired:
            write_wall(run_dir, before + time.perf_counter() - t0)
    wall = time.perf_counter() - t0
    write_wall(run_dir, before + wall)
    if returncode != 0:
        raise SystemExit(f"error: the run for {task} seed {seed} failed (exit {returncode}); see {run_dir}")
    return wall


def write_wall(run_dir: Path, seconds: float) -> None:
    """Save a run's total wall time (all its segments, resumed ones included) to ``wall_seconds.txt``."""
    if run_dir.is_dir():  # train.py creates it; until then there is nothing to account for
        atomic_write_bytes(run_dir / "wall_seconds.txt", f"{seconds:.1f}\n".encode())


def read_wall(run_dir: Path) -> float:
    path = run_dir / "wall_seconds.txt"
    return float(path.read_text()) if path.exists() else 0.0


def collect(args: argparse.Namespace, tasks: list[str], seeds: list[int]) -> list[dict]:
    rows = []
    for task in tasks:
        for seed in seeds:
            path = run_dir_of(args.out, args.agent, task, seed) / "eval.csv"
            if not path.is_file():
                raise SystemExit(f"error: no evaluations for {task} seed {seed}: {path} does not exist")
            for r in csv.DictReader(open(path, newline="")):
                rows.append(
                    {
                        "agent": args.agent,
                        "task": task,
                        "seed": seed,
                        "env_step": int(float(r["step"])),
                        "return_mean": float(r["return_mean"]),
                        "return_std": float(r["return_std"]),
                    }
                )
    return rows


def plot(path: Path, rows: list[dict], refs: dict, tasks: list[str], agent: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        by_step: dict[int, list[float]] = defaultdict(list)
        for r in rows:
            if r["task"] == task:
                by_step[r["env_step"]].append(r["return_mean"])
        steps = np.array(sorted(by_step))
        mean = np.array([np.mean(by_step[s]) for s in steps])
        std = np.array([np.std(by_step[s]) for s in steps])
        n = len(next(iter(by_step.values()), []))
        ax.plot(steps, mean, label=f"{agent} (this run, {n} seed{'s' if n != 1 else ''})", lw=2)
        ax.fill_between(steps, mean - std, mean + std, alpha=0.25)
        for (ref_agent, ref_task), curve in refs.items():
            if ref_task != reference_name(task):
                continue
            ref_steps = np.array(sorted(curve))
            keep = ref_steps <= max(steps.max() * 1.5, ref_steps.min())
            ax.plot(
                ref_steps[keep],
                [np.mean(curve[s]) for s in ref_steps[keep]],
                ls="--",
                label=f"{ref_agent} (published)",
            )
        ax.set_title(task)
        ax.set_xlabel("env steps")
        ax.set_ylabel("eval return")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--agent", default="dcmpc")
    p.add_argument("--tasks", default="dmc/cartpole-swingup,dmc/reacher-easy,dmc/cup-catch,dmc/walker-walk")
    p.add_argument("--steps", type=int, default=100_000, help="env steps per run (action repeat counted)")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--eval-every", type=int, default=25_000)
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reference", type=Path, action="append", default=[], help="published curves (CSV); repeatable")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "sample_efficiency")
    p.add_argument("-o", "--override", action="append", default=[], help="extra train.py override; repeatable")
    p.add_argument("--no-train", action="store_true", help="only summarise the runs already in --out")
    args = p.parse_args()
    tasks = [t for t in args.tasks.split(",") if t]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    for ref in args.reference:
        if not ref.is_file():
            raise SystemExit(f"error: reference file {ref} does not exist")
    refs: dict = {}
    for ref in args.reference:
        refs.update(load_reference(ref))
    args.out.mkdir(parents=True, exist_ok=True)

    if not args.no_train:
        for task in tasks:
            for seed in seeds:
                train(args, task, seed)
    rows = collect(args, tasks, seeds)
    with open(args.out / "returns.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    ref_keys = sorted({a for a, _ in refs})
    header = ["task", "env_step", "seeds", "return (mean ± std)", "wall h (sum)"]
    header += [f"{a} published" for a in ref_keys] + [f"vs {a}" for a in ref_keys]
    table = []
    for task in tasks:
        last = min(max(r["env_step"] for r in rows if r["task"] == task and r["seed"] == s) for s in seeds)
        finals = [r["return_mean"] for r in rows if r["task"] == task and r["env_step"] == last]
        wall = sum(read_wall(run_dir_of(args.out, args.agent, task, s)) for s in seeds) / 3600
        line = [task, str(last), str(len(finals)), f"{np.mean(finals):.1f} ± {np.std(finals):.1f}", f"{wall:.2f}"]
        pubs = []
        for a in ref_keys:
            curve = refs.get((a, reference_name(task)))
            pubs.append(None if curve is None else reference_at(curve, last))
        line += ["-" if v is None else f"{v:.1f}" for v in pubs]
        line += ["-" if v is None or v == 0 else f"{np.mean(finals) / v:.0%}" for v in pubs]
        table.append(line)
    with open(args.out / "summary.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(table)
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(header)]
    print(" | ".join(h.ljust(wd) for h, wd in zip(header, widths)))
    print("-+-".join("-" * wd for wd in widths))
    for r in table:
        print(" | ".join(c.ljust(wd) for c, wd in zip(r, widths)))
    plot(args.out / "sample_efficiency.png", rows, refs, tasks, args.agent)
    print(f"wrote {args.out / 'returns.csv'}, {args.out / 'summary.csv'}, {args.out / 'sample_efficiency.png'}")


if __name__ == "__main__":
    main()
