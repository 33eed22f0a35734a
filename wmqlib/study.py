"""Running settings into one tidy table: a run's pieces from the caches, ``run_setting``, ``run_study``, and the
per-setting views the notebooks draw (baselines, state probe, outliers, imagined rollouts, traced tables).

    S = setup("full", ["mini-wall", "mini-pusht"])                # wmqlib.profiles: a notebook's first cell
    setting = S.setting("mini-wall", recipe=S.profile.recipe("RTN", 4, "per-group", 32), scope="predictor")
    table = run_study([setting, ...], S.results)                  # = sweep(settings, run_setting, ...)

A ``Setting`` (``wmqlib.setting``) names everything a number depends on; building one reads no file. A run resolves
it against its checkpoint once (the environment and a fingerprint of the weights, so a retrained model never
reuses stale cached rows; ``wmqlib.caches.Caches.resolved``) and ``prepare`` passes that down: it finds or makes the
FP model, the episodes, the calibration (in memory and on disk under ``data/results/calibration/``) and the
quantized copy in the caches. ``run_setting`` quantizes with ``wmqlib.quant.quantize`` (calibrating first when the
recipe needs it: by default FP CEM planning on ``n_calib`` "calib"-split episodes for 2 MPC rounds, the reference
protocol; ``Setting.calib_source`` and ``calib_rounds`` vary it, ``Setting.overrides`` gives layers their own
recipes), evaluates on the eval episodes and adds the report's effective bits. Planner randomness: episode e's
generator is seeded with the episode's own seed (``wmqlib.evaluate.evaluate`` with ``seed=0``), so every setting
plans the same episodes with the same draws.

Sharing work: a traced run of ``T`` CEM iterations holds the plan of every iteration ``k < T``, and the plan of
iteration ``k`` IS the final plan of a run with ``opt_steps = k + 1`` (``wmqlib.evaluate``), so ``at_opt_steps``
reads the result for any budget ``<= T`` out of one traced run instead of running again.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from wmqlib import evaluate as ev
from wmqlib import stats
from wmqlib.alignment import ALIGNMENT_COLUMNS, candidate_alignment
from wmqlib.caches import CACHES, Caches, provenance
from wmqlib.envs import Episode, WmqEnv, make_env, sample_episodes
from wmqlib.evaluate import collect_calibration
from wmqlib.models import WorldModel, load_world_model
from wmqlib.models.errors import CheckpointError
from wmqlib.paths import RESULTS_DIR
from wmqlib.plan import CEMConfig, ObjectiveConfig, PlanningModel, planning_name
from wmqlib.probe import outlier_stats, probe_frames, probe_model
from wmqlib.quant import Calibration, QuantReport, is_quantwm_reference, quantize
from wmqlib.setting import Resolved, Setting
from wmqlib.sweep import config_key, sweep
from wmqlib.training_data import training_sample
from wmqlib.validate import check_choice, check_int, check_type
from wmqlib.verdicts import outcomes

UNITS = ("planner_seed", "episode_seed")  # one paired unit: an episode planned with one planner seed
PROBE_TRAJ_LEN = 20  # actions per scripted trajectory of the state probe (21 frames)


# ----- running settings -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Prepared:
    """What a run of one setting plans with (``prepare``).

    run: the setting resolved against its checkpoint (``wmqlib.setting.Resolved``: env, fingerprint, keys).
    fp: the full-precision WorldModel in eval mode on the setting's device. model, report: the model to plan with
        and its ``QuantReport`` (``fp`` and None for FP). env: the env rendering at the model's image size.
    episodes: the setting's "eval" episodes (n_evals), or its "calib" ones (n_calib) when prepared for that split.
    calibration: the FP model's calibration (``Setting.calib_source``) when quantizing needs one or it was asked for.
    """

    run: Resolved
    fp: WorldModel
    model: PlanningModel
    report: QuantReport | None
    env: WmqEnv
    episodes: list[Episode]
    calibration: Calibration | None


def prepare(setting: Setting, caches: Caches = CACHES, recompute_calibration: bool = False, calibrate: bool = False,
            split: str = "eval") -> Prepared:
    """What a run of ``setting`` plans with, found in ``caches`` or made once and stored there.

    In order: the setting resolved against its checkpoint (the one file read: its config and weights, hashed once
    per version); the FP model (loaded once per weights and device); the env; the episodes of ``split`` ("eval" or
    "calib", drawn once); the calibration when the recipe or an override's needs one or ``calibrate`` asks (in
    memory, else ``<calib_dir>/<calibration_key>.safetensors``, else recorded from the setting's ``calib_source``
    - FP CEM planning on the "calib" episodes for ``calib_rounds`` MPC rounds by default, random rollouts, or its
    regenerated training data (``wmqlib.training_data.training_sample``) - and written atomically;
    ``recompute_calibration``: recorded again, once per process and key); the quantized copy
    ``quantize(fp, recipe, calibration, scope, overrides)`` with its report (one of the last few kept;
    ``recompute_calibration`` makes it again).
    """
    check_type("setting", setting, Setting, "a Setting")
    check_choice("prepare split", split, ("eval", "calib"))
    run = caches.resolved(setting)
    if (run.model_sha, setting.device) not in caches.models:
        caches.models[run.model_sha, setting.device] = load_world_model(run.folder, device=setting.device)
    fp = caches.models[run.model_sha, setting.device]
    env = make_env(run.env, render_size=fp.config.img_size)
    key, calibs = run.calibration_key, caches.calibrations
    calibrating = setting.needs_calibration or calibrate
    collect = calibrating and (key not in calibs or (recompute_calibration and key not in calibs.fresh))
    splits = {split, "calib"} if collect and setting.calib_source != "dataset" else {split}
    episodes = {}
    for name in sorted(splits):  # drawn once per process: (env, n, seed, split, goal_H, frameskip, sampler)
        n = setting.n_evals if name == "eval" else setting.n_calib
        episode_key = (run.env, n, setting.seed, name, setting.goal_H, fp.config.frameskip, run.sampler)
        if episode_key not in caches.episodes:
            caches.episodes[episode_key] = tuple(sample_episodes(
                run.env, n, seed=setting.seed, split=name, goal_H=setting.goal_H, frameskip=fp.config.frameskip,
                sampler=run.sampler))
        episodes[name] = list(caches.episodes[episode_key])
    if collect and setting.calib_source == "dataset":
        sample_key = (run.model_sha, setting.n_calib, setting.seed)
        if sample_key not in caches.samples:
            caches.samples[sample_key] = training_sample(fp, run.folder, setting.n_calib, setting.seed)
        calibs[key] = collect_calibration(fp, source="dataset", data=caches.samples[sample_key])
    elif collect:
        calibs[key] = collect_calibration(fp, env, episodes["calib"], run.calib_planner,
                                          mpc_rounds=setting.calib_rounds, source=setting.calib_source)
    calibration = calibs[key] if calibrating else None
    model, report = fp, None
    if setting.recipe is not None:
        if recompute_calibration or run.quantized_key not in caches.quantized:
            overrides = dict(setting.overrides) if setting.overrides is not None else None
            caches.quantized[run.quantized_key] = quantize(fp, setting.recipe, calibration, scope=setting.scope,
                                                           overrides=overrides)
        model, report = caches.quantized[run.quantized_key]
    return Prepared(run, fp, model, report, env, episodes[split], calibration)


def run_setting(setting: Setting, caches: Caches = CACHES, recompute_calibration: bool = False) -> pd.DataFrame:
    """Evaluate one setting: ``wmqlib.evaluate.evaluate``'s table (per episode, or per (episode, iteration) when
    traced; its ``seed`` column renamed ``episode_seed``) plus ``effective_bits`` (storage bits per weight of the
    quantized layers, overhead included; the FP dtype's bits for FP), ``encoder_error`` (see
    ``wmqlib.evaluate.encoder_error``) and ``seconds`` (wall time of the planning). ``sweep``'s run_fn."""
    p = prepare(setting, caches, recompute_calibration)
    start = time.perf_counter()
    closed = setting.mpc is not None
    table = ev.evaluate(p.model, p.env, setting.planner, p.episodes, mpc=setting.mpc,
                        trace=setting.trace and not closed, per_round=setting.trace and closed,
                        objective=setting.objective or ObjectiveConfig(), seed=setting.planner_seed)
    table = table.rename(columns={"seed": "episode_seed"})  # "seed" is the Setting's (config) column
    seconds = time.perf_counter() - start
    fp_bits = float(torch.finfo(p.fp.dtype).bits)
    table["effective_bits"] = p.report.effective_bits if p.report is not None else fp_bits
    table["encoder_error"] = ev.encoder_error(p.fp, p.model, p.env, p.episodes)
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
    calibration = "-"
    if setting.needs_calibration:  # rounds count for planning and random rollouts, not for training data
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
        weights = {s.checkpoint: caches.checkpoint(s.checkpoint).model_sha for s in settings}
        run_fn = partial(run_setting_in, calib_dir=str(caches.calib_dir), weights=weights,
                         recompute_calibration=recompute)
    table = sweep(list(settings), run_fn, name, cache_dir=cache_dir, recompute=recompute, progress=progress,
                  key_config=lambda s: caches.resolved(s).identity, provenance=provenance, executor=executor,
                  label=lambda s: f"{s.checkpoint}: {describe(s)['label']}, {describe(s)['search']}")
    labels = pd.DataFrame([{"config_key": result_key(s, caches), **describe(s)} for s in settings])
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


def fp_of(setting: Setting) -> Setting:
    """The full-precision setting with ``setting``'s planner, episodes and calibration (recipe, scope, overrides
    reset): the same model, env and episodes, and the same calibration key."""
    return dataclasses.replace(setting, recipe=None, scope="all", overrides=None)


def result_key(setting: Setting, caches: Caches = CACHES) -> str:
    """The key of the setting's result file: ``config_key`` of its identity (``wmqlib.setting.Resolved``)."""
    return config_key(caches.resolved(setting).identity)


def probe_table(setting: Setting, n_train: int, n_test: int, caches: Caches = CACHES) -> pd.DataFrame:
    """``wmqlib.probe.probe_model`` of the setting's (quantized) model: a ridge probe from the visual latent to the
    success-deciding state, fitted on ``n_train`` scripted trajectories (seed 0) and scored on ``n_test`` others
    (seed 1); one row per state component with the error over the env's success tolerance, plus env and label."""
    p = prepare(setting, caches)
    frames = []
    for n, seed in ((n_train, 0), (n_test, 1)):  # made once per process: (env, n_traj, seed, traj_len, size)
        key = (p.run.env, n, seed, PROBE_TRAJ_LEN, p.fp.config.img_size)
        if key not in caches.frames:
            caches.frames[key] = probe_frames(p.run.env, n, PROBE_TRAJ_LEN, seed, p.fp.config.img_size)
        frames.append(caches.frames[key])
    return probe_model(p.model, *frames).assign(env=p.run.env, label=describe(setting)["label"])


def outlier_table(setting: Setting, caches: Caches = CACHES) -> pd.DataFrame:
    """``wmqlib.probe.outlier_stats`` of the setting's FP model on its calibration capture (FP planning on the
    calibration episodes): per quantized linear, max_over_median and kurtosis of its input; plus env."""
    p = prepare(fp_of(setting), caches, calibrate=True)
    return outlier_stats(p.fp, p.calibration).assign(env=p.run.env)


def baseline_outcomes(setting: Setting, caches: Caches = CACHES, results: str | None = None,
                      recompute: bool = False) -> dict[str, pd.Series]:
    """Per trivial baseline, its success on the setting's eval episodes (``baseline_table``, cached in ``results``
    when given) as a boolean Series indexed by ``episode_seed``: the ``baselines`` argument of the verdict rules
    (``wmqlib.verdicts``); ``recompute`` as there."""
    table = baseline_table(setting, caches=caches, results=results, recompute=recompute)
    return {name: rows.set_index("seed")["success"].rename_axis("episode_seed").sort_index()
            for name, rows in table.groupby("baseline", sort=True)}


@dataclass(frozen=True)
class AlignmentRun:
    """``alignment.candidate_alignment`` of a setting's (quantized) model: ``samples`` candidate plans per episode
    drawn with ``seed``, scored by the model and executed in the env; what one cached alignment result holds."""
    setting: Setting
    samples: int
    seed: int = 0


def _run_alignment(run: AlignmentRun, caches: Caches) -> pd.DataFrame:
    p = prepare(run.setting, caches)
    return candidate_alignment(p.model, p.env, p.episodes, run.setting.planner, run.samples, run.seed,
                               run.setting.objective or ObjectiveConfig())


def alignment_table(settings: Sequence[Setting], results: str, samples: int = 64, seed: int = 0,
                    caches: Caches = CACHES, cache_dir: str | os.PathLike = RESULTS_DIR,
                    recompute: bool = False) -> pd.DataFrame:
    """Per setting and episode, how well its model's planning loss ranks the same candidate plans by their true
    outcome (``wmqlib.alignment``: Spearman rho over ``samples`` plans, the same plans for every setting of an
    episode), cached in the sweep ``results`` like any setting (keyed by the setting's identity, ``samples`` and
    ``seed``). One row per (setting, episode): config_key, the ``describe`` columns, then ``ALIGNMENT_COLUMNS``
    with the episode's seed as ``episode_seed``."""
    runs = [AlignmentRun(s, check_int("alignment_table: samples", samples, minimum=3), seed) for s in settings]

    def identity(run: AlignmentRun) -> dict[str, Any]:
        return {"alignment": caches.resolved(run.setting).identity, "samples": run.samples, "candidate_seed": run.seed}

    table = sweep(runs, partial(_run_alignment, caches=caches), results, cache_dir=cache_dir, progress=False,
                  key_config=identity, recompute=recompute)
    labels = pd.DataFrame([{"config_key": config_key(identity(r)), "env": caches.resolved(r.setting).env,
                            **describe(r.setting)} for r in runs])
    return labels.merge(table[["config_key", *ALIGNMENT_COLUMNS]], on="config_key", how="right",
                        validate="one_to_many").rename(columns={"seed": "episode_seed"})


def contrast_episodes(runs: pd.DataFrame, reference: Mapping[str, Any], others: Sequence[Mapping[str, Any]],
                      k: int = 1) -> list[int]:
    """Up to ``k`` eval-episode indices (column ``episode`` of a per-episode table, one planner seed) to show what
    quantization breaks: first those the ``reference`` setting (the rows whose columns equal it, e.g. FP) solves and
    every one of ``others`` fails, then those it solves and some fail, then any it solves, then the first ones.
    Each match must select one setting's episodes (``verdicts.outcomes``)."""
    def solved(match: Mapping[str, Any]) -> pd.Series:
        return outcomes(runs, ["episode"], **match).astype(bool)
    ref = solved(reference)
    fails = pd.concat([~solved(m).reindex(ref.index, fill_value=False) for m in others], axis=1)
    order = [ref & fails.all(axis=1), ref & fails.any(axis=1), ref, pd.Series(True, index=ref.index)]
    chosen: list[int] = []
    for mask in order:
        chosen += [int(e) for e in mask[mask].index if e not in chosen]
    return chosen[:k]


def imagine(setting: Setting, episode: int = 0, caches: Caches = CACHES) -> dict[str, Any]:
    """``wmqlib.evaluate.imagine`` for eval episode ``episode`` of ``setting`` (its quantized model, planner and
    episodes): real, seen and imagined frames, and the goal."""
    p = prepare(setting, caches)
    return ev.imagine(p.model, p.fp, p.env, p.episodes[episode], setting.planner, seed=setting.planner_seed,
                      objective=setting.objective or ObjectiveConfig())


def baseline_rates(settings: Sequence[Setting], caches: Caches = CACHES, results: str | None = None,
                   recompute: bool = False) -> pd.DataFrame:
    """``stats.success_table`` by env and baseline of the settings' ``baseline_table``s (one setting per env: the
    trivial baselines on its episodes with its planner's env-step budget; cached in ``results`` when given,
    ``recompute`` as there)."""
    return stats.success_table(pd.concat([baseline_table(s, caches=caches, results=results, recompute=recompute)
                                          for s in settings]),
                               ["env", "baseline"])


@dataclass(frozen=True)
class BaselineRun:
    """The trivial baselines on an FP setting's eval episodes, executed open loop for ``steps`` env steps, random
    draws from ``seed``: what one cached result of ``baseline_table`` holds."""
    setting: Setting
    steps: int
    seed: int = 0


def _run_baselines(run: BaselineRun, caches: Caches) -> pd.DataFrame:
    p = prepare(run.setting, caches)
    return ev.baselines(p.env, p.episodes, steps=run.steps, seed=run.seed)


BASELINE_COLUMNS = ("episode", "seed", "baseline", "success", "state_dist")


def baseline_table(setting: Setting, seed: int = 0, caches: Caches = CACHES, results: str | None = None,
                   cache_dir: str | os.PathLike = RESULTS_DIR, recompute: bool = False) -> pd.DataFrame:
    """Trivial baselines (``wmqlib.evaluate.BASELINES``) on the setting's eval episodes with the planner's
    env-step budget (horizon * frameskip * MPC rounds); one row per (episode, baseline), with env and steps.
    ``results``: the sweep (cache folder ``<cache_dir>/<results>``) that caches them like any setting, keyed by the
    FP setting's identity, the steps and the seed, with a ``config_key`` column; None computes them here.
    ``recompute``: compute them again into that cache (a profile that always recomputes, e.g. the goldens')."""
    fp = fp_of(setting)
    p = prepare(fp, caches)
    rounds = 1 if setting.mpc is None else setting.mpc.max_rounds
    steps = setting.planner.horizon * p.fp.config.frameskip * rounds
    if results is None:
        table = ev.baselines(p.env, p.episodes, steps=steps, seed=seed)
    else:
        table = sweep([BaselineRun(fp, steps, seed)], partial(_run_baselines, caches=caches), results,
                      cache_dir=cache_dir, progress=False, recompute=recompute,
                      key_config=lambda r: {"baselines": caches.resolved(r.setting).identity, "steps": r.steps,
                                            "baseline_seed": r.seed})
        table = table[["config_key", *BASELINE_COLUMNS]]
    return table.assign(env=p.run.env, steps=steps)


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


def loss_drop(trace: pd.DataFrame, by: str | Sequence[str]) -> pd.DataFrame:
    """Per group of ``by`` and episode of traced open-loop rows (``iteration``, ``plan_loss``: the cost of CEM's
    mean plan after each refit, under the model that plans): the relative drop of the loss from the first to the
    last traced iteration, ``loss_drop = 1 - last / first`` (1: the loss vanished; 0: it did not move; < 0: it
    rose). Columns ``by``, episode_seed, loss_first, loss_last, loss_drop; ValueError without a trace."""
    by = [by] if isinstance(by, str) else list(by)
    missing = [c for c in [*by, "episode_seed", "iteration", "plan_loss"] if c not in trace.columns]
    if missing:
        raise ValueError(f"loss_drop needs a traced table with columns {missing}")
    keys = [*by, "episode_seed"]
    ends = trace.sort_values("iteration").groupby(keys, sort=True)["plan_loss"].agg(["first", "last"])
    out = ends.rename(columns={"first": "loss_first", "last": "loss_last"}).reset_index()
    return out.assign(loss_drop=1 - out["loss_last"] / out["loss_first"])


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
