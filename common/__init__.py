"""Shared utilities at the bottom of the layers: config checking, network blocks, seeding, atomic file writes.

Nothing here imports ``envs``, ``world_models``, ``agents`` or ``training``.
"""
