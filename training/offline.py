"""The offline part of the training loop (``trainer.loop=offline``): offline meta-RL from datasets on disk,
evaluated on held-out tasks with online context.

``python train.py experiment=offline_meta dataset=data/cheetah_vel`` (a file or a directory of files, see
:mod:`envs.datasets`; the preset sets ``trainer.loop=offline``) runs :class:`OfflineTrainer` through
:func:`training.loop.run_training`. The only environment interaction is evaluation. Resume with
``python train.py experiment=offline_meta resume=<run_dir>`` (optionally ``offline.steps=N`` to extend the run; a
plain ``python train.py resume=<run_dir>`` continues it too); the saved config is used (the data is read again from
its ``dataset`` path), other overrides are ignored. ``python eval.py
checkpoint=<run_dir>`` evaluates a run's agent on its held-out tasks with the same protocol
(:func:`restore_offline_run`, :func:`evaluate_meta`), without the dataset.

Training data
    Every task of the dataset that belongs to the family's **train** split (``dataset.attrs["family"]``)
    is used; rows of test-split tasks are dropped (they are never trained on) and the run says so.
    :class:`TaskSampler` draws *grouped* batches: ``T = sampling.tasks_per_batch`` task slots (distinct tasks
    while there are enough), each with ``B = optim.batch_size`` windows of ``H + 1`` observations inside one
    episode and ``M = sampling.contexts_per_task`` context sets of ``K = sampling.context_size`` random transitions
    of the same task. With ``context_source=behaviour`` a slot is one (task, behaviour policy) group of the data,
    drawn in proportion to its size, so windows and contexts come from one policy (as an agent's own
    context does online); with ``task`` they come from all of the task's data (ER-TRL's sampling).

Evaluation protocol (online context, held-out tasks)
    For every evaluated task (``offline.eval_tasks``: the family's ``test`` split by default, optionally
    an evenly spaced subset of ``eval_max_tasks``; task ``i``'s env is built with seed
    ``seed + EVAL_ENV_SEED_OFFSET + i``) and every episode ``i`` (reset seed ``seed + EVAL_EPISODE_SEED_OFFSET + i``,
    :mod:`training.seeds`):

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
states; no buffer (the data is on disk). The saved config records the env settings resolved from the data
(action repeat, episode length), so evaluation needs no dataset. A non-finite loss stops the run
(``agents.common.optimizer_step`` refuses it before the weights change), saves the last good state and raises
``TrainingStopped``.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDict
from torch import Tensor

import envs.task_families as task_families
from agents import make_agent
from agents.common import Agent
from common.config import build_config, check_fields
from envs.datasets import Dataset, load_dataset, load_dataset_dir
from training.checkpoint import Checkpoint, CheckpointError
from training.loop import TrainingLoop, TrainingStopped, loop_name, run_training
from training.seeds import EVAL_ENV_SEED_OFFSET, EVAL_EPISODE_SEED_OFFSET, RESTORED_ENV_SEED_OFFSET
from training.setup import agent_settings, resolve_size, setup_process
from training.video import save_video


class ContextAgent(Agent, Protocol):
    """An :class:`agents.common.Agent` with a task representation inferred from context (:class:`MetaRLAgent`)."""

    def infer_task(self, context: Mapping[str, np.ndarray]) -> Tensor: ...

    def set_task(self, z: Tensor | None) -> None: ...


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
    agent: ContextAgent,
    envs: dict[str, Any],
    *,
    episodes: int,
    context_steps: int,
    context_update_every: int = 0,
    seed: int,
    step: int = 0,
    groups: dict[str, str] | None = None,
    video_paths: Mapping[str, str | Path] | None = None,
    video_fps: int = 30,
) -> dict[str, Any]:
    """Online-context evaluation on each task of ``envs`` (protocol in the module docstring).

    Returns ``return_mean`` / ``return_std`` (over tasks of the per-task mean), ``return_<group>`` for the
    tasks' groups, ``episode_length``, ``success_rate`` where reported, and per task (dicts keyed by task id):
    ``per_task`` mean returns, ``per_task_length`` mean episode lengths, ``per_task_success`` success rates (tasks
    whose env reports success). Episode ``i`` resets with ``seed + i``. Randomness is drawn from a forked RNG seeded
    with ``seed``; the training stream is untouched. ``video_paths`` maps task ids to mp4 files: the first episode
    of those tasks is rendered and written there (rendering changes nothing else).
    """
    per_task: dict[str, list[float]] = {}
    per_task_length: dict[str, float] = {}
    per_task_success: dict[str, float] = {}
    successes: list[float] = []
    lengths: list[int] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for task_id, env in envs.items():
            rets, task_lengths, task_successes = [], [], []
            for i in range(episodes):
                agent.set_task(None)
                obs, _ = env.reset(seed=seed + i)
                video = video_paths.get(task_id) if (video_paths is not None and i == 0) else None
                frames = [env.render()] if video is not None else None
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
                    if frames is not None:
                        frames.append(env.render())
                if frames is not None:
                    save_video(frames, video, fps=video_fps)
                rets.append(ep_ret)
                lengths.append(t)
                task_lengths.append(t)
                if reports:
                    successes.append(success)
                    task_successes.append(success)
            per_task[task_id] = rets
            per_task_length[task_id] = float(np.mean(task_lengths))
            if task_successes:
                per_task_success[task_id] = float(np.mean(task_successes))
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
    out["per_task_length"] = per_task_length
    out["per_task_success"] = per_task_success
    return out


def make_task_envs(
    family: task_families.TaskFamily, task_ids: Sequence[str], seed: int, **env_kw: Any
) -> dict[str, Any]:
    """One env per task id, task ``i`` built with seed ``seed + i`` (all closed again if one fails)."""
    envs: dict[str, Any] = {}
    try:
        for i, tid in enumerate(task_ids):
            envs[tid] = family.make(tid, seed=seed + i, **env_kw)
    except BaseException:
        for env in envs.values():
            env.close()
        raise
    return envs


def eval_env_settings(cfg: DictConfig) -> dict[str, Any]:
    """``action_repeat``, ``max_episode_steps`` (the data's, recorded in the saved config) and ``render_size``."""
    settings = OmegaConf.to_container(cfg.env_settings, resolve=True)
    return {
        "action_repeat": settings.get("action_repeat"),
        "max_episode_steps": settings.get("max_episode_steps"),
        "render_size": int(settings.get("render_size") or 224),
    }


# ---------------------------------------------------------------------------------------------------
# the loop


class OfflineTrainer(TrainingLoop):
    """The offline part of :class:`training.loop.TrainingLoop`: one update on a grouped batch per :meth:`advance`
    (``step`` counts updates; a train row every ``log_every``), evaluation on held-out tasks (:func:`evaluate_meta`,
    with ``eval_initial`` at update 0 too). The sampler's generator travels with the checkpoints."""

    steps_key = "offline.steps"
    tolerated_overrides = ("dataset", "experiment")
    step_label = "update"
    step_state_key = "step"
    unit = "upd"

    def __init__(
        self,
        cfg: OfflineConfig,
        *,
        agent: ContextAgent,
        sampler: TaskSampler,
        eval_envs: dict[str, Any],
        eval_groups: dict[str, str],
        run_dir: str | Path,
        seed: int,
        header: str = "",
        title: str = "",
    ) -> None:
        super().__init__(
            cfg,
            agent=agent,
            run_dir=run_dir,
            seed=seed,
            header=header,
            title=title,
            eval_initial=cfg.eval_initial,
        )
        self.cfg = cfg
        self.sampler = sampler
        self.eval_envs = eval_envs
        self.eval_groups = eval_groups
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)
        self._t0, self._n_block = time.perf_counter(), 0

    # -- building ----------------------------------------------------------------------------------
    @classmethod
    def build(cls, cfg: DictConfig, *, device: torch.device, state: dict | None) -> OfflineTrainer:
        """The dataset, its family's train/held-out split, the agent (``agent=meta_rl``), the sampler and the eval
        envs. Completes ``cfg``: ``env`` becomes the dataset's family, ``env_settings`` the data's action repeat and
        episode length (unless set), so the saved config evaluates without the data."""
        ocfg = offline_config(cfg)
        if not cfg.get("dataset"):
            raise ValueError("offline training needs dataset=<HDF5 file or directory> (envs/datasets.py schema)")
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
        if str(cfg.agent.name) != "meta_rl":
            raise ValueError(f"offline training (trainer.loop=offline) needs agent=meta_rl, got agent={cfg.agent.name}")
        resolve_size(str(cfg.agent.size), str(cfg.device))
        settings = agent_settings(cfg)
        agent = make_agent(
            "meta_rl", dataset.obs_dim, dataset.action_dim, settings, device, num_tasks=len(family.tasks("all"))
        )
        sampling = settings.sampling
        sampler = TaskSampler(
            dataset,
            tasks=used,
            horizon=agent.sample_horizon,
            tasks_per_batch=sampling.tasks_per_batch,
            batch_size=agent.batch_size,
            contexts_per_task=sampling.contexts_per_task,
            context_size=sampling.context_size,
            context_source=sampling.context_source,
            seed=int(cfg.seed),
        )
        agent.set_normalizer(*sampler.stats())
        for key in ("action_repeat", "max_episode_steps"):  # record what the data was collected with
            if cfg.env_settings.get(key) is None and dataset.attrs.get(key) is not None:
                cfg.env_settings[key] = int(dataset.attrs[key])
        run_dir = Path(cfg.run_dir)  # after env is known: the default run dir names it
        eval_ids = select_eval_tasks(family, ocfg.eval_tasks, ocfg.eval_max_tasks)
        eval_envs = make_task_envs(family, eval_ids, int(cfg.seed) + EVAL_ENV_SEED_OFFSET, **eval_env_settings(cfg))
        header = (
            f"run {run_dir} | agent meta_rl ({settings.representation}, entropy_coef "
            f"{settings.task_loss.entropy_coef}; {agent.num_params() / 1e6:.2f}M trained params) on {device} | "
            f"dataset {cfg.dataset}: {sampler.num_rows} transitions of {len(used)} {family.name} train tasks, groups "
            f"(task, policy) {len(sampler.group_keys())} | eval: {len(eval_ids)} {ocfg.eval_tasks} tasks, context "
            f"{ocfg.context_steps} steps"
        )
        if dropped:
            header += f"\nnote: rows of held-out tasks {dropped} are in the dataset and are not trained on"
        title = f"meta_rl ({settings.representation}) on {family.name} held-out tasks (seed {cfg.seed}); x: updates"
        return cls(
            ocfg,
            agent=agent,
            sampler=sampler,
            eval_envs=eval_envs,
            eval_groups={tid: family.task(tid).group for tid in eval_ids},
            run_dir=run_dir,
            seed=int(cfg.seed),
            header=header,
            title=title,
        )

    def close(self) -> None:
        for env in self.eval_envs.values():
            env.close()

    # -- state -----------------------------------------------------------------------------------
    def extra_state(self) -> dict:
        return {"sampler": self.sampler.state_dict()}

    def load_extra_state(self, state: dict, buffer_state: dict | None) -> None:
        self.sampler.load_state_dict(state["sampler"])

    # -- the loop ----------------------------------------------------------------------------------
    def summary(self, final: dict) -> str:
        return (
            f"done: {self.step} updates | held-out return {final['return_mean']:.1f} ± {final['return_std']:.1f} "
            f"over {len(self.eval_envs)} tasks | run dir {self.run_dir}"
        )

    def advance(self) -> None:
        for k, v in self.agent.update(self.sampler.sample()).items():
            self._sums[k] += v
            self._counts[k] += 1
        self.step += 1
        self._n_block += 1
        self.progress(1)
        if self.step % self.cfg.log_every == 0 or self.step == self.steps:
            row = {k: self._sums[k] / self._counts[k] for k in self._sums}
            row["updates_per_s"] = self._n_block / max(time.perf_counter() - self._t0, 1e-9)
            self.log("train", row)
            self._sums.clear()
            self._counts.clear()
            self._t0, self._n_block = time.perf_counter(), 0

    def run_evaluation(self, video: bool) -> dict[str, Any]:
        return evaluate_meta(
            self.agent,
            self.eval_envs,
            episodes=self.cfg.eval_episodes,
            context_steps=self.cfg.context_steps,
            context_update_every=self.cfg.context_update_every,
            seed=self.seed + EVAL_EPISODE_SEED_OFFSET,
            step=self.step,
            groups=self.eval_groups,
        )


# ---------------------------------------------------------------------------------------------------
# entry points


def offline_config(cfg: DictConfig) -> OfflineConfig:
    values = OmegaConf.to_container(cfg.offline, resolve=True) if "offline" in cfg else {}
    return build_config(OfflineConfig, values, "offline (configs/experiment/offline_meta.yaml)")


def run_offline(cfg: DictConfig) -> dict[str, Any] | None:
    """Train ``cfg.agent`` (meta_rl) on ``cfg.dataset`` with the offline loop; evaluate on held-out tasks.

    :func:`training.loop.run_training` for configs with ``trainer.loop=offline`` (``experiment=offline_meta``).
    Returns the final evaluation; setup problems (bad config, dataset, checkpoint) raise ``ValueError`` subclasses
    before training.
    """
    if loop_name(cfg) != "offline":
        raise ValueError("run_offline needs trainer.loop=offline (experiment=offline_meta)")
    return run_training(cfg)


@dataclass
class RestoredOfflineRun:
    """An offline meta-RL run's agent rebuilt from a checkpoint, with envs of its held-out tasks."""

    cfg: DictConfig
    ckpt: Checkpoint
    agent: ContextAgent
    envs: dict[str, Any]
    groups: dict[str, str]
    offline: OfflineConfig
    device: torch.device

    def close(self) -> None:
        for env in self.envs.values():
            env.close()


def restore_offline_run(
    ckpt: Checkpoint,
    *,
    device: str = "auto",
    threads: int = 1,
    agent: DictConfig | Mapping[str, Any] | None = None,
    render_size: int | None = None,
) -> RestoredOfflineRun:
    """Rebuild an offline meta-RL run's agent from its checkpoint (the config inside it; no dataset) and build envs
    of the run's evaluation tasks (``offline.eval_tasks``, ``eval_max_tasks``), task ``i`` with seed
    ``seed + RESTORED_ENV_SEED_OFFSET + i``. ``agent`` settings are merged over the saved ones (this process only).
    Weights that do not fit raise :class:`training.checkpoint.CheckpointError`. The caller closes the envs."""
    cfg = OmegaConf.create(ckpt.config_yaml)
    cfg.device, cfg.threads = device, threads
    if agent:
        cfg.agent = OmegaConf.merge(cfg.agent, agent)
    if render_size is not None:
        cfg.env_settings.render_size = render_size
    ocfg = offline_config(cfg)
    family = task_families.get_family(str(cfg.env))
    dev = setup_process(cfg)
    task_ids = select_eval_tasks(family, ocfg.eval_tasks, ocfg.eval_max_tasks)
    envs = make_task_envs(family, task_ids, int(cfg.seed) + RESTORED_ENV_SEED_OFFSET, **eval_env_settings(cfg))
    try:
        first = next(iter(envs.values()))
        obs_dim = int(np.prod(first.observation_space.shape))
        action_dim = int(np.prod(first.action_space.shape))
        restored = make_agent(
            str(cfg.agent.name), obs_dim, action_dim, agent_settings(cfg), dev, num_tasks=len(family.tasks("all"))
        )
        try:
            restored.load_state_dict(ckpt.state["agent"])
        except (KeyError, RuntimeError) as e:
            raise CheckpointError(
                f"{ckpt.path}: weights do not match the agent its saved config builds for {family.name} "
                f"(obs_dim {obs_dim}, action_dim {action_dim}): {e}"
            ) from e
    except BaseException:
        for env in envs.values():
            env.close()
        raise
    groups = {tid: family.task(tid).group for tid in task_ids}
    return RestoredOfflineRun(cfg, ckpt, restored, envs, groups, ocfg, dev)


def video_name(task_id: str) -> str:
    """A file-name-safe form of a task id (``ml1_reach/test-3`` -> ``ml1_reach_test-3``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", task_id)


__all__ = [
    "ContextAgent",
    "OfflineConfig",
    "OfflineTrainer",
    "RestoredOfflineRun",
    "TaskSampler",
    "TrainingStopped",
    "evaluate_meta",
    "load_any_dataset",
    "make_task_envs",
    "offline_config",
    "restore_offline_run",
    "run_offline",
    "select_eval_tasks",
    "video_name",
]
