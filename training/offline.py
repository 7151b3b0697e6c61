"""Offline meta-RL training: learn from datasets on disk, evaluate on held-out tasks with online context.

``python train.py experiment=offline_meta dataset=data/cheetah_vel`` (a file or a directory of files,
see :mod:`envs.datasets`) dispatches here from ``train.py``. The only environment interaction is
evaluation. Resume with ``python train.py experiment=offline_meta dataset=<same path> resume=<run_dir>``
(optionally ``offline.steps=N`` to extend the run); the saved config is used, other overrides are ignored.

Training data
    Every task of the dataset that belongs to the family's **train** split (``dataset.attrs["family"]``)
    is used; rows of test-split tasks are dropped (they are never trained on) and the run says so.
    :class:`TaskSampler` draws *grouped* batches: ``T = tasks_per_batch`` task slots (distinct tasks
    while there are enough), each with ``B = batch_size`` windows of ``H + 1`` observations inside one
    episode and ``M = contexts_per_task`` context sets of ``K = context_size`` random transitions of the
    same task. With ``context_source=behaviour`` a slot is one (task, behaviour policy) group of the data,
    drawn in proportion to its size, so windows and contexts come from one policy (as an agent's own
    context does online); with ``task`` they come from all of the task's data (ER-TRL's sampling).

Evaluation protocol (online context, held-out tasks)
    For every evaluated task (``offline.eval_tasks``: the family's ``test`` split by default, optionally
    an evenly spaced subset of ``eval_max_tasks``) and every episode ``i`` (reset seed
    ``seed + EVAL_SEED_OFFSET + i``):

    1. the agent starts with the prior representation ``z = 0`` (the encoding of an empty context);
    2. the first ``k = offline.context_steps`` decisions are taken with that ``z``; their transitions
       ``(s, a, r, s')`` are the context;
    3. ``z = E(context)`` is then inferred and fixed for the rest of the episode (with
       ``context_update_every = n > 0`` it is re-inferred from all transitions so far every ``n`` decisions).

    The return counts every step of the episode, the exploratory first ``k`` included. Reported:
    ``return_mean`` (mean over tasks of the per-task mean return), ``return_std`` (std of the per-task means
    across tasks), ``return_<group>`` for the family's groups (``moderate``/``extreme`` OOD), and
    ``success_rate`` where the env reports it. The step of every log row is the number of gradient updates.

Checkpoints (``training.checkpoint``, atomic) hold the agent, the sampler's generator, counters and RNG
states; no buffer (the data is on disk). A non-finite loss stops the run (``agents.common.optimizer_step``
refuses it before the weights change), saves the last good state and raises ``TrainingStopped``.
"""

from __future__ import annotations

import math
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDict
from tqdm import tqdm

import envs.task_families as task_families
from agents.common import NonFiniteLossError
from agents.meta_rl import MetaRLAgent, MetaRLConfig
from common.config import build_config, check_fields
from common.seeding import rng_state, set_rng_state
from envs.datasets import Dataset, load_dataset, load_dataset_dir
from training.checkpoint import save_checkpoint, save_if_finite
from training.logger import Logger
from training.setup import agent_hparams, build_logger, resolve_size, resume_config, setup_process, wandb_id
from training.trainer import TrainingStopped

EVAL_SEED_OFFSET = 1_000_003


@dataclass
class OfflineConfig:
    """The ``offline:`` section of the config (``configs/experiment/offline_meta.yaml``)."""

    steps: int = 100_000  # gradient updates
    log_every: int = 500
    eval_every: int = 10_000
    eval_initial: bool = True  # evaluate the untrained policy at step 0
    eval_tasks: str = "test"  # test | train | all
    eval_max_tasks: int | None = None  # evenly spaced subset of the split; None: every task
    eval_episodes: int = 1  # per task
    context_steps: int = 20  # decisions taken with the prior z before z is inferred
    context_update_every: int = 0  # > 0: re-infer z from all transitions so far every n decisions
    checkpoint_every: int = 10_000
    keep_checkpoints: int = 2
    progress_bar: bool = True

    def __post_init__(self) -> None:
        checks = {
            "steps": self.steps >= 1,
            "log_every": self.log_every >= 1,
            "eval_every": self.eval_every >= 1,
            "eval_tasks": self.eval_tasks in ("test", "train", "all"),
            "eval_max_tasks": self.eval_max_tasks is None or self.eval_max_tasks >= 1,
            "eval_episodes": self.eval_episodes >= 1,
            "context_steps": self.context_steps >= 0,
            "context_update_every": self.context_update_every >= 0,
            "checkpoint_every": self.checkpoint_every >= 1,
            "keep_checkpoints": self.keep_checkpoints >= 1,
        }
        check_fields(self, checks, "offline setting", "eval_tasks: test | train | all")


# ---------------------------------------------------------------------------------------------------
# data


@dataclass
class _Group:
    task: int
    policy: int  # -1: every policy of the task
    rows: torch.Tensor  # rows of the group (context draws)
    starts: torch.Tensor  # rows that start a window of `horizon` transitions inside one episode


class TaskSampler:
    """Grouped batches from a dataset: windows and context sets of one task (and behaviour) per slot.

    ``sample()`` returns a TensorDict with batch size ``[T]``::

        obs        [T, B, H+1, obs_dim]   o_t .. o_{t+H} of one episode
        action     [T, B, H, act_dim]
        reward     [T, B, H]
        terminated [T, B, H]              1 where o_{t+h+1} is terminal
        context    [T, M, K]              TensorDict: obs, action, reward, next_obs (random rows of the group)
        task_id    [T]                    the family's global task index
        policy_id  [T]                    behaviour policy of the group (-1 with context_source=task)

    Draws come from the sampler's own ``torch.Generator`` (state in :meth:`state_dict`), so a resumed
    run samples what the uninterrupted run would have.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        horizon: int,
        tasks_per_batch: int,
        batch_size: int,
        contexts_per_task: int,
        context_size: int,
        context_source: str = "behaviour",
        tasks: Sequence[int] | None = None,
        seed: int = 0,
    ) -> None:
        if context_source not in ("task", "behaviour"):
            raise ValueError(f"context_source must be 'task' or 'behaviour', got {context_source!r}")
        keep = np.ones(len(dataset), dtype=bool) if tasks is None else np.isin(dataset.task_ids, list(tasks))
        if not keep.any():
            raise ValueError(f"{dataset.path}: no transitions of tasks {list(tasks or [])}")
        self.horizon = int(horizon)
        self.T, self.B = int(tasks_per_batch), int(batch_size)
        self.M, self.K = int(contexts_per_task), int(context_size)
        self.context_source = context_source
        f32 = lambda x: torch.as_tensor(np.ascontiguousarray(x[keep]), dtype=torch.float32)  # noqa: E731
        self.obs, self.action = f32(dataset.observations), f32(dataset.actions)
        self.reward, self.next_obs = f32(dataset.rewards), f32(dataset.next_observations)
        self.terminated = f32(dataset.terminals)
        task_ids, policy_ids = dataset.task_ids[keep], dataset.policy_ids[keep].astype(np.int64)
        ends = np.flatnonzero(dataset.episode_ends[keep])  # filtering by task keeps whole episodes
        n = int(keep.sum())
        remaining = ends[np.searchsorted(ends, np.arange(n))] - np.arange(n) + 1  # rows left in the episode
        valid = remaining >= self.horizon
        self.groups: dict[int, list[_Group]] = {}
        skipped = []
        for task in np.unique(task_ids):
            in_task = task_ids == task
            policies = np.unique(policy_ids[in_task]) if context_source == "behaviour" else [-1]
            for pol in policies:
                sel = in_task if pol == -1 else in_task & (policy_ids == pol)
                starts = np.flatnonzero(sel & valid)
                if len(starts) == 0:
                    skipped.append((int(task), int(pol)))
                    continue
                self.groups.setdefault(int(task), []).append(
                    _Group(int(task), int(pol), torch.from_numpy(np.flatnonzero(sel)), torch.from_numpy(starts))
                )
        if not self.groups:
            raise ValueError(f"{dataset.path}: no episode holds {self.horizon} transitions")
        if skipped:
            print(f"sampler: (task, policy) groups without a {self.horizon}-step window skipped: {skipped}")
        self.task_list = sorted(self.groups)
        # a task's groups are drawn in proportion to their data (uniform transitions within a task)
        self._group_weights = [
            torch.tensor([float(len(g.rows)) for g in self.groups[t]], dtype=torch.float64) for t in self.task_list
        ]
        self._gen = torch.Generator().manual_seed(int(seed))
        self.num_rows = n

    @property
    def num_tasks(self) -> int:
        return len(self.task_list)

    def stats(self) -> tuple[np.ndarray, np.ndarray, float, float]:
        """Observation mean/std and reward mean/std of the sampled rows (for the agent's normaliser)."""
        return (
            self.obs.mean(0).numpy(),
            self.obs.std(0).numpy(),
            float(self.reward.mean()),
            float(self.reward.std()),
        )

    def _randint(self, high: int, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randint(0, high, shape, generator=self._gen)

    def sample(self) -> TensorDict:
        T, B, M, K, H = self.T, self.B, self.M, self.K, self.horizon
        n = self.num_tasks
        order = torch.randperm(n, generator=self._gen)[:T] if n >= T else self._randint(n, (T,))
        windows, contexts, task_ids, policy_ids = [], [], [], []
        for k in order.tolist():
            groups = self.groups[self.task_list[k]]
            g = groups[int(torch.multinomial(self._group_weights[k], 1, generator=self._gen))]
            windows.append(g.starts[self._randint(len(g.starts), (B,))])
            contexts.append(g.rows[self._randint(len(g.rows), (M, K))])
            task_ids.append(g.task)
            policy_ids.append(g.policy)
        rows = torch.stack(windows)[..., None] + torch.arange(H)  # [T, B, H]
        ctx = torch.stack(contexts)  # [T, M, K]
        obs = torch.cat([self.obs[rows], self.next_obs[rows[..., -1:]]], dim=2)
        return TensorDict(
            {
                "obs": obs,
                "action": self.action[rows],
                "reward": self.reward[rows],
                "terminated": self.terminated[rows],
                "context": TensorDict(
                    {
                        "obs": self.obs[ctx],
                        "action": self.action[ctx],
                        "reward": self.reward[ctx],
                        "next_obs": self.next_obs[ctx],
                    },
                    batch_size=[T, M, K],
                ),
                "task_id": torch.tensor(task_ids, dtype=torch.long),
                "policy_id": torch.tensor(policy_ids, dtype=torch.long),
            },
            batch_size=[T],
        )

    def contexts_of(self, task: int, policy: int, num: int, size: int) -> TensorDict:
        """``num`` context sets of ``size`` random transitions of one (task, policy) group: ``[num, size]``."""
        matches = [g for g in self.groups.get(int(task), []) if g.policy == int(policy)]
        if not matches:
            raise ValueError(f"no group (task {task}, policy {policy}); groups: {self.group_keys()}")
        g = matches[0]
        idx = g.rows[self._randint(len(g.rows), (num, size))]
        fields = {"obs": self.obs, "action": self.action, "reward": self.reward, "next_obs": self.next_obs}
        return TensorDict({k: v[idx] for k, v in fields.items()}, batch_size=[num, size])

    def group_keys(self) -> list[tuple[int, int]]:
        return [(g.task, g.policy) for t in self.task_list for g in self.groups[t]]

    def state_dict(self) -> dict:
        return {"rng": self._gen.get_state(), "num_rows": self.num_rows}

    def load_state_dict(self, state: dict) -> None:
        if int(state["num_rows"]) != self.num_rows:
            raise ValueError(
                f"the checkpoint's sampler saw {state['num_rows']} training transitions, this dataset has "
                f"{self.num_rows}: resume with the same dataset"
            )
        self._gen.set_state(state["rng"])


def load_any_dataset(path: str | Path) -> Dataset:
    """A dataset file, or every ``*.h5`` of a directory concatenated (task ids kept)."""
    p = Path(path)
    return load_dataset_dir(p) if p.is_dir() else load_dataset(p)


# ---------------------------------------------------------------------------------------------------
# evaluation


def select_eval_tasks(family: task_families.TaskFamily, split: str, max_tasks: int | None) -> list[str]:
    """The split's task ids, or ``max_tasks`` of them evenly spaced over the split (both OOD sides)."""
    ids = family.task_ids(split)
    if max_tasks is None or max_tasks >= len(ids):
        return ids
    picks = np.unique(np.round(np.linspace(0, len(ids) - 1, max_tasks)).astype(int))
    return [ids[i] for i in picks]


def evaluate_meta(
    agent: MetaRLAgent,
    envs: dict[str, Any],
    *,
    episodes: int,
    context_steps: int,
    context_update_every: int = 0,
    seed: int,
    step: int = 0,
    groups: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Online-context evaluation on each task of ``envs`` (protocol in the module docstring).

    Returns ``return_mean`` / ``return_std`` (over tasks of the per-task mean), ``return_<group>`` for the
    tasks' groups, ``episode_length``, ``success_rate`` where reported, and ``per_task`` returns.
    Randomness is drawn from a forked RNG seeded with ``seed``; the training stream is untouched.
    """
    per_task: dict[str, list[float]] = {}
    successes: list[float] = []
    lengths: list[int] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for task_id, env in envs.items():
            rets = []
            for i in range(episodes):
                agent.set_task(None)
                obs, _ = env.reset(seed=seed + i)
                ctx: dict[str, list[np.ndarray]] = {"obs": [], "action": [], "reward": [], "next_obs": []}
                ep_ret, success, t, done, reports = 0.0, 0.0, 0, False, False
                while not done:
                    due_first = t == context_steps and t > 0
                    due_again = (
                        context_update_every > 0
                        and t > context_steps
                        and (t - context_steps) % (context_update_every) == 0
                    )
                    if due_first or due_again:
                        agent.set_task(agent.infer_task({k: np.stack(v) for k, v in ctx.items()}))
                    action = agent.act(obs, eval_mode=True, step=step)
                    next_obs, reward, terminated, truncated, info = env.step(action)
                    for k, v in zip(ctx, (obs, action, np.float32(reward), next_obs)):
                        ctx[k].append(np.asarray(v, dtype=np.float32))
                    ep_ret += float(reward)
                    if "success" in info:
                        reports = True
                        success = max(success, float(info["success"]))
                    obs = next_obs
                    done = bool(terminated or truncated)
                    t += 1
                rets.append(ep_ret)
                lengths.append(t)
                if reports:
                    successes.append(success)
            per_task[task_id] = rets
    agent.set_task(None)
    means = np.array([np.mean(r) for r in per_task.values()])
    out: dict[str, Any] = {
        "return_mean": float(means.mean()),
        "return_std": float(means.std()),
        "episode_length": float(np.mean(lengths)),
    }
    if groups:
        by_group: dict[str, list[float]] = defaultdict(list)
        for task_id, r in per_task.items():
            by_group[groups[task_id]].append(float(np.mean(r)))
        if len(by_group) > 1:
            out.update({f"return_{g}": float(np.mean(v)) for g, v in sorted(by_group.items())})
    if successes:
        out["success_rate"] = float(np.mean(successes))
    out["per_task"] = {k: float(np.mean(v)) for k, v in per_task.items()}
    return out


# ---------------------------------------------------------------------------------------------------
# the loop


class OfflineMetaTrainer:
    """Gradient updates on grouped batches, periodic held-out evaluation, logging and checkpoints."""

    def __init__(
        self,
        cfg: OfflineConfig,
        *,
        agent: MetaRLAgent,
        sampler: TaskSampler,
        eval_envs: dict[str, Any],
        eval_groups: dict[str, str],
        logger: Logger,
        run_dir: str | Path,
        config_yaml: str,
        seed: int,
    ) -> None:
        self.cfg = cfg
        self.agent = agent
        self.sampler = sampler
        self.eval_envs = eval_envs
        self.eval_groups = eval_groups
        self.logger = logger
        self.run_dir = Path(run_dir)
        self.config_yaml = config_yaml
        self.seed = seed
        self.step = 0
        self.last_eval = -1
        self.last_checkpoint = 0
        self.best_eval_return = -math.inf
        self.finished = False
        self.pbar: tqdm | None = None

    def state_dict(self) -> dict:
        return {
            "agent": self.agent.state_dict(),
            "sampler": self.sampler.state_dict(),
            "trainer": {
                "step": self.step,
                "last_eval": self.last_eval,
                "last_checkpoint": self.last_checkpoint,
                "best_eval_return": self.best_eval_return,
                "finished": self.finished,
            },
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.agent.load_state_dict(state["agent"])
        self.sampler.load_state_dict(state["sampler"])
        for k, v in state["trainer"].items():
            setattr(self, k, v)
        set_rng_state(state["rng"])

    def save(self) -> Path:
        self.last_checkpoint = self.step
        return save_checkpoint(
            self.run_dir, self.step, self.state_dict(), self.config_yaml, buffer=None, keep=self.cfg.keep_checkpoints
        )

    def evaluate(self) -> dict[str, Any]:
        res = evaluate_meta(
            self.agent,
            self.eval_envs,
            episodes=self.cfg.eval_episodes,
            context_steps=self.cfg.context_steps,
            context_update_every=self.cfg.context_update_every,
            seed=self.seed + EVAL_SEED_OFFSET,
            step=self.step,
            groups=self.eval_groups,
        )
        metrics = {k: v for k, v in res.items() if k != "per_task"}
        self.best_eval_return = max(self.best_eval_return, metrics["return_mean"])
        self.last_eval = self.step
        self.logger.log("eval", self.step, metrics)
        return res

    def train(self) -> dict[str, Any] | None:
        """Run (or continue) to ``cfg.steps`` updates; returns the final evaluation (None if already done)."""
        c = self.cfg
        if self.step < c.steps:
            self.finished = False
        self.pbar = (
            tqdm(total=c.steps, initial=min(self.step, c.steps), unit="upd", dynamic_ncols=True)
            if (c.progress_bar)
            else None
        )
        final = None
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        t0 = time.perf_counter()
        n_block = 0
        try:
            if c.eval_initial and self.step == 0 and self.last_eval < 0:
                self.evaluate()
            while self.step < c.steps:
                for k, v in self.agent.update(self.sampler.sample()).items():
                    sums[k] += v
                    counts[k] += 1
                self.step += 1
                n_block += 1
                if self.pbar is not None:
                    self.pbar.update(1)
                if self.step % c.log_every == 0 or self.step == c.steps:
                    row = {k: sums[k] / counts[k] for k in sums}
                    row["updates_per_s"] = n_block / max(time.perf_counter() - t0, 1e-9)
                    self.logger.log("train", self.step, row)
                    sums.clear()
                    counts.clear()
                    t0, n_block = time.perf_counter(), 0
                if self.step - max(self.last_eval, 0) >= c.eval_every and self.step < c.steps:
                    self.evaluate()
                if self.step - self.last_checkpoint >= c.checkpoint_every and self.step < c.steps:
                    self.save()
            if not self.finished:
                final = self.evaluate()
                self.finished = True
                self.save()
        except NonFiniteLossError as e:
            where = save_if_finite(self.agent.nets.state_dict(), self.save, self.run_dir)
            raise TrainingStopped(f"{e} (update {self.step}). {where}") from e
        finally:
            if self.pbar is not None:
                self.pbar.close()
        return final


# ---------------------------------------------------------------------------------------------------
# entry point


def build_meta_agent(
    cfg: DictConfig, obs_dim: int, action_dim: int, device: torch.device, num_tasks: int
) -> MetaRLAgent:
    """The agent of ``cfg.agent`` (must be ``meta_rl``) with its hyperparameters validated."""
    if str(cfg.agent.name) != "meta_rl":
        raise ValueError(f"offline training (dataset=...) needs agent=meta_rl, got agent={cfg.agent.name}")
    resolve_size(str(cfg.agent.size), str(cfg.device))
    hp = build_config(MetaRLConfig, agent_hparams(cfg.agent), "configs/agent/meta_rl.yaml")
    return MetaRLAgent(obs_dim, action_dim, hp, device, num_tasks=num_tasks)


def offline_config(cfg: DictConfig) -> OfflineConfig:
    values = OmegaConf.to_container(cfg.offline, resolve=True) if "offline" in cfg else {}
    return build_config(OfflineConfig, values, "offline (configs/experiment/offline_meta.yaml)")


def run_offline(cfg: DictConfig) -> dict[str, Any] | None:
    """Train ``cfg.agent`` (meta_rl) on ``cfg.dataset``; evaluate on held-out tasks. Returns the final eval.

    Setup problems (bad config, dataset, checkpoint) raise ``ValueError`` subclasses before training.
    """
    ckpt = None
    if not cfg.get("dataset"):
        raise ValueError("offline training needs dataset=<HDF5 file or directory> (envs/datasets.py schema)")
    if cfg.get("resume"):
        given = cfg.dataset
        cfg, ckpt = resume_config(cfg, "offline.steps", load_buffer=False, tolerated=("dataset", "experiment"))
        if str(given) != str(cfg.dataset):
            print(f"resume: using the saved dataset {cfg.dataset!r}, not {given!r}", file=sys.stderr)
    ocfg = offline_config(cfg)
    dataset = load_any_dataset(cfg.dataset)
    fam_name = dataset.attrs.get("family")
    if not fam_name:
        raise ValueError(f"{dataset.path}: attrs/family is missing; offline meta-RL needs task-family data")
    family = task_families.get_family(str(fam_name))
    if str(cfg.env) in ("auto", "", "None"):
        cfg.env = family.name
    elif task_families.get_family(str(cfg.env)).name != family.name:
        raise ValueError(f"env={cfg.env} is not the dataset's family {family.name!r} (use env=auto)")
    train_ids = {t.global_index for t in family.tasks("train")}
    present = sorted({int(t) for t in np.unique(dataset.task_ids)})
    used = [t for t in present if t in train_ids]
    dropped = [family.task_by_index(t).task_id for t in present if t not in train_ids]
    if not used:
        raise ValueError(f"{dataset.path}: holds no task of {family.name}'s train split (tasks {present})")
    run_dir = Path(cfg.run_dir)
    if cfg.wandb.id is None:
        cfg.wandb.id = wandb_id(run_dir)
    device = setup_process(cfg)
    agent = build_meta_agent(cfg, dataset.obs_dim, dataset.action_dim, device, num_tasks=len(family.tasks("all")))
    hp = agent.cfg
    sampler = TaskSampler(
        dataset,
        tasks=used,
        horizon=agent.sample_horizon,
        tasks_per_batch=hp.tasks_per_batch,
        batch_size=hp.batch_size,
        contexts_per_task=hp.contexts_per_task,
        context_size=hp.context_size,
        context_source=hp.context_source,
        seed=int(cfg.seed),
    )
    agent.set_normalizer(*sampler.stats())

    settings = OmegaConf.to_container(cfg.env_settings, resolve=True)
    env_kw = {
        "action_repeat": settings.get("action_repeat") or dataset.attrs.get("action_repeat"),
        "max_episode_steps": settings.get("max_episode_steps") or dataset.attrs.get("max_episode_steps"),
        "render_size": int(settings.get("render_size", 224)),
    }
    eval_ids = select_eval_tasks(family, ocfg.eval_tasks, ocfg.eval_max_tasks)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    if ckpt is None:
        (run_dir / "config.yaml").write_text(config_yaml)
    eval_envs: dict[str, Any] = {}
    try:
        for i, tid in enumerate(eval_ids):
            eval_envs[tid] = family.make(tid, seed=int(cfg.seed) + 10_000 + i, **env_kw)
        n_params = sum(p.numel() for p in agent.nets.parameters())
        print(
            f"run {run_dir} | agent meta_rl ({hp.representation}, entropy_coef {hp.entropy_coef}; "
            f"{n_params / 1e6:.2f}M params) on {device} | dataset {cfg.dataset}: {sampler.num_rows} transitions of "
            f"{len(used)} {family.name} train tasks, groups (task, policy) {len(sampler.group_keys())} | "
            f"eval: {len(eval_ids)} {ocfg.eval_tasks} tasks, context {ocfg.context_steps} steps"
        )
        if dropped:
            print(f"note: rows of held-out tasks {dropped} are in the dataset and are not trained on")
        title = f"meta_rl ({hp.representation}) on {family.name} held-out tasks (seed {cfg.seed}); x: updates"
        logger = build_logger(cfg, run_dir, ckpt.step if ckpt is not None else None, title)
        trainer = OfflineMetaTrainer(
            ocfg,
            agent=agent,
            sampler=sampler,
            eval_envs=eval_envs,
            eval_groups={tid: family.task(tid).group for tid in eval_ids},
            logger=logger,
            run_dir=run_dir,
            config_yaml=config_yaml,
            seed=int(cfg.seed),
        )
        if ckpt is not None:
            try:
                trainer.load_state_dict(ckpt.state)
            except (KeyError, RuntimeError) as e:
                raise ValueError(f"{ckpt.path}: does not match this run's agent ({e})") from e
            print(f"resumed from {ckpt.path} at update {trainer.step}")
        try:
            final = trainer.train()
        finally:
            logger.close()
        if final is not None:
            print(
                f"done: {trainer.step} updates | held-out return {final['return_mean']:.1f} "
                f"± {final['return_std']:.1f} over {len(eval_ids)} tasks | run dir {run_dir}"
            )
        return final
    finally:
        for env in eval_envs.values():
            env.close()


__all__ = [
    "EVAL_SEED_OFFSET",
    "OfflineConfig",
    "OfflineMetaTrainer",
    "TaskSampler",
    "build_meta_agent",
    "evaluate_meta",
    "load_any_dataset",
    "offline_config",
    "run_offline",
    "select_eval_tasks",
]
