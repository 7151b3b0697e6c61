"""Agents and the registry that builds them by name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from agents.common import Agent
from common.config import build_config


def _iqrl():
    from agents.iqrl import IQRLAgent, IQRLConfig

    return IQRLAgent, IQRLConfig


def _dcmpc():
    from agents.dcmpc import DCMPCAgent, DCMPCConfig

    return DCMPCAgent, DCMPCConfig


def _offline_to_online():
    from agents.offline_to_online import OfflineToOnlineAgent, OfflineToOnlineConfig

    return OfflineToOnlineAgent, OfflineToOnlineConfig


AGENTS = {"iqrl": _iqrl, "dcmpc": _dcmpc, "offline_to_online": _offline_to_online}


def make_agent(name: str, obs_dim: int, action_dim: int, hparams: Mapping[str, Any], device: torch.device) -> Agent:
    """Build agent ``name`` with hyperparameters ``hparams`` (validated by its config dataclass)."""
    if name not in AGENTS:
        raise ValueError(f"unknown agent {name!r}; valid agents: {sorted(AGENTS)}")
    agent_cls, cfg_cls = AGENTS[name]()
    cfg = build_config(cfg_cls, hparams, f"configs/agent/{name}.yaml")
    return agent_cls(obs_dim, action_dim, cfg, device)
