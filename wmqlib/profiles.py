"""Profiles (the sizes of one run of the study) and the notebook's first cell, ``setup``.

    S = setup("full", ["mini-wall", "mini-pusht"])      # prints what it chose
    setting = S.setting("mini-wall", recipe=S.profile.recipe("RTN", 4, "per-group", 32), scope="predictor")

``PROFILES``: "full" (the study as published, sized for 2 CPU cores), "paper" (DINO-WM's protocol, for a GPU) and
"smoke" (tiny sizes for the golden notebooks). ``Profile.setting`` builds a ``wmqlib.setting.Setting`` sized by the
profile for a checkpoint and its env, reading nothing; ``setup`` finds the env of each checkpoint once.

Group size: the paper quantizes DINO-WM (384-wide encoder, 404-wide predictor tokens) with groups of 128, i.e.
about three groups per weight row. ``group_size_for`` keeps that proportion for any width: the largest power of two
<= half the encoder width, at most 128. DINO-WM: 128; the shipped mini models (encoder 64, predictor tokens
84 = 64 + 10 + 10): 32, so the predictor's 84-wide qkv / fc1 rows split 32, 32, 20 as DINO-WM's 404 split
128, 128, 128, 20; every row keeps at least two groups, so per-group always differs from per-channel. An RSSM
takes the width of its observation embedding (``embed_dim``, its ``visual_dim`` as DINO-WM's is ``encoder_dim``):
the mini RSSM's 128 gives 64, two or more groups in every row but the first convolution's (48 inputs: one group,
so there per-group is per-channel).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from wmqlib.caches import CACHES
from wmqlib.envs import env_class
from wmqlib.models import config_from_dict
from wmqlib.models.checkpoint import read_checkpoint_config
from wmqlib.plan import PLANNERS, CEMConfig, GDConfig, MPCConfig, ObjectiveConfig, PlannerConfig
from wmqlib.quant import Recipe, recipe_from_names, recipe_types
from wmqlib.setting import CALIB_MPC_ROUNDS, CALIB_SOURCE, Setting
from wmqlib.paths import RESULTS_DIR
from wmqlib.sweep import record_reads
from wmqlib.validate import check_bool, check_choice, check_int, check_type


def group_size_for(encoder_dim: int) -> int:
    """Weight group size keeping DINO-WM's proportion (g128 for 384 wide): the largest power of two <=
    ``encoder_dim / 2``, at most 128, at least 1. DINO-WM (384): 128; mini models (64): 32; for an RSSM pass its
    ``embed_dim`` (the config's ``visual_dim``)."""
    check_int("encoder_dim", encoder_dim, 2)
    return min(128, 1 << ((encoder_dim // 2).bit_length() - 1))


def default_group_size(checkpoint: str | os.PathLike) -> int:
    """``group_size_for`` the checkpoint's visual latent width (``visual_dim``: DINO-WM's encoder_dim, an RSSM's
    embed_dim; 32 for the shipped mini models, 128 for DINO-WM)."""
    folder = CACHES.checkpoint(checkpoint).folder
    return group_size_for(config_from_dict(read_checkpoint_config(folder)["config"]).visual_dim)


def architecture_of(checkpoint: str | os.PathLike) -> str:
    """The architecture a wmq checkpoint's config names ("dinowm", "rssm"; ``wmqlib.models.config.ARCHITECTURES``)."""
    return config_from_dict(read_checkpoint_config(CACHES.checkpoint(checkpoint).folder)["config"]).architecture


@dataclass(frozen=True)
class Profile:
    """The sizes of one run of the study (see ``PROFILES``).

    n_evals: evaluation episodes per setting. key_evals: distinct episodes of a key comparison's settings (FP and
        the settings a notebook marks ``key``) with the first planner seed, the first ``n_evals`` of them the same
        episodes as every other setting's (``envs.episode_seeds`` extends the list); None = n_evals.
    samples, topk: CEM candidates and elites.
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
    key_evals: int | None = None

    def __post_init__(self) -> None:
        for name in ("n_evals", "samples", "topk", "trace_steps", "gd_steps", "mpc_rounds", "n_calib"):
            check_int(f"Profile.{name}", getattr(self, name), 1)
        for name in ("opt_steps", "threads", "key_evals"):
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

    def evals(self, key: bool = False, planner_seed: int = 0) -> int:
        """Evaluation episodes of a setting: ``key_evals`` for a key comparison's first planner seed, else
        ``n_evals`` (the other planner seeds measure the planner's spread on the common episodes); never fewer
        than ``n_evals``."""
        first = planner_seed == self.planner_seeds[0]
        return max(self.key_evals or 0, self.n_evals) if key and first else self.n_evals

    def steps(self, env: str) -> int:
        """CEM iterations of an untraced setting in ``env``."""
        return env_class(env).plan_opt_steps if self.opt_steps is None else self.opt_steps

    def cem(self, env: str, trace: bool = False) -> CEMConfig:
        """The CEM planner: ``trace_steps`` iterations when traced, else ``steps(env)``."""
        return CEMConfig(samples=self.samples, topk=self.topk,
                         opt_steps=self.trace_steps if trace else self.steps(env))

    def recipe(self, method: str, w_bits: int, w_granularity: str = "per-channel", group_size: int | None = None,
               a_bits: int | None = None, a_granularity: str | None = None) -> Recipe:
        """``recipe_from_names(...)`` with this profile's options for the method ("GPTQ+hadamard": GPTQ's)."""
        return recipe_from_names(method, w_bits, w_granularity, group_size, a_bits, a_granularity,
                                 **self.method_options.get(method.partition("+")[0], {}))

    def setting(self, checkpoint: str, env: str, device: str = "auto", seed: int = 99, recipe: Recipe | None = None,
                scope: str = "all", planner: str = "CEM", mpc: bool = False, long: bool = False,
                protocol: bool = False, planner_seed: int = 0, objective: ObjectiveConfig | None = None,
                sampler: str | None = None, key: bool = False,
                overrides: Mapping[str, Recipe] | Sequence[tuple[str, Recipe]] | None = None,
                calib_rounds: int = CALIB_MPC_ROUNDS, calib_source: str = CALIB_SOURCE) -> Setting:
        """A ``Setting`` of ``checkpoint`` sized by this profile for ``env``, the env the checkpoint was trained on
        (``Setup.setting`` passes it; nothing is read here).

        planner: a name of ``wmqlib.plan.PLANNERS``: "CEM" (the profile's samples / topk) or "GD" (``gd_steps``
        updates); protocol: CEM sized by DINO-WM's protocol instead (300 samples / top 30 at the env's budget, Wall
        10 / PushT 30 iterations, whatever the profile); mpc: closed loop with ``mpc_rounds`` rounds. Open-loop CEM
        is always traced (the trace costs no planning and gives success vs iterations for free), with
        ``trace_steps`` iterations when ``long`` else ``steps(env)``; MPC settings always give one row per round
        (success vs rounds); open-loop GD is not traced. key: a key comparison's setting (``evals``: key_evals
        episodes with the first planner seed). planner_seed, objective, sampler, overrides, calib_rounds,
        calib_source: as in ``Setting``.
        """
        check_choice("planner", planner, list(PLANNERS))
        if long and (planner != "CEM" or mpc or protocol):
            raise ValueError("long=True applies to open-loop CEM with the profile's sizes (planner='CEM') only")
        if protocol and planner != "CEM":
            raise ValueError(f"protocol=True sizes CEM by DINO-WM's protocol; planner {planner!r} has no protocol")
        chosen: PlannerConfig = {
            "CEM": lambda: CEMConfig(opt_steps=env_class(env).plan_opt_steps) if protocol else self.cem(env, long),
            "GD": lambda: GDConfig(opt_steps=self.gd_steps)}[planner]()
        return Setting(checkpoint, recipe=recipe, scope=scope, planner=chosen,
                       mpc=MPCConfig(max_rounds=self.mpc_rounds) if mpc else None,
                       n_evals=self.evals(key, planner_seed), seed=seed,
                       trace=mpc or planner != "GD", n_calib=self.n_calib, calib_planner=self.cem(env),
                       device=device, planner_seed=planner_seed, objective=objective, sampler=sampler,
                       overrides=overrides, calib_rounds=calib_rounds, calib_source=calib_source)


PROFILES = {
    # The CPU budget: DINO-WM's 50 episodes per setting, 150 distinct episodes for the key comparisons (the
    # verdicts' power), MPC up to 10 rounds, but CEM with 100 samples / top 10 and 10 iterations in both envs,
    # traced runs to 20 (its protocol: 300 / 30, Wall 10, PushT 30 iterations - 00_baseline runs that too);
    # `python -m wmqlib.reproduce --dry-run` prices a run on this machine. "paper" below is the protocol, for a GPU.
    "full": Profile("full", n_evals=50, samples=100, topk=10, opt_steps=10, trace_steps=20, gd_steps=1000,
                    mpc_rounds=10, n_calib=10, threads=None, always_recompute=False, planner_seeds=(0, 1, 2),
                    key_evals=150),
    "paper": Profile("paper", n_evals=50, samples=300, topk=30, opt_steps=None, trace_steps=50, gd_steps=1000,
                     mpc_rounds=10, n_calib=10, threads=None, always_recompute=False, planner_seeds=(0, 1, 2),
                     key_evals=150),
    "smoke": Profile("smoke", n_evals=3, samples=30, topk=5, opt_steps=2, trace_steps=3, gd_steps=3, mpc_rounds=2,
                     n_calib=2, threads=1, always_recompute=True, method_options={"OmniQuant": {"epochs": 1}},
                     planner_seeds=(0, 1), probe_trajectories=(12, 4), key_evals=4),
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
    episode seed, the episode sampler per env (``{"pusht": "demo", ...}``) and when it started (perf_counter s)."""

    profile: Profile
    checkpoints: tuple[str, ...]
    envs: tuple[str, ...]
    budget: dict[str, int]
    results: str
    recompute: bool
    device: str
    seed: int
    samplers: dict[str, str]
    started: float = field(default_factory=time.perf_counter, compare=False)

    def setting(self, checkpoint: str, **kwargs: Any) -> Setting:
        """``profile.setting(checkpoint, <its env>, device, seed, sampler=<the env's>, **kwargs)``."""
        env = self.envs[self.checkpoints.index(str(checkpoint))]
        return self.profile.setting(checkpoint, env, self.device, self.seed,
                                    **{"sampler": self.samplers[env], **kwargs})

    def fp_settings(self) -> dict[str, Setting]:
        """Per env, the FP reference every notebook shares: open-loop CEM traced to ``trace_steps`` (``long``), a key
        setting (``Profile.key_evals`` episodes)."""
        return {env: self.setting(checkpoint, long=True, key=True)
                for checkpoint, env in zip(self.checkpoints, self.envs)}

    def only(self, checkpoint: str) -> "Setup":
        """This setup narrowed to one of its checkpoints: a notebook that compares checkpoints of one env (05's
        architectures) builds each one's settings with the other notebooks' designs, whose per-env references
        (``fp_settings``) need one checkpoint per env."""
        check_choice("checkpoint", str(checkpoint), self.checkpoints)
        i = self.checkpoints.index(str(checkpoint))
        env = self.envs[i]
        return dataclasses.replace(self, checkpoints=(self.checkpoints[i],), envs=(env,),
                                   budget={env: self.budget[env]}, samplers={env: self.samplers[env]})

    def seeded(self, checkpoint: str, seeds: Sequence[int], key: bool = True, **kwargs: Any) -> list[Setting]:
        """One configuration run with each planner seed of ``seeds`` (``planner_seeds``): with ``key``, a key
        comparison's settings (the first seed on ``key_evals`` episodes, the others on ``n_evals``)."""
        return [self.setting(checkpoint, planner_seed=k, key=key, **kwargs) for k in seeds]

    def planner_seeds(self, env: str, seeded_envs: Collection[str]) -> tuple[int, ...]:
        """The profile's planner seeds for an env of ``seeded_envs``, only its first seed for the others."""
        seeds = self.profile.planner_seeds
        return seeds if env in seeded_envs else seeds[:1]

    def footer(self, notebook: str, n_settings: int) -> str:
        """A notebook's last line: its wall time since ``setup``, profile, settings and torch threads. A profile
        whose results are kept (not ``always_recompute``) also records the cache keys the notebook read in the
        profile's results folders (``<results>/*-<profile>``; ``sweep.record_reads``), for the cache inventory."""
        if not self.profile.always_recompute:
            record_reads(notebook, sorted(RESULTS_DIR.glob(f"*-{self.profile.name}")))
        return (f"{notebook}: {time.perf_counter() - self.started:.0f} s wall time, profile {self.profile.name}, "
                f"{n_settings} settings, torch threads {torch.get_num_threads()}")


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
    envs = tuple(CACHES.checkpoint(ck).env for ck in checkpoints)
    chosen = dict(samplers or {})
    unknown = sorted(set(chosen) - set(envs))
    if unknown:
        raise ValueError(f"samplers names envs {unknown} that no checkpoint is for; the checkpoints' envs: "
                         f"{list(envs)}")
    S = Setup(P, tuple(str(c) for c in checkpoints), envs, {env: P.steps(env) for env in envs},
              f"{results_name}-{P.name}", bool(recompute) or P.always_recompute, device, seed,
              {env: env_class(env).check_sampler(chosen.get(env)) for env in envs})
    print(P)
    print("budget:", S.budget, "| long traces:", P.trace_steps, "iterations | episodes:", S.samplers, "| results:",
          S.results)
    return S
