"""Latent world models behind one interface (:mod:`world_models.base`) and the registry that builds them.

``world_model=<name>`` in the config picks one; :func:`register_world_model` adds your own, and a name of the
form ``package.module:Class`` loads a model from any importable module (its config class is the model's
``Config`` attribute).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from common.config import build_config, load_by_path
from world_models.base import MemorylessWorldModel, WorldModel

__all__ = [
    "MemorylessWorldModel",
    "WorldModel",
    "make_world_model",
    "register_world_model",
    "world_model_config",
    "world_model_names",
]


def _dcwm():
    from world_models.dcwm import DCWMConfig, DCWorldModel

    return DCWorldModel, DCWMConfig


def _kla():
    from world_models.kla.belief import KLABeliefConfig, KLABeliefWorldModel

    return KLABeliefWorldModel, KLABeliefConfig


def _iqrl():
    from world_models.iqrl import IQRLModelConfig, IQRLWorldModel

    return IQRLWorldModel, IQRLModelConfig


def _contextual():
    from world_models.contextual import ContextualWMConfig, ContextualWorldModel

    return ContextualWorldModel, ContextualWMConfig


_REGISTRY: dict[str, Callable[[], tuple[type, type]]] = {
    "dcwm": _dcwm,
    "kla": _kla,
    "iqrl": _iqrl,
    "contextual": _contextual,
}


def register_world_model(name: str, model_cls: type, config_cls: type) -> None:
    """Make ``world_model=<name>`` build ``model_cls(obs_dim, action_dim, cfg)`` with ``cfg: config_cls``.

    ``config_cls`` is a dataclass with a ``name`` field; the model implements :class:`WorldModel`.
    """
    _REGISTRY[name] = lambda: (model_cls, config_cls)


def world_model_names() -> list[str]:
    return sorted(_REGISTRY)


def _lookup(name: str) -> tuple[type, type]:
    if name in _REGISTRY:
        return _REGISTRY[name]()
    if ":" in name:
        return load_by_path(name, "world_model.name")
    raise ValueError(f"unknown world model {name!r}; valid world models: {world_model_names()} or 'module:Class'")


def world_model_config(values: Mapping[str, Any], source: str = "world_model") -> Any:
    """The validated config of the world model named by ``values["name"]``."""
    if not isinstance(values, Mapping) or "name" not in values:
        raise ValueError(f"{source}: needs a 'name' (one of {world_model_names()}), got {values!r}")
    _, config_cls = _lookup(str(values["name"]))
    return build_config(config_cls, values, source)


def make_world_model(cfg: Any, obs_dim: int, action_dim: int, **extra: Any) -> WorldModel:
    """Build the world model ``cfg`` (a config from :func:`world_model_config`) describes."""
    model_cls, _ = _lookup(cfg.name)
    return model_cls(obs_dim, action_dim, cfg, **extra)
