"""Calibration of world-model uncertainty: does the predicted uncertainty rank the model's real errors?

    python benchmarks/uncertainty.py runs/<run_a> [runs/<run_b> ...] --out uncertainty.csv
    python benchmarks/uncertainty.py --quick --out uncertainty.csv     # trains its own small run first

For every trained DC-MPC run and every estimator that applies to its world model (DCWM: ``entropy``, ``ensemble``,
``sfr``; KLA: ``kla``, the belief variance), it measures:

* **Errors.** From the latent of a real observation ``z_0``, the model rolls out along the real actions,
  ``ẑ_{h+1} = next(ẑ_h, a_h)``. At horizons ``k = 1, 2, 3`` it compares the rollout with the real transitions:
  * the latent error ``mean_d (ẑ_k − z_k)²``, where ``z_k`` is the latent of the real observation;
  * the reward error ``|r̂_{k−1} − r_{k−1}|``.
* **Uncertainty.** The predicted uncertainty at horizon ``k`` is ``Σ_{h<k} u(ẑ_h, a_h)``: the uncertainty
  accumulated along the same rollout.
* **ρ.** The Spearman rank correlation between uncertainty and error, per horizon, on two datasets:
  * ``rho_in``: held-out windows of the run's own replay data (every 10th episode). These episodes never fit
    the post-hoc estimators, though the world model itself trained on them.
  * ``rho_off``: windows from a different policy, ``--off-episodes`` episodes of uniformly random actions in
    the run's env.
  ``rho_in`` and ``rho_off`` are the means over horizons 1-3.
* **Cost.** ``plan_ms`` is the median time per planned action (training mode, ``planner.optimism`` on) with the
  estimator. ``plan_ratio`` is that time over planning without one, measured interleaved in this process.

Estimators the run did not train are fitted after the fact on the other 90 % of its replay data:
* the ensemble's heads read detached latents, so training them on the final encoder matches what training
  alongside the model would give them;
* SFR is post-hoc by design: it is fitted once on up to ``--sfr-points`` transitions.

Outputs:
* ``--out`` (CSV): columns ``estimator, rho_in, rho_off, plan_ms``, then ``target`` (``latent`` or ``reward``),
  ``plan_ratio``, ``run``, and the per-horizon ρs.
* Next to it, a PNG of uncertainty against error at horizon 1 for every estimator and target.
"""

from __future__ import annotations

import argparse
import copy
import csv
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from training.checkpoint import load_checkpoint  # noqa: E402
from training.setup import build_agent, build_env, setup_process  # noqa: E402
from world_models.uncertainty import ESTIMATORS  # noqa: E402

HORIZONS = (1, 2, 3)
FIELDS = ["estimator", "rho_in", "rho_off", "plan_ms", "target", "plan_ratio", "run"] + [
    f"rho_{split}_h{k}" for split in ("in", "off") for k in HORIZONS
]
QUICK_RUN = [
    "agent=dcmpc",
    "env=dmc/cartpole-swingup",
    "trainer.steps=12000",
    "trainer.seed_steps=2000",
    "trainer.eval_every=12000",
    "trainer.eval_episodes=1",
    "trainer.checkpoint_every=12000",
    "trainer.video=none",
    "trainer.progress_bar=false",
    "agent.exploration.episodes=10",
    "wandb.mode=disabled",
    "seed=1",
]


# ------------------------------------------------------------------ statistics
def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x``, ties given their mean rank."""
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(1, len(x) + 1)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=r)
    return sums[inverse] / counts[inverse]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's ρ: the Pearson correlation of the ranks (nan when either side is constant)."""
    rx, ry = ranks(np.asarray(x, float)), ranks(np.asarray(y, float))
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


# ------------------------------------------------------------------ data
def episode_windows(data: dict, length: int) -> torch.Tensor:
    """Start rows of every window of ``length`` transitions inside one episode: ``[W]``."""
    ep = data["episode"]
    n = len(ep) - length + 1
    if n < 1:
        return torch.zeros(0, dtype=torch.long)
    same = torch.stack([ep[i : i + n] == ep[:n] for i in range(length)]).all(0)
    return same.nonzero().flatten()


def gather_windows(data: dict, starts: torch.Tensor, length: int) -> dict[str, torch.Tensor]:
    """``obs [W, L+1, O]``, ``action [W, L, A]``, ``reward [W, L]`` of the windows starting at ``starts``."""
    idx = starts[:, None] + torch.arange(length)
    obs = torch.cat([data["obs"][idx], data["next_obs"][idx[:, -1:]]], 1)
    return {"obs": obs, "action": data["action"][idx], "reward": data["reward"][idx]}


def random_policy_data(env, episodes: int, seed: int) -> dict[str, torch.Tensor]:
    """Transitions of ``episodes`` episodes of uniformly random actions, in the replay buffer's layout."""
    rows: dict[str, list] = {k: [] for k in ("obs", "action", "reward", "next_obs", "episode")}
    rng = np.random.default_rng(seed)
    low, high = env.action_space.low, env.action_space.high
    for e in range(episodes):
        obs, _ = env.reset(seed=seed + e)
        done = False
        while not done:
            a = rng.uniform(low, high).astype(np.float32)
            nxt, r, term, trunc, _ = env.step(a)
            for k, v in zip(rows, (obs, a, r, nxt, e), strict=True):
                rows[k].append(torch.as_tensor(np.asarray(v), dtype=torch.long if k == "episode" else torch.float32))
            obs, done = nxt, term or trunc
    return {k: torch.stack(v) for k, v in rows.items()}


def split_replay(data: dict, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Window starts of (held-out episodes: every 10th, fitting episodes: the rest)."""
    starts = episode_windows(data, length)
    held = data["episode"][starts] % 10 == 0
    return starts[held], starts[~held]


def subsample(starts: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return starts[torch.randperm(len(starts), generator=g)[:n]]


# ------------------------------------------------------------------ estimators
def estimators_for(cfg) -> list[str]:
    name = cfg.world_model.name
    if name == "dcwm":
        return ["entropy", "ensemble", "sfr"]
    if name == "kla":
        return ["kla"]
    return []


def agent_with(cfg, env, device, state: dict, estimator: str):
    """The run's agent rebuilt with ``estimator`` (planner optimism on so planning pays for it), its weights
    loaded; the estimator's own weights come from the run when it trained them, else they stay to be fitted.

    ``"none"`` is the plain planner, whatever the run trained with: no DCWM estimator, no uncertainty term. The
    weights of an estimator the run trained but this agent lacks (an ensemble run measured for SFR) are left out.
    """
    cfg = copy.deepcopy(cfg)
    if estimator in ESTIMATORS and "uncertainty" in cfg.world_model:  # DCWM; KLA's variance has no switch
        cfg.world_model.uncertainty.estimator = estimator
    cfg.agent.planner.optimism = 0.0 if estimator == "none" else 1.0
    cfg.agent.planner.caution, cfg.agent.planner.prior_fallback = 0.0, False
    agent = build_agent(cfg, env, device)
    missing, unexpected = agent.nets.load_state_dict(state["nets"], strict=False)
    own = ("wm.ensemble.", "wm.reward_sfr.")
    if any(not k.startswith(own) for k in missing + unexpected):
        raise RuntimeError(f"weights do not fit: missing {missing}, unexpected {unexpected}")
    return agent, not missing


def fit_ensemble(wm, data: dict, starts: torch.Tensor, updates: int, batch: int, lr: float, seed: int) -> None:
    """Train the ensemble heads alone on one-step transitions ``(z_t, a_t) -> (z_{t+1}, r_t)`` of the fit windows."""
    with torch.no_grad():
        z = wm.encode(data["obs"][starts])
        z_next = wm.encode(data["next_obs"][starts])
    x = torch.cat([z, data["action"][starts]], -1)
    r = data["reward"][starts]
    opt = torch.optim.AdamW(wm.ensemble.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(updates):
        i = torch.randint(0, len(x), (batch,), generator=g)
        loss = wm.ensemble.loss(x[i], z_next[i], r[i])
        opt.zero_grad()
        loss.backward()
        opt.step()


@torch.no_grad()
def fit_sfr(wm, data: dict, starts: torch.Tensor, seed: int) -> None:
    x = torch.cat([wm.encode(data["obs"][starts]), data["action"][starts]], -1)
    wm.reward_sfr.sfr.fit(x, data["reward"][starts], generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ measurement
@torch.no_grad()
def rollout_errors(wm, windows: dict) -> dict[str, np.ndarray]:
    """Per window and horizon: accumulated uncertainty ``[W, 3]`` and the ``latent`` / ``reward`` errors ``[W, 3]``."""
    k = len(HORIZONS)
    off = wm.window_offset
    z_true = wm.window_latents(windows["obs"], list(range(k + 1)))  # [W, k+1, D]
    z = z_true[:, 0]
    unc, lat, rew = [], [], []
    total = torch.zeros(len(z))
    for h in range(k):
        a = windows["action"][:, off + h]
        r_hat = wm.reward(z, a)
        total = total + wm.uncertainty(z, a)
        z = wm.next(z, a)
        unc.append(total.clone())
        lat.append((z - z_true[:, h + 1]).square().mean(-1))
        rew.append((r_hat - windows["reward"][:, off + h]).abs())
    return {
        "uncertainty": torch.stack(unc, 1).numpy(),
        "latent": torch.stack(lat, 1).numpy(),
        "reward": torch.stack(rew, 1).numpy(),
    }


def plan_times(agents: dict, obs: np.ndarray, acts: int, rounds: int) -> dict[str, float]:
    """Median ms per planned action (training mode) of each agent, measured in interleaved rounds."""
    times: dict[str, list[float]] = {name: [] for name in agents}
    for agent in agents.values():
        agent.begin_episode(1000)
        for _ in range(3):
            agent.act(obs, eval_mode=False, step=10**6)
    for _ in range(rounds):
        for name, agent in agents.items():
            for _ in range(acts):
                t0 = time.perf_counter()
                agent.act(obs, eval_mode=False, step=10**6)
                times[name].append(time.perf_counter() - t0)
    return {name: 1e3 * float(np.median(t)) for name, t in times.items()}


def measure_run(run: Path, args: argparse.Namespace) -> tuple[list[dict], dict]:
    ckpt = load_checkpoint(run, map_location="cpu", load_buffer=True)
    if ckpt.buffer is None:
        raise SystemExit(f"{run}: the checkpoint holds no replay buffer (needed for in-distribution windows)")
    cfg = OmegaConf.create(ckpt.config_yaml)
    if cfg.agent.name != "dcmpc":
        raise SystemExit(f"{run}: agent {cfg.agent.name!r}; this benchmark measures DC-MPC runs (agent=dcmpc)")
    cfg.device, cfg.threads = "cpu", args.threads
    device = setup_process(cfg)
    env = build_env(cfg, seed_offset=7919)
    names = estimators_for(cfg)
    if not names:
        raise SystemExit(f"{run}: world model {cfg.world_model.name!r} has no estimator measured here")
    replay = ckpt.buffer["data"]
    off_data = random_policy_data(env, args.off_episodes, seed=args.seed)
    base, _ = agent_with(cfg, env, device, ckpt.state["agent"], "none")
    length = base.wm.window_offset + len(HORIZONS)
    held, fit = split_replay(replay, length)
    win_in = gather_windows(replay, subsample(held, args.windows, args.seed), length)
    win_off = gather_windows(off_data, subsample(episode_windows(off_data, length), args.windows, args.seed), length)
    fit_one = subsample(fit, args.sfr_points, args.seed)
    print(f"{run}: {len(held)} held-out / {len(fit)} fitting replay windows, {len(off_data['episode'])} random-policy "
          f"transitions; {len(win_in['obs'])} + {len(win_off['obs'])} windows measured")  # fmt: skip

    agents, rows, scatter = {"none": base}, [], {}
    for name in names:
        agent, trained = agent_with(cfg, env, device, ckpt.state["agent"], name)
        t0 = time.perf_counter()
        if name == "ensemble" and not trained:
            fit_ensemble(agent.wm, replay, fit, args.ensemble_updates, args.ensemble_batch, args.ensemble_lr, args.seed)
        if name == "sfr" and not trained:
            fit_sfr(agent.wm, replay, fit_one, args.seed)
        fit_s = time.perf_counter() - t0
        agents[name] = agent
        res_in, res_off = rollout_errors(agent.wm, win_in), rollout_errors(agent.wm, win_off)
        scatter[name] = (res_in, res_off)
        for target in ("latent", "reward"):
            row = {"estimator": name, "target": target, "run": str(run)}
            for split, res in (("in", res_in), ("off", res_off)):
                rhos = [spearman(res["uncertainty"][:, k - 1], res[target][:, k - 1]) for k in HORIZONS]
                row.update({f"rho_{split}_h{k}": rho for k, rho in zip(HORIZONS, rhos, strict=True)})
                row[f"rho_{split}"] = float(np.nanmean(rhos)) if not all(np.isnan(rhos)) else float("nan")
            rows.append(row)
        how = "no weights of its own" if name in ("entropy", "kla") else "trained in the run"
        print(f"  {name}: {how if trained else f'fitted after the fact in {fit_s:.1f} s'}")
    obs = np.asarray(off_data["obs"][0])
    ms = plan_times(agents, obs, args.plan_acts, args.plan_rounds)
    for row in rows:
        row["plan_ms"] = ms[row["estimator"]]
        row["plan_ratio"] = ms[row["estimator"]] / ms["none"]
    env.close()
    return rows, {"scatter": scatter, "plan_ms_none": ms["none"]}


# ------------------------------------------------------------------ output
def write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for row in rows:
            w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})


def write_png(path: Path, scatters: dict[str, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(run, est, target) for run, sc in scatters.items() for est in sc for target in ("latent", "reward")]
    cols = 4
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.4 * rows), squeeze=False)
    for ax, (run, est, target) in zip(axes.flat, panels):
        res_in, res_off = scatters[run][est]
        for res, label, colour in ((res_in, "replay (held out)", "C0"), (res_off, "random policy", "C3")):
            ax.scatter(res["uncertainty"][:, 0], res[target][:, 0], s=3, alpha=0.4, c=colour, label=label)
        ax.set_xlabel(f"{est} uncertainty (h=1)")
        ax.set_ylabel(f"{target} error (h=1)")
        ax.set_title(f"{Path(run).name}: {est} / {target}", fontsize=9)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, markerscale=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(rows: list[dict]) -> None:
    print(f"\n{'run':<28} {'estimator':<9} {'target':<7} {'rho_in':>7} {'rho_off':>8} {'plan_ms':>8} {'x plain':>8}")
    for r in rows:
        print(
            f"{Path(r['run']).name[:28]:<28} {r['estimator']:<9} {r['target']:<7} {r['rho_in']:>7.3f} "
            f"{r['rho_off']:>8.3f} {r['plan_ms']:>8.1f} {r['plan_ratio']:>8.2f}"
        )


def quick_run(out_dir: Path, threads: int) -> Path:
    """Train the small run ``--quick`` measures (DC-MPC, small preset, dmc/cartpole-swingup)."""
    run_dir = out_dir / "quick_run"
    if not (run_dir / "checkpoints" / "latest").exists():
        cmd = [sys.executable, str(ROOT / "train.py"), *QUICK_RUN, f"threads={threads}", f"run_dir={run_dir}"]
        print("training:", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT)
    return run_dir


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", type=Path, help="run directories (or checkpoint directories) of DC-MPC runs")
    p.add_argument("--quick", action="store_true", help="train a small run first and measure it, smaller sizes")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "uncertainty" / "uncertainty.csv")
    p.add_argument("--windows", type=int, default=2000, help="windows per dataset (in / off)")
    p.add_argument("--off-episodes", type=int, default=4, help="random-policy episodes for the off-distribution set")
    p.add_argument("--ensemble-updates", type=int, default=3000, help="post-hoc training steps of the ensemble")
    p.add_argument("--ensemble-batch", type=int, default=256)
    p.add_argument("--ensemble-lr", type=float, default=1e-3)
    p.add_argument("--sfr-points", type=int, default=20000, help="replay transitions the post-hoc SFR absorbs")
    p.add_argument("--plan-acts", type=int, default=20, help="planned actions per timing round")
    p.add_argument("--plan-rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.quick:
        args.windows, args.off_episodes, args.ensemble_updates, args.sfr_points = 1000, 2, 1500, 5000
        args.runs = [*args.runs, quick_run(args.out.parent, args.threads)]
    if not args.runs:
        p.error("give one or more run directories, or --quick")
    rows, scatters = [], {}
    for run in args.runs:
        run_rows, extra = measure_run(run, args)
        rows += run_rows
        scatters[str(run)] = extra["scatter"]
        print(f"  planning without an estimator: {extra['plan_ms_none']:.1f} ms per action")
    write_csv(args.out, rows)
    png = args.out.with_suffix(".png")
    write_png(png, scatters)
    print_table(rows)
    print(f"\nwrote {args.out} and {png}")
    return rows


if __name__ == "__main__":
    main()
