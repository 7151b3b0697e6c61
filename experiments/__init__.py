"""Hypothesis experiments: subclasses and wrappers of the core pieces, selected by config, never flags in the core.

An experiment plugs in through the registries by an import path, so nothing in ``agents/`` or ``world_models/``
changes:

* a world model: ``python train.py world_model.name=experiments.my_model:MyWorldModel`` (with ``~world_model`` first
  to drop the default model's keys); the class implements :class:`world_models.WorldModel` and names its config
  dataclass as the class attribute ``Config``;
* an agent: ``python train.py agent.name=experiments.my_agent:MyAgent`` (e.g. a subclass of
  :class:`agents.dcmpc.DCMPCAgent` whose ``Config`` subclasses :class:`agents.dcmpc.DCMPCConfig`).

Record each experiment's measured comparison in ``docs/results.md``; an experiment whose comparison lost is
removed (git keeps it). Options removed from the core by this rule are listed in ``docs/deviations.md``.
"""
