"""Layer sensitivity of one study setting: ``wmqlib.quant.mixed.layer_sensitivity`` wired to the setting's model,
calibration episodes and planner (notebook 04).

    table = sensitivity_for(setting, bits=(2, 3, 4), n_sequences=64)         # one row per (linear, bits)
    bits = allocate_bits(table, budget=4.0)
    overrides = mixed_overrides(bits, lambda b: dataclasses.replace(setting.recipe, w_bits=b))

The candidates are the ones CEM scores first: ``n_sequences`` z-scored action sequences drawn from the planner's
initial distribution N(0, var_scale^2), candidate 0 the initial mean (zero), from one generator per episode seeded
as ``wmqlib.evaluate`` seeds planning (episode seed + SEED_STRIDE * planner_seed). With ``n_sequences`` equal to the
calibration planner's samples they ARE the first CEM iteration's candidates of the FP calibration run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Optional

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from wmqlib.caches import CACHES, Caches
from wmqlib.evaluate import SEED_STRIDE
from wmqlib.plan import (
    CHUNK, CEMConfig, Objective, ObjectiveConfig, PlanningModel, encode_observations, make_generators,
)
from wmqlib.plan.base import randn_per_episode
from wmqlib.quant import Recipe
from wmqlib.quant.mixed import layer_sensitivity
from wmqlib.quant.points import Scope
from wmqlib.setting import Setting
from wmqlib.study import fp_of, prepare
from wmqlib.validate import check_int


def planning_objective(start_obs: Mapping[str, object], goal_obs: Mapping[str, object], actions: Tensor,
                       cfg: ObjectiveConfig = ObjectiveConfig(), chunk: int = CHUNK
                       ) -> Callable[[PlanningModel], Tensor]:
    """``objective_fn`` for ``layer_sensitivity``: ``model -> (E, S)`` planning costs of ``actions`` (E, S, H, Da).

    start_obs, goal_obs: raw observations of the E episodes, {"visual": uint8 (E, H, W, 3), "proprio": (E, p)}.
    Each call encodes start and goal with the model it is given (as planning with that model does), so quantizing an
    encoder layer moves the objective; then ``Objective(model, start, goal, cfg, chunk)(actions)``.
    """

    def objective_fn(model: PlanningModel) -> Tensor:
        with torch.no_grad():
            start, goal = encode_observations(model, start_obs), encode_observations(model, goal_obs)
            return Objective(model, start, goal, cfg, chunk)(actions)

    return objective_fn


def initial_candidates(generators: Sequence[torch.Generator], cfg: CEMConfig, action_dim: int, n_sequences: int,
                       device: torch.device | str = "cpu") -> Tensor:
    """CEM's first-iteration candidates (E, n_sequences, H, Da): ``var_scale * eps`` with candidate 0 the initial
    mean 0; episode e draws from ``generators[e]`` only (as ``wmqlib.plan.cem`` does)."""
    check_int("initial_candidates.n_sequences", n_sequences, 2, why=" (sensitivity compares sequences)")
    eps = randn_per_episode(generators, (n_sequences, cfg.horizon, action_dim), torch.device(device))
    cand = cfg.var_scale * eps  # (E, S, H, Da)
    cand[:, 0] = 0.0
    return cand


def sensitivity_for(setting: Setting, bits: Sequence[int] = (2, 3, 4), n_sequences: int = 64,
                    caches: Caches = CACHES, names: Optional[Scope] = None,
                    recipe_for_bits: Optional[Callable[[int], Recipe]] = None) -> pd.DataFrame:
    """``layer_sensitivity`` of ``setting``'s FP model on its ``n_calib`` calibration episodes.

    bits: the bit widths measured. n_sequences: candidate sequences per episode (module docstring). names: None
    (every quantization point) or a scope. recipe_for_bits: ``bits -> Recipe``; default ``setting.recipe`` with
    ``w_bits`` replaced (the setting's method and granularity at each width). The objective is the setting's
    (DINO-WM's when None), the candidates' horizon that of its calibration planner. Recipes that need calibration
    use the setting's cached FP-planning calibration.

    Returns ``layer_sensitivity``'s table plus checkpoint, env, method, n_calib and n_sequences on every row.
    """
    check_int("sensitivity_for.n_sequences", n_sequences, 2, why=" (sensitivity compares sequences)")
    if recipe_for_bits is None:
        if setting.recipe is None:
            raise ValueError("sensitivity_for needs setting.recipe (the method whose bit width varies) or "
                             "recipe_for_bits; the setting is full precision (recipe=None)")
        base = setting.recipe

        def recipe_for_bits(bits: int) -> Recipe:
            return dataclasses.replace(base, w_bits=bits)
    recipes = [recipe_for_bits(b) for b in bits]
    needs = any(r.needs_calibration or r.static_activations for r in recipes if isinstance(r, Recipe))
    p = prepare(fp_of(setting), caches, calibrate=needs, split="calib")
    model: nn.Module = p.fp
    size = model.config.img_size
    start_obs = p.env.observe(np.stack([e.start_state for e in p.episodes]), size)
    goal_obs = p.env.observe(np.stack([e.goal_state for e in p.episodes]), size)
    generators = make_generators([e.seed + SEED_STRIDE * setting.planner_seed for e in p.episodes], model.device)
    actions = initial_candidates(generators, p.run.calib_planner, model.action_dim, n_sequences, model.device)
    objective_fn = planning_objective(start_obs, goal_obs, actions, setting.objective or ObjectiveConfig())
    table = layer_sensitivity(model, objective_fn, recipe_for_bits, bits, names, p.calibration)
    return table.assign(checkpoint=setting.checkpoint, env=p.run.env, method=type(recipes[0]).__name__,
                        n_calib=setting.n_calib, n_sequences=n_sequences)
