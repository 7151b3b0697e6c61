"""Does DC-MPC's planner fail through its world model or through its critic? (DMC checkpoints)

Evaluates one checkpoint twice over the same episodes (episode i resets with seed ``seed + i``, as in
``eval.py``): MPPI as trained, scoring each candidate action sequence with the world model,

    J_model = Σ_{h<H} ρ^h r̂(z_h, a_h) + ρ^H V(z_H),    z_{h+1} = model(z_h, a_h),

and MPPI whose scores come from the simulator instead: each candidate is played from a copy of the
current physics state and the state is restored,

    J_real = Σ_{h<H} ρ^h r_h + ρ^H V(encode(o_H)),

with the agent's own value V = Q(z, π(z)) over the critics the planner uses, in both. Same critic, same
planner: episodes that fail with J_model and succeed with J_real fail through the model; episodes that
fail with both, through the critic (or the prior). J_real costs ``H · action_repeat`` physics steps per
candidate (≈ 2 min per reacher episode on one core), so run a few episodes.

    python benchmarks/planner_oracle.py --checkpoint <run>/checkpoints/step_000000100000 --episodes 0 1 2
    python benchmarks/planner_oracle.py --checkpoint <run> --episodes 0 --agent planner.num_samples=256
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from omegaconf import OmegaConf

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments.planner_oracle import real_value_estimator  # noqa: E402
from training.evaluation import evaluate  # noqa: E402
from training.setup import agent_from_checkpoint  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--episodes", type=int, nargs="+", default=[0, 1, 2], help="episode indices (seed + i)")
    p.add_argument("--seed", type=int, default=424242, help="eval.py's default")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--agent",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="agent settings changed for this run only, as eval.py's +agent.<key>=<value>: e.g. "
        "planner.num_samples=256 plan_mode=policy (the weights stay; shape-changing settings are refused)",
    )
    args = p.parse_args()

    bad = [kv for kv in args.agent if "=" not in kv]
    if bad:
        raise SystemExit(f"--agent takes key=value pairs, got {bad}")
    try:
        settings = OmegaConf.from_dotlist(args.agent)
    except Exception as e:  # noqa: BLE001 - OmegaConf's parse errors have several types
        raise SystemExit(f"--agent takes key=value pairs: {e}") from e
    try:
        restored = agent_from_checkpoint(args.checkpoint, device="cpu", threads=args.threads, agent=settings)
    except ValueError as e:  # a bad setting (ConfigError) or checkpoint (CheckpointError) names itself
        raise SystemExit(f"error: {e}") from e
    cfg, ckpt, env, agent = restored.cfg, restored.ckpt, restored.env, restored.agent
    if cfg.agent.name != "dcmpc" or not str(cfg.env).startswith("dmc/"):
        env.close()
        raise SystemExit(f"{ckpt.path}: needs a DC-MPC checkpoint of a dmc/ task, got {cfg.agent.name} on {cfg.env}")
    if cfg.world_model.name != "dcwm":
        env.close()
        raise SystemExit(
            f"{ckpt.path}: needs world_model=dcwm, got {cfg.world_model.name} "
            "(a KLA belief is filtered, not encoded from one obs)"
        )
    model_estimate = agent.planner.estimate_value
    oracle = real_value_estimator(agent, env)

    print(f"{cfg.agent.name} on {cfg.env} | {ckpt.path} (env step {ckpt.step})")
    print(f"{'episode':>7} {'J_model':>9} {'J_real':>9} {'s (real)':>9}")
    rows = []
    for i in args.episodes:
        row = []
        for estimate in (model_estimate, oracle):
            agent.planner.estimate_value = estimate
            t0 = time.time()
            res = evaluate(
                agent,
                env,
                episodes=1,
                seed=args.seed + i,
                episode_index=int(ckpt.state["trainer"]["episode"]),
                step=ckpt.step,
            )
            row.append(res["returns"][0])
        rows.append(row)
        print(f"{i:>7} {row[0]:>9.1f} {row[1]:>9.1f} {time.time() - t0:>9.0f}", flush=True)
    m = np.array(rows).mean(0)
    print(f"{'mean':>7} {m[0]:>9.1f} {m[1]:>9.1f}")
    env.close()


if __name__ == "__main__":
    main()
