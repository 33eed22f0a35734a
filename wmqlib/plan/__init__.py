"""Planners as pure, batched functions of a cost callable (CEM, gradient descent), MPC around them, and the planner
table (``planners``) every caller reads.

    objective = Objective(model, encode_observations(model, start_obs), encode_observations(model, goal_obs))
    result = plan(objective, CEMConfig(opt_steps=10), make_generators(seeds, device), model.action_dim)
    result.plan (E, H, Da), result.plans (iters, E, H, Da), result.losses (iters, E)
"""

from wmqlib.plan.base import CostFn, PlanResult, make_generators
from wmqlib.plan.cem import CEMConfig, cem
from wmqlib.plan.gd import GDConfig, gd
from wmqlib.plan.mpc import MPCConfig, MPCResult, mpc
from wmqlib.plan.objective import (
    CHUNK, Latents, Objective, ObjectiveConfig, PlanningModel, encode_observations, latent_mse, model_device_dtype,
)
from wmqlib.plan.planners import (
    PLANNERS, Planner, PlannerConfig, check_planner, config_types, parse_planning, plan, planner_of, planning_name,
)

__all__ = [
    "CHUNK", "CEMConfig", "CostFn", "GDConfig", "Latents", "MPCConfig", "MPCResult", "Objective", "ObjectiveConfig",
    "PLANNERS", "PlanResult", "Planner", "PlannerConfig", "PlanningModel", "cem", "check_planner", "config_types",
    "encode_observations", "gd", "latent_mse", "make_generators", "model_device_dtype", "mpc", "parse_planning",
    "plan", "planner_of", "planning_name",
]
