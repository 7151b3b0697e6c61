"""DC-MPC with the DCWM vs the KLA belief-state world model, fully and partially observed (DMC).

    python benchmarks/kla_pomdp.py --env dmc/cartpole-balance --steps 10000 --seeds 1
    python benchmarks/kla_pomdp.py --env dmc/pendulum-swingup --steps 20000 --seeds 1,2 --mask velocity
    python benchmarks/kla_pomdp.py --world-models kla --observability pomdp -o world_model.burn_in=8

Settings: ``world_model`` in {dcwm, kla} x observability in {full, pomdp}; ``pomdp`` hides the DMC observation
keys given by ``--mask`` (``env_settings.obs_mask``, e.g. ``[velocity]``: the agent sees positions only, so a
memoryless encoder cannot tell how the system moves). Every run goes through ``train.run`` (the real
trainer, ``agent=dcmpc agent.size=small threads=1`` unless overridden), one after the other in this process.
The table gives the final evaluation return (mean ± std over seeds; each run's return is the mean over
``--eval-episodes`` episodes) and the mean wall time per run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tensordict  # noqa: F401  (before any MuJoCo env is built, as in the other benchmarks)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import train as train_script  # noqa: E402
from training.setup import compose_config  # noqa: E402

WORLD_MODELS = ("dcwm", "kla")
OBSERVABILITY = ("full", "pomdp")


def overrides_for(
    args: argparse.Namespace, world_model: str, observability: str, seed: int, run_dir: Path
) -> list[str]:
    """Hydra overrides of one run."""
    o = [
        "agent=dcmpc",
        f"world_model={world_model}",
        f"env={args.env}",
        "agent.size=small",
        f"trainer.steps={args.steps}",
        f"trainer.seed_steps={args.seed_steps}",
        f"trainer.eval_every={args.steps}",  # one evaluation, at the end
        f"trainer.eval_episodes={args.eval_episodes}",
        f"trainer.checkpoint_every={10 * args.steps}",
        "trainer.video=none",
        "trainer.progress_bar=false",
        "buffer.capacity=" + str(max(args.steps, 1000)),
        "wandb.mode=disabled",
        f"threads={args.threads}",
        f"seed={seed}",
        f"run_dir={run_dir}",
    ]
    if observability == "pomdp":
        o.append(f"env_settings.obs_mask=[{args.mask}]")
    return o + list(args.override)


def run_one(overrides: list[str]) -> tuple[float, float]:
    """Train one run; returns (final eval return, wall seconds)."""
    cfg = compose_config(overrides)
    t0 = time.perf_counter()
    final = train_script.run(cfg)
    return float(final["return_mean"]), time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="dmc/cartpole-balance")
    p.add_argument("--steps", type=int, default=20_000, help="env steps per run")
    p.add_argument("--seed-steps", type=int, default=2_000)
    p.add_argument("--seeds", default="1", help="comma-separated seeds")
    p.add_argument("--eval-episodes", type=int, default=5)
    p.add_argument("--mask", default="velocity", help="DMC observation key(s) hidden in the pomdp setting")
    p.add_argument("--world-models", default=",".join(WORLD_MODELS))
    p.add_argument("--observability", default=",".join(OBSERVABILITY))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="run directories go here (default: a temporary directory)")
    p.add_argument("-o", "--override", action="append", default=[], help="extra Hydra override (repeatable)")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    wms = args.world_models.split(",")
    obs_settings = args.observability.split(",")
    for name, vals, valid in (("--world-models", wms, WORLD_MODELS), ("--observability", obs_settings, OBSERVABILITY)):
        if not set(vals) <= set(valid):
            p.error(f"{name} must be a subset of {valid}, got {vals}")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="kla_pomdp_"))

    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for observability in obs_settings:
        for wm in wms:
            for seed in seeds:
                run_dir = out / f"{observability}_{wm}_s{seed}"
                ret, wall = run_one(overrides_for(args, wm, observability, seed, run_dir))
                results.setdefault((observability, wm), []).append((ret, wall))
                print(f"[kla_pomdp] {observability:5s} {wm:4s} seed {seed}: return {ret:.1f}, {wall:.0f} s", flush=True)

    print(f"\n{args.env}, {args.steps} env steps, seeds {seeds}, pomdp hides [{args.mask}]")
    print(f"| {'observability':13s} | {'world model':11s} | {'final return':>16s} | {'wall s / run':>12s} |")
    print(f"|{'-' * 15}|{'-' * 13}|{'-' * 18}|{'-' * 14}|")
    for (observability, wm), rows in results.items():
        rets = np.array([r for r, _ in rows])
        walls = np.array([w for _, w in rows])
        cell = f"{rets.mean():.1f} ± {rets.std():.1f}"
        print(f"| {observability:13s} | {wm:11s} | {cell:>16s} | {walls.mean():12.0f} |")


if __name__ == "__main__":
    main()
