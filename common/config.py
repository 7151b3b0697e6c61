"""Config dataclass helpers shared by every layer (world models, agents, trainers).

They live in the lowest package so that every layer can validate its configs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

C = TypeVar("C")


def build_config(cls: type[C], values: Mapping[str, Any], source: str) -> C:
    """Instantiate a config dataclass from a mapping, naming unknown or missing keys and the source."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown}; valid keys: {sorted(names)}")
    try:
        return cls(**values)
    except TypeError as e:
        raise ValueError(f"{source}: {e}") from e


def check_fields(config: object, checks: Mapping[str, bool], what: str, hint: str = "") -> None:
    """Raise one ``ValueError`` naming every field of ``config`` whose check failed, with its value.

    ``checks`` maps a field name to whether its value is valid; ``what`` names the settings
    (``"DC-MPC hyperparameter"``) and ``hint`` states the valid ranges.
    """
    bad = {k: getattr(config, k) for k, ok in checks.items() if not ok}
    if bad:
        raise ValueError(f"invalid {what}(s) {bad}" + (f" ({hint})" if hint else ""))
