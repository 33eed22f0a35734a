"""The study's vocabulary: settings, profiles, the caches they share, and running settings into one tidy table.

    S = setup("full", ["mini-wall", "mini-pusht"])               # a notebook's first cell, in one call
    setting = S.profile.setting("mini-wall", recipe=S.profile.recipe("RTN", 4, "per-group", 32), scope="predictor")
    table = run_study([setting, ...], S.results)                  # = sweep(settings, run_setting, ...)

A ``Setting`` names everything a number depends on: the checkpoint, the quantization recipe and its scope, the
planner, MPC, the evaluation episodes (``n_evals`` episodes of the "eval" split, ``seed``, ``goal_H``), whether to
trace every planner iteration, the calibration set and the device. Building one reads no file: what the
checkpoint implies (its environment and a fingerprint of its weights, so a retrained model never reuses stale
cached rows) is derived when a run needs it, by the study's ``Caches``, which also hold the loaded models, their
quantized copies, the calibrations (in memory and on disk under ``data/results/calibration/``) and the episodes.
``run_setting`` quantizes with ``wmqlib.quant.quantize`` (calibrating first when the recipe needs it: FP CEM
planning on ``n_calib`` "calib"-split episodes for 2 MPC rounds, the reference protocol), evaluates on the eval
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
import hashlib
import os
import platform
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from wmqlib import evaluate as ev
from wmqlib.envs import Episode, WmqEnv, env_class, make_env, sample_episodes
from wmqlib.models import WorldModel, load_world_model, resolve_checkpoint, resolve_device
from wmqlib.models.checkpoint import CONFIG_FILE, WEIGHTS_FILE, read_checkpoint_config
from wmqlib.models.errors import CheckpointError
from wmqlib.paths import RESULTS_DIR
from wmqlib.plan import CEMConfig, GDConfig, MPCConfig
from wmqlib.quant import Calibration, QuantReport, Recipe, granularity_from_name, quantize, recipe_types
from wmqlib.sweep import canonical, config_key, sweep
from wmqlib.validate import check_bool, check_choice, check_int, check_type

SCOPES = ("all", "encoder", "predictor")
PLANNERS = ("CEM", "CEM-protocol", "GD")
CALIB_MPC_ROUNDS = 2  # the reference protocol: FP planning for 2 MPC iterations on the calibration seeds
MODEL_CACHE_SIZE = 4  # quantized copies kept in memory (imagined rollouts re-use the model a table came from)


def group_size_for(encoder_dim: int) -> int:
    """Weight group size keeping DINO-WM's proportion (g128 for 384 wide): the largest power of two <=
    ``encoder_dim / 2``, at most 128, at least 1. DINO-WM (384): 128; mini models (64): 32."""
    check_int("encoder_dim", encoder_dim, 2)
    return min(128, 1 << ((encoder_dim // 2).bit_length() - 1))


def default_group_size(checkpoint: str | os.PathLike) -> int:
    """``group_size_for`` the checkpoint's encoder width (32 for the shipped mini models, 128 for DINO-WM)."""
    folder = CACHES.checkpoint(checkpoint)[0]
    return group_size_for(int(read_checkpoint_config(folder)["config"]["encoder_dim"]))


def make_recipe(method: str, w_bits: int, w_granularity: str = "per-channel", group_size: int | None = None,
                a_bits: int | None = None, a_granularity: str | None = None, **options: Any) -> Recipe:
    """A quantization recipe from plain names (as a notebook's parameters cell holds them).

    method: a registered method (``wmqlib.quant.recipe_types()``: RTN, OMSE, AWQ, SmoothQuant, OmniQuant, ...);
    w_granularity: "per-tensor" | "per-channel" | "per-group" (needs group_size); a_bits / a_granularity: None for
    weight-only, else bits and "per-tensor" (static) | "per-token" (dynamic); options: further fields of the
    method's dataclass (e.g. ``epochs`` for OmniQuant). Validated by the recipe.
    """
    methods = recipe_types()
    check_choice("method", method, sorted(methods))
    w_gran = granularity_from_name(w_granularity, "weight", group_size, "w_granularity")
    a_gran = None if a_granularity is None else granularity_from_name(a_granularity, "activation",
                                                                      field="a_granularity")
    return methods[method](w_bits=w_bits, w_granularity=w_gran, a_bits=a_bits, a_granularity=a_gran, **options)


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


# ----- the caches ---------------------------------------------------------------------------------------------------

class Caches:
    """Everything the study computes once and shares between settings, in one object: checkpoint facts (folder,
    env, weights fingerprint), FP models, quantized copies (the last ``MODEL_CACHE_SIZE``), calibrations (in memory
    and as ``<calib_dir>/<key>.safetensors``) and episodes. ``calib_dir`` None = ``data/results/calibration``."""

    def __init__(self, calib_dir: str | os.PathLike | None = None) -> None:
        self.calib_dir = Path(calib_dir) if calib_dir is not None else RESULTS_DIR / "calibration"
        self._files: dict[tuple[str, int, int], str] = {}
        self._models: dict[tuple[str, str], WorldModel] = {}
        self._quantized: OrderedDict[str, tuple[Any, QuantReport | None]] = OrderedDict()
        self._calibrations: dict[str, Calibration] = {}
        self._fresh: set[str] = set()
        self._episodes: dict[tuple[Any, ...], tuple[Episode, ...]] = {}

    def checkpoint(self, checkpoint: str | os.PathLike) -> tuple[Path, str, str]:
        """(folder, env, fingerprint) of a wmq checkpoint: a shipped name ("mini-wall") or a wmq folder.

        The fingerprint is the sha256 (16 hex digits) of config.json and model.safetensors (each file hashed once
        per size and mtime), so cached results and calibrations follow the weights, not the name. Raises
        CheckpointError for anything else (convert a released DINO-WM folder with ``wmqlib.models.convert``).
        """
        folder = resolve_checkpoint(checkpoint)
        if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
            raise CheckpointError(
                f"checkpoint {str(checkpoint)!r} ({folder}) is not a wmq checkpoint folder ({CONFIG_FILE} + "
                f"{WEIGHTS_FILE}); convert a released DINO-WM folder with `python -m wmqlib.models.convert`")
        env = read_checkpoint_config(folder)["config"]["env"]
        digest = hashlib.sha256()
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            path = folder / name
            stat = path.stat()
            key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
            if key not in self._files:
                self._files[key] = hashlib.sha256(path.read_bytes()).hexdigest()
            digest.update(self._files[key].encode())
        return folder, env, digest.hexdigest()[:16]

    def env_name(self, setting: Setting) -> str:
        """The environment the setting's checkpoint was trained on ("wall", "pusht")."""
        return self.checkpoint(setting.checkpoint)[1]

    def identity(self, setting: Setting) -> dict[str, Any]:
        """What identifies the setting's results: its fields (``calib_planner`` resolved) plus ``env`` and
        ``model_sha`` (the weights fingerprint). Its ``config_key`` names the cached result file."""
        _, env, sha = self.checkpoint(setting.checkpoint)
        resolved = dataclasses.replace(setting, calib_planner=self.calib_planner(setting))
        return {**canonical(resolved), "env": env, "model_sha": sha}

    def calib_planner(self, setting: Setting) -> CEMConfig:
        """The FP CEM planner of the setting's calibration run: its own, else CEM with the env's protocol budget."""
        return setting.calib_planner or CEMConfig(horizon=setting.planner.horizon,
                                                  opt_steps=env_class(self.env_name(setting)).protocol_opt_steps)

    def model(self, setting: Setting) -> WorldModel:
        """The full-precision model of ``setting`` in eval mode on its device (loaded once per weights and device)."""
        folder, _, sha = self.checkpoint(setting.checkpoint)
        if (sha, setting.device) not in self._models:
            self._models[sha, setting.device] = load_world_model(folder, device=setting.device)
        return self._models[sha, setting.device]

    def env(self, setting: Setting) -> WmqEnv:
        """The setting's environment, rendering at the model's image size."""
        return make_env(self.env_name(setting), render_size=self.model(setting).config.img_size)

    def episodes(self, setting: Setting, split: str = "eval") -> list[Episode]:
        """The setting's episodes of ``split`` ("eval": n_evals, "calib": n_calib), drawn once per process."""
        n = setting.n_evals if split == "eval" else setting.n_calib
        env = self.env_name(setting)
        key = (env, n, setting.seed, split, setting.goal_H, self.model(setting).config.frameskip)
        if key not in self._episodes:
            self._episodes[key] = tuple(sample_episodes(env, n, seed=setting.seed, split=split,
                                                        goal_H=setting.goal_H, frameskip=key[-1]))
        return list(self._episodes[key])

    def _calibration_fields(self, setting: Setting) -> dict[str, Any]:
        identity = self.identity(setting)
        return {"model_sha": identity["model_sha"], "env": identity["env"], "n_calib": setting.n_calib,
                "seed": setting.seed, "goal_H": setting.goal_H, "planner": self.calib_planner(setting),
                "mpc_rounds": CALIB_MPC_ROUNDS, "device": setting.device}

    def calibration(self, setting: Setting, recompute: bool = False) -> Calibration:
        """FP-planning calibration of ``setting``'s model, cached in memory and on disk (written atomically).
        recompute: collect again (once per process and key) and overwrite the file."""
        fields = self._calibration_fields(setting)
        key = config_key(fields)
        path = self.calib_dir / f"{key}.safetensors"
        stale = recompute and key not in self._fresh
        if key in self._calibrations and not stale:
            return self._calibrations[key]
        if path.is_file() and not stale:
            calib = Calibration.load(path)
        else:
            calib = ev.collect_calibration(self.model(setting), self.env(setting), self.episodes(setting, "calib"),
                                           fields["planner"], mpc_rounds=CALIB_MPC_ROUNDS)
            calib.save(path)
            self._fresh.add(key)
        self._calibrations[key] = calib
        return calib

    def quantized(self, setting: Setting, recompute: bool = False) -> tuple[Any, QuantReport | None]:
        """(model to plan with, its QuantReport or None for FP)."""
        model = self.model(setting)
        if setting.recipe is None:
            return model, None
        key = config_key({"model_sha": self.identity(setting)["model_sha"], "device": setting.device,
                          "recipe": setting.recipe, "scope": setting.scope,
                          "calibration": self._calibration_fields(setting)})
        if key in self._quantized and not recompute:
            self._quantized.move_to_end(key)
            return self._quantized[key]
        needs = setting.recipe.needs_calibration or setting.recipe.static_activations
        calib = self.calibration(setting, recompute) if needs else None
        self._quantized[key] = quantize(model, setting.recipe, calib, scope=setting.scope)
        while len(self._quantized) > MODEL_CACHE_SIZE:
            self._quantized.popitem(last=False)
        return self._quantized[key]


CACHES = Caches()  # the process's caches, shared by the notebooks' calls


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
    table = ev.evaluate(model, env, setting.planner, eps, mpc=setting.mpc, trace=setting.trace)
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
    "per-token"), planning ("CEM" | "GD" | "MPC-CEM" | ...), search (planning with CEM's samples / top-k, e.g.
    "CEM 300/30"), opt_steps, and label, e.g. "RTN W4A16 g32 [predictor]".
    """
    r = setting.recipe
    if r is None:
        weights, kind, acts = "-", "-", "-"
    else:
        kind = r.w_granularity.name
        weights = f"g{r.w_granularity.group_size}" if kind == "per-group" else kind
        acts = "-" if r.a_bits is None else r.a_granularity.name
    planning = type(setting.planner).__name__.removesuffix("Config")
    if setting.mpc is not None:
        planning = f"MPC-{planning}"
    sizes = f" {setting.planner.samples}/{setting.planner.topk}" if isinstance(setting.planner, CEMConfig) else ""
    label = "FP" if r is None else " ".join([type(r).__name__, r.label, weights] + ([acts] if acts != "-" else []))
    return {"method": "FP" if r is None else type(r).__name__, "bits": "FP" if r is None else r.label,
            "w_bits": 32 if r is None else r.w_bits, "a_bits": 32 if r is None else (r.a_bits or 16),
            "weights": weights, "w_kind": kind, "acts": acts,
            "planning": planning, "search": planning + sizes, "opt_steps": setting.planner.opt_steps,
            "label": label if setting.scope == "all" else f"{label} [{setting.scope}]"}


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
    return labels.merge(table, on="config_key", how="right", validate="one_to_many")


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


def provenance() -> dict[str, Any]:
    """Where results are computed now: torch version, intra-op threads, CPU model, Python and platform. Planning
    reproduces bit for bit only on the same machine type, torch build and thread count (float reduction order
    changes CEM's elites), so every cached result carries these."""
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": _cpu_model(),
            "python": platform.python_version(), "platform": platform.platform(terse=True)}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def imagine(setting: Setting, episode: int = 0, caches: Caches = CACHES) -> dict[str, Any]:
    """``wmqlib.evaluate.imagine`` for eval episode ``episode`` of ``setting`` (its quantized model, planner and
    episodes): real, seen and imagined frames, and the goal."""
    model, _ = caches.quantized(setting)
    return ev.imagine(model, caches.model(setting), caches.env(setting), caches.episodes(setting)[episode],
                      setting.planner)


def baseline_table(setting: Setting, seed: int = 0, caches: Caches = CACHES) -> pd.DataFrame:
    """Trivial baselines (``wmqlib.evaluate.BASELINES``) on the setting's eval episodes with the planner's
    env-step budget (horizon * frameskip * MPC rounds); one row per (episode, baseline), with env and steps."""
    rounds = 1 if setting.mpc is None else setting.mpc.max_rounds
    steps = setting.planner.horizon * caches.model(setting).config.frameskip * rounds
    table = ev.baselines(caches.env(setting), caches.episodes(setting), steps=steps, seed=seed)
    return table.assign(env=caches.env_name(setting), steps=steps)


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

    def __post_init__(self) -> None:
        for name in ("n_evals", "samples", "topk", "trace_steps", "gd_steps", "mpc_rounds", "n_calib"):
            check_int(f"Profile.{name}", getattr(self, name), 1)
        for name in ("opt_steps", "threads"):
            if getattr(self, name) is not None:
                check_int(f"Profile.{name} (or None)", getattr(self, name), 1)
        check_bool("Profile.always_recompute", self.always_recompute)
        for method in self.method_options:
            check_choice("Profile.method_options key", method, sorted(recipe_types()))
        CEMConfig(samples=self.samples, topk=self.topk)  # topk <= samples, checked where it is defined

    def steps(self, env: str) -> int:
        """CEM iterations of an untraced setting in ``env``."""
        return env_class(env).protocol_opt_steps if self.opt_steps is None else self.opt_steps

    def cem(self, env: str, trace: bool = False) -> CEMConfig:
        """The CEM planner: ``trace_steps`` iterations when traced, else ``steps(env)``."""
        return CEMConfig(samples=self.samples, topk=self.topk,
                         opt_steps=self.trace_steps if trace else self.steps(env))

    def recipe(self, method: str, w_bits: int, w_granularity: str = "per-channel", group_size: int | None = None,
               a_bits: int | None = None, a_granularity: str | None = None) -> Recipe:
        """``make_recipe(...)`` with this profile's options for the method."""
        return make_recipe(method, w_bits, w_granularity, group_size, a_bits, a_granularity,
                           **self.method_options.get(method, {}))

    def setting(self, checkpoint: str, device: str = "auto", seed: int = 99, recipe: Recipe | None = None,
                scope: str = "all", planner: str = "CEM", mpc: bool = False, long: bool = False,
                caches: Caches = CACHES) -> Setting:
        """A ``Setting`` sized by this profile.

        planner: "CEM" (the profile's samples / topk), "CEM-protocol" (DINO-WM's 300 samples / top 30 at the env's
        protocol budget, Wall 10 / PushT 30 iterations, whatever the profile) or "GD"; mpc: closed loop with
        ``mpc_rounds`` rounds. Open-loop CEM is always traced (the trace costs no planning and gives success vs
        iterations for free), with ``trace_steps`` iterations when ``long`` else ``steps(env)``; GD and MPC
        settings are not traced. The checkpoint's env is read (once per process) to size the planner.
        """
        check_choice("planner", planner, PLANNERS)
        if long and (planner != "CEM" or mpc):
            raise ValueError("long=True applies to open-loop CEM with the profile's sizes (planner='CEM') only")
        env = caches.checkpoint(checkpoint)[1]
        chosen: CEMConfig | GDConfig = {
            "CEM": lambda: self.cem(env, trace=long),
            "CEM-protocol": lambda: CEMConfig(opt_steps=env_class(env).protocol_opt_steps),
            "GD": lambda: GDConfig(opt_steps=self.gd_steps)}[planner]()
        return Setting(checkpoint, recipe=recipe, scope=scope, planner=chosen,
                       mpc=MPCConfig(max_rounds=self.mpc_rounds) if mpc else None, n_evals=self.n_evals, seed=seed,
                       trace=planner != "GD" and not mpc, n_calib=self.n_calib, calib_planner=self.cem(env),
                       device=device)


PROFILES = {
    # The CPU budget (all notebooks <= 60 min on 2 cores, measured): DINO-WM's 50 episodes, but CEM with 100
    # samples / top 10 and 10 iterations in both envs, traced runs to 20 (its protocol: 300 / 30, Wall 10, PushT 30
    # iterations - 00_baseline runs that too). On the shipped models 100 / 10 plans about as well as 300 / 30 and
    # success saturates by 10-15 iterations; "paper" below is the protocol, for a GPU.
    "full": Profile("full", n_evals=50, samples=100, topk=10, opt_steps=10, trace_steps=20, gd_steps=1000,
                    mpc_rounds=3, n_calib=10, threads=None, always_recompute=False),
    "paper": Profile("paper", n_evals=50, samples=300, topk=30, opt_steps=None, trace_steps=50, gd_steps=1000,
                     mpc_rounds=5, n_calib=10, threads=None, always_recompute=False),
    "smoke": Profile("smoke", n_evals=3, samples=30, topk=5, opt_steps=2, trace_steps=3, gd_steps=3, mpc_rounds=2,
                     n_calib=2, threads=1, always_recompute=True, method_options={"OmniQuant": {"epochs": 1}}),
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
    (``{"wall": 10, ...}``), the results cache name (``<results_name>-<profile>``), whether to recompute, device
    and episode seed."""

    profile: Profile
    checkpoints: tuple[str, ...]
    envs: tuple[str, ...]
    budget: dict[str, int]
    results: str
    recompute: bool
    device: str
    seed: int

    def setting(self, checkpoint: str, **kwargs: Any) -> Setting:
        """``profile.setting(checkpoint, device, seed, **kwargs)``."""
        return self.profile.setting(checkpoint, self.device, self.seed, **kwargs)


def setup(profile: str, checkpoint: str | Sequence[str], device: str = "auto", seed: int = 99,
          results_name: str = "study", recompute: bool = False, **sizes: Any) -> Setup:
    """The one call that starts every notebook: the profile with the parameters cell's sizes (None = the
    profile's), torch's thread count fixed, the envs of the checkpoints, the budget; prints what it chose."""
    P = make_profile(profile, **sizes)
    if P.threads is not None:  # results depend on the reduction order, so the goldens run with a fixed count
        torch.set_num_threads(P.threads)
    checkpoints = (checkpoint,) if isinstance(checkpoint, (str, os.PathLike)) else tuple(checkpoint)
    envs = tuple(CACHES.checkpoint(ck)[1] for ck in checkpoints)
    S = Setup(P, tuple(str(c) for c in checkpoints), envs, {env: P.steps(env) for env in envs},
              f"{results_name}-{P.name}", bool(recompute) or P.always_recompute, device, seed)
    print(P)
    print("budget:", S.budget, "| long traces:", P.trace_steps, "iterations | results:", S.results)
    return S
