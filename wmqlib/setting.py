"""One point of the study: ``Setting``, a frozen, validated dataclass naming everything a number depends on.

Building a setting reads no file: what its checkpoint implies (environment, weights fingerprint) is derived when a
run needs it, by ``wmqlib.caches.Caches``, which also turns a setting into the key of its cached results.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from wmqlib.models import resolve_device
from wmqlib.plan import CEMConfig, GDConfig, MPCConfig, ObjectiveConfig
from wmqlib.quant import Recipe, recipe_types
from wmqlib.validate import check_bool, check_choice, check_int, check_type

SCOPES = ("all", "encoder", "predictor")


@dataclass(frozen=True)
class Setting:
    """One point of the study; frozen, validated, and (with what its checkpoint implies) the cache key of its results.

    checkpoint: shipped model name ("mini-wall", "mini-pusht") or a wmq checkpoint folder.
    recipe: a ``wmqlib.quant`` recipe, or None for the full-precision model.
    scope: "all" | "encoder" | "predictor": which quantization points get the recipe (FP needs "all").
    planner: CEMConfig or GDConfig. mpc: MPCConfig, or None for open-loop (plan once, execute the whole plan).
    n_evals: evaluation episodes ("eval" split); seed: episode seed (DINO-WM: 99, >= 2); goal_H: goal horizon in
        model steps. trace: one row per (episode, planner iteration) of the first planning round.
    n_calib: calibration episodes ("calib" split, same seed); calib_planner: the FP CEM planner of the calibration
        run (None: ``planner`` if it is a CEMConfig, else CEM with the env's protocol budget).
    device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N"; stored resolved, so CPU and GPU results
        never share a cache entry.
    planner_seed: the planner's noise (``wmqlib.evaluate.evaluate``'s ``seed``): same episodes, other draws; several
        seeds of one setting measure how much success moves with CEM's sampling and float noise.
    objective: the planning objective (None: DINO-WM's, visual + proprio latent MSE of the last frame);
        ``ObjectiveConfig(alpha=0)`` plans on the visual latent only, ``ObjectiveConfig(visual_weight=0)`` on proprio.
    sampler: how the evaluation and calibration episodes are drawn, one of the env class's ``episode_samplers``
        (None: its ``default_sampler``; PushT: "demo" windows of held-out demonstrations as DINO-WM's goals,
        "scripted" the exploratory pusher's).
    planner_seed 0, objective None and the env's ``unkeyed_sampler`` are left out of the cache key, so results
    computed before these fields existed keep their keys.
    """

    checkpoint: str
    recipe: Recipe | None = None
    scope: str = "all"
    planner: CEMConfig | GDConfig = CEMConfig(opt_steps=10)
    mpc: MPCConfig | None = None
    n_evals: int = 50
    seed: int = 99
    goal_H: int = 5
    trace: bool = False
    n_calib: int = 10
    calib_planner: CEMConfig | None = None
    device: str = "auto"
    planner_seed: int = 0
    objective: ObjectiveConfig | None = None
    sampler: str | None = None

    def __post_init__(self) -> None:
        check_type("Setting.checkpoint", self.checkpoint, (str, os.PathLike), "a shipped model name or a path")
        object.__setattr__(self, "checkpoint", str(self.checkpoint))
        if self.recipe is not None:
            check_type("Setting.recipe", self.recipe, Recipe,
                       f"a wmqlib.quant recipe ({', '.join(sorted(recipe_types()))}) or None")
        check_choice("Setting.scope", self.scope, SCOPES)
        if self.recipe is None and self.scope != "all":
            raise ValueError(f"Setting.scope must be 'all' for the full-precision model (recipe=None), got "
                             f"{self.scope!r}")
        check_type("Setting.planner", self.planner, (CEMConfig, GDConfig), "a CEMConfig or GDConfig")
        if self.mpc is not None:
            check_type("Setting.mpc", self.mpc, MPCConfig, "an MPCConfig or None")
        check_int("Setting.n_evals", self.n_evals, 1)
        check_int("Setting.seed", self.seed, 2)
        check_int("Setting.goal_H", self.goal_H, 1)
        check_int("Setting.n_calib", self.n_calib, 1)
        check_bool("Setting.trace", self.trace)
        if self.calib_planner is None and isinstance(self.planner, CEMConfig):
            object.__setattr__(self, "calib_planner", self.planner)
        if self.calib_planner is not None:
            check_type("Setting.calib_planner", self.calib_planner, CEMConfig, "a CEMConfig or None")
        check_type("Setting.device", self.device, str, "a string ('auto', 'cpu', 'cuda', 'cuda:N')")
        object.__setattr__(self, "device", str(resolve_device(self.device)))
        check_int("Setting.planner_seed", self.planner_seed, 0)
        if self.objective is not None:
            check_type("Setting.objective", self.objective, ObjectiveConfig, "an ObjectiveConfig or None")
        if self.sampler is not None:
            check_type("Setting.sampler", self.sampler, str, "an episode sampler's name or None")
