"""The settings each study notebook computes, built from its parameters cell (the notebooks call these; so does
``python -m wmqlib.reproduce --dry-run``, which prices them before anything runs).

    S = profiles.setup("full", ["mini-wall", "mini-pusht"])
    design = designs.granularity(S, seeded_envs=["wall"], ...)     # notebook 01's parameters
    design.settings                                                # every setting, in run order
    designs.of_notebook("01_granularity", S, parameters)           # the same from a parameters dict

A ``Design`` holds the notebook's settings and, under ``parts``, the named groups the notebook reads apart from the
table (e.g. 00's MPC setting per env). Notebook 04's settings depend on the layer sensitivity it measures first;
``of_notebook`` then builds them with the cached allocations, or, when none are cached yet, with every linear at the
budget's bit width (the same number of settings, priced alike, none of them cached).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from wmqlib import profiles as pr
from wmqlib import rescue
from wmqlib.plan import ObjectiveConfig
from wmqlib.profiles import Setup
from wmqlib.quant import PerChannel, PerTensor, PerToken, quantwm_reference
from wmqlib.setting import Setting

# 00's objective ablations: plan on one latent alone
ABLATIONS = {"visual": ObjectiveConfig(alpha=0.0), "proprio": ObjectiveConfig(visual_weight=0.0)}
_ACTS = {"per-tensor": PerTensor(), "per-token": PerToken()}
SCOPES = ("encoder", "predictor")  # 02's quantized parts
TRANSFER_METHOD = "RTN"  # 05 compares architectures on the paper's baseline quantizer, weights per channel in 02 / 03


@dataclass(frozen=True)
class Design:
    """A notebook's settings in run order, the named groups it reads apart from them, and its work that is not a
    setting: ``probes`` (the settings whose encoder the state probe reads, every run), ``alignment`` (the settings
    whose ``candidates`` plans per episode 03 scores and executes, cached like settings), ``sensitivity`` (04's
    per-env FP setting with the bit widths and candidate plans of its layer sensitivity, cached) and ``timed`` (the
    settings whose quantization 04 times, every run)."""

    settings: list[Setting]
    parts: dict[str, Any] = field(default_factory=dict)
    probes: list[Setting] = field(default_factory=list)
    alignment: list[Setting] = field(default_factory=list)
    candidates: int = 0
    sensitivity: list[tuple[Setting, tuple[int, ...], int]] = field(default_factory=list)
    timed: list[Setting] = field(default_factory=list)


def baseline(S: Setup) -> Design:
    """Notebook 00: per env, FP with DINO-WM's CEM (``protocol``), the study's traced CEM (``study``, the shared FP
    reference), GD, MPC (``mpc``) and the objective ablations (``ABLATIONS``)."""
    settings, protocol, study, mpc = [], {}, S.fp_settings(), {}
    for ck, env in zip(S.checkpoints, S.envs):
        protocol[env] = S.setting(ck, protocol=True)
        mpc[env] = S.setting(ck, mpc=True)
        settings += [protocol[env], study[env], S.setting(ck, planner="GD"), mpc[env]]
        settings += [S.setting(ck, objective=objective) for objective in ABLATIONS.values()]
    return Design(settings, {"protocol": protocol, "study": study, "mpc": mpc}, probes=list(study.values()))


def granularity(S: Setup, seeded_envs: Collection[str], extended_envs: Collection[str], weight_bits: Sequence[int],
                weight_methods: Sequence[str], method_bits: Sequence[int], weight_granularities: Sequence[str],
                key_weight_bits: Collection[int], act_bits: Mapping[str, Sequence[Sequence[int]]],
                act_granularities: Sequence[str], reference_bits: Mapping[str, Sequence[int]],
                reference_act_bits: Mapping[str, Sequence[Sequence]], long_weight: Sequence[Sequence],
                long_act: Sequence[Sequence], group_size: int | None = None) -> Design:
    """Notebook 01: per env, FP with every planner seed of ``seeded_envs``; RTN weight-only at ``weight_bits`` (W6
    per channel only, and only in ``extended_envs``) and ``weight_methods`` at ``method_bits``, per granularity (RTN
    at ``key_weight_bits`` as key comparisons); the weight + activation grid of ``act_bits`` per activation
    granularity (beyond W8A8 / W4A8 only in ``extended_envs``); in ``extended_envs`` QuantWM's reference recipes.
    ``long_weight`` / ``long_act`` entries are traced to ``trace_steps``."""
    P, settings = S.profile, []
    for ck, env in zip(S.checkpoints, S.envs):
        g = group_size or pr.default_group_size(ck)
        seeds = S.planner_seeds(env, seeded_envs)
        settings += S.seeded(ck, seeds, long=True)
        extended = env in extended_envs
        weight = [("RTN", b) for b in weight_bits if extended or b != 6] + [(m, b) for m in weight_methods
                                                                            for b in method_bits]
        for m, b in weight:
            for gran in weight_granularities:
                if b == 6 and gran == "per-group":
                    continue  # the follow-up's W6 ~ FP claim needs one granularity
                key = m == "RTN" and b in key_weight_bits
                settings += S.seeded(ck, seeds if key else seeds[:1], key=key, recipe=P.recipe(m, b, gran, g),
                                     long=[m, b, gran] in long_weight)
        settings += [S.setting(ck, recipe=P.recipe(m, wb, "per-channel", g, ab, gran),
                               long=[m, wb, ab, gran] in long_act)
                     for m, pairs in act_bits.items() for wb, ab in pairs for gran in act_granularities
                     if extended or [wb, ab] in ([8, 8], [4, 8])]
        if extended:
            settings += [S.setting(ck, recipe=quantwm_reference(m, b, PerChannel()))
                         for m, bs in reference_bits.items() for b in bs]
            settings += [S.setting(ck, recipe=quantwm_reference(m, wb, PerChannel(), ab, _ACTS[gran]))
                         for m, rows in reference_act_bits.items() for wb, ab, gran in rows]
    return Design(settings)


def encoder_vs_predictor(S: Setup, seeded_envs: Collection[str], method: str, granularity: str, bits: Sequence[int],
                         key_bits: Collection[int], long_bits: Collection[int], round_bits: Collection[int],
                         group_size: int | None = None) -> Design:
    """Notebook 02: per env, FP (every planner seed of ``seeded_envs``) and its MPC; ``method`` at each of ``bits``
    on the encoder alone and on the predictor alone (``key_bits`` as key comparisons, ``long_bits`` traced to
    ``trace_steps``, ``round_bits`` also with MPC). ``parts["scoped"]``: (env, bits, scope) -> the first seed's
    open-loop setting; ``probes``: FP and the encoder-only settings."""
    P, settings, scoped = S.profile, [], {}
    for ck, env in zip(S.checkpoints, S.envs):
        g = group_size or pr.default_group_size(ck)
        seeds = S.planner_seeds(env, seeded_envs)
        settings += S.seeded(ck, seeds, long=True) + [S.setting(ck, mpc=True)]
        for b in bits:
            for scope in SCOPES:
                recipe = P.recipe(method, b, granularity, g)
                key = b in key_bits
                runs = S.seeded(ck, seeds if key else seeds[:1], key=key, recipe=recipe, scope=scope,
                                long=b in long_bits)
                scoped[env, b, scope] = runs[0]
                settings += runs
                if b in round_bits:
                    settings.append(S.setting(ck, recipe=recipe, scope=scope, mpc=True))
    probes = list(S.fp_settings().values()) + [scoped[env, b, "encoder"] for env in S.envs for b in bits]
    return Design(settings, {"scoped": scoped}, probes=probes)


def misalignment(S: Setup, method: str, granularity: str, scope: str, bits: Sequence[int], key_bits: Collection[int],
                 long_bits: Collection[int], round_bits: Collection[int], candidates: int,
                 group_size: int | None = None) -> Design:
    """Notebook 03: per env, FP and its MPC; ``method`` on ``scope`` at each of ``bits`` (``long_bits`` traced to
    ``trace_steps``, ``key_bits`` key comparisons, ``round_bits`` also with MPC). ``alignment``: FP and each bit
    width at the budget on ``n_evals`` episodes, whose ``candidates`` plans per episode are executed in the env."""
    P, settings, aligned = S.profile, [], []
    fp_settings = S.fp_settings()
    for ck, env in zip(S.checkpoints, S.envs):
        g = group_size or pr.default_group_size(ck)
        settings += [fp_settings[env], S.setting(ck, mpc=True)]
        aligned.append(S.setting(ck, long=True))  # on n_evals episodes, FP and quantized alike
        for b in bits:
            recipe = P.recipe(method, b, granularity, g)
            settings.append(S.setting(ck, recipe=recipe, scope=scope, long=b in long_bits, key=b in key_bits))
            aligned.append(S.setting(ck, recipe=recipe, scope=scope))
            if b in round_bits:
                settings.append(S.setting(ck, recipe=recipe, scope=scope, mpc=True))
    return Design(settings, alignment=aligned, candidates=candidates)


def rescue_low_bits(S: Setup, allocations: Mapping[tuple[str, int], Mapping[str, int]], methods: Sequence[str],
                    rescue_bits: Sequence[int], act_bits: Sequence[Sequence[int]], act_methods: Sequence[str],
                    seeded_envs: Collection[str], key_methods: Collection[str], qat_checkpoints: Mapping[str, str],
                    calib_envs: Collection[str], calib_methods: Sequence[Sequence], calib_rounds: Sequence[int],
                    calib_episodes: Sequence[int], calib_sources: Sequence[str]) -> Design:
    """Notebook 04 (after its sensitivity): ``rescue.rescue_settings`` then ``rescue.calibration_settings``;
    ``parts``: "rescue" and "calibration", each (settings, labels); ``timed``: ``rescue.method_seconds``'s."""
    rescued = rescue.rescue_settings(S, methods, rescue_bits, act_bits, act_methods, seeded_envs, key_methods,
                                     allocations, qat_checkpoints)
    calibrated = rescue.calibration_settings(S, calib_envs, calib_methods, calib_rounds, calib_episodes,
                                             calib_sources)
    timed = [rescue.method_setting(S, env, m, max(rescue_bits)) for env in S.envs for m in methods
             if m not in rescue.KINDS]
    return Design(rescued[0] + calibrated[0], {"rescue": rescued, "calibration": calibrated}, timed=timed)


def architecture_transfer(S: Setup, seeded_envs: Collection[str], bits: Sequence[int], key_bits: Collection[int],
                          weight_granularities: Sequence[str], long_weight: Sequence[Sequence], scope_long_bits:
                          Collection[int], scope_round_bits: Collection[int], loss_long_bits: Collection[int],
                          loss_round_bits: Collection[int], candidates: int, group_size: int | None = None) -> Design:
    """Notebook 05: per checkpoint (``Setup.only``; several may share an env), the weight-only part of 01
    (``granularity``: ``TRANSFER_METHOD`` at ``bits`` per granularity, ``long_weight`` traced long), 02
    (``encoder_vs_predictor``: per channel at ``bits`` on each scope) and 03 (``misalignment``: the whole model, its
    alignment with
    ``candidates`` plans), with those notebooks' parameters, so the settings of a checkpoint they ran are their
    cached ones. ``parts``: checkpoint -> {"granularity" | "scope" | "misalignment": that notebook's Design};
    ``settings``: every part's, each once, in run order; ``alignment``: 03's per checkpoint."""
    parts, settings, alignment = {}, {}, []
    for ck in S.checkpoints:
        one = S.only(ck)
        parts[ck] = {
            "granularity": granularity(one, seeded_envs, (), bits, (), (), weight_granularities, key_bits, {}, (), {},
                                       {}, long_weight, (), group_size),
            "scope": encoder_vs_predictor(one, seeded_envs, TRANSFER_METHOD, "per-channel", bits, key_bits,
                                          scope_long_bits, scope_round_bits, group_size),
            "misalignment": misalignment(one, TRANSFER_METHOD, "per-channel", "all", bits, key_bits, loss_long_bits,
                                         loss_round_bits, candidates, group_size)}
        for part in parts[ck].values():
            settings.update((s, None) for s in part.settings)  # a setting two parts share runs once
            alignment += part.alignment
    return Design(list(settings), parts, alignment=alignment, candidates=candidates)


def _rescue_from_parameters(S: Setup, parameters: Mapping[str, Any]) -> Design:
    """``rescue_low_bits`` with the allocations of the cached sensitivity, or every linear at the budget's width."""
    choices = parameters["mixed_choices"]
    bit_widths = [b for b in choices if b < 8]
    sequences = parameters.get("sensitivity_sequences") or S.profile.samples
    fp_settings = S.fp_settings()
    if rescue.sensitivity_cached(S, fp_settings, bit_widths, sequences):
        table = rescue.sensitivity(S, fp_settings, bit_widths, sequences)
        allocations = rescue.allocate(table, parameters["rescue_bits"], choices, None)
        measured = []
    else:  # priced alike: every linear at the budget, as one override pattern
        allocations = {(env, b): {"*": b} for env in S.envs for b in parameters["rescue_bits"]}
        measured = [(s, tuple(bit_widths), sequences) for s in fp_settings.values()]
    design = _call(rescue_low_bits, S, {**parameters, "allocations": allocations})
    return dataclasses.replace(design, sensitivity=measured)


def _call(fn: Callable[..., Design], S: Setup, parameters: Mapping[str, Any]) -> Design:
    """``fn(S, **the parameters it declares)``; a parameter it needs that the notebook lacks raises KeyError."""
    names = [n for n in inspect.signature(fn).parameters if n != "S"]
    defaults = {n: p.default for n, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}
    missing = [n for n in names if n not in parameters and n not in defaults]
    if missing:
        raise KeyError(f"{fn.__name__} needs the notebook parameters {missing}")
    return fn(S, **{n: parameters[n] for n in names if n in parameters})


# notebook stem -> its design built from the notebook's parameters (Setup made by ``setup_of``)
DESIGNS: dict[str, Callable[[Setup, Mapping[str, Any]], Design]] = {
    "00_baseline": lambda S, p: baseline(S),
    "01_granularity": lambda S, p: _call(granularity, S, p),
    "02_encoder_vs_predictor": lambda S, p: _call(encoder_vs_predictor, S, p),
    "03_objective_misalignment": lambda S, p: _call(misalignment, S, p),
    "04_rescue_low_bits": _rescue_from_parameters,
    "05_architecture_transfer": lambda S, p: _call(architecture_transfer, S, p),
}
SIZES = ("n_evals", "key_evals", "opt_steps", "trace_steps", "gd_steps", "mpc_rounds", "planner_seeds")


def setup_of(parameters: Mapping[str, Any]) -> Setup:
    """``profiles.setup`` from a notebook's parameters (its sizes: those of ``SIZES`` it declares)."""
    return pr.setup(parameters["profile"], parameters["checkpoint"], parameters.get("device", "auto"),
                    parameters.get("seed", 99), parameters.get("results_name", "study"),
                    parameters.get("recompute", False), parameters.get("samplers"),
                    **{k: parameters[k] for k in SIZES if k in parameters})


def of_notebook(stem: str, S: Setup, parameters: Mapping[str, Any]) -> Design:
    """The design of notebook ``stem`` (a key of ``DESIGNS``) for its parameters; ValueError for another stem."""
    if stem not in DESIGNS:
        raise ValueError(f"no design for notebook {stem!r}; the study notebooks: {sorted(DESIGNS)}")
    return DESIGNS[stem](S, parameters)
