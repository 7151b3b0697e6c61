"""Build a run's pieces from a resolved config: the one place train.py and eval.py share."""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from agents import agent_classes, agent_config, make_agent
from agents.common import Agent
from common.seeding import resolve_device, seed_everything
from envs import canonical_env_name, make_env, name_key
from training.buffer import ReplayBuffer
from training.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from training.logger import Logger
from training.seeds import RESTORED_ENV_SEED_OFFSET

SIZES = ("auto", "paper", "small")
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def compose_config(overrides: Sequence[str], config_name: str = "config", **kw: Any) -> DictConfig:
    """Compose ``configs/<config_name>.yaml`` with ``overrides`` as the command line would.

    ``config`` is train.py's config, ``eval`` eval.py's; for benchmarks and tests that run a job in-process.
    """
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name, overrides=list(overrides), **kw)


def resolve_size(size: str, device: str) -> str:
    """``auto`` -> ``paper`` when the run will use CUDA, else ``small``."""
    if size not in SIZES:
        raise ValueError(f"agent.size must be one of {SIZES}, got {size!r}")
    if size == "auto":
        return "paper" if resolve_device(device).type == "cuda" else "small"
    return size


def _sized(paper: Any, small: Any, *, _root_: DictConfig) -> Any:
    """``${sized:<paper value>,<small value>}``: pick by ``agent.size`` (and ``device`` for auto).

    A value set explicitly (``agent.optim.batch_size=64``) replaces the interpolation, so explicit
    settings always win over the size preset.
    """
    return paper if resolve_size(str(_root_.agent.size), str(_root_.device)) == "paper" else small


def _by_task(default: Any, *rules: str, _root_: DictConfig) -> Any:
    """``${by_task:<default>,'<env glob>=<value>',...}``: a per-task default, picked by ``env``.

    The env name is first made canonical as ``make_env`` does (``dmc/cup-catch`` is
    ``dmc/ball_in_cup-catch``), so write rules with canonical names; case and ``-``/``_`` are ignored
    on both sides. The first matching rule wins, e.g. ``nstep: ${by_task:1,'dmc/reacher-*=3'}``: the
    papers' task-tuned values live in the agent YAML next to the default. An explicit setting replaces
    the interpolation, so it always wins. Every rule is checked, matched or not.
    """
    parsed = []
    for rule in rules:
        pattern, sep, value = str(rule).partition("=")
        if not sep or not pattern or not value:
            raise ValueError(f"by_task rule {rule!r} is not '<env glob>=<value>'")
        parsed.append((name_key(pattern), value))
    try:
        env = canonical_env_name(str(_root_.env))
    except ValueError:  # an unknown task: make_env reports it with the valid names
        env = str(_root_.env)
    env_key = name_key(env)
    for pattern, value in parsed:
        if fnmatch.fnmatchcase(env_key, pattern):
            return yaml.safe_load(value)
    return default


for _name, _resolver in (("sized", _sized), ("by_task", _by_task)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _resolver)


def agent_settings(cfg: DictConfig, reward_bound: list[float] | None = None) -> Any:
    """The validated config of ``cfg.agent`` (size presets resolved), composed with the ``world_model`` section
    when the agent has a world model. ``reward_bound`` replaces a world model's ``reward_bound: auto``."""
    resolve_size(str(cfg.agent.size), str(cfg.device))  # reject a bad size even if nothing uses it
    values = {k: v for k, v in OmegaConf.to_container(cfg.agent, resolve=True).items() if k not in ("name", "size")}
    _, cfg_cls = agent_classes(str(cfg.agent.name))
    has_wm = "world_model" in {f.name for f in dataclasses.fields(cfg_cls)}
    if has_wm and cfg.get("world_model") is not None:
        wm = OmegaConf.to_container(cfg.world_model, resolve=True)
        if wm.get("reward_bound") == "auto":
            wm["reward_bound"] = reward_bound
        values["world_model"] = wm
    return agent_config(str(cfg.agent.name), values)


def env_config(cfg: DictConfig, seed_offset: int = 0) -> dict[str, Any]:
    settings = OmegaConf.to_container(cfg.env_settings, resolve=True)
    return {"name": cfg.env, "seed": int(cfg.seed) + seed_offset, **settings}


def build_env(cfg: DictConfig, seed_offset: int = 0) -> gym.Env:
    return make_env(env_config(cfg, seed_offset), OmegaConf.to_container(cfg.suite_defaults, resolve=True))


def setup_process(cfg: DictConfig) -> torch.device:
    """Threads, seeds and device for this process, from the config."""
    if int(cfg.threads) < 1:
        raise ValueError(f"threads must be >= 1, got {cfg.threads}")
    torch.set_num_threads(int(cfg.threads))
    seed_everything(int(cfg.seed), deterministic=bool(cfg.deterministic))
    return resolve_device(str(cfg.device))


def build_agent(cfg: DictConfig, env: gym.Env, device: torch.device, state: dict | None = None) -> Agent:
    """The agent of ``cfg`` for ``env``; ``state`` is the agent state it will be restored from, if any (agents whose
    builder hands them more than their config, e.g. a frozen base policy, rebuild it from there)."""
    obs_dim = int(np.prod(env.observation_space.shape))
    action_dim = int(np.prod(env.action_space.shape))
    # DMC rewards are in [0, 1] per env step, summed over the action repeat; other suites are unbounded.
    bound = [0.0, float(env.config.action_repeat)] if env.suite == "dmc" else None
    settings = agent_settings(cfg, bound)
    extra = agent_extras(cfg, obs_dim, action_dim, device, state)
    return make_agent(str(cfg.agent.name), obs_dim, action_dim, settings, device, **extra)


def agent_extras(
    cfg: DictConfig, obs_dim: int, action_dim: int, device: torch.device, state: dict | None = None
) -> dict[str, Any]:
    """What the builder hands an agent besides its config (``make_agent``'s ``extra``): the number of tasks of a
    meta-RL agent's family; the frozen offline base policy of an offline-to-online agent (from ``state`` when
    restoring one of its checkpoints, which carry it, else from ``agent.base_checkpoint``)."""
    name = str(cfg.agent.name)
    if name == "meta_rl":
        from envs.task_families import FAMILIES

        family = FAMILIES.get(str(cfg.env))
        if family is None:
            raise ValueError(
                f"agent=meta_rl learns offline from a task family's data: run it with experiment=offline_meta "
                f"dataset=<file or dir> (trainer.loop=offline); env={cfg.env} is not a task family "
                f"({sorted(FAMILIES)})"
            )
        return {"num_tasks": len(family.tasks("all"))}
    if name == "offline_to_online":
        from agents.offline_to_online import rebuild_base

        if state is not None and "base" in state:
            return {"base": rebuild_base(state["base"], obs_dim, action_dim, device)}
        path = OmegaConf.select(cfg, "agent.base_checkpoint", default=None)
        if not path:
            raise ValueError(
                "agent.base_checkpoint=<run dir of a `train.py experiment=offline_meta` run> is required to start an "
                "offline_to_online run"
            )
        return {"base": load_offline_base(path, obs_dim, action_dim, device)}
    return {}


def load_offline_base(path: str | Path, obs_dim: int, action_dim: int, device: torch.device) -> Agent:
    """The offline :class:`agents.meta_rl.MetaRLAgent` of the run (or checkpoint) at ``path``, rebuilt from the config
    inside its checkpoint, weights loaded. Problems raise :class:`CheckpointError` naming the file."""
    from agents.meta_rl import MetaRLAgent

    ckpt = load_checkpoint(path, map_location="cpu", load_buffer=False)
    where = ckpt.path / "config.yaml"
    try:
        saved = OmegaConf.create(ckpt.config_yaml)
        name = str(saved.agent.name)
        values = {
            k: v for k, v in OmegaConf.to_container(saved.agent, resolve=True).items() if k not in ("name", "size")
        }
        if saved.get("world_model") is not None and "world_model" not in values:
            values["world_model"] = OmegaConf.to_container(saved.world_model, resolve=True)
    except Exception as e:  # noqa: BLE001 - any malformed config is reported with its file
        raise CheckpointError(f"{where}: unreadable config ({type(e).__name__}: {e})") from e
    if name != "meta_rl":
        raise CheckpointError(
            f"{where}: the base checkpoint must come from an offline meta-RL run (agent=meta_rl), found agent={name}"
        )
    try:
        settings = agent_config("meta_rl", values)
    except ValueError as e:
        raise CheckpointError(f"{where}: {e}") from e
    try:
        nets = ckpt.state["agent"]["nets"]
        protos = [v for k, v in nets.items() if k.endswith("prototypes")]  # world-model representation only
        num_tasks = int(protos[0].shape[0]) if protos else 64
        agent = MetaRLAgent(obs_dim, action_dim, settings, device, num_tasks=num_tasks)
        agent.load_state_dict(ckpt.state["agent"])
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(
            f"{ckpt.path / 'state.pt'}: does not hold a meta_rl agent for obs_dim={obs_dim}, action_dim={action_dim} "
            f"(is it a run on this env's family?): {e}"
        ) from e
    return agent


def build_buffer(cfg: DictConfig, env: gym.Env, run_dir: Path) -> ReplayBuffer:
    obs_dim = int(np.prod(env.observation_space.shape))
    action_dim = int(np.prod(env.action_space.shape))
    return ReplayBuffer(
        int(cfg.buffer.capacity),
        obs_dim,
        action_dim,
        seed=int(cfg.seed),
        storage=str(cfg.buffer.storage),
        storage_dir=run_dir / "buffer",
    )


def wandb_id(run_dir: str | Path) -> str:
    """A stable run id derived from the run directory, so a resumed run logs to the same wandb run."""
    return hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]


def build_logger(cfg: DictConfig, run_dir: Path, resume_step: int | None, title: str) -> Logger:
    """CSV + console + wandb (``cfg.wandb``) logger of a run; ``resume_step`` trims rows logged after it."""
    return Logger(
        run_dir,
        config=OmegaConf.to_container(cfg, resolve=True),
        run_id=cfg.wandb.id,
        wandb_mode=cfg.wandb.mode,
        wandb_project=cfg.wandb.project,
        wandb_group=cfg.wandb.group,
        resume_step=resume_step,
        title=title,
    )


def load_resume(cfg: DictConfig) -> tuple[DictConfig, Checkpoint]:
    """The checkpoint at ``cfg.resume`` (buffer included) and the config saved inside it."""
    ckpt = load_checkpoint(cfg.resume, load_buffer=True)
    try:
        saved = OmegaConf.create(ckpt.config_yaml)
    except Exception as e:  # noqa: BLE001 - any malformed config is reported with its file
        raise CheckpointError(f"{ckpt.path / 'config.yaml'}: unreadable config ({type(e).__name__}: {e})") from e
    return saved, ckpt


def apply_resume_overrides(saved: DictConfig, steps_key: str, tolerated: tuple[str, ...] = ()) -> None:
    """Apply the command line's ``<steps_key>=N`` to a resumed run's saved config (it extends the run); overrides of
    ``resume`` and of the keys in ``tolerated`` pass silently; any other override is ignored with a warning."""
    from hydra.core.hydra_config import HydraConfig

    overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    for o in overrides:
        key, _, value = o.partition("=")
        key = key.lstrip("+~")
        if key == steps_key:
            OmegaConf.update(saved, steps_key, int(value))
        elif key not in ("resume", *tolerated):
            print(f"resume: ignoring override {o!r}; a resumed run keeps its saved config", file=sys.stderr)


@dataclass
class RestoredRun:
    """An agent rebuilt from a checkpoint with the config saved inside it, and an eval env for it."""

    cfg: DictConfig
    ckpt: Checkpoint
    env: gym.Env
    agent: Agent
    device: torch.device


def restore_agent(ckpt: Checkpoint, cfg: DictConfig, env: gym.Env, device: torch.device) -> Agent:
    """Build the agent ``cfg`` (``ckpt``'s saved config; device and agent settings may differ) describes for ``env``
    and load ``ckpt``'s weights into it.

    Only the weight load is reported as the checkpoint's fault: weights that do not fit the rebuilt agent (another
    env's shapes, another size or hyperparameter) raise :class:`CheckpointError` naming the checkpoint, the env and
    the env it was trained on. Errors while building the agent propagate as they are.
    """
    agent = build_agent(cfg, env, device, state=ckpt.state.get("agent"))
    try:
        agent.load_state_dict(ckpt.state["agent"])
    except (KeyError, RuntimeError) as e:
        # cfg is the checkpoint's own config (callers only change device/settings), so cfg.env is where it trained.
        raise CheckpointError(
            f"{ckpt.path}: weights do not match the agent its saved config builds for "
            f"{getattr(env, 'spec_name', 'this env')!r} (obs {env.observation_space.shape}, "
            f"act {env.action_space.shape}; trained on {cfg.env!r}): {e}"
        ) from e
    return agent


def agent_from_checkpoint(
    path: str | Path,
    *,
    device: str = "auto",
    threads: int = 1,
    agent: DictConfig | dict[str, Any] | None = None,
    render_size: int | None = None,
) -> RestoredRun:
    """Rebuild the agent saved at ``path`` (run dir or checkpoint dir): eval.py's and the benchmarks' loader.

    ``agent`` settings are merged over the saved agent config (for this process only; the weights stay).
    Weights that do not fit the rebuilt agent raise :class:`CheckpointError` naming the checkpoint.
    The caller closes ``env``.
    """
    ckpt = load_checkpoint(path, map_location="cpu", load_buffer=False)
    return restore_run(ckpt, device=device, threads=threads, agent=agent, render_size=render_size)


def restore_run(
    ckpt: Checkpoint,
    *,
    device: str = "auto",
    threads: int = 1,
    agent: DictConfig | dict[str, Any] | None = None,
    render_size: int | None = None,
) -> RestoredRun:
    """:func:`agent_from_checkpoint` of a loaded checkpoint of an online run (its agent acts in its env)."""
    cfg = OmegaConf.create(ckpt.config_yaml)
    if OmegaConf.select(cfg, "trainer.loop", default="online") == "offline":
        raise ValueError(
            f"{ckpt.path} is an offline meta-RL run (trainer.loop=offline): its agent is evaluated on the held-out "
            "tasks of its family (eval.py, training.offline.restore_offline_run), not in one env"
        )
    cfg.device, cfg.threads = device, threads
    if agent:
        cfg.agent = OmegaConf.merge(cfg.agent, agent)
    if render_size is not None:
        cfg.env_settings.render_size = render_size
    dev = setup_process(cfg)
    env = build_env(cfg, seed_offset=RESTORED_ENV_SEED_OFFSET)
    try:
        agent = restore_agent(ckpt, cfg, env, dev)
    except BaseException:
        env.close()
        raise
    return RestoredRun(cfg, ckpt, env, agent, dev)
