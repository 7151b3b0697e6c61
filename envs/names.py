"""Env-name helpers shared by the registry and the suites; imports nothing from ``envs``.

Kept apart from :mod:`envs.registry` (which builds suite envs and imports the suite modules) so that a
suite module such as :mod:`envs.dmc` can match names without importing the registry back.
"""

from __future__ import annotations


def name_key(name: str) -> str:
    """Spelling-insensitive form of a name for matching: surrounding space, case and ``-``/``_`` ignored."""
    return name.strip().lower().replace("-", "_")
