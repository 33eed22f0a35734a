"""Notebook 04's study: what brings low-bit planning back to FP, method by method, in order of cost.

    check_methods(methods)                                      # registered recipes ("GPTQ+hadamard") or KINDS
    sens = sensitivity(S, fp_settings, (2, 3, 4), S.profile.samples)    # cached sweep, one row per (linear, bits)
    allocations = allocate(sens, (4, 3), (2, 3, 4, 8), RESULTS_DIR / "allocations-full")  # also written as JSON
    settings, labels = rescue_settings(S, methods, (4, 3), [[4, 4]], act_methods, ["wall"], ["RTN"], allocations, qat)
    runs = relabel(run_study(settings, S.results), settings, labels, S.budget)

A method is a registered recipe name, with ``+<rotation>`` for a rotated one (``quant.recipe_from_names``:
"RTN+hadamard"), quantizing the whole model per channel (activations per token), or one of ``KINDS``: "mixed" (RTN
with a bit width per linear, allocated from the sensitivity of the planning objective to each linear,
``quant.mixed``) and "QAT" (planning with a fine-tuned checkpoint, ``wmqlib.qat``). Which method is the cheapest
within the margin of FP is decided by ``wmqlib.findings.rescue_verdicts``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import pandas as pd

from wmqlib import stats, verdicts
from wmqlib.caches import CACHES, Caches
from wmqlib.card import read_card
from wmqlib.findings import units
from wmqlib.mixed_study import sensitivity_for
from wmqlib.paths import RESULTS_DIR
from wmqlib.profiles import Setup
from wmqlib.quant import RTN, quantize, recipe_types
from wmqlib.quant.rotation import ROTATIONS
from wmqlib.quant.mixed import allocate_bits, average_bits, mixed_overrides
from wmqlib.setting import Setting
from wmqlib.study import per_episode, prepare, result_key
from wmqlib.sweep import cached, sweep
from wmqlib.validate import atomic_write, check_choice

KINDS = ("mixed", "QAT")  # methods that are not one recipe for the whole model
# The follow-up (arXiv 2602.11882: DINO-WM on Wall, weight-only RTN, two planner budgets): success of each setting
# as a share of FP's (FP 0.53 / 0.65), beside which notebook 04 shows the share wmq's settings keep.
FOLLOW_UP = pd.DataFrame({"setting": ["uniform W4 RTN", "W4, encoder FP16", "encoder W6 + predictor W4",
                                      "uniform W3 RTN"],
                          "follow-up (budget 1)": [0.07 / 0.53, 0.27 / 0.53, 0.30 / 0.53, 0.0],
                          "follow-up (budget 2)": [0.20 / 0.65, 0.50 / 0.65, None, 0.0]})


def check_methods(methods: Sequence[str]) -> list[str]:
    """``methods`` if each is one of ``KINDS`` or a registered recipe name (``quant.recipe_types``) with an optional
    ``+<rotation>``, else InvalidValue naming the allowed ones."""
    for method in methods:
        if method not in KINDS:
            name, plus, rotation = method.partition("+")
            check_choice("methods entry", name, [*sorted(recipe_types()), *KINDS])
            if plus:
                check_choice(f"methods entry {method!r}: rotation", rotation, ROTATIONS[1:])
    return list(methods)


def sensitivity(S: Setup, fp_settings: Mapping[str, Setting], bit_widths: Sequence[int], n_sequences: int,
                caches: Caches = CACHES) -> pd.DataFrame:
    """Per env, ``mixed_study.sensitivity_for`` of its FP setting with RTN per channel at each of ``bit_widths`` on
    ``n_sequences`` candidate plans per calibration episode, plus ``seconds`` (the measurement's wall time). One
    sweep, ``sensitivity-<profile>`` under the results folder, keyed by env, the FP setting's identity, the bit
    widths and n_sequences (computed once, read back after)."""
    def measure(config: dict) -> pd.DataFrame:
        start = time.perf_counter()
        table = sensitivity_for(fp_settings[config["env"]], tuple(config["bit_widths"]), config["n_sequences"],
                                caches=caches, recipe_for_bits=RTN)
        return table.drop(columns=["env", "n_sequences"]).assign(seconds=time.perf_counter() - start)

    configs = _sensitivity_configs(fp_settings, bit_widths, n_sequences, caches)
    return sweep(configs, measure, f"sensitivity-{S.profile.name}", cache_dir=RESULTS_DIR, recompute=S.recompute,
                 progress=False)


def _sensitivity_configs(fp_settings: Mapping[str, Setting], bit_widths: Sequence[int], n_sequences: int,
                         caches: Caches) -> list[dict]:
    """The keys of ``sensitivity``'s sweep, one per env."""
    return [{"env": env, "fp": caches.resolved(s).identity, "bit_widths": list(bit_widths),
             "n_sequences": n_sequences} for env, s in fp_settings.items()]


def sensitivity_cached(S: Setup, fp_settings: Mapping[str, Setting], bit_widths: Sequence[int], n_sequences: int,
                       caches: Caches = CACHES) -> bool:
    """Whether ``sensitivity`` with these arguments reads every env's table from the cache (never when the setup
    recomputes)."""
    configs = _sensitivity_configs(fp_settings, bit_widths, n_sequences, caches)
    return not S.recompute and all(cached(configs, f"sensitivity-{S.profile.name}", RESULTS_DIR))


def allocate(sensitivity: pd.DataFrame, budgets: Sequence[int], choices: Sequence[int], folder: Path | None
             ) -> dict[tuple[str, int], dict[str, int]]:
    """Per (env, budget in average bits): ``quant.mixed.allocate_bits`` of the env's sensitivity among ``choices``;
    each allocation also written as ``<folder>/<env>-<budget>bits.json`` (env, budget, average_bits, bits) unless
    ``folder`` is None."""
    allocations = {}
    for env, table in sensitivity.groupby("env", sort=False):
        for budget in budgets:
            bits = allocations[env, budget] = allocate_bits(table, float(budget), tuple(choices))
            if folder is not None:
                atomic_write(Path(folder) / f"{env}-{budget}bits.json", json.dumps(
                    {"env": env, "budget": budget, "average_bits": average_bits(bits, table), "bits": bits},
                    indent=1))
    return allocations


def sensitivity_summary(sensitivity: pd.DataFrame, allocations: Mapping[tuple[str, int], Mapping[str, int]],
                        bits: int) -> str:
    """What the sensitivity says at ``bits``: the six most sensitive linears per env (with the 95% interval over the
    calibration episodes), the sensitivity summed by part, and how many linears of each part every allocation puts at
    each bit width."""
    at = sensitivity[sensitivity["bits"] == bits]
    top = at.sort_values(["env", "sensitivity"], ascending=[True, False]).groupby("env").head(6)
    share = at.groupby(["env", "part"])["sensitivity"].sum().unstack()
    rows = []
    for (env, budget), chosen in allocations.items():
        t = at[at["env"] == env].set_index("name")
        counts = pd.Series(chosen).rename("bits").to_frame().join(t[["part"]]).groupby(["part", "bits"]).size()
        rows.append(f"{env}, budget {budget} bits (average {average_bits(chosen, t.reset_index()):.2f}):\n"
                    + counts.unstack(fill_value=0).to_string())
    columns = ["env", "name", "part", "params", "sensitivity", "sensitivity_low", "sensitivity_high", "rank_corr"]
    return (f"most sensitive linears at {bits} bits:\n{top[columns].to_string(index=False, float_format='%.3f')}\n"
            f"\nsummed sensitivity by part:\n{share.to_string(float_format='%.3f')}\n"
            "\nlinears per bit width in each allocation:\n" + "\n".join(rows))


def method_setting(S: Setup, env: str, method: str, w_bits: int, a_bits: int | None = None, planner_seed: int = 0,
                   allocations: Mapping[tuple[str, int], Mapping[str, int]] | None = None,
                   qat_checkpoints: Mapping[str, str] | None = None, key: bool = False) -> Setting:
    """The setting of ``method`` at ``w_bits`` (weights per channel; ``a_bits``: per-token activations) in ``env``:
    "QAT" plans FP with ``qat_checkpoints[env]`` (formatted with ``bits``); "mixed" quantizes with RTN at the
    bit widths of ``allocations[env, w_bits]``; a recipe name quantizes the whole model (RTN traced ``long``, as
    notebook 01's). key: a key comparison's setting (``Profile.evals``)."""
    checkpoint = S.checkpoints[S.envs.index(env)]
    if method == "QAT":
        qat = qat_checkpoints[env].format(bits=w_bits)
        return S.profile.setting(qat, env, S.device, S.seed, sampler=S.samplers[env], planner_seed=planner_seed,
                                 key=key)
    if method == "mixed":
        bits = allocations[env, w_bits]
        setting = S.setting(checkpoint, recipe=RTN(min(bits.values())), planner_seed=planner_seed, key=key)
        return dataclasses.replace(setting, overrides=mixed_overrides(bits, RTN))
    recipe = S.profile.recipe(method, w_bits, "per-channel", a_bits=a_bits,
                              a_granularity=None if a_bits is None else "per-token")
    return S.setting(checkpoint, recipe=recipe, planner_seed=planner_seed, long=method == "RTN" and a_bits is None,
                     key=key)


def rescue_settings(S: Setup, methods: Sequence[str], rescue_bits: Sequence[int], act_bits: Sequence[Sequence[int]],
                    act_methods: Sequence[str], seeded_envs: Collection[str], key_methods: Collection[str],
                    allocations: Mapping[tuple[str, int], Mapping[str, int]], qat_checkpoints: Mapping[str, str]
                    ) -> tuple[list[Setting], pd.DataFrame]:
    """Notebook 04's settings and their labels (env, method, bits "W4" / "W4A4", planner_seed): per env, FP and
    every method at every ``rescue_bits``, those of ``key_methods`` as key comparisons (``Profile.key_evals``
    episodes, and each planner seed of ``seeded_envs``: ``Setup.planner_seeds``), the others with the first seed;
    then every ``act_methods`` at each [weight, activation] pair of ``act_bits`` with the first seed."""
    settings, labels = [], []
    for env, fp in S.fp_settings().items():
        seeds = S.planner_seeds(env, seeded_envs)
        settings += S.seeded(fp.checkpoint, seeds, long=True)
        labels += [dict(env=env, method="FP", bits="FP", planner_seed=k) for k in seeds]
        for b in rescue_bits:
            for m in methods:
                key = m in key_methods
                keyed = seeds if key else seeds[:1]
                settings += [method_setting(S, env, m, b, planner_seed=k, allocations=allocations,
                                            qat_checkpoints=qat_checkpoints, key=key) for k in keyed]
                labels += [dict(env=env, method=m, bits=f"W{b}", planner_seed=k) for k in keyed]
        for (wb, ab), m in ((pair, m) for pair in act_bits for m in act_methods):
            settings.append(method_setting(S, env, m, wb, ab))
            labels.append(dict(env=env, method=m, bits=f"W{wb}A{ab}", planner_seed=S.profile.planner_seeds[0]))
    return settings, pd.DataFrame(labels)


def calibration_settings(S: Setup, envs: Collection[str], methods: Sequence[Sequence], rounds: Sequence[int],
                         episodes: Sequence[int], sources: Sequence[str]) -> tuple[list[Setting], pd.DataFrame]:
    """The calibration-sensitivity settings and labels (env, method "GPTQ W4A16", calibration): per env of ``envs``
    and [method, w bits, a bits (per tensor) or None] of ``methods``, the protocol calibration, then one choice
    changed at a time: each of ``rounds`` (MPC rounds), ``episodes`` (n_calib) and ``sources``."""
    settings, labels = [], []
    for checkpoint, env in zip(S.checkpoints, S.envs):
        if env not in envs:
            continue
        for m, wb, ab in methods:
            r = S.profile.recipe(m, wb, "per-channel", a_bits=ab, a_granularity=None if ab is None else "per-tensor")
            base = S.setting(checkpoint, recipe=r)
            variants = [("protocol", base)]
            variants += [(f"{k} rounds", dataclasses.replace(base, calib_rounds=k)) for k in rounds]
            variants += [(f"{k} episodes", dataclasses.replace(base, n_calib=k)) for k in episodes]
            variants += [(f"source {k}", dataclasses.replace(base, calib_source=k)) for k in sources]
            settings += [s for _, s in variants]
            labels += [dict(env=env, method=f"{m} {r.label}", calibration=name) for name, _ in variants]
    return settings, pd.DataFrame(labels)


def relabel(table: pd.DataFrame, settings: Sequence[Setting], labels: pd.DataFrame, budget: Mapping[str, int],
            caches: Caches = CACHES) -> pd.DataFrame:
    """``study.per_episode(table, budget)`` with ``labels`` (one row per setting of ``settings``) in place of its
    columns of the same names, joined by each setting's result key (and planner_seed when ``labels`` has it)."""
    keys = pd.concat([pd.Series([result_key(s, caches) for s in settings], name="config_key"),
                      labels.reset_index(drop=True)], axis=1)
    on = ["config_key"] + (["planner_seed"] if "planner_seed" in labels.columns else [])
    return per_episode(table, budget).drop(columns=[c for c in labels.columns if c not in on]).merge(keys, on=on)


def calibration_rates(runs: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """``stats.success_table`` of relabelled calibration runs by env, method and calibration, the calibrations in the
    order ``labels`` introduces them (the protocol's first)."""
    order = {name: i for i, name in enumerate(dict.fromkeys(labels["calibration"]))}
    return stats.success_table(runs, ["env", "method", "calibration"]).sort_values(
        ["env", "calibration"], key=lambda c: c.map(order) if c.name == "calibration" else c, kind="stable")


def kept_share(rates: pd.DataFrame) -> pd.DataFrame:
    """The share of FP's success each (env, method) kept at each bits label (rows of ``stats.success_table`` by
    env, method, bits; FP's row per env is the reference): one column per bits label."""
    fp = rates[rates["method"] == "FP"][["env", "success_rate"]].rename(columns={"success_rate": "fp"})
    kept = rates.merge(fp, on="env")
    kept["kept"] = kept["success_rate"] / kept["fp"]
    return kept[kept["method"] != "FP"].pivot_table(index=["env", "method"], columns="bits", values="kept",
                                                    aggfunc="first")


def calibration_moves(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (env, method) of ``runs`` (relabelled calibration settings) and calibration other than the protocol's: the
    paired difference in success against the protocol calibration (points; its 95% interval) and McNemar's p."""
    moves = []
    for (env, m), group in runs.groupby(["env", "method"]):
        ref = units(group, calibration="protocol")
        for name in (n for n in group["calibration"].unique() if n != "protocol"):
            x, y = (s.to_numpy() for s in verdicts.common(units(group, calibration=name), ref))
            t, (low, high) = stats.mcnemar(x, y), stats.paired_interval(x, y)
            moves.append({"env": env, "method": m, "calibration": name, "effect": f"{t.effect * 100:+.0f}",
                          "95% interval": f"[{low * 100:+.0f}, {high * 100:+.0f}]", "p": f"{t.p:.2g}"})
    return pd.DataFrame(moves)


def method_seconds(S: Setup, methods: Sequence[str], rescue_bits: Sequence[int], sensitivity: pd.DataFrame,
                   qat_checkpoints: Mapping[str, str], caches: Caches = CACHES) -> pd.DataFrame:
    """Seconds to make each method's quantized model once its inputs exist, per env (one column each): the search
    of every recipe method at the highest of ``rescue_bits`` on the FP setting's calibration (timed once and kept
    like the sensitivity, in the sweep ``method-seconds-<profile>`` keyed by env, the FP setting's identity, method
    and bits, so a re-plot shows the recorded time), the sensitivity measurement for "mixed" (as recorded), the
    fine-tune of each QAT checkpoint (its card)."""
    fp_settings = S.fp_settings()
    bits = max(rescue_bits)

    def timed(config: dict) -> dict:
        p = prepare(fp_settings[config["env"]], caches, calibrate=True)
        recipe = method_setting(S, config["env"], config["method"], config["bits"]).recipe
        start = time.perf_counter()
        quantize(p.fp, recipe, p.calibration)
        return {"seconds": time.perf_counter() - start}

    configs = [{"env": env, "fp": caches.resolved(fp).identity, "method": m, "bits": bits}
               for env, fp in fp_settings.items() for m in methods if m not in KINDS]
    costs = [{"env": row.env, "method": row.method, "seconds": row.seconds} for row in sweep(
        configs, timed, f"method-seconds-{S.profile.name}", cache_dir=RESULTS_DIR, recompute=S.recompute,
        progress=False).itertuples()]
    for env in fp_settings:
        if "mixed" in methods:
            costs.append({"env": env, "method": "mixed (sensitivity)",
                          "seconds": float(sensitivity[sensitivity["env"] == env]["seconds"].iloc[0])})
        if "QAT" in methods:
            costs += [{"env": env, "method": f"QAT W{b} (fine-tune; its card)",
                       "seconds": read_card(caches.checkpoint(qat_checkpoints[env].format(bits=b)).folder)["seconds"]
                       ["training"]} for b in rescue_bits]
    return pd.DataFrame(costs).pivot_table(index="method", columns="env", values="seconds")
