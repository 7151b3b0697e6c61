"""The YAML presets and the config dataclasses hold the same paper defaults: composing ``agent=<name>`` at the
paper size gives exactly the config that the dataclass defaults give, so neither can drift from the other."""

from __future__ import annotations

import dataclasses

import pytest

from agents import agent_classes
from common.config import build_config
from training.setup import agent_settings, compose_config
from world_models import world_model_config


@pytest.mark.parametrize(
    ("agent", "overrides", "extra"),
    [
        ("dcmpc", [], {}),
        ("dcmpc", ["world_model=kla"], {}),
        ("iqrl", [], {}),
        ("meta_rl", [], {}),
        ("offline_to_online", ["agent.base_checkpoint=some/run"], {"base_checkpoint": "some/run"}),
    ],
)
def test_paper_preset_equals_the_dataclass_defaults(agent, overrides, extra):
    cfg = compose_config([f"agent={agent}", "agent.size=paper", "device=cpu", "env=dmc/cartpole-balance", *overrides])
    composed = agent_settings(cfg, reward_bound=[0.0, 2.0])  # reward_bound auto on DMC: [0, action_repeat]
    _, cfg_cls = agent_classes(agent)
    values = dict(extra)
    if "world_model" in {f.name for f in dataclasses.fields(cfg_cls)} and cfg.get("world_model") is not None:
        values["world_model"] = world_model_config({"name": str(cfg.world_model.name)})
    defaults = build_config(cfg_cls, values, "agent")
    assert composed == defaults, _diff(composed, defaults)


def _diff(a, b, path="agent") -> list[str]:
    out = []
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if dataclasses.is_dataclass(x) and dataclasses.is_dataclass(y):
            out += _diff(x, y, f"{path}.{f.name}")
        elif x != y:
            out.append(f"{path}.{f.name}: YAML {x!r} vs dataclass {y!r}")
    return out
