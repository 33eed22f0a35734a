"""One study setting -> one tidy table: the glue between the notebooks and the library.

    setting = Setting("mini-wall", recipe=RTN(4, PerGroup(32)), scope="predictor", planner=CEMConfig(opt_steps=10))
    table = run_study([setting, ...], name="study-full")       # = study.sweep(settings, run_setting, ...)

A ``Setting`` names everything a number depends on: the checkpoint (and, derived from it, the environment and a
fingerprint of the weights, so a retrained model never reuses stale cached rows), the quantization recipe and its
scope, the planner, MPC, the evaluation episodes (``n_evals`` episodes of the "eval" split, ``seed``, ``goal_H``),
whether to trace every planner iteration, the calibration set and the device. ``run_setting`` loads the model
(cached per fingerprint and device), collects calibration when the recipe needs it (FP CEM planning on ``n_calib``
"calib"-split episodes for 2 MPC rounds, the reference protocol; cached in memory and on disk under
``data/results/calibration/``), quantizes with ``wmqlib.quant.quantize``, evaluates on the eval episodes and adds
the report's effective bits. Planner randomness: episode e's generator is seeded with the episode's own seed
(``wmqlib.evaluate.evaluate`` with ``seed=0``), so every setting plans the same episodes with the same draws.

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
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from wmqlib.envs import Episode, make_env, sample_episodes
from wmqlib.evaluate import baselines, collect_calibration, evaluate
from wmqlib.models import WorldModel, load_world_model, resolve_checkpoint, resolve_device
from wmqlib.models.checkpoint import CONFIG_FILE, WEIGHTS_FILE, read_checkpoint_config
from wmqlib.models.errors import CheckpointError
from wmqlib.paths import RESULTS_DIR
from wmqlib.plan import CEMConfig, GDConfig, MPCConfig, Objective, encode_observations, make_generators, plan
from wmqlib.quant import (
    AWQ, OMSE, RTN, Calibration, OmniQuant, PerChannel, PerGroup, PerTensor, PerToken, QuantReport, Recipe,
    SmoothQuant, quantize,
)
from wmqlib.study import config_key, success_rates, sweep

SCOPES = ("all", "encoder", "predictor")
# DINO-WM's planning budgets (CEM iterations): Wall 10, PushT 30.
PROTOCOL_OPT_STEPS = {"wall": 10, "pusht": 30}
CALIB_MPC_ROUNDS = 2  # the reference protocol: FP planning for 2 MPC iterations on the calibration seeds
METHODS = {"RTN": RTN, "OMSE": OMSE, "AWQ": AWQ, "SmoothQuant": SmoothQuant, "OmniQuant": OmniQuant}
MODEL_CACHE_SIZE = 4  # quantized copies kept in memory (imagined rollouts re-use the model a table came from)


def group_size_for(encoder_dim: int) -> int:
    """Weight group size keeping DINO-WM's proportion (g128 for 384 wide): the largest power of two <=
    ``encoder_dim / 2``, at most 128, at least 1. DINO-WM (384): 128; mini models (64): 32."""
    if isinstance(encoder_dim, bool) or not isinstance(encoder_dim, int) or encoder_dim < 2:
        raise ValueError(f"encoder_dim must be an int >= 2, got {encoder_dim!r}")
    return min(128, 1 << ((encoder_dim // 2).bit_length() - 1))


def default_group_size(checkpoint: str | os.PathLike) -> int:
    """``group_size_for`` the checkpoint's encoder width (32 for the shipped mini models, 128 for DINO-WM)."""
    folder = checkpoint_info(checkpoint)[0]
    return group_size_for(int(read_checkpoint_config(folder)["config"]["encoder_dim"]))


def recipe(method: str, w_bits: int, w_granularity: str = "per-channel", group_size: int | None = None,
           a_bits: int | None = None, a_granularity: str | None = None, **options: Any) -> Recipe:
    """Build a quantization recipe from plain names (as a notebook's parameters cell holds them).

    method: a key of ``METHODS``; w_granularity: "per-tensor" | "per-channel" | "per-group" (needs group_size);
    a_bits / a_granularity: None for weight-only, else bits and "per-tensor" (static) | "per-token" (dynamic);
    options: further fields of the method's dataclass (e.g. ``epochs`` for OmniQuant). Validated by the recipe.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    kinds = {"per-tensor": PerTensor(), "per-channel": PerChannel(), "per-token": PerToken()}
    if w_granularity == "per-group":
        if group_size is None:
            raise ValueError("w_granularity 'per-group' needs group_size (see group_size_for)")
        w_gran = PerGroup(group_size)
    elif w_granularity in ("per-tensor", "per-channel"):
        w_gran = kinds[w_granularity]
    else:
        raise ValueError(f"w_granularity must be 'per-tensor', 'per-channel' or 'per-group', got {w_granularity!r}")
    if a_granularity is not None and a_granularity not in ("per-tensor", "per-token"):
        raise ValueError(f"a_granularity must be None, 'per-tensor' or 'per-token', got {a_granularity!r}")
    a_gran = None if a_granularity is None else kinds[a_granularity]
    return METHODS[method](w_bits=w_bits, w_granularity=w_gran, a_bits=a_bits, a_granularity=a_gran, **options)


# ----- checkpoints -----------------------------------------------------------------------------------------------

_FINGERPRINTS: dict[tuple[str, int, int], str] = {}


def checkpoint_info(checkpoint: str | os.PathLike) -> tuple[Path, str, str]:
    """(folder, env, fingerprint) of a wmq checkpoint: a shipped name ("mini-wall") or a wmq folder.

    The fingerprint is the sha256 (16 hex digits) of config.json and model.safetensors, so cached results and
    calibrations follow the weights, not the name. Raises CheckpointError for anything else (a released DINO-WM
    folder must be converted first: ``python -m wmqlib.models.convert``).
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
        cache_key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
        if cache_key not in _FINGERPRINTS:
            _FINGERPRINTS[cache_key] = hashlib.sha256(path.read_bytes()).hexdigest()
        digest.update(_FINGERPRINTS[cache_key].encode())
    return folder, env, digest.hexdigest()[:16]


# ----- the setting -----------------------------------------------------------------------------------------------

def _check_int(name: str, value: object, minimum: int) -> None:
    """Raise ValueError naming ``name`` unless ``value`` is an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class Setting:
    """One point of the study; frozen, validated, and the cache key of its results (``study.config_key``).

    checkpoint: shipped model name ("mini-wall", "mini-pusht") or a wmq checkpoint folder.
    recipe: a ``wmqlib.quant`` recipe, or None for the full-precision model.
    scope: "all" | "encoder" | "predictor": which quantization points get the recipe (FP needs "all").
    planner: CEMConfig or GDConfig. mpc: MPCConfig, or None for open-loop (plan once, execute the whole plan).
    n_evals: evaluation episodes ("eval" split); seed: episode seed (DINO-WM: 99, >= 2); goal_H: goal horizon in
        model steps. trace: one row per (episode, planner iteration) of the first planning round.
    n_calib: calibration episodes ("calib" split, same seed); calib_planner: the FP CEM planner of the calibration
        run (default: ``planner`` if it is a CEMConfig, else CEM with the env's protocol budget).
    device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N"; stored resolved, so CPU and GPU results
        never share a cache entry.
    Derived (not passed): env ("wall" | "pusht", from the checkpoint) and model_sha (fingerprint of its weights).
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
    env: str = field(init=False)
    model_sha: str = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.checkpoint, (str, os.PathLike)):
            raise TypeError(f"Setting.checkpoint must be a name or a path, got {type(self.checkpoint).__name__}")
        _, env, sha = checkpoint_info(self.checkpoint)
        object.__setattr__(self, "checkpoint", str(self.checkpoint))
        object.__setattr__(self, "env", env)
        object.__setattr__(self, "model_sha", sha)
        if self.recipe is not None and not isinstance(self.recipe, Recipe):
            raise TypeError(f"Setting.recipe must be a wmqlib.quant recipe ({', '.join(METHODS)}) or None, "
                            f"got {type(self.recipe).__name__}")
        if self.scope not in SCOPES:
            raise ValueError(f"Setting.scope must be one of {list(SCOPES)}, got {self.scope!r}")
        if self.recipe is None and self.scope != "all":
            raise ValueError(f"Setting.scope must be 'all' for the full-precision model (recipe=None), got "
                             f"{self.scope!r}")
        if not isinstance(self.planner, (CEMConfig, GDConfig)):
            raise TypeError(f"Setting.planner must be a CEMConfig or GDConfig, got {type(self.planner).__name__}")
        if self.mpc is not None and not isinstance(self.mpc, MPCConfig):
            raise TypeError(f"Setting.mpc must be an MPCConfig or None, got {type(self.mpc).__name__}")
        _check_int("Setting.n_evals", self.n_evals, 1)
        _check_int("Setting.seed", self.seed, 2)
        _check_int("Setting.goal_H", self.goal_H, 1)
        _check_int("Setting.n_calib", self.n_calib, 1)
        if not isinstance(self.trace, bool):
            raise TypeError(f"Setting.trace must be True or False, got {self.trace!r}")
        calib = self.calib_planner
        if calib is None:
            calib = self.planner if isinstance(self.planner, CEMConfig) else CEMConfig(
                horizon=self.planner.horizon, opt_steps=PROTOCOL_OPT_STEPS[env])
        if not isinstance(calib, CEMConfig):
            raise TypeError(f"Setting.calib_planner must be a CEMConfig or None, got {type(calib).__name__}")
        object.__setattr__(self, "calib_planner", calib)
        if not isinstance(self.device, str):
            raise TypeError(f"Setting.device must be a string ('auto', 'cpu', 'cuda', 'cuda:N'), got {self.device!r}")
        object.__setattr__(self, "device", str(resolve_device(self.device)))


# ----- profiles ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Profile:
    """The sizes of one run of the study: "full" (the published study, sized for a 2-core CPU), "paper" (DINO-WM's
    protocol throughout: CEM 300/30, Wall 10 / PushT 30 iterations, traces to 50; for a GPU) or "smoke" (the golden
    notebooks).

    n_evals: evaluation episodes per setting. samples, topk: CEM candidates and elites.
    opt_steps: CEM iterations of untraced settings; None = DINO-WM's protocol per env (Wall 10, PushT 30).
    trace_steps: CEM iterations of traced settings (success and loss vs iterations).
    gd_steps: gradient-descent updates of the GD planner. mpc_rounds: max rounds of the MPC settings.
    n_calib: calibration episodes; the calibration planner is CEM with ``opt_steps(env)`` iterations.
    threads: torch intra-op threads (None = torch's default). always_recompute: ignore cached results (the
        goldens must recompute, or a changed number could hide behind the cache).
    omniquant_epochs: OmniQuant training epochs per unit.
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
    omniquant_epochs: int

    def __post_init__(self) -> None:
        for name in ("n_evals", "samples", "topk", "trace_steps", "gd_steps", "mpc_rounds", "n_calib"):
            _check_int(f"Profile.{name}", getattr(self, name), 1)
        for name in ("opt_steps", "threads"):
            if getattr(self, name) is not None:
                _check_int(f"Profile.{name} (or None)", getattr(self, name), 1)
        _check_int("Profile.omniquant_epochs", self.omniquant_epochs, 0)
        if not isinstance(self.always_recompute, bool):
            raise TypeError(f"Profile.always_recompute must be True or False, got {self.always_recompute!r}")
        CEMConfig(samples=self.samples, topk=self.topk)  # topk <= samples, checked where it is defined

    def steps(self, env: str) -> int:
        """CEM iterations of an untraced setting in ``env``."""
        return PROTOCOL_OPT_STEPS[env] if self.opt_steps is None else self.opt_steps

    def cem(self, env: str, trace: bool = False) -> CEMConfig:
        """The CEM planner: ``trace_steps`` iterations when traced, else ``steps(env)``."""
        return CEMConfig(samples=self.samples, topk=self.topk,
                         opt_steps=self.trace_steps if trace else self.steps(env))

    def recipe(self, method: str, w_bits: int, w_granularity: str = "per-channel", group_size: int | None = None,
               a_bits: int | None = None, a_granularity: str | None = None) -> Recipe:
        """``recipe(...)`` with this profile's method options (OmniQuant epochs)."""
        options = {"epochs": self.omniquant_epochs} if method == "OmniQuant" else {}
        return recipe(method, w_bits, w_granularity, group_size, a_bits, a_granularity, **options)

    def setting(self, checkpoint: str, device: str = "auto", seed: int = 99, recipe: Recipe | None = None,
                scope: str = "all", planner: str = "CEM", mpc: bool = False, long: bool = False) -> Setting:
        """A ``Setting`` sized by this profile.

        planner: "CEM" (the profile's samples / topk), "CEM-protocol" (DINO-WM's 300 samples / top 30 at the env's
        protocol budget, Wall 10 / PushT 30 iterations, whatever the profile) or "GD"; mpc: closed loop with
        ``mpc_rounds`` rounds. Open-loop CEM is always traced (the trace costs no planning and gives success vs
        iterations for free), with ``trace_steps`` iterations when ``long`` else ``steps(env)``; GD and MPC
        settings are not traced.
        """
        env = checkpoint_info(checkpoint)[1]
        if planner == "CEM":
            chosen: CEMConfig | GDConfig = self.cem(env, trace=long)
        elif planner == "CEM-protocol":
            chosen = CEMConfig(opt_steps=PROTOCOL_OPT_STEPS[env])
        elif planner == "GD":
            chosen = GDConfig(opt_steps=self.gd_steps)
        else:
            raise ValueError(f"planner must be 'CEM', 'CEM-protocol' or 'GD', got {planner!r}")
        if long and (planner != "CEM" or mpc):
            raise ValueError("long=True applies to open-loop CEM with the profile's sizes (planner='CEM') only")
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
                    mpc_rounds=3, n_calib=10, threads=None, always_recompute=False, omniquant_epochs=10),
    "paper": Profile("paper", n_evals=50, samples=300, topk=30, opt_steps=None, trace_steps=50, gd_steps=1000,
                     mpc_rounds=5, n_calib=10, threads=None, always_recompute=False, omniquant_epochs=10),
    "smoke": Profile("smoke", n_evals=3, samples=30, topk=5, opt_steps=2, trace_steps=3, gd_steps=3, mpc_rounds=2,
                     n_calib=2, threads=1, always_recompute=True, omniquant_epochs=1),
}


def make_profile(name: str, **overrides: Any) -> Profile:
    """``PROFILES[name]`` with the given fields replaced; None values are ignored (a parameters cell's "use the
    profile's size"). Raises ValueError for an unknown name or field."""
    if name not in PROFILES:
        raise ValueError(f"profile must be one of {list(PROFILES)}, got {name!r}")
    known = {f.name for f in dataclasses.fields(Profile)} - {"name"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown profile fields {unknown}; allowed: {sorted(known)}")
    return dataclasses.replace(PROFILES[name], **{k: v for k, v in overrides.items() if v is not None})


# ----- cached building blocks --------------------------------------------------------------------------------------

_MODELS: dict[tuple[str, str], WorldModel] = {}
_QUANTIZED: OrderedDict[str, tuple[Any, QuantReport | None]] = OrderedDict()
_CALIBRATIONS: dict[str, Calibration] = {}
_FRESH_CALIBRATIONS: set[str] = set()
_EPISODES: dict[tuple[Any, ...], tuple[Episode, ...]] = {}


def load_model(setting: Setting) -> WorldModel:
    """The full-precision model of ``setting`` in eval mode on its device (loaded once per weights and device)."""
    key = (setting.model_sha, setting.device)
    if key not in _MODELS:
        _MODELS[key] = load_world_model(checkpoint_info(setting.checkpoint)[0], device=setting.device)
    return _MODELS[key]


def episodes(setting: Setting, split: str = "eval") -> list[Episode]:
    """The setting's episodes of ``split`` ("eval": n_evals, "calib": n_calib), drawn with its seed and goal_H
    (drawn once per process: PushT replays a scripted pusher for every episode)."""
    n = setting.n_evals if split == "eval" else setting.n_calib
    key = (setting.env, n, setting.seed, split, setting.goal_H, load_model(setting).config.frameskip)
    if key not in _EPISODES:
        _EPISODES[key] = tuple(sample_episodes(setting.env, n, seed=setting.seed, split=split,
                                               goal_H=setting.goal_H, frameskip=key[-1]))
    return list(_EPISODES[key])


def make_setting_env(setting: Setting) -> Any:
    """The setting's environment, rendering at the model's image size."""
    return make_env(setting.env, render_size=load_model(setting).config.img_size)


def _calibration_fields(setting: Setting) -> dict[str, Any]:
    return {"model_sha": setting.model_sha, "env": setting.env, "n_calib": setting.n_calib, "seed": setting.seed,
            "goal_H": setting.goal_H, "planner": setting.calib_planner, "mpc_rounds": CALIB_MPC_ROUNDS,
            "device": setting.device}


def calibration(setting: Setting, calib_dir: str | os.PathLike | None = None, recompute: bool = False
                ) -> Calibration:
    """FP-planning calibration of ``setting``'s model, cached in memory and as ``<calib_dir>/<key>.safetensors``.

    calib_dir: default ``data/results/calibration``. recompute: collect again (once per process and key) and
    overwrite the file. The file is written to a temporary name and renamed, so it is whole or absent.
    """
    key = config_key(_calibration_fields(setting))
    folder = Path(calib_dir) if calib_dir is not None else RESULTS_DIR / "calibration"
    path = folder / f"{key}.safetensors"
    stale = recompute and key not in _FRESH_CALIBRATIONS
    if key in _CALIBRATIONS and not stale:
        return _CALIBRATIONS[key]
    if path.is_file() and not stale:
        calib = Calibration.load(path)
    else:
        model = load_model(setting)
        calib = collect_calibration(model, make_setting_env(setting), episodes(setting, "calib"),
                                    setting.calib_planner, mpc_rounds=CALIB_MPC_ROUNDS)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"{key}.safetensors.{os.getpid()}.tmp"
        calib.save(tmp)
        os.replace(tmp, path)
        _FRESH_CALIBRATIONS.add(key)
    _CALIBRATIONS[key] = calib
    return calib


def quantized_model(setting: Setting, calib_dir: str | os.PathLike | None = None, recompute: bool = False
                    ) -> tuple[Any, QuantReport | None]:
    """(model to plan with, its QuantReport or None for FP); quantized copies are cached (last few settings)."""
    model = load_model(setting)
    if setting.recipe is None:
        return model, None
    fields = {"model_sha": setting.model_sha, "device": setting.device, "recipe": setting.recipe,
              "scope": setting.scope, "calibration": _calibration_fields(setting)}
    key = config_key(fields)
    if key in _QUANTIZED and not recompute:
        _QUANTIZED.move_to_end(key)
        return _QUANTIZED[key]
    needs = setting.recipe.needs_calibration or setting.recipe.static_activations
    calib = calibration(setting, calib_dir, recompute) if needs else None
    _QUANTIZED[key] = quantize(model, setting.recipe, calib, scope=setting.scope)
    while len(_QUANTIZED) > MODEL_CACHE_SIZE:
        _QUANTIZED.popitem(last=False)
    return _QUANTIZED[key]


@torch.no_grad()
def encoder_error(fp_model: WorldModel, model: Any, env: Any, eps: Sequence[Episode]) -> float:
    """Relative squared error of the visual latents of the episodes' start and goal frames, quantized vs FP:
    sum ||z_q - z_fp||^2 / sum ||z_fp||^2 (0 when the encoder is untouched; ~1 or more when it collapsed)."""
    states = np.concatenate([np.stack([e.start_state for e in eps]), np.stack([e.goal_state for e in eps])])
    obs = env.observe(states, fp_model.config.img_size)
    ref = encode_observations(fp_model, obs)["visual"].float()
    got = encode_observations(model, obs)["visual"].float()
    return float((got - ref).pow(2).sum() / ref.pow(2).sum().clamp_min(1e-30))


def run_setting(setting: Setting, calib_dir: str | os.PathLike | None = None,
                recompute_calibration: bool = False) -> pd.DataFrame:
    """Evaluate one setting: ``wmqlib.evaluate.evaluate``'s table (per episode, or per (episode, iteration) when
    traced; its ``seed`` column renamed ``episode_seed``) plus ``effective_bits`` (storage bits per weight of the
    quantized layers, overhead included; the FP dtype's bits for FP), ``encoder_error`` (see ``encoder_error``)
    and ``seconds`` (wall time of the planning).

    Usable as ``study.sweep``'s run_fn; ``calib_dir`` / ``recompute_calibration`` go to ``calibration``.
    """
    if not isinstance(setting, Setting):
        raise TypeError(f"run_setting needs a Setting, got {type(setting).__name__}")
    model, report = quantized_model(setting, calib_dir, recompute_calibration)
    env, eps = make_setting_env(setting), episodes(setting)
    start = time.perf_counter()
    table = evaluate(model, env, setting.planner, eps, mpc=setting.mpc, trace=setting.trace)
    table = table.rename(columns={"seed": "episode_seed"})  # "seed" is the Setting's (config) column
    seconds = time.perf_counter() - start
    fp_bits = torch.finfo(load_model(setting).dtype).bits
    table["effective_bits"] = report.effective_bits if report is not None else float(fp_bits)
    table["encoder_error"] = encoder_error(load_model(setting), model, env, eps)
    table["seconds"] = seconds
    return table


# ----- sweeps and derived tables ------------------------------------------------------------------------------------

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
        kind = {PerGroup: "per-group", PerChannel: "per-channel"}.get(type(r.w_granularity), "per-tensor")
        weights = f"g{r.w_granularity.group_size}" if isinstance(r.w_granularity, PerGroup) else kind
        acts = "-" if r.a_bits is None else ("per-token" if isinstance(r.a_granularity, PerToken) else "per-tensor")
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
              cache_dir: str | os.PathLike = RESULTS_DIR, progress: bool = True) -> pd.DataFrame:
    """``study.sweep(settings, run_setting, name)`` with the readable ``describe`` columns in front.

    Results are cached as ``<cache_dir>/<name>/<key>.json``, calibrations under ``<cache_dir>/calibration``;
    recompute=True reruns every setting and recollects its calibration (once per process).
    """
    run_fn = partial(run_setting, calib_dir=Path(cache_dir) / "calibration", recompute_calibration=recompute)
    table = sweep(list(settings), run_fn, name, cache_dir=cache_dir, recompute=recompute, progress=progress)
    labels = pd.DataFrame([{"config_key": config_key(s), **describe(s)} for s in settings])
    return labels.merge(table, on="config_key", how="right", validate="one_to_many")


def at_opt_steps(trace: pd.DataFrame, k: int) -> pd.DataFrame:
    """Per-episode rows of a traced table as if planned with ``opt_steps = k`` (its iteration k - 1).

    Raises ValueError when the trace is shorter than ``k`` iterations or ``trace`` has no ``iteration`` column.
    """
    if "iteration" not in trace.columns:
        raise ValueError("at_opt_steps needs a traced table (Setting(trace=True)): it has no 'iteration' column")
    _check_int("at_opt_steps: k", k, 1)
    longest = int(trace["iteration"].max()) + 1
    if k > longest:
        raise ValueError(f"k={k} exceeds the traced iterations ({longest})")
    return trace[trace["iteration"] == k - 1].reset_index(drop=True).assign(opt_steps=k)


def per_episode(table: pd.DataFrame, k: int | Mapping[str, int] | None = None) -> pd.DataFrame:
    """One row per (setting, episode): traced settings at ``opt_steps = min(k, traced iterations)`` (k per env
    when a mapping, e.g. ``{"wall": 10, "pusht": 30}``; None = their last iteration), untraced ones as they are.
    Adds ``opt_steps`` (the budget the rows reflect)."""
    parts = []
    for _, group in table.groupby("config_key", sort=False):
        if "iteration" not in group.columns or group["iteration"].isna().all():
            parts.append(group.assign(opt_steps=group["planner.opt_steps"]))
            continue
        longest = int(group["iteration"].max()) + 1
        want = k[group["env"].iloc[0]] if isinstance(k, Mapping) else k
        parts.append(at_opt_steps(group, longest if want is None else min(want, longest)))
    return pd.concat(parts, ignore_index=True)


def pick(rates: pd.DataFrame, **match: Any) -> pd.Series:
    """The single row of ``rates`` whose columns equal ``match``; ValueError naming the match when there is not
    exactly one (so a verdict never silently reads the wrong setting)."""
    rows = rates
    for column, value in match.items():
        rows = rows[rows[column] == value]
    if len(rows) != 1:
        raise ValueError(f"expected one row with {match}, found {len(rows)}")
    return rows.iloc[0]


def similar(a: pd.Series | dict, b: pd.Series | dict, tolerance: float = 0.1) -> int:
    """Decision for a claim "a is close to b": +1 when the Wilson intervals overlap and the success rates differ by
    at most ``tolerance``, -1 when the intervals are disjoint, 0 otherwise (overlapping but further apart)."""
    if compare(a, b) != 0:
        return -1
    return 1 if abs(a["success_rate"] - b["success_rate"]) <= tolerance else 0


def success_table(table: pd.DataFrame, by: str | Sequence[str]) -> pd.DataFrame:
    """``study.success_rates`` per group with a readable ``success`` column: "46/50 92% [81, 97]" (Wilson 95%),
    and the mean final ``state_dist`` per group when the table has one."""
    out = success_rates(table, by)
    if "state_dist" in table.columns:
        by_list = [by] if isinstance(by, str) else list(by)
        dist = table.groupby(by_list, dropna=False, sort=True)["state_dist"].mean().reset_index(drop=True)
        out["mean_state_dist"] = dist.to_numpy()
    out["success"] = [f"{k}/{n} {r:.0%} [{lo * 100:.0f}, {hi * 100:.0f}]" for k, n, r, lo, hi in
                      out[["successes", "n", "success_rate", "ci_low", "ci_high"]].itertuples(index=False)]
    return out


def success_curve(trace: pd.DataFrame, by: str | Sequence[str]) -> pd.DataFrame:
    """Success rate with Wilson 95% interval per group and planner iteration: columns ``by``, opt_steps (= the
    iteration + 1), n, successes, success_rate, ci_low, ci_high, and the median planning loss ``plan_loss``."""
    by = [by] if isinstance(by, str) else list(by)
    out = success_rates(trace, [*by, "iteration"])
    loss = trace.groupby([*by, "iteration"], sort=True)["plan_loss"].median().reset_index(drop=True)
    out["plan_loss"] = loss.to_numpy()
    return out.assign(opt_steps=out["iteration"] + 1).drop(columns="iteration")


def baseline_table(setting: Setting, seed: int = 0) -> pd.DataFrame:
    """Trivial baselines (no action, straight line, random) on the setting's eval episodes with the planner's
    env-step budget (horizon * frameskip * MPC rounds); one row per (episode, baseline), with env and steps."""
    model = load_model(setting)
    rounds = 1 if setting.mpc is None else setting.mpc.max_rounds
    steps = setting.planner.horizon * model.config.frameskip * rounds
    table = baselines(make_setting_env(setting), episodes(setting), steps=steps, seed=seed)
    return table.assign(env=setting.env, steps=steps)


def compare(a: pd.Series | dict, b: pd.Series | dict) -> int:
    """+1 when a's Wilson interval lies entirely above b's, -1 entirely below, 0 when they overlap (undecided).

    a, b: rows with ``ci_low`` and ``ci_high`` (e.g. from ``success_rates``).
    """
    if a["ci_low"] > b["ci_high"]:
        return 1
    if a["ci_high"] < b["ci_low"]:
        return -1
    return 0


def verdict(decisions: Sequence[int]) -> str:
    """Combine ``compare`` outcomes that each support a claim with +1: "reproduced" when at least one is decisive
    for it and none against, "not reproduced" when at least one is against and none for, else "inconclusive"."""
    values = list(decisions)
    if any(v not in (-1, 0, 1) for v in values):
        raise ValueError(f"decisions must be -1, 0 or +1, got {values}")
    pro, con = values.count(1), values.count(-1)
    if pro and not con:
        return "reproduced"
    if con and not pro:
        return "not reproduced"
    return "inconclusive"


def rank_correlation(table: pd.DataFrame, x: str, y: str, by: str | Sequence[str], z: float = 1.96) -> pd.DataFrame:
    """Spearman rank correlation of columns ``x`` and ``y`` per group (pandas, no scipy) with an approximate 95%
    interval from Fisher's z with the Fieller-Hartley-Pearson variance 1.06 / (n - 3).

    Returns columns ``by``, n, rho, ci_low, ci_high (NaN interval for n <= 3 or |rho| = 1).
    """
    by = [by] if isinstance(by, str) else list(by)
    rows = []
    for key, g in table.groupby(by, sort=True):
        # Spearman = Pearson correlation of the (average) ranks; pandas' method="spearman" would need scipy.
        n, rho = len(g), g[x].rank().corr(g[y].rank())
        with np.errstate(divide="ignore", invalid="ignore"):
            half = z * np.sqrt(1.06 / (n - 3)) if n > 3 else np.nan
            centre = np.arctanh(rho) if abs(rho) < 1 else np.nan
        rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,))), "n": n, "rho": rho,
                     "ci_low": np.tanh(centre - half), "ci_high": np.tanh(centre + half)})
    return pd.DataFrame(rows, columns=[*by, "n", "rho", "ci_low", "ci_high"])


# ----- imagined rollouts -------------------------------------------------------------------------------------------

def _images(x: torch.Tensor) -> np.ndarray:
    """(T, 3, H, W) in [-1, 1] -> float32 (T, H, W, 3) in [-1, 1] for ``plots.frame_strip``."""
    return x.detach().float().clamp(-1, 1).permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def imagine(setting: Setting, episode: int = 0, calib_dir: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """What the setting's model sees and imagines for eval episode ``episode``, frame per model step.

    Plans the episode exactly as ``run_setting`` does (same generator seed; planning is per-episode independent),
    executes the plan in the env and returns, each (H + 1, img, img, 3):
    ``real`` (uint8 env frames), ``seen`` (the model's encoder + FP decoder on the real frames: representation
    damage shows here) and ``imagined`` (the decoded rollout of the plan from the encoded start: geometric drift
    shows as a mismatch with ``real``); plus ``goal`` (1, img, img, 3) uint8.
    """
    model, _ = quantized_model(setting, calib_dir)
    fp = load_model(setting)
    env, ep = make_setting_env(setting), episodes(setting)[episode]
    size, fs = fp.config.img_size, fp.config.frameskip
    start_obs, goal_obs = env.observe(ep.start_state[None], size), env.observe(ep.goal_state[None], size)
    with torch.enable_grad():  # gradient planners need autograd; CEM ignores it
        result = plan(Objective(model, encode_observations(model, start_obs), encode_observations(model, goal_obs)),
                      setting.planner, make_generators([ep.seed], fp.device), model.action_dim, device=fp.device)
    actions = result.plan.detach()  # (1, H, Da)
    raw = model.actions_to_env(actions).float().cpu().numpy().astype(np.float64)
    _, frames = env.rollout_actions(ep.start_state[None], raw, render_size=size)
    real = frames[0, ::fs]  # (H + 1, img, img, 3)
    visual, proprio = model.prepare_obs(torch.as_tensor(real[None], device=fp.device),
                                        torch.zeros(1, len(real), fp.config.proprio_dim, device=fp.device))
    seen = fp.decode(model.encode_obs(visual, proprio)["visual"])[0]
    rollout = model.rollout(encode_observations(model, start_obs), actions)
    imagined = fp.decode(rollout["visual"])[0]
    return {"real": real, "seen": _images(seen), "imagined": _images(imagined), "goal": goal_obs["visual"]}


def configure_torch(threads: int | None) -> None:
    """Fix torch's intra-op threads (None keeps torch's default); results depend on the reduction order, so the
    goldens run with a fixed count (1)."""
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be None or an int >= 1, got {threads!r}")
        torch.set_num_threads(threads)


__all__ = [
    "METHODS", "PROFILES", "PROTOCOL_OPT_STEPS", "SCOPES", "Profile", "Setting", "at_opt_steps",
    "baseline_table", "calibration", "checkpoint_info", "compare", "configure_torch", "default_group_size",
    "describe", "encoder_error", "episodes", "group_size_for", "imagine", "load_model", "make_profile",
    "make_setting_env", "per_episode", "pick", "quantized_model", "rank_correlation", "recipe", "run_setting",
    "run_study", "similar", "success_curve", "success_table", "verdict",
]
