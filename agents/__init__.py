"""Agents and the registry that builds them by name (``agent=<name>``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from agents.common import Agent
from common.config import build_config, load_by_path


def _iqrl():
    from agents.iqrl import IQRLAgent, IQRLConfig

    return IQRLAgent, IQRLConfig


def _dcmpc():
    from agents.dcmpc import DCMPCAgent, DCMPCConfig

    return DCMPCAgent, DCMPCConfig


def _meta_rl():
    from agents.meta_rl import MetaRLAgent, MetaRLConfig

    return MetaRLAgent, MetaRLConfig


def _offline_to_online():
    from agents.offline_to_online import OfflineToOnlineAgent, OfflineToOnlineConfig

    return OfflineToOnlineAgent, OfflineToOnlineConfig


AGENTS: dict[str, Callable[[], tuple[type, type]]] = {
    "dcmpc": _dcmpc,
    "iqrl": _iqrl,
    "meta_rl": _meta_rl,
    "offline_to_online": _offline_to_online,
}


def agent_classes(name: str) -> tuple[type, type]:
    """``(agent class, config class)`` of agent ``name``: a registered name, or ``package.module:Class`` for an
    agent defined elsewhere (e.g. ``experiments/``), whose config class is its ``Config`` attribute."""
    if name in AGENTS:
        return AGENTS[name]()
    if ":" in name:
        return load_by_path(name, "agent.name")
    raise ValueError(f"unknown agent {name!r}; valid agents: {sorted(AGENTS)} or 'module:Class'")


def agent_config(name: str, values: Mapping[str, Any]) -> Any:
    """The validated config of agent ``name`` from the ``agent`` section of the composed config (without
    ``name`` and ``size``; with the ``world_model`` section where the agent has a world model)."""
    _, cfg_cls = agent_classes(name)
    return build_config(cfg_cls, values, "agent")


def make_agent(name: str, obs_dim: int, action_dim: int, cfg: Any, device: torch.device, **extra: Any) -> Agent:
    """Build agent ``name`` from its validated config ``cfg``; ``extra`` are what its builder hands it
    (e.g. the number of tasks, a frozen base policy)."""
    agent_cls, _ = agent_classes(name)
    return agent_cls(obs_dim, action_dim, cfg, device, **extra)
