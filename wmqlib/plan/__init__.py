"""Planners as pure, batched functions of a cost callable (CEM, gradient descent) and MPC around them.

    objective = Objective(model, encode_observations(model, start_obs), encode_observations(model, goal_obs))
    result = plan(objective, CEMConfig(opt_steps=10), make_generators(seeds, device), model.action_dim)
    result.plan (E, H, Da), result.plans (iters, E, H, Da), result.losses (iters, E)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from wmqlib.plan.base import CostFn, PlanResult, make_generators
from wmqlib.plan.cem import CEMConfig, cem
from wmqlib.plan.gd import GDConfig, gd
from wmqlib.plan.mpc import MPCConfig, MPCResult, mpc
from wmqlib.plan.objective import (
    Latents, Objective, ObjectiveConfig, PlanningModel, encode_observations, latent_mse, model_device_dtype,
)

PlannerConfig = CEMConfig | GDConfig
_PLANNERS = {CEMConfig: cem, GDConfig: gd}


def plan(cost_fn: CostFn, cfg: PlannerConfig, generators: Sequence[torch.Generator], action_dim: int,
         init: Tensor | None = None, device: torch.device | str | None = None) -> PlanResult:
    """Run the planner that ``cfg``'s type names (CEMConfig -> ``cem``, GDConfig -> ``gd``); same arguments."""
    planner = _PLANNERS.get(type(cfg))
    if planner is None:
        raise TypeError(f"cfg must be one of {[c.__name__ for c in _PLANNERS]}, got {type(cfg).__name__}")
    return planner(cost_fn, cfg, generators, action_dim, init=init, device=device)


__all__ = [
    "CEMConfig", "CostFn", "GDConfig", "Latents", "MPCConfig", "MPCResult", "Objective", "ObjectiveConfig",
    "PlanResult", "PlannerConfig", "PlanningModel", "cem", "encode_observations", "gd", "latent_mse",
    "make_generators", "model_device_dtype", "mpc", "plan",
]
