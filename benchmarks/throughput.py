"""Throughput of agents at their default size: env steps/s, act latency, updates/s, peak memory.

    python benchmarks/throughput.py                        # iqrl + dcmpc on dmc/walker-walk, size auto
    python benchmarks/throughput.py --agents iqrl --size paper --updates 20
    python benchmarks/throughput.py --agents dcmpc --override world_model=kla agent.planner.iterations=3

Every figure comes from this one run on this machine; compare rows, not runs. Updates use the
real replay buffer filled with real environment transitions (random actions).
"""

from __future__ import annotations

import argparse
import gc
import resource
import time
from pathlib import Path

import numpy as np
import torch

from agents import AGENTS
from training.setup import build_agent, build_buffer, build_env, compose_config, setup_process

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(agent_name: str, args: argparse.Namespace) -> dict:
    overrides = [f"agent={agent_name}", f"env={args.env}", f"agent.size={args.size}", f"device={args.device}"]
    overrides += [f"threads={args.threads}", "wandb.mode=disabled"]
    cfg = compose_config(overrides + args.override)
    device = setup_process(cfg)
    env = build_env(cfg)
    agent = build_agent(cfg, env, device)
    buffer = build_buffer(cfg, env, ROOT / "bench_out")
    params = agent.num_params()

    # Env steps/s with random actions (the seed-phase rate), filling the buffer on the way.
    obs, _ = env.reset(seed=0)
    repeat = env.config.action_repeat
    t0 = time.perf_counter()
    n = 0
    while n < args.env_decisions:
        a = env.action_space.sample()
        nxt, r, term, trunc, _ = env.step(a)
        buffer.add(obs, a, r, nxt, term, term or trunc)
        obs = nxt if not (term or trunc) else env.reset()[0]
        n += 1
    env_sps = n * repeat / (time.perf_counter() - t0)

    # Updates/s on real batches.
    bs, H = agent.batch_size, agent.sample_horizon
    for _ in range(2):
        agent.update(buffer.sample(bs, H))
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.updates):
        agent.update(buffer.sample(bs, H))
    if device.type == "cuda":
        torch.cuda.synchronize()
    ups = args.updates / (time.perf_counter() - t0)

    # Act latency in training mode (planning agents plan here), after the updates: a model's uncertainty
    # estimator (SFR's posterior, say) is fitted by then, as it is in training.
    agent.begin_episode(100)
    for _ in range(3):
        agent.act(obs, eval_mode=False, step=0)
    t0 = time.perf_counter()
    for _ in range(args.acts):
        agent.act(obs, eval_mode=False, step=0)
    act_ms = (time.perf_counter() - t0) / args.acts * 1e3
    # Training-loop rate at UTD 1: one act + one update per decision, plus the env step.
    train_sps = repeat / (1 / (env_sps / repeat) + act_ms / 1e3 + 1 / ups)
    out = {
        "agent": agent_name,
        "size": args.size,
        "device": str(device),
        "params_M": params / 1e6,
        "batch": bs,
        "env_steps_per_s": env_sps,
        "act_ms": act_ms,
        "updates_per_s": ups,
        "train_env_steps_per_s": train_sps,
        "peak_rss_MiB": peak_rss_mib(),
    }
    if device.type == "cuda":
        out["peak_cuda_MiB"] = torch.cuda.max_memory_allocated() / 2**20
    env.close()
    del agent, buffer
    gc.collect()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", nargs="+", default=[a for a in ("iqrl", "dcmpc") if a in AGENTS])
    p.add_argument("--env", default="dmc/walker-walk")
    p.add_argument("--size", default="auto", choices=["auto", "paper", "small"])
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--env-decisions", type=int, default=2000)
    p.add_argument("--acts", type=int, default=50)
    p.add_argument("--updates", type=int, default=50)
    p.add_argument(
        "--override", nargs="*", default=[], help="extra Hydra overrides, e.g. agent.planner.num_samples=256"
    )
    args = p.parse_args()
    rows = [measure(a, args) for a in args.agents]
    cols = list(rows[0].keys())
    for r in rows[1:]:
        cols += [c for c in r if c not in cols]
    print(f"\nthroughput on {args.env} ({torch.get_num_threads()} threads, torch {torch.__version__})")
    print(" | ".join(f"{c:>14}" for c in cols))
    for r in rows:
        cells = [f"{r[c]:>14.2f}" if isinstance(r.get(c), float) else f"{str(r.get(c, '')):>14}" for c in cols]
        print(" | ".join(cells))
    print("train_env_steps_per_s = env steps/s of a UTD-1 loop (env step + act + one update per decision)")
    np.set_printoptions()


if __name__ == "__main__":
    main()
