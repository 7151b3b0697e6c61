"""The one training loop, and the run around it that ``train.py`` starts.

:class:`TrainingLoop` owns what every run shares: the step counter and its schedule (run length, evaluation and
checkpoint cadence), checkpoints and exact resume, the non-finite-loss path (keep the last good state, raise
:class:`TrainingStopped`), the progress bar and the logs. What differs lives in two small parts, picked by
``trainer.loop`` (set by the experiment presets; default ``online``):

* ``online`` (:class:`training.trainer.Trainer`): collect env episodes into a replay buffer, update at a UTD ratio;
  the step counter counts env steps.
* ``offline`` (:class:`training.offline.OfflineTrainer`, ``experiment=offline_meta``): draw grouped batches from a
  dataset on disk, evaluate on held-out tasks with online context; the step counter counts updates.

A part implements :meth:`TrainingLoop.build` (its pieces from the composed config), :meth:`~TrainingLoop.advance`
(one chunk of training, advancing ``step``) and :meth:`~TrainingLoop.run_evaluation`, plus its own counters and
state. The loop reads only the :class:`agents.common.Agent` contract of its agent.

:func:`run_training` is ``train.py``'s whole job: resume (the saved config's loop), build, write ``config.yaml``,
log, train, print; setup problems raise :class:`SetupError`.
"""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path
from typing import Any, ClassVar

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from tqdm import tqdm

from agents.common import Agent, NonFiniteLossError
from common.seeding import rng_state, set_rng_state
from training.checkpoint import Checkpoint, CheckpointError, save_checkpoint, save_if_finite
from training.logger import Logger
from training.setup import apply_resume_overrides, build_logger, load_resume, setup_process, wandb_id

LOOPS: dict[str, tuple[str, str]] = {
    "online": ("training.trainer", "Trainer"),
    "offline": ("training.offline", "OfflineTrainer"),
}
"""``trainer.loop`` name -> (module, class) of its part, imported when used."""


class SetupError(ValueError):
    """Bad input found before training starts (config, names, data, checkpoint); train.py exits with code 2."""


class TrainingStopped(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message says why and what was saved."""


def loop_name(cfg: DictConfig) -> str:
    """The validated ``trainer.loop`` of a composed (or saved) config."""
    name = str(OmegaConf.select(cfg, "trainer.loop", default="online"))
    if name not in LOOPS:
        raise ValueError(f"trainer.loop must be one of {sorted(LOOPS)}, got {name!r}")
    return name


def loop_class(name: str) -> type[TrainingLoop]:
    module, attr = LOOPS[name]
    return getattr(importlib.import_module(module), attr)


class TrainingLoop:
    """Counters, schedule, evaluation cadence, checkpoints, resume, the NaN path, progress bar and logs.

    ``step`` runs to ``steps``. After every :meth:`advance` the loop evaluates when ``eval_every`` steps have passed
    since the last evaluation and checkpoints when ``checkpoint_every`` have passed since the last checkpoint
    (neither at the very end, where one final evaluation and checkpoint are taken once); with ``eval_initial`` the
    untrained agent is evaluated at step 0 too. Everything the future of a run depends on (agent, counters, RNG
    states, the part's extra state) is in the checkpoint, so a resumed run continues exactly where it was taken.
    """

    steps_key: ClassVar[str]  # config key of the run length: a resume may extend it (``<steps_key>=N``)
    tolerated_overrides: ClassVar[tuple[str, ...]] = ()  # command-line keys a resume accepts silently
    step_label: ClassVar[str]  # what ``step`` counts, in messages ("env step", "update")
    step_state_key: ClassVar[str]  # name of ``step`` in the checkpoint's trainer state
    unit: ClassVar[str]  # progress-bar unit

    def __init__(
        self,
        schedule: Any,
        *,
        agent: Agent,
        run_dir: str | Path,
        seed: int,
        eval_initial: bool = False,
        diagnostics_samples: int = 0,
        header: str = "",
        title: str = "",
    ) -> None:
        """``schedule``: the part's validated config; the loop reads its ``steps``, ``eval_every``,
        ``checkpoint_every``, ``keep_checkpoints`` and ``progress_bar``."""
        steps, eval_every = schedule.steps, schedule.eval_every
        checkpoint_every, keep_checkpoints = schedule.checkpoint_every, schedule.keep_checkpoints
        progress_bar = schedule.progress_bar
        self.agent = agent
        self.header = header  # the run's header, printed at the start
        self.title = title  # title of the learning-curve plot
        self.run_dir = Path(run_dir)
        self.seed = int(seed)
        self.steps = int(steps)
        self.eval_every = int(eval_every)
        self.checkpoint_every = int(checkpoint_every)
        self.keep_checkpoints = int(keep_checkpoints)
        self.progress_bar = bool(progress_bar)
        self.eval_initial = bool(eval_initial)
        self.diagnostics_samples = int(diagnostics_samples)
        self.config_yaml = ""  # the resolved config, saved with every checkpoint (set by run_training)
        self.logger: Logger | None = None
        self.pbar: tqdm | None = None
        self.step = 0
        self.last_eval = -1  # -1: never evaluated
        self.last_checkpoint = 0
        self.best_eval_return = -math.inf
        self.finished = False

    # -- what a part provides ----------------------------------------------------------------------
    @classmethod
    def build(cls, cfg: DictConfig, *, device: torch.device, state: dict | None) -> TrainingLoop:
        """The part's loop from the composed config (``state``: the checkpoint's, when resuming), its run directory
        ``cfg.run_dir``. Setup problems raise ``ValueError`` (or :class:`training.checkpoint.CheckpointError`); may
        complete ``cfg`` (e.g. settings resolved from the data) before it is saved."""
        raise NotImplementedError

    def advance(self) -> None:
        """One chunk of training (an episode and its updates; one update): advances ``step``, logs train rows."""
        raise NotImplementedError

    def run_evaluation(self, video: bool) -> dict[str, Any]:
        """One evaluation; scalar values are logged, the whole result is returned by :meth:`train` at the end."""
        raise NotImplementedError

    def diagnostics_obs(self) -> torch.Tensor | None:
        """Recent observations for the agent's ``diagnostics`` at each evaluation (``None``: none)."""
        return None

    def video_at(self, final: bool) -> bool:
        """Whether the evaluation (``final``: the last one) records a video."""
        return False

    def position(self) -> str:
        """Where the run is, for messages (``env step 1200, update 800``)."""
        return f"{self.step_label} {self.step}"

    def summary(self, final: dict[str, Any]) -> str:
        """The line printed after the final evaluation."""
        return f"done: {self.step} {self.step_label}s | return {final['return_mean']:.1f} | run dir {self.run_dir}"

    def part_counters(self) -> dict[str, Any]:
        """The part's own counters, saved in the checkpoint's trainer state."""
        return {}

    def extra_state(self) -> dict[str, Any]:
        """The part's other state (e.g. a sampler's generator), top-level entries of the checkpoint."""
        return {}

    def load_extra_state(self, state: dict, buffer_state: dict | None) -> None:
        """Restore :meth:`extra_state` (and the replay buffer, for parts that have one)."""

    def checkpoint_buffer(self) -> dict | None:
        """The replay buffer's state to save with a checkpoint (``None``: none)."""
        return None

    def close(self) -> None:
        """Release the part's resources (envs)."""

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        trainer = {
            self.step_state_key: self.step,
            "last_eval": self.last_eval,
            "last_checkpoint": self.last_checkpoint,
            "best_eval_return": self.best_eval_return,
            "finished": self.finished,
            **self.part_counters(),
        }
        return {"agent": self.agent.state_dict(), "trainer": trainer, "rng": rng_state(), **self.extra_state()}

    def load_state_dict(self, state: dict, buffer_state: dict | None = None) -> None:
        self.agent.load_state_dict(state["agent"])
        trainer = dict(state["trainer"])
        self.step = int(trainer.pop(self.step_state_key))
        for k in ("last_eval", "last_checkpoint", "best_eval_return", "finished"):
            setattr(self, k, trainer.pop(k))
        for k, v in trainer.items():  # the part's counters
            setattr(self, k, v)
        set_rng_state(state["rng"])
        self.load_extra_state(state, buffer_state)

    def save(self) -> Path:
        self.last_checkpoint = self.step
        return save_checkpoint(
            self.run_dir,
            self.step,
            self.state_dict(),
            self.config_yaml,
            buffer=self.checkpoint_buffer(),
            keep=self.keep_checkpoints,
        )

    # -- the loop --------------------------------------------------------------------------------
    def progress(self, n: int) -> None:
        if self.pbar is not None:
            self.pbar.update(n)

    def log(self, kind: str, metrics: dict[str, Any]) -> None:
        if self.logger is not None:
            self.logger.log(kind, self.step, metrics)

    def evaluate(self, video: bool = False) -> dict[str, Any]:
        result = self.run_evaluation(video)
        metrics = {k: v for k, v in result.items() if not isinstance(v, (list, dict))}
        obs = self.diagnostics_obs()
        if obs is not None:
            metrics.update(self.agent.diagnostics(obs))
        self.best_eval_return = max(self.best_eval_return, metrics["return_mean"])
        self.last_eval = self.step
        self.log("eval", metrics)
        return {**result, **metrics}

    def train(self) -> dict[str, Any] | None:
        """Run (or continue) to ``steps``; returns the final evaluation (``None`` if the run was already done)."""
        if self.step < self.steps:  # a finished run resumed with a larger step budget goes on
            self.finished = False
        if self.progress_bar:
            self.pbar = tqdm(total=self.steps, initial=min(self.step, self.steps), unit=self.unit, dynamic_ncols=True)
        final = None
        try:
            if self.eval_initial and self.step == 0 and self.last_eval < 0:
                self.evaluate()
            while self.step < self.steps:
                self.advance()
                if self.step - max(self.last_eval, 0) >= self.eval_every and self.step < self.steps:
                    self.evaluate(video=self.video_at(final=False))
                if self.step - self.last_checkpoint >= self.checkpoint_every and self.step < self.steps:
                    self.save()
            if not self.finished:
                final = self.evaluate(video=self.video_at(final=True))
                self.finished = True
                self.save()
        except NonFiniteLossError as e:
            where = save_if_finite(self.agent.state_dict(), self.save, self.run_dir)
            raise TrainingStopped(f"{e} ({self.position()}). {where}") from e
        finally:
            if self.pbar is not None:
                self.pbar.close()
                self.pbar = None
        return final


def resume(cfg: DictConfig) -> tuple[DictConfig, Checkpoint]:
    """The checkpoint at ``cfg.resume`` and the config saved inside it, which the resumed run keeps.

    ``<steps_key>=N`` of the saved run's loop extends it; overrides of ``resume`` and of the loop's tolerated keys
    pass silently (a tolerated key given with another value than the saved one is noted); any other override is
    ignored with a warning.
    """
    saved, ckpt = load_resume(cfg)
    part = loop_class(loop_name(saved))
    apply_resume_overrides(saved, part.steps_key, part.tolerated_overrides)
    for key in part.tolerated_overrides:
        given, kept = OmegaConf.select(cfg, key, default=None), OmegaConf.select(saved, key, default=None)
        if given is not None and str(given) != str(kept):
            print(f"resume: using the saved {key} {kept!r}, not {given!r}", file=sys.stderr)
    return saved, ckpt


def run_training(cfg: DictConfig) -> dict[str, Any] | None:
    """Train as ``cfg`` says (or resume ``cfg.resume``); returns the final evaluation (``None`` if already done).

    Setup problems raise :class:`SetupError` before training; a non-finite loss raises :class:`TrainingStopped`.
    """
    try:
        ckpt = None
        if cfg.get("resume"):
            cfg, ckpt = resume(cfg)
        part = loop_class(loop_name(cfg))
        device = setup_process(cfg)
        loop = part.build(cfg, device=device, state=None if ckpt is None else ckpt.state)
        run_dir = loop.run_dir
        if cfg.wandb.id is None:
            cfg.wandb.id = wandb_id(run_dir)
    except (CheckpointError, ValueError, OmegaConfBaseException) as e:
        raise SetupError(str(e)) from e
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        loop.config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
        if ckpt is None:
            (run_dir / "config.yaml").write_text(loop.config_yaml)
        print(loop.header)
        loop.logger = build_logger(cfg, run_dir, ckpt.step if ckpt is not None else None, loop.title)
        try:
            if ckpt is not None:
                try:
                    loop.load_state_dict(ckpt.state, ckpt.buffer)
                except (KeyError, RuntimeError, ValueError) as e:
                    raise SetupError(f"{ckpt.path}: does not match this run ({type(e).__name__}: {e})") from e
                print(f"resumed from {ckpt.path} at {loop.position()}")
            final = loop.train()
        finally:
            loop.logger.close()
        if final is not None:
            print(loop.summary(final))
        return final
    finally:
        loop.close()


__all__ = [
    "LOOPS",
    "SetupError",
    "TrainingLoop",
    "TrainingStopped",
    "loop_class",
    "loop_name",
    "resume",
    "run_training",
]
