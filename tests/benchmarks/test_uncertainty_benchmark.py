"""benchmarks/uncertainty.py: Spearman's ρ against the textbook formula, episode-bounded windows, and the whole
benchmark on a tiny real DC-MPC run (CSV columns, PNG, every DCWM estimator measured)."""

from __future__ import annotations

import csv
import importlib.util

import numpy as np
import torch
from conftest import ROOT, SMALL_PLANNER, TINY

import train as train_script
from training.setup import compose_config

_spec = importlib.util.spec_from_file_location("uncertainty_bench", ROOT / "benchmarks" / "uncertainty.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_spearman_matches_the_formula_without_ties_and_averages_ties():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal(50), rng.standard_normal(50)
    d = np.argsort(np.argsort(x)) - np.argsort(np.argsort(y))
    assert np.isclose(bench.spearman(x, y), 1 - 6 * (d**2).sum() / (50 * (50**2 - 1)), rtol=0, atol=1e-12)
    assert np.isclose(bench.spearman(x, 3 * x + 1), 1.0) and np.isclose(bench.spearman(x, -np.exp(x)), -1.0)
    np.testing.assert_array_equal(bench.ranks(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1.0, 3.5, 2.0])
    assert np.isnan(bench.spearman(x, np.ones(50)))


def test_windows_never_cross_an_episode():
    data = {"episode": torch.tensor([0, 0, 0, 1, 1, 1, 1, 2])}
    np.testing.assert_array_equal(bench.episode_windows(data, 3).numpy(), [0, 3, 4])


def test_benchmark_on_a_tiny_run(tmp_path):
    small = [
        "agent=dcmpc",
        *SMALL_PLANNER,
        "world_model.uncertainty.sfr_inducing=16",
        "trainer.steps=1200",
        "trainer.seed_steps=400",
    ]
    run = tmp_path / "run"
    train_script.run(compose_config([*TINY, *small, f"run_dir={run}"]))
    out = tmp_path / "unc.csv"
    args = [str(run), "--out", str(out), "--windows", "200", "--off-episodes", "1", "--ensemble-updates", "100"]
    rows = bench.main(args + ["--sfr-points", "300", "--plan-acts", "2", "--plan-rounds", "1"])
    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames[:4] == ["estimator", "rho_in", "rho_off", "plan_ms"]
        written = list(reader)
    assert [(r["estimator"], r["target"]) for r in written] == [
        (e, t) for e in ("entropy", "ensemble", "sfr") for t in ("latent", "reward")
    ]
    for r in rows:
        for key in ("rho_in", "rho_off", "rho_in_h1", "rho_off_h3"):
            assert -1.0 <= r[key] <= 1.0, (r["estimator"], key, r[key])
        assert r["plan_ms"] > 0 and r["plan_ratio"] > 0
    assert out.with_suffix(".png").stat().st_size > 10_000


def test_a_run_trained_with_an_estimator_is_measured_for_the_others_against_a_plain_planner():
    cfg = compose_config(
        [
            *TINY,
            "agent=dcmpc",
            *SMALL_PLANNER,
            "world_model.uncertainty.estimator=ensemble",
            "agent.planner.optimism=1.0",
            "agent.planner.caution=1.0",
        ]
    )
    env, device = bench.build_env(cfg), torch.device("cpu")
    state = {"nets": bench.build_agent(cfg, env, device).nets.state_dict()}
    for estimator, trained in (("ensemble", True), ("entropy", True), ("sfr", False), ("none", True)):
        agent, own = bench.agent_with(cfg, env, device, state, estimator)
        assert own == trained, estimator
        assert agent.cfg.planner.optimism == (0.0 if estimator == "none" else 1.0)
        assert agent.cfg.planner.caution == 0.0
        assert agent.wm.cfg.uncertainty.estimator == estimator
        assert (agent.wm.ensemble is not None) == (estimator == "ensemble")
