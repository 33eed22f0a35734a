"""The study's vocabulary: settings, profiles, the caches they share, and running settings into one tidy table.

    S = setup("full", ["mini-wall", "mini-pusht"])               # a notebook's first cell, in one call
    setting = S.profile.setting("mini-wall", recipe=S.profile.recipe("RTN", 4, "per-group", 32), scope="predictor")
    table = run_study([setting, ...], S.results)                  # = sweep(settings, run_setting, ...)

A ``Setting`` (``wmqlib.setting``) names everything a number depends on; building one reads no file. What its
checkpoint implies (the environment and a fingerprint of the weights, so a retrained model never reuses stale cached
rows) is derived when a run needs it by ``wmqlib.caches.Caches``, which also hold the loaded models, their quantized
copies, the calibrations (in memory and on disk under ``data/results/calibration/``) and the episodes.
``run_setting`` quantizes with ``wmqlib.quant.quantize`` (calibrating first when the recipe needs it: by default FP
CEM planning on ``n_calib`` "calib"-split episodes for 2 MPC rounds, the reference protocol; ``Setting.calib_source``
and ``calib_rounds`` vary it, ``Setting.overrides`` gives layers their own recipes), evaluates on the eval
episodes and adds the report's effective bits. Planner randomness: episode e's generator is seeded with the
episode's own seed (``wmqlib.evaluate.evaluate`` with ``seed=0``), so every setting plans the same episodes with the
same draws.

Sharing work: a traced run of ``T`` CEM iterations holds the plan of every iteration ``k < T``, and the plan of
iteration ``k`` IS the final plan of a run with ``opt_steps = k + 1`` (``wmqlib.evaluate``), so ``at_opt_steps``
reads the result for any budget ``<= T`` out of one traced run instead of running again.

Group size: the paper quantizes DINO-WM (384-wide encoder, 404-wide predictor tokens) with groups of 128, i.e.
about three groups per weight row. ``group_size_for`` keeps that proportion for any width: the largest power of two
<= half the encoder width, at most 128. DINO-WM: 128; the shipped mini models (encoder 64, predictor tokens
84 = 64 + 10 + 10): 32, so the predictor's 84-wide qkv / fc1 rows split 32, 32, 20 as DINO-WM's 404 split
128, 128, 128, 20; every row keeps at least two groups, so per-group always differs from per-channel.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from wmqlib import evaluate as ev
from wmqlib.caches import CACHES, Caches, provenance
from wmqlib.setting import CALIB_MPC_ROUNDS, Setting
from wmqlib.envs import env_class
from wmqlib.models.errors import CheckpointError
from wmqlib.models.checkpoint import read_checkpoint_config
from wmqlib.paths import RESULTS_DIR
from wmqlib.plan import PLANNERS, CEMConfig, GDConfig, MPCConfig, ObjectiveConfig, PlannerConfig, planning_name
from wmqlib.probe import outlier_stats, probe_model
from wmqlib.quant import Recipe, is_quantwm_reference, recipe_from_names, recipe_types
from wmqlib.sweep import config_key, sweep
from wmqlib.validate import check_bool, check_choice, check_int, check_type

UNITS = ("planner_seed", "episode_seed")  # one paired unit: an episode planned with one planner seed


def group_size_for(encoder_dim: int) -> int:
    """Weight group size keeping DINO-WM's proportion (g128 for 384 wide): the largest power of two <=
    ``encoder_dim / 2``, at most 128, at least 1. DINO-WM (384): 128; mini models (64): 32."""
    check_int("encoder_dim", encoder_dim, 2)
    return min(128, 1 << ((encoder_dim // 2).bit_length() - 1))


def default_group_size(checkpoint: str | os.PathLike) -> int:
    """``group_size_for`` the checkpoint's encoder width (32 for the shipped mini models, 128 for DINO-WM)."""
    folder = CACHES.checkpoint(checkpoint)[0]
    return group_size_for(int(read_checkpoint_config(folder)["config"]["encoder_dim"]))


# ----- running settings -------------------------------------------------------------------------------------------

def run_setting(setting: Setting, caches: Caches = CACHES, recompute_calibration: bool = False) -> pd.DataFrame:
    """Evaluate one setting: ``wmqlib.evaluate.evaluate``'s table (per episode, or per (episode, iteration) when
    traced; its ``seed`` column renamed ``episode_seed``) plus ``effective_bits`` (storage bits per weight of the
    quantized layers, overhead included; the FP dtype's bits for FP), ``encoder_error`` (see
    ``wmqlib.evaluate.encoder_error``) and ``seconds`` (wall time of the planning). ``sweep``'s run_fn."""
    check_type("setting", setting, Setting, "a Setting")
    model, report = caches.quantized(setting, recompute_calibration)
    fp, env, eps = caches.model(setting), caches.env(setting), caches.episodes(setting)
    start = time.perf_counter()
    table = ev.evaluate(model, env, setting.planner, eps, mpc=setting.mpc, trace=setting.trace and setting.mpc is None,
                        per_round=setting.trace and setting.mpc is not None,
                        objective=setting.objective or ObjectiveConfig(), seed=setting.planner_seed)
    table = table.rename(columns={"seed": "episode_seed"})  # "seed" is the Setting's (config) column
    seconds = time.perf_counter() - start
    table["effective_bits"] = report.effective_bits if report is not None else float(torch.finfo(fp.dtype).bits)
    table["encoder_error"] = ev.encoder_error(fp, model, env, eps)
    table["seconds"] = seconds
    return table


def describe(setting: Setting) -> dict[str, Any]:
    """Readable columns of a setting (the config columns keep the full detail): method ("FP" or the recipe's
    class), bits ("W4A16"), w_bits, a_bits (32 for FP, 16 for weight-only), weights ("per-channel" | "g32" |
    "per-tensor" | "-"), w_kind (the same without the group size: "per-group"), acts ("-" | "per-tensor" |
    "per-token"), configuration ("wmq" defaults | "QuantWM": ``wmqlib.quant.quantwm_reference`` | "-" for FP),
    planning ("CEM" | "GD" | "MPC-CEM" | ...), search (planning with CEM's samples / top-k, e.g.
    "CEM 300/30"), opt_steps, latents (what the objective scores: "visual+proprio" | "visual" | "proprio"),
    n_overrides (how many per-layer override patterns, 0 for none), calibration (what calibrated the recipe:
    "planning x2" | "random x2" (source and rounds) | "dataset" | "-" when nothing needs calibration) and label,
    e.g. "RTN W4A16 g32 [predictor]", with " +2 overrides" when the setting has some. (The config columns give
    planner_seed, 0 where unset, and the overrides themselves; the quantized layers' average bits are
    run_setting's ``effective_bits``.)
    """
    r = setting.recipe
    if r is None:
        weights, kind, acts = "-", "-", "-"
    else:
        kind = r.w_granularity.name
        weights = f"g{r.w_granularity.group_size}" if kind == "per-group" else kind
        acts = "-" if r.a_bits is None else r.a_granularity.name
    planning = planning_name(setting.planner, mpc=setting.mpc is not None)
    sizes = f" {setting.planner.samples}/{setting.planner.topk}" if isinstance(setting.planner, CEMConfig) else ""
    configuration = "-" if r is None else "QuantWM" if is_quantwm_reference(r) else "wmq"
    n_overrides = len(setting.overrides or ())
    label = "FP" if r is None else " ".join([type(r).__name__, r.label, weights] + ([acts] if acts != "-" else []) +
                                            (["(QuantWM)"] if configuration == "QuantWM" else []))
    if n_overrides:
        label += f" +{n_overrides} override{'s' if n_overrides > 1 else ''}"
    calibrated = r is not None and any(rec.needs_calibration or rec.static_activations
                                       for rec in [r, *(rec for _, rec in setting.overrides or ())])
    calibration = "-"
    if calibrated:  # rounds count for planning and random rollouts, not for training data
        rounds = f" x{setting.calib_rounds}" if setting.calib_source != "dataset" else ""
        calibration = setting.calib_source + rounds
    return {"method": "FP" if r is None else type(r).__name__, "bits": "FP" if r is None else r.label,
            "w_bits": 32 if r is None else r.w_bits, "a_bits": 32 if r is None else (r.a_bits or 16),
            "weights": weights, "w_kind": kind, "acts": acts, "configuration": configuration,
            "planning": planning, "search": planning + sizes, "opt_steps": setting.planner.opt_steps,
            "latents": objective_name(setting.objective or ObjectiveConfig()), "n_overrides": n_overrides,
            "calibration": calibration,
            "label": label if setting.scope == "all" else f"{label} [{setting.scope}]"}


def objective_name(objective: ObjectiveConfig) -> str:
    """"visual+proprio" (DINO-WM's), "visual" or "proprio": which latents the objective scores (weights > 0)."""
    parts = [name for name, weight in (("visual", objective.visual_weight), ("proprio", objective.alpha)) if weight > 0]
    return "+".join(parts)


def run_study(settings: Sequence[Setting], name: str, recompute: bool = False,
              cache_dir: str | os.PathLike = RESULTS_DIR, progress: bool = True,
              caches: Caches | None = None, executor: Executor | str | None = None) -> pd.DataFrame:
    """``sweep(settings, run_setting, name)`` with the readable ``describe`` columns in front.

    Results are cached as ``<cache_dir>/<name>/<key>.json``, calibrations under ``<cache_dir>/calibration``
    (``caches`` None: the process's ``CACHES`` when ``cache_dir`` is the default, else caches of that folder);
    recompute=True reruns every setting and recollects its calibration (once per process).
    executor: None runs the settings here, one after another; a ``concurrent.futures.Executor`` or a spec
    ("local:N", "dask://HOST:PORT"; see ``wmqlib.cluster``) runs one task per uncached setting, each worker process
    with its own caches (``run_setting_in``) of the same calibration folder. A setting that raises is reported and
    the others go on; ``wmqlib.sweep.SweepError`` then names every failed setting.
    """
    if caches is None:
        caches = CACHES if Path(cache_dir) == RESULTS_DIR else Caches(Path(cache_dir) / "calibration")
    if executor is None:
        run_fn = partial(run_setting, caches=caches, recompute_calibration=recompute)
    else:
        weights = {s.checkpoint: caches.checkpoint(s.checkpoint)[2] for s in settings}
        run_fn = partial(run_setting_in, calib_dir=str(caches.calib_dir), weights=weights,
                         recompute_calibration=recompute)
    table = sweep(list(settings), run_fn, name, cache_dir=cache_dir, recompute=recompute, progress=progress,
                  key_config=caches.identity, provenance=provenance, executor=executor,
                  label=lambda s: f"{s.checkpoint}: {describe(s)['label']}, {describe(s)['search']}")
    labels = pd.DataFrame([{"config_key": config_key(caches.identity(s)), **describe(s)} for s in settings])
    table = labels.merge(table, on="config_key", how="right", validate="one_to_many")
    # planner_seed 0 is left out of the keys (and so of the config columns): fill it in
    seeds = table["planner_seed"] if "planner_seed" in table.columns else pd.Series(0, index=table.index)
    return table.assign(planner_seed=seeds.fillna(0).astype(int))


def run_setting_in(setting: Setting, calib_dir: str, weights: Mapping[str, str],
                   recompute_calibration: bool = False) -> pd.DataFrame:
    """``run_setting`` with this process's caches for calibration folder ``calib_dir`` (``CACHES`` for the
    default one): the task a worker process runs, picklable, so no driver cache travels with it.

    weights: checkpoint -> the driver's weights fingerprint (the results' key); CheckpointError when this
    process finds other weights under that name or path, so a stale copy never fills the driver's cache.
    """
    caches = _process_caches(calib_dir)
    folder, _, sha = caches.checkpoint(setting.checkpoint)
    if sha != weights[setting.checkpoint]:
        raise CheckpointError(f"checkpoint {setting.checkpoint!r} ({folder}) on {platform.node()} has weights "
                              f"{sha}, the driver's have {weights[setting.checkpoint]}; copy the same files there")
    return run_setting(setting, caches, recompute_calibration)


@cache
def _process_caches(calib_dir: str) -> Caches:
    return CACHES if Path(calib_dir) == CACHES.calib_dir else Caches(calib_dir)


def probe_table(setting: Setting, n_train: int, n_test: int, caches: Caches = CACHES) -> pd.DataFrame:
    """``wmqlib.probe.probe_model`` of the setting's (quantized) model: a ridge probe from the visual latent to the
    success-deciding state, fitted on ``n_train`` scripted trajectories (seed 0) and scored on ``n_test`` others
    (seed 1); one row per state component with the error over the env's success tolerance, plus env and label."""
    model, _ = caches.quantized(setting)
    train, test = caches.probe_frames(setting, n_train, seed=0), caches.probe_frames(setting, n_test, seed=1)
    return probe_model(model, train, test).assign(env=caches.env_name(setting), label=describe(setting)["label"])


def outlier_table(setting: Setting, caches: Caches = CACHES) -> pd.DataFrame:
    """``wmqlib.probe.outlier_stats`` of the setting's FP model on its calibration capture (FP planning on the
    calibration episodes): per quantized linear, max_over_median and kurtosis of its input; plus env."""
    calib = caches.calibration(dataclasses.replace(setting, recipe=None, scope="all"))
    return outlier_stats(caches.model(setting), calib).assign(env=caches.env_name(setting))


def baseline_outcomes(setting: Setting, caches: Caches = CACHES) -> dict[str, pd.Series]:
    """Per trivial baseline, its success on the setting's eval episodes (``baseline_table``) as a boolean Series
    indexed by ``episode_seed``: the ``baselines`` argument of the verdict rules (``wmqlib.verdicts``)."""
    table = baseline_table(setting, caches=caches)
    return {name: rows.set_index("seed")["success"].rename_axis("episode_seed").sort_index()
            for name, rows in table.groupby("baseline", sort=True)}


def imagine(setting: Setting, episode: int = 0, caches: Caches = CACHES) -> dict[str, Any]:
    """``wmqlib.evaluate.imagine`` for eval episode ``episode`` of ``setting`` (its quantized model, planner and
    episodes): real, seen and imagined frames, and the goal."""
    model, _ = caches.quantized(setting)
    return ev.imagine(model, caches.model(setting), caches.env(setting), caches.episodes(setting)[episode],
                      setting.planner, seed=setting.planner_seed, objective=setting.objective or ObjectiveConfig())


def baseline_table(setting: Setting, seed: int = 0, caches: Caches = CACHES) -> pd.DataFrame:
    """Trivial baselines (``wmqlib.evaluate.BASELINES``) on the setting's eval episodes with the planner's
    env-step budget (horizon * frameskip * MPC rounds); one row per (episode, baseline), with env and steps."""
    rounds = 1 if setting.mpc is None else setting.mpc.max_rounds
    steps = setting.planner.horizon * caches.model(setting).config.frameskip * rounds
    table = ev.baselines(caches.env(setting), caches.episodes(setting), steps=steps, seed=seed)
    return table.assign(env=caches.env_name(setting), steps=steps)


# ----- reading traced tables ------------------------------------------------------------------------------------

def at_opt_steps(trace: pd.DataFrame, k: int) -> pd.DataFrame:
    """Per-episode rows of a traced table as if planned with ``opt_steps = k`` (its iteration k - 1).

    Raises ValueError when the trace is shorter than ``k`` iterations or ``trace`` has no ``iteration`` column.
    """
    if "iteration" not in trace.columns:
        raise ValueError("at_opt_steps needs a traced table (Setting(trace=True)): it has no 'iteration' column")
    check_int("at_opt_steps: k", k, 1)
    longest = int(trace["iteration"].max()) + 1
    if k > longest:
        raise ValueError(f"k={k} exceeds the traced iterations ({longest})")
    return trace[trace["iteration"] == k - 1].reset_index(drop=True).assign(opt_steps=k)


def per_episode(table: pd.DataFrame, k: int | Mapping[str, int] | None = None) -> pd.DataFrame:
    """One row per (setting, episode): traced settings at ``opt_steps = min(k, traced iterations)`` (k per env
    when a mapping, e.g. ``{"wall": 10, "pusht": 30}``; None = their last iteration), MPC settings at their last
    round (= the untraced result), untraced ones as they are.
    Adds ``opt_steps`` (the budget the rows reflect)."""
    parts = []
    for _, group in table.groupby("config_key", sort=False):
        if "round" in group.columns and group["round"].notna().any():  # MPC per round: the final round
            last = group[group["round"] == group["round"].max()]
            parts.append(last.assign(opt_steps=last["planner.opt_steps"]).reset_index(drop=True))
            continue
        if "iteration" not in group.columns or group["iteration"].isna().all():
            parts.append(group.assign(opt_steps=group["planner.opt_steps"]))
            continue
        longest = int(group["iteration"].max()) + 1
        want = k[group["env"].iloc[0]] if isinstance(k, Mapping) else k
        parts.append(at_opt_steps(group, longest if want is None else min(want, longest)))
    return pd.concat(parts, ignore_index=True)


# ----- profiles and the notebook setup ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Profile:
    """The sizes of one run of the study (see ``PROFILES``).

    n_evals: evaluation episodes per setting. samples, topk: CEM candidates and elites.
    opt_steps: CEM iterations of untraced settings; None = DINO-WM's protocol per env (Wall 10, PushT 30).
    trace_steps: CEM iterations of traced settings (success and loss vs iterations).
    gd_steps: gradient-descent updates of the GD planner. mpc_rounds: max rounds of the MPC settings.
    n_calib: calibration episodes; the calibration planner is CEM with ``steps(env)`` iterations.
    threads: torch intra-op threads (None = torch's default). always_recompute: ignore cached results (the
        goldens must recompute, or a changed number could hide behind the cache).
    method_options: per method name, recipe fields this profile sets (e.g. fewer OmniQuant epochs for smoke).
    planner_seeds: the planner seeds the key settings are run with (same episodes, other draws), so the verdicts
        see how much success moves with CEM's sampling; other settings use the first.
    probe_trajectories: (training, held-out) scripted trajectories of 21 frames for the state probe (the probe
        needs a few times more training frames than latent features, 1,024 on the mini models).
    """

    name: str
    n_evals: int
    samples: int
    topk: int
    opt_steps: int | None
    trace_steps: int
    gd_steps: int
    mpc_rounds: int
    n_calib: int
    threads: int | None
    always_recompute: bool
    method_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    planner_seeds: tuple[int, ...] = (0,)
    probe_trajectories: tuple[int, int] = (300, 40)

    def __post_init__(self) -> None:
        for name in ("n_evals", "samples", "topk", "trace_steps", "gd_steps", "mpc_rounds", "n_calib"):
            check_int(f"Profile.{name}", getattr(self, name), 1)
        for name in ("opt_steps", "threads"):
            if getattr(self, name) is not None:
                check_int(f"Profile.{name} (or None)", getattr(self, name), 1)
        check_bool("Profile.always_recompute", self.always_recompute)
        for method in self.method_options:
            check_choice("Profile.method_options key", method, sorted(recipe_types()))
        seeds = check_type("Profile.planner_seeds", self.planner_seeds, (tuple, list), "a tuple of ints >= 0")
        if not seeds or len(set(seeds)) != len(seeds):
            raise ValueError(f"Profile.planner_seeds must be distinct ints >= 0, at least one, got {seeds!r}")
        object.__setattr__(self, "planner_seeds", tuple(check_int("Profile.planner_seeds[]", x, 0) for x in seeds))
        pair = check_type("Profile.probe_trajectories", self.probe_trajectories, (tuple, list), "(train, test)")
        if len(pair) != 2:
            raise ValueError(f"Profile.probe_trajectories must be (train, test), got {pair!r}")
        object.__setattr__(self, "probe_trajectories", (check_int("Profile.probe_trajectories[0]", pair[0], 4),
                                                        check_int("Profile.probe_trajectories[1]", pair[1], 1)))
        CEMConfig(samples=self.samples, topk=self.topk)  # topk <= samples, checked where it is defined

    def steps(self, env: str) -> int:
        """CEM iterations of an untraced setting in ``env``."""
        return env_class(env).plan_opt_steps if self.opt_steps is None else self.opt_steps

    def cem(self, env: str, trace: bool = False) -> CEMConfig:
        """The CEM planner: ``trace_steps`` iterations when traced, else ``steps(env)``."""
        return CEMConfig(samples=self.samples, topk=self.topk,
                         opt_steps=self.trace_steps if trace else self.steps(env))

    def recipe(self, method: str, w_bits: int, w_granularity: str = "per-channel", group_size: int | None = None,
               a_bits: int | None = None, a_granularity: str | None = None) -> Recipe:
        """``recipe_from_names(...)`` with this profile's options for the method."""
        return recipe_from_names(method, w_bits, w_granularity, group_size, a_bits, a_granularity,
                           **self.method_options.get(method, {}))

    def setting(self, checkpoint: str, device: str = "auto", seed: int = 99, recipe: Recipe | None = None,
                scope: str = "all", planner: str = "CEM", mpc: bool = False, long: bool = False,
                protocol: bool = False, planner_seed: int = 0, objective: ObjectiveConfig | None = None,
                sampler: str | None = None, overrides: Mapping[str, Recipe] | Sequence[tuple[str, Recipe]] | None = None,
                calib_rounds: int = CALIB_MPC_ROUNDS, calib_source: str = "planning",
                caches: Caches = CACHES) -> Setting:
        """A ``Setting`` sized by this profile.

        planner: a name of ``wmqlib.plan.PLANNERS``: "CEM" (the profile's samples / topk) or "GD" (``gd_steps``
        updates); protocol: CEM sized by DINO-WM's protocol instead (300 samples / top 30 at the env's budget, Wall
        10 / PushT 30 iterations, whatever the profile); mpc: closed loop with ``mpc_rounds`` rounds. Open-loop CEM
        is always traced (the trace costs no planning and gives success vs iterations for free), with
        ``trace_steps`` iterations when ``long`` else ``steps(env)``; MPC settings always give one row per round
        (success vs rounds); open-loop GD is not traced. planner_seed, objective, sampler, overrides, calib_rounds,
        calib_source: as in ``Setting``. The checkpoint's env is read (once per process) to size the planner.
        """
        check_choice("planner", planner, list(PLANNERS))
        if long and (planner != "CEM" or mpc or protocol):
            raise ValueError("long=True applies to open-loop CEM with the profile's sizes (planner='CEM') only")
        if protocol and planner != "CEM":
            raise ValueError(f"protocol=True sizes CEM by DINO-WM's protocol; planner {planner!r} has no protocol")
        env = caches.checkpoint(checkpoint)[1]
        chosen: PlannerConfig = {
            "CEM": lambda: CEMConfig(opt_steps=env_class(env).plan_opt_steps) if protocol else self.cem(env, long),
            "GD": lambda: GDConfig(opt_steps=self.gd_steps)}[planner]()
        return Setting(checkpoint, recipe=recipe, scope=scope, planner=chosen,
                       mpc=MPCConfig(max_rounds=self.mpc_rounds) if mpc else None, n_evals=self.n_evals, seed=seed,
                       trace=mpc or planner != "GD", n_calib=self.n_calib, calib_planner=self.cem(env),
                       device=device, planner_seed=planner_seed, objective=objective, sampler=sampler,
                       overrides=overrides, calib_rounds=calib_rounds, calib_source=calib_source)


PROFILES = {
    # The CPU budget (all notebooks <= 60 min on 2 cores, measured): DINO-WM's 50 episodes, but CEM with 100
    # samples / top 10 and 10 iterations in both envs, traced runs to 20 (its protocol: 300 / 30, Wall 10, PushT 30
    # iterations - 00_baseline runs that too). On the shipped models 100 / 10 plans about as well as 300 / 30 and
    # success saturates by 10-15 iterations; "paper" below is the protocol, for a GPU.
    "full": Profile("full", n_evals=50, samples=100, topk=10, opt_steps=10, trace_steps=20, gd_steps=1000,
                    mpc_rounds=5, n_calib=10, threads=None, always_recompute=False, planner_seeds=(0, 1, 2)),
    "paper": Profile("paper", n_evals=50, samples=300, topk=30, opt_steps=None, trace_steps=50, gd_steps=1000,
                     mpc_rounds=5, n_calib=10, threads=None, always_recompute=False, planner_seeds=(0, 1, 2)),
    "smoke": Profile("smoke", n_evals=3, samples=30, topk=5, opt_steps=2, trace_steps=3, gd_steps=3, mpc_rounds=2,
                     n_calib=2, threads=1, always_recompute=True, method_options={"OmniQuant": {"epochs": 1}},
                     planner_seeds=(0, 1), probe_trajectories=(12, 4)),
}


def make_profile(name: str, **overrides: Any) -> Profile:
    """``PROFILES[name]`` with the given fields replaced; None values are ignored (a parameters cell's "use the
    profile's size"). Raises ValueError for an unknown name or field."""
    check_choice("profile", name, list(PROFILES))
    known = {f.name for f in dataclasses.fields(Profile)} - {"name"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown profile fields {unknown}; allowed: {sorted(known)}")
    return dataclasses.replace(PROFILES[name], **{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True)
class Setup:
    """What a notebook's first cell needs: the profile, the checkpoints and their envs, the CEM budget per env
    (``{"wall": 10, ...}``), the results cache name (``<results_name>-<profile>``), whether to recompute, device,
    episode seed and the episode sampler per env (``{"pusht": "demo", ...}``)."""

    profile: Profile
    checkpoints: tuple[str, ...]
    envs: tuple[str, ...]
    budget: dict[str, int]
    results: str
    recompute: bool
    device: str
    seed: int
    samplers: dict[str, str]

    def setting(self, checkpoint: str, **kwargs: Any) -> Setting:
        """``profile.setting(checkpoint, device, seed, sampler=<the env's>, **kwargs)``."""
        env = self.envs[self.checkpoints.index(str(checkpoint))]
        return self.profile.setting(checkpoint, self.device, self.seed, **{"sampler": self.samplers[env], **kwargs})


def setup(profile: str, checkpoint: str | Sequence[str], device: str = "auto", seed: int = 99,
          results_name: str = "study", recompute: bool = False, samplers: Mapping[str, str] | None = None,
          **sizes: Any) -> Setup:
    """The one call that starts every notebook: the profile with the parameters cell's sizes (None = the
    profile's), torch's thread count fixed, the envs of the checkpoints, the budget, the episode sampler per env
    (``samplers``: env -> name; an env left out uses its class's default); prints what it chose."""
    P = make_profile(profile, **sizes)
    if P.threads is not None:  # results depend on the reduction order, so the goldens run with a fixed count
        torch.set_num_threads(P.threads)
    checkpoints = (checkpoint,) if isinstance(checkpoint, (str, os.PathLike)) else tuple(checkpoint)
    envs = tuple(CACHES.checkpoint(ck)[1] for ck in checkpoints)
    chosen = dict(samplers or {})
    unknown = sorted(set(chosen) - set(envs))
    if unknown:
        raise ValueError(f"samplers names envs {unknown} that no checkpoint is for; the checkpoints' envs: {list(envs)}")
    S = Setup(P, tuple(str(c) for c in checkpoints), envs, {env: P.steps(env) for env in envs},
              f"{results_name}-{P.name}", bool(recompute) or P.always_recompute, device, seed,
              {env: env_class(env).check_sampler(chosen.get(env)) for env in envs})
    print(P)
    print("budget:", S.budget, "| long traces:", P.trace_steps, "iterations | episodes:", S.samplers, "| results:",
          S.results)
    return S
