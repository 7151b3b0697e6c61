"""Config dataclass helpers shared by every layer (world models, agents, trainers).

A config is a tree of dataclasses, nested the way the YAML is: an agent's config holds its world model's,
actor-critic's, planner's, optimiser's and exploration's configs as fields. :func:`build_config` builds the
tree from the composed YAML and names the full key path of anything wrong in it.
"""

from __future__ import annotations

import dataclasses
import importlib
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

C = TypeVar("C")


class ConfigError(ValueError):
    """A bad setting, its message prefixed with the key path in the composed config (``agent.planner: ...``)."""


def _nested_types(cls: type) -> dict[str, type]:
    """Fields of ``cls`` whose type is itself a config dataclass (built recursively by :func:`build_config`)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints.get(f.name))}


def build_config(cls: type[C], values: Mapping[str, Any], source: str) -> C:
    """Instantiate the config dataclass ``cls`` from a (nested) mapping.

    Fields typed as another config dataclass are built from their sub-mapping, so an error names the full
    path (``agent.planner: unknown key(s) ['num_sample']; valid keys: [...]``). ``source`` is the path of
    ``values`` in the composed config (``agent``, ``world_model``, ``trainer``).
    """
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source}: expected a mapping of settings, got {values!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; valid keys: {sorted(names)}")
    kwargs = dict(values)
    for name, sub in _nested_types(cls).items():
        if name in kwargs and not dataclasses.is_dataclass(kwargs[name]):
            kwargs[name] = build_config(sub, kwargs[name], f"{source}.{name}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise  # already names its path (a nested config built in __post_init__)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{source}: {e}") from e


def check_fields(config: object, checks: Mapping[str, bool], what: str, hint: str = "") -> None:
    """Raise one ``ValueError`` naming every field of ``config`` whose check failed, with its value.

    ``checks`` maps a field name to whether its value is valid; ``what`` names the settings
    (``"planner setting"``) and ``hint`` states the valid ranges.
    """
    bad = {k: getattr(config, k) for k, ok in checks.items() if not ok}
    if bad:
        raise ValueError(f"invalid {what}(s) {bad}" + (f" ({hint})" if hint else ""))


def dims_ok(dims: list[int]) -> bool:
    """Hidden-layer sizes: whole numbers >= 1."""
    return all(int(x) == x and x >= 1 for x in dims)


def reward_bound_ok(bound: list[float] | None) -> bool:
    """``None`` (unbounded) or ``[lo, hi]`` with ``lo < hi``."""
    return bound is None or (len(bound) == 2 and float(bound[0]) < float(bound[1]))


def load_by_path(path: str, key: str) -> tuple[type, type]:
    """``(class, its config class)`` for ``path = "package.module:Class"`` (the config class is ``Class.Config``):
    how a config names a world model or agent defined outside the registries (e.g. under ``experiments/``)."""
    module, _, attr = path.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
        return cls, cls.Config
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"{key}={path!r}: cannot load {attr!r} with a Config attribute from {module!r} ({e})") from e
