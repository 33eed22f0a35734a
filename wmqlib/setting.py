"""One point of the study: ``Setting``, a frozen, validated dataclass naming everything a number depends on, and
``Resolved``, the setting with what its checkpoint implies and the keys of what a run of it caches.

Building a setting reads no file. What its checkpoint implies (folder, environment, weights fingerprint) is found
once per run by ``wmqlib.caches.Caches.resolved``, which hands it to ``resolve_setting`` here: the calibration
planner and the episode sampler are resolved against the env, and the keys (results, calibration, quantized copy)
are computed once, without I/O, and passed down with the setting.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from wmqlib.evaluate import CALIB_SOURCES
from wmqlib.models import resolve_device
from wmqlib.plan import CEMConfig, MPCConfig, ObjectiveConfig, PlannerConfig, check_planner
from wmqlib.quant import Recipe, recipe_types
from wmqlib.envs import env_class
from wmqlib.sweep import added_field, canonical, config_key, without_defaults
from wmqlib.validate import InvalidValue, check_bool, check_choice, check_int, check_type

SCOPES = ("all", "encoder", "predictor")
CALIB_MPC_ROUNDS = 2  # the reference protocol: FP planning for 2 MPC iterations on the calibration seeds
CALIB_SOURCE = "planning"  # ... recorded while planning
Overrides = tuple[tuple[str, Recipe], ...]


@dataclass(frozen=True)
class Setting:
    """One point of the study; frozen, validated, and (with what its checkpoint implies) the cache key of its results.

    checkpoint: shipped model name ("mini-wall", "mini-pusht") or a wmq checkpoint folder.
    recipe: a ``wmqlib.quant`` recipe, or None for the full-precision model.
    scope: "all" | "encoder" | "predictor": which quantization points get the recipe (FP needs "all").
    planner: a planner's config (``wmqlib.plan.PLANNERS``: CEMConfig, GDConfig). mpc: MPCConfig, or None for
        open-loop (plan once, execute the whole plan).
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
    overrides: per-layer recipes (mixed precision), ``wmqlib.quant.quantize``'s ``overrides``: a mapping from
        module-name pattern to recipe, or a sequence of (pattern, recipe) pairs; stored as a tuple of pairs in the
        given order (later patterns win where they overlap); {} or () = None. Needs a recipe; every pattern must
        match a quantization point inside ``scope`` (checked when the model is quantized).
    calib_rounds: MPC rounds of FP planning recorded by the calibration (the reference protocol: 2); with
        calib_source "random", rounds of random rollouts; unused by "dataset".
    calib_source: what the calibration records: "planning" (FP CEM planning on the n_calib "calib" episodes, the
        reference protocol), "dataset" (n_calib trajectories of the checkpoint's own training data: every frame
        through the encoder, every teacher-forcing window through the predictor) or "random" (uniformly random
        action sequences rolled out from the calib episodes' states, as many per round as ``calib_planner``
        evaluates); see ``wmqlib.evaluate.collect_calibration``.
    planner_seed 0, objective None, the env's ``unkeyed_sampler``, overrides None, calib_rounds 2 and calib_source
    "planning" are left out of the cache keys (``wmqlib.sweep.added_field``), so results computed before these
    fields existed keep their keys.
    """

    checkpoint: str
    recipe: Recipe | None = None
    scope: str = "all"
    planner: PlannerConfig = CEMConfig(opt_steps=10)
    mpc: MPCConfig | None = None
    n_evals: int = 50
    seed: int = 99
    goal_H: int = 5
    trace: bool = False
    n_calib: int = 10
    calib_planner: CEMConfig | None = None
    device: str = "auto"
    planner_seed: int = added_field(0)
    objective: ObjectiveConfig | None = added_field(None)
    sampler: str | None = added_field(None)
    overrides: Overrides | None = added_field(None)
    calib_rounds: int = added_field(CALIB_MPC_ROUNDS)
    calib_source: str = added_field(CALIB_SOURCE)

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
        check_planner("Setting.planner", self.planner)
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
        object.__setattr__(self, "overrides", _overrides(self.overrides, self.recipe))
        check_int("Setting.calib_rounds", self.calib_rounds, 1)
        check_choice("Setting.calib_source", self.calib_source, CALIB_SOURCES)

    @property
    def needs_calibration(self) -> bool:
        """Whether quantizing needs a calibration: the recipe or an override's searches on one, or quantizes
        activations with a static range."""
        recipes = [] if self.recipe is None else [self.recipe, *(r for _, r in self.overrides or ())]
        return any(r.needs_calibration or r.static_activations for r in recipes)


def _overrides(value: object, recipe: Recipe | None) -> Overrides | None:
    """``Setting.overrides`` as a tuple of (pattern, recipe) pairs in order, or None when empty; InvalidValue /
    ValueError naming the field otherwise."""
    if value is None:
        return None
    what = "a mapping from module-name pattern to recipe, a sequence of (pattern, recipe) pairs, or None"
    if isinstance(value, Mapping):
        pairs = list(value.items())
    else:
        check_type("Setting.overrides", value, (tuple, list), what)
        for pair in value:
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise InvalidValue(f"Setting.overrides must be {what}, got an item that is not a pair: {pair!r}")
        pairs = [tuple(pair) for pair in value]
    if not pairs:
        return None
    if recipe is None:
        raise ValueError("Setting.overrides needs a recipe: recipe=None is the full-precision model, which has no "
                         "layers to quantize differently")
    kinds = ", ".join(sorted(recipe_types()))
    for pattern, other in pairs:
        check_type("Setting.overrides pattern", pattern, str, "a module-name pattern (e.g. 'encoder', "
                   "'predictor.transformer.layers.0*', 're:...')")
        check_type(f"Setting.overrides[{pattern!r}]", other, Recipe, f"a wmqlib.quant recipe ({kinds})")
    patterns = [pattern for pattern, _ in pairs]
    repeated = sorted({p for p in patterns if patterns.count(p) > 1})
    if repeated:
        raise ValueError(f"Setting.overrides names pattern(s) {repeated} more than once; give each pattern one recipe")
    return tuple(pairs)


@dataclass(frozen=True, eq=False)
class Resolved:
    """A setting with what its checkpoint implies, resolved once per run (``resolve_setting``) and passed down.

    setting: the Setting. folder, env, model_sha: its checkpoint's folder, environment ("wall") and weights
        fingerprint (16 hex digits; ``wmqlib.caches.Caches.checkpoint``).
    calib_planner: the FP CEM planner of its calibration run (its own, else CEM with the env's protocol budget).
    sampler: its episode sampler (None resolved to the env's default).
    identity: what identifies its results (``config_key(identity)`` names the result file): the setting's fields
        with calib_planner and sampler resolved (the env's ``unkeyed_sampler`` as None, so left out), env, model_sha.
    calibration: what its calibration depends on (``calibration_key`` = its config_key names the calibration file):
        weights, env, n_calib, seed and device; for planning or random rollouts also the sampler, goal_H, the
        calibration planner and rounds; the source unless it is "planning".
    quantized_key: the key of its quantized copy in memory: weights, device, recipe, scope, overrides (when
        given) and the calibration's fields.
    """

    setting: Setting
    folder: Path
    env: str
    model_sha: str
    calib_planner: CEMConfig
    sampler: str
    identity: dict[str, Any]
    calibration: dict[str, Any]
    calibration_key: str
    quantized_key: str


def resolve_setting(setting: Setting, folder: Path, env: str, model_sha: str) -> Resolved:
    """``setting`` resolved against its checkpoint's ``folder``, ``env`` and ``model_sha`` (no I/O; see
    ``Resolved``). ValueError naming the env's samplers for an unknown ``setting.sampler``."""
    cls = env_class(env)
    sampler = cls.check_sampler(setting.sampler)
    calib_planner = setting.calib_planner or CEMConfig(horizon=setting.planner.horizon, opt_steps=cls.plan_opt_steps)
    keyed = replace(setting, calib_planner=calib_planner, sampler=None if sampler == cls.unkeyed_sampler else sampler)
    identity = {**canonical(keyed), "env": env, "model_sha": model_sha}
    common = {"model_sha": model_sha, "env": env, "n_calib": setting.n_calib, "seed": setting.seed,
              "device": setting.device}
    rounds = setting.calib_rounds
    episodes = {"sampler": sampler, "goal_H": setting.goal_H, "planner": calib_planner, "mpc_rounds": rounds,
                "mpc": MPCConfig(max_rounds=rounds)}  # the MPCConfig keys the round semantics (replay from start)
    calibration = without_defaults({**common, **({} if setting.calib_source == "dataset" else episodes),
                                    "source": setting.calib_source}, {"source": CALIB_SOURCE})
    quantized = without_defaults({"model_sha": model_sha, "device": setting.device, "recipe": setting.recipe,
                                  "scope": setting.scope, "calibration": calibration, "overrides": setting.overrides},
                                 {"overrides": None})
    return Resolved(setting, Path(folder), env, model_sha, calib_planner, sampler, identity, calibration,
                    config_key(calibration), config_key(quantized))

