"""benchmarks/sample_efficiency.py end to end on a tiny run: CSVs, summary against a reference, resume, wall time."""

from __future__ import annotations

import csv

from conftest import TINY, run_script

# The benchmark sets these itself; the rest of TINY shrinks the agent and the trainer.
OWN_KEYS = ("env=", "agent=", "trainer.steps=", "trainer.eval_every=", "trainer.eval_episodes=", "threads=")
TINY_OVERRIDES = [o for o in TINY if not o.startswith(OWN_KEYS) and o not in ("trainer.video=none",)]


def _bench(out, steps: int, reference) -> str:
    args = ["--agent", "iqrl", "--tasks", "gym/Pendulum-v1", "--steps", str(steps), "--seeds", "1"]
    args += ["--eval-every", "400", "--eval-episodes", "1", "--threads", "1", "--out", str(out)]
    args += ["--reference", str(reference)]
    for o in TINY_OVERRIDES:
        args += ["-o", o]
    res = run_script("benchmarks/sample_efficiency.py", args, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return res.stdout


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_benchmark_runs_resumes_and_accounts_wall_time(tmp_path):
    out = tmp_path / "se"
    reference = tmp_path / "ref.csv"
    reference.write_text(
        "agent,env,env_step,episode_reward,seed\n"
        "PUB,Pendulum-v1,0,-1000,1\nPUB,Pendulum-v1,800,-200,1\n"
        "PUB,Pendulum-v1,0,-1000,2\nPUB,Pendulum-v1,800,-400,2\n"
    )
    _bench(out, 400, reference)
    run_dir = out / "iqrl" / "gym_Pendulum-v1" / "s1"
    assert float((run_dir / "wall_seconds.txt").read_text()) > 0
    (run_dir / "wall_seconds.txt").write_text("1000.0\n")  # as if earlier segments had taken 1000 s

    # A longer budget resumes the same run from its checkpoint; its wall time adds to the earlier segments'.
    stdout = _bench(out, 800, reference)
    assert f"resuming {run_dir}" in stdout
    wall_total = float((run_dir / "wall_seconds.txt").read_text())
    assert 1000.0 < wall_total < 1000.0 + 600

    returns = _rows(out / "returns.csv")
    assert [int(r["env_step"]) for r in returns] == [400, 800]
    evals = _rows(run_dir / "eval.csv")
    assert [float(r["return_mean"]) for r in returns] == [float(r["return_mean"]) for r in evals]

    (summary,) = _rows(out / "summary.csv")
    final = float(returns[-1]["return_mean"])
    assert summary["task"] == "gym/Pendulum-v1" and summary["env_step"] == "800" and summary["seeds"] == "1"
    assert summary["return (mean ± std)"] == f"{final:.1f} ± 0.0"
    assert summary["PUB published"] == "-300.0"  # mean over the two published seeds at 800
    assert summary["vs PUB"] == f"{final / -300.0:.0%}"
    assert float(summary["wall h (sum)"]) == round(wall_total / 3600, 2)
    assert (out / "sample_efficiency.png").stat().st_size > 0

    # A finished run is not trained again and its wall time stays.
    stdout = _bench(out, 800, reference)
    assert "done already (800 env steps)" in stdout
    assert float((run_dir / "wall_seconds.txt").read_text()) == wall_total


def test_summary_of_a_missing_run_is_a_clear_error(tmp_path):
    args = ["--agent", "iqrl", "--tasks", "gym/Pendulum-v1", "--seeds", "1", "--out", str(tmp_path), "--no-train"]
    res = run_script("benchmarks/sample_efficiency.py", args)
    assert res.returncode != 0
    assert "no evaluations for gym/Pendulum-v1 seed 1" in res.stderr and "eval.csv does not exist" in res.stderr
