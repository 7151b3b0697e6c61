"""Write offline datasets (HDF5, schema in ``envs/datasets.py``) from a run's replay buffer or from rollouts.

Two sources:

* ``--from-run <run_dir>``: export the replay buffer saved in the run's latest checkpoint
  (``training.checkpoint.load_checkpoint(run_dir).buffer``). The buffer is a ring: rows are written in
  the order they were collected (oldest first), episode ends are where the episode number changes;
  an episode still open at the checkpoint is dropped (it has no end), and the oldest episode of a full
  ring may have lost its first steps. ``policy_ids``: 0 ``random`` for the seed phase
  (``trainer.seed_steps``, uniform random actions), 4 ``replay`` for the training agent's own
  (exploring) actions along its learning curve.
* ``--env <name>``: roll out behaviour policies. ``<name>`` is any ``make_env`` name, a task-family
  task id (``cheetah_vel/train-3``), or a family name with ``--tasks train|test|all`` (one file per
  task into the ``--out`` directory, or one file with ``--single-file``). Policies:

  - ``random``: uniform actions in [-1, 1] (numpy generator seeded from ``--seed`` and the task index);
  - ``checkpoint:<dir>``: an agent rebuilt from the checkpoint's saved config
    (``training.setup.build_agent``) with ``agent.load_state_dict(ckpt.state["agent"])``; acts with
    ``eval_mode=False`` (its exploration noise at the checkpoint's step: stochastic episodes, as the
    offline meta-RL papers collect);
  - ``--mix random=0.3,medium=0.4,expert=0.3`` with ``--medium <dir>`` and ``--expert <dir>``: the
    episodes of each task are split by these fractions (largest remainder), collected policy after
    policy. ``medium`` acts with ``eval_mode=False`` (noisy: a partly trained agent plus its own
    exploration noise), ``expert`` with ``eval_mode=True`` (the deterministic policy the agent is
    evaluated with). A checkpoint path may contain ``{task}``, replaced by the task id (run
    directories default to ``runs/<env>/...``, so ``runs/{task}/iqrl/s1`` finds one agent per task).

``policy_ids`` use fixed ids: 0 random, 1 medium, 2 expert, 3 checkpoint, 4 replay; the mix, the
checkpoint paths and steps and each policy's episode count are stored in the ``collection_policy``
attr. Episode ``k`` of a task resets with seed ``--seed + k``. A summary table (file, steps, episodes,
mean return per policy) is printed at the end.

Examples::

    python scripts/collect_dataset.py --env cheetah_vel/train-3 --policy random --episodes 10 --out data/cv3.h5
    python scripts/collect_dataset.py --env cheetah_vel --tasks train --episodes 50 \\
        --mix random=0.3,medium=0.4,expert=0.3 --medium 'runs/{task}/iqrl/s1' --expert ... --out data/cheetah_vel
    python scripts/collect_dataset.py --from-run runs/dmc/walker-walk/iqrl/s1_20250101-120000 --out data/ww.h5
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a plain script from anywhere
    sys.path.insert(0, str(ROOT))

import envs.task_families as task_families  # noqa: E402  (registers the families with make_env)
from envs import EnvConfig, make_env, resolve_defaults  # noqa: E402
from envs.datasets import DatasetError, load_dataset, save_dataset  # noqa: E402
from envs.rollouts import POLICY_IDS, Collected, Policy, random_policy, rollout_episode  # noqa: E402

CREATED_BY = "scripts/collect_dataset.py"
EVAL_MODE: dict[str, bool] = {"medium": False, "expert": True, "checkpoint": False}
"""``eval_mode`` each checkpoint policy acts with (see the module docstring)."""


class CollectError(Exception):
    """Bad command-line input found before or while collecting."""


# ---------------------------------------------------------------------------------------------------
# parsing


def parse_mix(text: str) -> dict[str, float]:
    """``"random=0.3,medium=0.4,expert=0.3"`` -> ``{"random": 0.3, ...}``; fractions must sum to 1."""
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            raise CollectError(f"--mix entry {part!r} must look like name=fraction")
        if name not in ("random", "medium", "expert"):
            raise CollectError(f"--mix policy {name!r} unknown; valid: random, medium, expert")
        try:
            frac = float(value)
        except ValueError:
            raise CollectError(f"--mix fraction {value!r} of {name!r} is not a number") from None
        if not 0.0 <= frac <= 1.0 or name in mix:
            raise CollectError(f"--mix {name}={value}: fractions must be in [0, 1], each policy once")
        mix[name] = frac
    if abs(sum(mix.values()) - 1.0) > 1e-6:
        raise CollectError(f"--mix fractions must sum to 1, got {sum(mix.values())}")
    return mix


def split_episodes(total: int, mix: dict[str, float]) -> dict[str, int]:
    """Episodes per policy: ``total * fraction`` rounded by largest remainder (sums to ``total``)."""
    exact = {k: total * v for k, v in mix.items()}
    counts = {k: int(np.floor(v)) for k, v in exact.items()}
    left = total - sum(counts.values())
    for k in sorted(mix, key=lambda k: (-(exact[k] - counts[k]), list(mix).index(k)))[:left]:
        counts[k] += 1
    return counts


# ---------------------------------------------------------------------------------------------------
# policies (Policy, random_policy, Collected and rollout_episode live in envs/rollouts.py)


def checkpoint_policy(name: str, path: str, env: Any, *, device: str, seed: int) -> Policy:
    """Rebuild the agent saved at ``path`` (run dir or checkpoint dir) for ``env``; acts per EVAL_MODE."""
    import torch
    from omegaconf import OmegaConf

    from training.checkpoint import CheckpointError, load_checkpoint
    from training.setup import restore_agent

    try:
        ckpt = load_checkpoint(path, map_location="cpu", load_buffer=False)
        saved = OmegaConf.create(ckpt.config_yaml)
        saved.device = device
        torch.manual_seed(seed)
        agent = restore_agent(ckpt, saved, env, torch.device(device))
    except CheckpointError as e:
        raise CollectError(f"--{name}: {e}") from e
    eval_mode = EVAL_MODE[name]
    step = int(ckpt.step)
    episode = int(ckpt.state.get("trainer", {}).get("episode", 0))
    if str(saved.env) != getattr(env, "spec_name", str(saved.env)):
        print(f"note: {name} policy trained on {saved.env!r} collects on {env.spec_name!r}", file=sys.stderr)

    def act(obs: np.ndarray) -> np.ndarray:
        return np.asarray(agent.act(obs, eval_mode=eval_mode, step=step), dtype=np.float32)

    return Policy(
        name,
        act,
        begin_episode=lambda: agent.begin_episode(episode),
        info={
            "checkpoint": str(ckpt.path),
            "step": step,
            "agent": str(saved.agent.name),
            "trained_on": str(saved.env),
            "eval_mode": eval_mode,
        },
    )


# ---------------------------------------------------------------------------------------------------
# rollouts


def collect_task(
    env_name: str, args: argparse.Namespace, plan: dict[str, int], paths: dict[str, str], out: Collected
) -> dict[str, Any]:
    """Collect ``plan`` episodes per policy on ``env_name`` into ``out``; return the policy descriptions."""
    env = make_env(
        EnvConfig(env_name, seed=args.seed, action_repeat=args.action_repeat, max_episode_steps=args.max_episode_steps)
    )
    try:
        if env.max_episode_steps is None:
            raise CollectError(f"{env_name} has no time limit: pass --max-episode-steps")
        task = task_families.task_of(env)
        action_dim = int(np.prod(env.action_space.shape))
        described = []
        episode = 0
        for name, count in plan.items():
            if count == 0:
                described.append({"id": POLICY_IDS[name], "name": name, "episodes": 0})
                continue
            if name == "random":
                policy = random_policy(action_dim, args.seed, task.global_index if task else 0)
            else:
                path = paths[name].replace("{task}", env_name)
                policy = checkpoint_policy(name, path, env, device=args.device, seed=args.seed)
            for _ in range(count):
                arrays, ret = rollout_episode(env, policy, seed=args.seed + episode)
                n = len(arrays["rewards"])
                for k, v in arrays.items():
                    out.add(k, v)
                out.add("policy_ids", np.full(n, POLICY_IDS[name], dtype=np.int16))
                out.add("task_ids", np.full(n, task.global_index if task else 0, dtype=np.int64))
                if task is not None:
                    out.add("task_params", np.repeat(task.param_vector()[None], n, axis=0))
                out.returns.setdefault(name, []).append(ret)
                episode += 1
            described.append({"id": POLICY_IDS[name], "name": name, "episodes": count, **policy.info})
        return {
            "policies": described,
            "action_repeat": env.action_repeat,
            "max_episode_steps": env.max_episode_steps,
            "task": task,
        }
    finally:
        env.close()


def rollout_attrs(env_id: str, mix: dict[str, float], meta: dict[str, Any], args: argparse.Namespace) -> dict:
    """File attrs of rollout data (schema attrs plus collection settings)."""
    policies = [dict(p, fraction=mix[p["name"]]) for p in meta["policies"]]
    attrs: dict[str, Any] = {
        "env_id": env_id,
        "collection_policy": {"source": "rollout", "mix": mix, "policies": policies},
        "created_by": CREATED_BY,
        "action_repeat": int(meta["action_repeat"]),
        "max_episode_steps": int(meta["max_episode_steps"]),
        "seed": int(args.seed),
    }
    task = meta["task"]
    if task is not None:
        attrs["family"] = task.family
        attrs["task_param_names"] = list(task.param_names)
    return attrs


# ---------------------------------------------------------------------------------------------------
# export of a run's replay buffer


def export_run(run_dir: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, list[float]]]:
    """Schema arrays + attrs of the replay buffer in ``run_dir``'s latest checkpoint (oldest row first).

    Returns ``(data, attrs, returns by policy name)``; episodes that began in the seed phase count as
    ``random`` in the summary.
    """
    from omegaconf import OmegaConf

    from training.checkpoint import CheckpointError, load_checkpoint

    try:
        ckpt = load_checkpoint(run_dir, map_location="cpu", load_buffer=True)
    except CheckpointError as e:
        raise CollectError(f"--from-run: {e}") from e
    if ckpt.buffer is None:
        raise CollectError(f"{ckpt.path}: the checkpoint holds no replay buffer (trainer.save_buffer=false)")
    buf = ckpt.buffer
    size, cursor, capacity = int(buf["size"]), int(buf["cursor"]), int(buf["capacity"])
    if size == 0:
        raise CollectError(f"{ckpt.path}: the saved replay buffer is empty")
    rows = {k: v.numpy() for k, v in buf["data"].items()}
    order = (cursor + np.arange(size)) % capacity if size == capacity else np.arange(size)
    episode = rows["episode"][order]
    ends = np.empty(size, dtype=bool)
    ends[:-1] = episode[1:] != episode[:-1]
    ends[-1] = int(buf["episode"]) > int(episode[-1])  # the last episode was closed
    keep = int(np.flatnonzero(ends)[-1]) + 1 if ends.any() else 0
    if keep == 0:
        raise CollectError(f"{ckpt.path}: the replay buffer holds no complete episode")
    order, ends = order[:keep], ends[:keep]
    terminals = rows["terminated"][order] > 0.5

    saved = OmegaConf.create(ckpt.config_yaml)
    env_id = str(saved.env)
    settings = OmegaConf.to_container(saved.env_settings, resolve=True) if "env_settings" in saved else {}
    table = OmegaConf.to_container(saved.suite_defaults, resolve=True) if "suite_defaults" in saved else None
    resolved = resolve_defaults({"name": env_id, "seed": int(saved.get("seed", 0)), **settings}, table)
    seed_steps = int(saved.trainer.seed_steps) if "trainer" in saved else 0
    added_before = int(buf["num_added"]) - size  # rows ever added before the oldest row still held
    global_row = added_before + np.arange(keep)
    policy_ids = np.where(global_row * resolved.action_repeat < seed_steps, POLICY_IDS["random"], POLICY_IDS["replay"])

    data: dict[str, np.ndarray] = {
        "observations": rows["obs"][order].astype(np.float32),
        "actions": rows["action"][order].astype(np.float32),
        "rewards": rows["reward"][order].astype(np.float32),
        "next_observations": rows["next_obs"][order].astype(np.float32),
        "terminals": terminals,
        "timeouts": ends & ~terminals,
        "policy_ids": policy_ids.astype(np.int16),
    }
    attrs: dict[str, Any] = {"env_id": env_id, "created_by": CREATED_BY, "action_repeat": resolved.action_repeat}
    if resolved.max_episode_steps is not None:
        attrs["max_episode_steps"] = int(resolved.max_episode_steps)
    if task_families.is_task_id(env_id):
        family, task = task_families.resolve_task(env_id)
        data["task_ids"] = np.full(keep, task.global_index, dtype=np.int64)
        data["task_params"] = np.repeat(task.param_vector()[None], keep, axis=0)
        attrs["family"] = family.name
        attrs["task_param_names"] = list(task.param_names)
    n_random = int((policy_ids == POLICY_IDS["random"]).sum())
    attrs["collection_policy"] = {
        "source": "replay_buffer",
        "run": str(ckpt.path),
        "step": int(ckpt.step),
        "agent": str(saved.agent.name) if "agent" in saved else None,
        "mix": {"random": n_random / keep, "replay": 1 - n_random / keep},
        "policies": [
            {"id": POLICY_IDS["random"], "name": "random", "description": f"seed phase ({seed_steps} env steps)"},
            {
                "id": POLICY_IDS["replay"],
                "name": "replay",
                "description": "the training agent's exploring actions (eval_mode=False) along its learning curve",
            },
        ],
    }
    returns: dict[str, list[float]] = {}
    start = 0
    for end in np.flatnonzero(ends):
        name = "random" if policy_ids[start] == POLICY_IDS["random"] else "replay"
        returns.setdefault(name, []).append(float(data["rewards"][start : end + 1].sum(dtype=np.float64)))
        start = int(end) + 1
    return data, attrs, returns


# ---------------------------------------------------------------------------------------------------
# main


def summary_table(rows: Sequence[tuple[Path, dict[str, list[float]]]]) -> str:
    """``file | steps | episodes | mean return (episodes) per policy`` for the written files."""
    names = [n for n in POLICY_IDS if any(n in r for _, r in rows)]
    header = f"{'file':<48} {'steps':>8} {'episodes':>8}" + "".join(f" {n:>18}" for n in names)
    lines = [header, "-" * len(header)]
    for path, returns in rows:
        ds = load_dataset(path)  # re-read: what is reported is what was written (and it validates)
        line = f"{str(path):<48} {len(ds):>8} {ds.num_episodes:>8}"
        for n in names:
            r = returns.get(n, [])
            line += f" {f'{np.mean(r):.1f} ({len(r)})' if r else '-':>18}"
        lines.append(line)
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Write offline datasets (HDF5) from a run's replay buffer or from policy rollouts.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-run", help="run (or checkpoint) directory whose saved replay buffer is exported")
    src.add_argument("--env", help="env name, family task id (cheetah_vel/train-3) or family name (with --tasks)")
    p.add_argument("--tasks", choices=("train", "test", "all"), help="with a family name: which tasks")
    pol = p.add_mutually_exclusive_group()
    pol.add_argument("--policy", default=None, help="random (default) or checkpoint:<run or checkpoint dir>")
    pol.add_argument("--mix", help="episode fractions per policy, e.g. random=0.3,medium=0.4,expert=0.3")
    p.add_argument("--medium", help="checkpoint of the medium policy (may contain {task})")
    p.add_argument("--expert", help="checkpoint of the expert policy (may contain {task})")
    p.add_argument("--episodes", type=int, default=10, help="episodes per task (default 10)")
    p.add_argument("--seed", type=int, default=0, help="episode k resets with seed + k (default 0)")
    p.add_argument("--action-repeat", type=int, default=None, help="default: the env's suite/family default")
    p.add_argument("--max-episode-steps", type=int, default=None, help="env steps; default: the env's default")
    p.add_argument("--out", required=True, help="output .h5 file, or a directory for --tasks")
    p.add_argument("--single-file", action="store_true", help="with --tasks: one file holding every task")
    p.add_argument("--compression", choices=("gzip", "lzf"), default=None)
    p.add_argument("--device", default="cpu", help="device for checkpoint policies (default cpu)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for checkpoint policies (default 1)")
    return p


def _policy_plan(args: argparse.Namespace) -> tuple[dict[str, float], dict[str, int], dict[str, str]]:
    """``(mix, episodes per policy, checkpoint path per policy)`` from the command line."""
    if args.episodes < 1:
        raise CollectError(f"--episodes must be >= 1, got {args.episodes}")
    if args.mix:
        mix = parse_mix(args.mix)
        paths = {}
        for name in ("medium", "expert"):
            path = getattr(args, name)
            if mix.get(name, 0.0) > 0 and not path:
                raise CollectError(f"--mix uses {name} but --{name} <checkpoint> is missing")
            if path:
                paths[name] = path
    elif args.policy in (None, "random"):
        mix, paths = {"random": 1.0}, {}
    elif args.policy.startswith("checkpoint:") and args.policy != "checkpoint:":
        mix, paths = {"checkpoint": 1.0}, {"checkpoint": args.policy.partition(":")[2]}
    else:
        raise CollectError(f"--policy must be 'random' or 'checkpoint:<dir>', got {args.policy!r}")
    return mix, split_episodes(args.episodes, mix), paths


def run(argv: Sequence[str] | None = None) -> list[Path]:
    """Parse ``argv``, collect, write the files, print the summary; returns the written paths."""
    args = build_parser().parse_args(argv)
    if args.threads < 1:
        raise CollectError(f"--threads must be >= 1, got {args.threads}")
    out = Path(args.out)
    written: list[tuple[Path, dict[str, list[float]]]] = []
    if args.from_run:
        data, attrs, returns = export_run(args.from_run)
        written.append((save_dataset(out, data, attrs, compression=args.compression), returns))
    else:
        mix, plan, paths = _policy_plan(args)
        if paths:  # checkpoint policies run torch
            import torch

            torch.set_num_threads(args.threads)
        if args.tasks:
            family = task_families.get_family(args.env)
            if "/" in args.env:
                raise CollectError(f"--tasks needs a family name, not the task id {args.env!r}")
            task_ids = family.task_ids(args.tasks)
        else:
            if args.env in task_families.FAMILIES:
                raise CollectError(f"{args.env!r} is a task family: add --tasks train|test|all, or give a task id")
            task_ids = [args.env]
        merged = Collected()
        merged_meta: dict[str, Any] | None = None
        for task_id in task_ids:
            one = Collected()
            meta = collect_task(task_id, args, plan, paths, one)
            if args.tasks and not args.single_file:
                task = meta["task"]
                path = out / f"{task.family}_{task.split}-{task.index:02d}.h5"
                attrs = rollout_attrs(task_id, mix, meta, args)
                written.append((save_dataset(path, one.arrays(), attrs, compression=args.compression), one.returns))
            else:
                for k, v in one.data.items():
                    merged.data.setdefault(k, []).extend(v)
                for k, v in one.returns.items():
                    merged.returns.setdefault(k, []).extend(v)
                merged_meta = meta
        if merged_meta is not None:
            if args.tasks:  # one file for several tasks: env_id names the family
                n = len(task_ids)
                merged_meta["policies"] = [dict(p, episodes=p["episodes"] * n) for p in merged_meta["policies"]]
                attrs = rollout_attrs(f"{args.env}/*", mix, merged_meta, args) | {"tasks": args.tasks}
            else:
                attrs = rollout_attrs(args.env, mix, merged_meta, args)
            saved = save_dataset(out, merged.arrays(), attrs, compression=args.compression)
            written.append((saved, merged.returns))
    print(summary_table(written))
    return [p for p, _ in written]


def main(argv: Sequence[str] | None = None) -> int:
    try:
        run(argv)
    except (CollectError, DatasetError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
