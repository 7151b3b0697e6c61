"""A simulator-scored value estimate for DC-MPC's MPPI planner (the "oracle" of ``benchmarks/planner_oracle.py``).

:func:`real_value_estimator` replaces ``MPPIPlanner.estimate_value``: instead of rolling the world model
out, each candidate action sequence is played in the env's own simulator from its current physics state
(restored afterwards), and the episode ends with the agent's value at the encoded real observation::

    J_real = Σ_{h<H} ρ^h r_h + ρ^H V(encode(o_H))

DMC envs only (it steps ``env.unwrapped.dm_env`` directly).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from agents.dcmpc import DCMPCAgent, DCMPCPlanningModel


def real_value_estimator(
    agent: DCMPCAgent, env: gym.Env
) -> Callable[[Tensor, Tensor, DCMPCPlanningModel, float], Tensor]:
    """A drop-in for ``MPPIPlanner.estimate_value`` that scores ``actions [N, H, A]`` in ``env``'s simulator
    from its current state (restored after each sequence) and ends with ``model.value`` at the real code. The
    simulator's returns carry no model error, so a planner uncertainty term (``unc_coef``) is ignored."""
    dmc = env.unwrapped
    physics, repeat = dmc.dm_env.physics, int(env.config.action_repeat)
    cfg = agent.planner.cfg

    def estimate(z: Tensor, actions: Tensor, model: DCMPCPlanningModel, unc_coef: float = 0.0) -> Tensor:
        state = physics.get_state().copy()
        acts = actions.detach().cpu().double().numpy()
        returns, last_obs = np.zeros(len(acts)), []
        for i, seq in enumerate(acts):
            weight = 1.0
            for h in range(cfg.horizon):
                for _ in range(repeat):
                    ts = dmc.dm_env.step(seq[h])
                    returns[i] += weight * float(ts.reward or 0.0)
                weight *= cfg.discount
            last_obs.append(dmc.flat_observation(ts.observation))
            physics.set_state(state)
            physics.forward()
        z_h = agent.wm.encode(torch.as_tensor(np.stack(last_obs), device=z.device))
        return torch.as_tensor(returns, dtype=z.dtype, device=z.device) + weight * model.value(z_h)

    return estimate
