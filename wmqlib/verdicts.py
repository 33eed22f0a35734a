"""Verdict rules of the paper's findings: each finding is one named function that can come out either way.

Every rule takes per-unit outcomes of the settings it compares, as ``pd.Series`` of booleans indexed by unit (one
unit = one (planner seed, episode) pair; build them with ``outcomes``), and returns a frozen :class:`Verdict` with
one of four outcomes:

    reproduced       the data decide for the finding
    not reproduced   the data decide against it (a decisive effect the other way, or equivalence where the
                     finding claims a difference)
    inconclusive     neither: a null result is never read as support unless an equivalence test says so
    not testable     FP is not decisively above the best trivial baseline on the same units, or the compared
                     settings all sit at the floor (success <= ``floor``) or all at the ceiling (>= 1 - floor),
                     where nothing can move

Shared definitions (``wmqlib.stats``): "decisively" = p < alpha (default 0.05) in the stated direction, p the
exact paired test clustered by episode (``stats.clustered_mcnemar``: exact McNemar when every episode is one unit,
the exact sign-flip test over episodes when planner seeds repeat them); "equivalent" = TOST at alpha with
``margin`` (default 10 points), i.e. the 90% Tango interval of the paired difference inside (-margin, margin), on
the effective counts of ``stats.design_effect`` where episodes repeat. Equivalence is checked before a decisive
difference: a difference inside the margin is negligible by definition, even when it is decisive. ``effect`` is
the key comparison's difference in success rate (``a - b`` as its ``comparison`` names them) with its Tango
interval, ``p`` its clustered p and ``mde`` its minimum detectable effect (alpha, power 0.8, the pair's observed
discordance, the effective number of units). ``episodes`` counts the distinct episodes, ``units`` the (planner
seed, episode) pairs. Baselines without the planner-seed level are repeated for every planner seed.

Planner seeds replicate the planner, not the episodes: the episode is the unit of inference (above), and
``with_strata(rule, "planner_seed", ...)`` adds each seed's own outcome as the seed-to-seed spread, a separate,
labelled measurement that does not decide.

Multiplicity: a notebook's verdicts are one family. ``holm_adjusted`` takes from each comparison the smaller of
its difference p and its equivalence p, computes Holm's adjusted p over the family, and decides each verdict again
with its claims' tests (the key test, equivalence) at the level where that p crosses exactly where its adjusted p
crosses alpha (alpha * p / p_adjusted, the rule's ``key_alpha``); testability and the conditions that argue against
a claim stay at alpha. The table shows the raw p, the equivalence p and the adjusted one. ``per_token_no_benefit``
also Bonferroni-adjusts its "per-token better anywhere" test over its own pairs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from wmqlib import stats
from wmqlib.multiplicity import holm
from wmqlib.validate import InvalidValue, check_float

OUTCOMES = ("reproduced", "not reproduced", "inconclusive", "not testable")
MARGIN, ALPHA, FLOOR, POWER = 0.10, 0.05, 0.05, 0.8


@dataclass(frozen=True)
class Verdict:
    """One finding judged on one comparison. effect / ci_low / ci_high: difference in success rate (F6: in
    Spearman's rho, or in the relative drop of the planning loss) and its interval at ``level``; p: the key test's p (clustered by episode); mde: its minimum
    detectable effect; episodes / units: distinct episodes and (planner seed, episode) units judged;
    p_equivalence: the p of the claim that the difference is smaller than the margin (TOST; NaN where the rule
    makes no such claim); p_adjusted: Holm's adjusted p of the smaller of the two within the verdict's table (NaN
    until ``holm_adjusted``); rerun(level): the same rule on the same data with its claims judged at ``level``
    (set by ``rule``)."""
    finding: str
    comparison: str
    effect: float
    ci_low: float
    ci_high: float
    level: float
    p: float
    mde: float
    outcome: str
    why: str
    episodes: int = 0
    units: int = 0
    p_equivalence: float = math.nan
    p_adjusted: float = math.nan
    rerun: Callable[[float], "Verdict"] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise InvalidValue(f"Verdict.outcome must be one of {list(OUTCOMES)}, got {self.outcome!r}")


def _series_in(values: Sequence[Any]) -> Iterator[pd.Series]:
    """Every pd.Series among ``values``, depth first, searched into mappings and tuples."""
    for value in values:
        if isinstance(value, pd.Series):
            yield value
        elif isinstance(value, (Mapping, tuple)):
            yield from _series_in(list(value.values()) if isinstance(value, Mapping) else list(value))


def episodes_of(series: pd.Series) -> np.ndarray:
    """The episode of each unit of ``series`` (U,): its "episode_seed" index level, or each unit its own episode
    when the index has no such level. The clusters of every test here."""
    if "episode_seed" in (series.index.names or []):
        return np.asarray(series.index.get_level_values("episode_seed"))
    return np.arange(len(series))


def rule(fn: Callable[..., Verdict]) -> Callable[..., Verdict]:
    """Decorator of every verdict rule (which takes ``alpha`` as a keyword): the returned Verdict counts the
    episodes and units of the rule's first Series argument and can be judged again at another level
    (``Verdict.rerun``, used by ``holm_adjusted``)."""
    @functools.wraps(fn)
    def judged(*args: Any, **kwargs: Any) -> Verdict:
        verdict = fn(*args, **kwargs)
        first = next(_series_in(list(args) + list(kwargs.values())), None)
        counts = {} if first is None or verdict.units else {
            "episodes": int(np.unique(episodes_of(first)).size), "units": len(first)}
        return dataclasses.replace(verdict, **counts,
                                   rerun=lambda level: judged(*args, **{**kwargs, "key_alpha": level}))
    return judged


def holm_adjusted(found: Sequence[Verdict], alpha: float = ALPHA) -> list[Verdict]:
    """One table's verdicts with Holm's adjusted p and each decided again with its claims at level
    alpha * p / p_adjusted (its rule's ``key_alpha``; module docstring). Each comparison enters Holm once, with the
    smaller of its difference p and its equivalence p: its two null hypotheses (no difference; a difference of at
    least the margin) cannot both be true, so at most one true null per comparison is at stake. The claim that p
    belongs to then decides exactly on p_adjusted < alpha; testability and the conditions that argue against a
    claim stay at alpha (a stricter level there would make a claim easier). A verdict without a finite p keeps its
    outcome and a NaN adjusted p."""
    alpha = check_float("holm_adjusted: alpha", alpha, minimum=0, maximum=0.5, strict=True)
    if any(v.rerun is None for v in found):
        raise InvalidValue("holm_adjusted: every verdict must come from a rule (verdicts.rule) to be judged again")
    smallest = [float(np.nanmin([v.p, v.p_equivalence])) if np.isfinite([v.p, v.p_equivalence]).any() else math.nan
                for v in found]
    adjusted = holm(smallest)
    out = []
    for v, p, p_adj in zip(found, smallest, adjusted):
        if math.isnan(p_adj):
            out.append(v)
            continue
        level = alpha if p >= p_adj or p == 0 else alpha * p / p_adj
        again = v if level == alpha else v.rerun(level)
        out.append(dataclasses.replace(again, p_adjusted=float(p_adj)))
    return out


def outcomes(table: pd.DataFrame, units: Sequence[str], value: str = "success", **match: Any) -> pd.Series:
    """The ``value`` column of the rows of ``table`` whose columns equal ``match``, indexed by ``units`` (e.g.
    ``("planner_seed", "episode_seed")``) and sorted; InvalidValue when nothing matches or a unit repeats."""
    rows = table
    for column, want in match.items():
        if column not in table.columns:
            raise InvalidValue(f"outcomes: column {column!r} is not in the table; available: {list(table.columns)}")
        rows = rows[rows[column] == want]
    if rows.empty:
        raise InvalidValue(f"outcomes: no rows with {match}")
    series = rows.set_index(list(units))[value].sort_index()
    if not series.index.is_unique:
        raise InvalidValue(f"outcomes: rows with {match} repeat a unit {list(units)}; select one setting")
    return series


def common(*series: pd.Series) -> tuple[pd.Series, ...]:
    """Each Series restricted to the units all of them hold (e.g. an FP run with planner seeds 0-2 against a
    setting run with seed 0 only), in one sorted order; InvalidValue when they share none."""
    if not series or not all(isinstance(s, pd.Series) for s in series):
        raise InvalidValue("common needs pd.Series of per-unit outcomes (see verdicts.outcomes)")
    shared = series[0].index
    for s in series[1:]:
        shared = shared.intersection(s.index)
    if len(shared) == 0:
        raise InvalidValue(f"common: the {len(series)} settings share no unit")
    shared = shared.sort_values()
    return tuple(s.loc[shared] for s in series)


def _align(reference: pd.Series, other: pd.Series, name: str, kind: type = bool) -> np.ndarray:
    """``other``'s values (as ``kind``) in ``reference``'s unit order; an index with fewer levels (a baseline
    without planner seeds) is repeated over the missing levels. InvalidValue unless both hold the same units."""
    if not isinstance(other, pd.Series) or not isinstance(reference, pd.Series):
        raise InvalidValue(f"{name} must be a pd.Series of per-unit outcomes indexed by unit (see verdicts.outcomes)")
    index = reference.index
    extra = [n for n in index.names if n not in other.index.names]
    if extra and len(extra) < index.nlevels and set(other.index.names) <= set(index.names):
        index = index.droplevel(extra)
    if not other.index.is_unique:
        raise InvalidValue(f"{name} repeats a unit; select one setting")
    values = other.reindex(index)
    if values.isna().any() or len(other) != len(index.unique()):
        raise InvalidValue(f"{name} does not hold the same units as the setting it is compared with "
                           f"({len(other)} vs {len(index.unique())} units)")
    if kind is bool and not values.isin([0, 1]).all():
        raise InvalidValue(f"{name} must hold per-unit successes (True / False or 1 / 0), got "
                           f"{sorted(set(values.tolist()))[:5]}")
    return values.to_numpy().astype(kind)


def _decisive(test: stats.McNemar, alpha: float, sign: int) -> bool:
    return test.p < alpha and np.sign(test.effect) == sign


def _test(reference: pd.Series, a: np.ndarray, b: np.ndarray) -> stats.McNemar:
    """The paired test of a vs b, units aligned on ``reference``, clustered by its episodes."""
    return stats.clustered_mcnemar(a, b, episodes_of(reference))


def _equivalence(reference: pd.Series, a: np.ndarray, b: np.ndarray, margin: float, alpha: float
                 ) -> stats.Equivalence:
    return stats.equivalence(a, b, margin, alpha, clusters=episodes_of(reference))


def _interval_and_mde(reference: pd.Series, a: np.ndarray, b: np.ndarray, test: stats.McNemar, alpha: float
                      ) -> tuple[float, float, float]:
    """The 1 - alpha interval of a - b and the MDE on the effective number of units, both clustered by episode."""
    clusters = episodes_of(reference)
    low, high = stats.paired_interval(a, b, level=1 - alpha, clusters=clusters)
    effective = max(1, round(test.units / stats.design_effect(a, b, clusters)))
    return low, high, stats.min_detectable_effect(effective, test.discordance, alpha, POWER)


def _untestable(fp: pd.Series, baselines: pd.Series | Mapping[str, pd.Series], cells: Sequence[np.ndarray],
                alpha: float, floor: float) -> str | None:
    """Why the finding cannot be judged on these units, or None when it can."""
    base = _on_units(fp, baselines)
    f = _align(fp, fp, "fp")
    rates = {k: _align(fp, v, f"baselines[{k!r}]").mean() for k, v in base.items()}
    best = max(rates, key=rates.get)
    vs = _test(fp, f, _align(fp, base[best], "baseline"))
    if not _decisive(vs, alpha, +1):
        return f"FP {f.mean():.0%} is not decisively above the best baseline {best} {rates[best]:.0%} (p {vs.p:.2g})"
    cell_rates = [np.mean(c) for c in cells]
    if cell_rates and (all(r <= floor for r in cell_rates) or all(r >= 1 - floor for r in cell_rates)):
        where = "floor" if cell_rates[0] <= floor else "ceiling"
        return f"compared settings all at the {where} ({', '.join(f'{r:.0%}' for r in cell_rates)})"
    return None


def _levels(finding: str, alpha: float, key_alpha: float | None) -> tuple[float, float]:
    """(alpha, key level): the rule's alpha for testability and the conditions that argue against its claims, and
    the level of its key test and equivalence (``key_alpha``, set by ``holm_adjusted``; alpha when None)."""
    alpha = check_float(f"{finding}: alpha", alpha, minimum=0, maximum=0.5, strict=True)
    key = alpha if key_alpha is None else check_float(f"{finding}: key_alpha", key_alpha, minimum=0, maximum=alpha,
                                                      strict=True)
    return alpha, key


def _judge(finding: str, comparison: str, a: pd.Series, b: pd.Series, fp: pd.Series,
           baselines: pd.Series | Mapping[str, pd.Series], alpha: float, margin: float, floor: float,
           rules: Callable[[stats.McNemar, stats.Equivalence, float], tuple[str, str]],
           key_alpha: float | None = None) -> Verdict:
    """Shared frame of the pairwise rules: testability (at alpha), the key test of a vs b with its interval and MDE
    at the key level (``_levels``), then ``rules(test, eq, key)`` -> (outcome, why) with the TOST ``eq`` of a vs b
    at the key level."""
    alpha, key = _levels(finding, alpha, key_alpha)
    xa, xb = _align(a, a, "a"), _align(a, b, "b")
    _align(a, fp, "fp")
    test = _test(a, xa, xb)
    low, high, mde = _interval_and_mde(a, xa, xb, test, key)
    why = _untestable(fp, baselines, [xa, xb], alpha, floor)
    p_equivalence = math.nan
    if why is None:
        eq = _equivalence(a, xa, xb, margin, key)
        outcome, why = rules(test, eq, key)
        p_equivalence = eq.p
    else:
        outcome = "not testable"
    return Verdict(finding, comparison, test.effect, low, high, 1 - key, test.p, mde, outcome, why,
                   p_equivalence=p_equivalence)


def _equivalent(eq: stats.Equivalence) -> str:
    return (f"{1 - 2 * eq.alpha:.0%} interval [{eq.ci_low * 100:+.0f}, {eq.ci_high * 100:+.0f}] inside "
            f"+-{eq.margin * 100:.0f} points")


def _numbers(t: stats.McNemar) -> str:
    return f"{t.effect * 100:+.0f} points, {t.a_only} units gained vs {t.b_only} lost, p {t.p:.2g}"


@rule
def fp_beats_baselines(fp: pd.Series, baselines: pd.Series | Mapping[str, pd.Series],
                       comparison: str = "FP vs best trivial baseline", alpha: float = ALPHA, margin: float = MARGIN,
                       floor: float = FLOOR, key_alpha: float | None = None) -> Verdict:
    """F0, the study's premise (DINO-WM's): planning with the FP model reaches goals the trivial baselines do not.
    Reproduced when FP is decisively above the best baseline on the same units; not reproduced when FP is
    equivalent to it or decisively below; inconclusive otherwise. Never "not testable": it is the test of
    testability every other rule applies first."""
    _, key = _levels("F0", alpha, key_alpha)
    f, base = _align(fp, fp, "fp"), _best_baseline(fp, baselines)
    test, eq = _test(fp, f, base), _equivalence(fp, f, base, margin, key)
    low, high, mde = _interval_and_mde(fp, f, base, test, key)
    if _decisive(test, key, +1) and not eq.equivalent:
        outcome, why = "reproduced", f"FP decisively above the best baseline: {_numbers(test)}"
    elif eq.equivalent or _decisive(test, key, -1):
        outcome, why = "not reproduced", f"FP no better than the best baseline: {_numbers(test)}"
    else:
        outcome, why = "inconclusive", f"no decisive difference: {_numbers(test)}"
    return Verdict("F0 FP beats trivial baselines", comparison, test.effect, low, high, 1 - key, test.p, mde,
                   outcome, why, p_equivalence=eq.p)


@rule
def w8_close_to_fp(w8: pd.Series, fp: pd.Series, baselines: pd.Series | Mapping[str, pd.Series],
                   comparison: str = "W8 vs FP", alpha: float = ALPHA, margin: float = MARGIN,
                   floor: float = FLOOR, key_alpha: float | None = None) -> Verdict:
    """F1a "W8 is close to FP": reproduced when W8 and FP are equivalent (TOST within ``margin``); not reproduced
    when the 90% interval lies wholly outside the margin (decisively farther than the margin); else inconclusive."""
    def rules(t: stats.McNemar, eq: stats.Equivalence, key: float) -> tuple[str, str]:
        if eq.equivalent:
            return "reproduced", f"equivalent: {_equivalent(eq)}"
        if eq.ci_low > margin or eq.ci_high < -margin:
            return "not reproduced", f"decisively farther than {margin:.0%}: {_numbers(t)}"
        return "inconclusive", f"neither equivalent nor decisively apart: {_numbers(t)}"
    return _judge("F1a W8 close to FP", comparison, w8, fp, fp, baselines, alpha, margin, floor, rules, key_alpha)


@rule
def w4_loses_success(w4: pd.Series, fp: pd.Series, baselines: pd.Series | Mapping[str, pd.Series],
                     comparison: str = "W4 vs FP", alpha: float = ALPHA, margin: float = MARGIN,
                     floor: float = FLOOR, key_alpha: float | None = None) -> Verdict:
    """F1b "W4 is unstable / loses success": reproduced when W4 is decisively below FP (beyond equivalence); not
    reproduced when W4 is equivalent to FP or decisively above it; else inconclusive."""
    def rules(t: stats.McNemar, eq: stats.Equivalence, key: float) -> tuple[str, str]:
        if eq.equivalent:
            return "not reproduced", f"W4 equivalent to FP: {_equivalent(eq)}"
        if _decisive(t, key, -1):
            return "reproduced", f"W4 decisively below FP: {_numbers(t)}"
        if _decisive(t, key, +1):
            return "not reproduced", f"W4 decisively above FP: {_numbers(t)}"
        return "inconclusive", f"no decisive difference, not equivalent: {_numbers(t)}"
    return _judge("F1b W4 loses success", comparison, w4, fp, fp, baselines, alpha, margin, floor, rules, key_alpha)


@rule
def w3_breaks_planning(w3: pd.Series, fp: pd.Series, baselines: pd.Series | Mapping[str, pd.Series],
                       comparison: str = "W3 vs FP", alpha: float = ALPHA, margin: float = MARGIN,
                       floor: float = FLOOR, key_alpha: float | None = None) -> Verdict:
    """F1c "W3 breaks planning": reproduced when W3 is decisively below FP AND not decisively above the best
    trivial baseline (planning reduced to what needs no model); not reproduced when W3 is equivalent to FP or
    decisively above the best baseline (it still plans); else inconclusive."""
    base = _best_baseline(w3, baselines)

    def rules(t: stats.McNemar, eq: stats.Equivalence, key: float) -> tuple[str, str]:
        vs_base = _test(w3, _align(w3, w3, "w3"), base)
        if eq.equivalent:
            return "not reproduced", f"W3 equivalent to FP: {_equivalent(eq)}"
        if _decisive(vs_base, key, +1):
            return "not reproduced", f"W3 still plans: {vs_base.effect * 100:+.0f} points over the best " \
                                     f"baseline (p {vs_base.p:.2g})"
        if _decisive(t, key, -1) and not _decisive(vs_base, alpha, +1):
            return "reproduced", f"W3 decisively below FP ({_numbers(t)}) and not above the best baseline " \
                                 f"(p {vs_base.p:.2g})"
        return "inconclusive", f"W3 not decisively below FP: {_numbers(t)}"
    return _judge("F1c W3 breaks planning", comparison, w3, fp, fp, baselines, alpha, margin, floor, rules, key_alpha)


@rule
def within_margin_of_fp(x: pd.Series, fp: pd.Series, baselines: pd.Series | Mapping[str, pd.Series],
                        comparison: str = "method vs FP", alpha: float = ALPHA, margin: float = MARGIN,
                        floor: float = FLOOR, key_alpha: float | None = None) -> Verdict:
    """R "the method keeps planning within ``margin`` of FP" (notebook 04's rescue): reproduced when equivalent to
    FP (TOST); not reproduced when decisively below FP and not equivalent; else inconclusive."""
    return _judge("R within margin of FP", comparison, x, fp, fp, baselines, alpha, margin, floor,
                  _against_fp("", "reproduced", "not reproduced"), key_alpha)


def _against_fp(subject: str, if_equivalent: str, if_below: str, note: str = ""
                ) -> Callable[[stats.McNemar, stats.Equivalence, float], tuple[str, str]]:
    """The rules of a setting judged against FP (``_judge``'s ``rules``): ``if_equivalent`` when equivalent to FP
    (TOST), ``if_below`` when decisively below it, else inconclusive; ``subject`` starts and ``note`` ends ``why``."""
    def rules(t: stats.McNemar, eq: stats.Equivalence, key: float) -> tuple[str, str]:
        if eq.equivalent:
            return if_equivalent, f"{subject}equivalent to FP: {_equivalent(eq)}{note}"
        if _decisive(t, key, -1):
            return if_below, f"{subject}decisively below FP: {_numbers(t)}{note}"
        return "inconclusive", f"{subject}neither equivalent to FP nor decisively below it: {_numbers(t)}{note}"
    return rules


def _on_units(reference: pd.Series, baselines: pd.Series | Mapping[str, pd.Series]) -> dict[str, pd.Series]:
    """The baselines by name ({"baseline": baselines} for one Series), each read on the episodes of ``reference``:
    baselines of a key comparison's FP run on more episodes than a setting compared with it."""
    base = dict(baselines) if isinstance(baselines, Mapping) else {"baseline": baselines}
    if not base:
        raise InvalidValue("baselines must hold at least one trivial baseline")
    episodes = episodes_of(reference)
    return {k: v[v.index.get_level_values("episode_seed").isin(episodes)]
            if isinstance(v, pd.Series) and "episode_seed" in (v.index.names or []) else v for k, v in base.items()}


def _best_baseline(reference: pd.Series, baselines: pd.Series | Mapping[str, pd.Series]) -> np.ndarray:
    base = _on_units(reference, baselines)
    aligned = [_align(reference, v, f"baselines[{k!r}]") for k, v in base.items()]
    return max(aligned, key=np.mean)


@rule
def groups_stabilise_w4(grouped: pd.Series, per_channel: pd.Series, fp: pd.Series,
                        baselines: pd.Series | Mapping[str, pd.Series], comparison: str = "W4 per-group vs per-channel",
                        alpha: float = ALPHA, margin: float = MARGIN, floor: float = FLOOR, key_alpha: float | None = None) -> Verdict:
    """F2a "group-wise weights stabilise W4": reproduced when per-group W4 is decisively above per-channel W4; not
    reproduced when they are equivalent or per-group is decisively below; else inconclusive."""
    def rules(t: stats.McNemar, eq: stats.Equivalence, key: float) -> tuple[str, str]:
        if eq.equivalent:
            return "not reproduced", f"per-group equivalent to per-channel: {_equivalent(eq)}"
        if _decisive(t, key, +1):
            return "reproduced", f"per-group decisively above per-channel: {_numbers(t)}"
        if _decisive(t, key, -1):
            return "not reproduced", f"per-group decisively below per-channel: {_numbers(t)}"
        return "inconclusive", f"no decisive difference, not equivalent: {_numbers(t)}"
    return _judge("F2a groups stabilise W4", comparison, grouped, per_channel, fp, baselines, alpha, margin, floor,
                  rules, key_alpha)


@rule
def groups_do_not_rescue_w3(grouped: pd.Series, per_channel: pd.Series, fp: pd.Series,
                            baselines: pd.Series | Mapping[str, pd.Series], comparison: str = "W3 per-group vs FP",
                            alpha: float = ALPHA, margin: float = MARGIN, floor: float = FLOOR,
                            key_alpha: float | None = None) -> Verdict:
    """F2b "group-wise weights do not rescue W3": a rescue brings W3 back to FP, so the key comparison is per-group
    W3 against FP. Reproduced when per-group W3 is decisively below FP and not equivalent to it; not reproduced when
    it is equivalent to FP (TOST within ``margin``); else inconclusive. ``why`` adds how much the groups recover
    against per-channel W3 (a partial recovery that stays decisively below FP is not a rescue)."""
    gain = _test(grouped, _align(grouped, grouped, "grouped"), _align(grouped, per_channel, "per_channel"))
    rules = _against_fp("per-group W3 ", "not reproduced", "reproduced", f"; per-group vs per-channel {_numbers(gain)}")
    return _judge("F2b groups do not rescue W3", comparison, grouped, fp, fp, baselines, alpha, margin, floor, rules,
                  key_alpha)


@rule
def encoder_more_sensitive(encoder_only: pd.Series, predictor_only: pd.Series, fp: pd.Series,
                           baselines: pd.Series | Mapping[str, pd.Series],
                           comparison: str = "encoder-only vs predictor-only", alpha: float = ALPHA,
                           margin: float = MARGIN, floor: float = FLOOR, key_alpha: float | None = None) -> Verdict:
    """F5 "the encoder is more sensitive than the predictor" (same bits): reproduced when quantizing only the
    encoder leaves decisively less success than quantizing only the predictor; not reproduced when they are
    equivalent or encoder-only is decisively above; else inconclusive."""
    def rules(t: stats.McNemar, eq: stats.Equivalence, key: float) -> tuple[str, str]:
        if eq.equivalent:
            return "not reproduced", f"encoder-only equivalent to predictor-only: {_equivalent(eq)}"
        if _decisive(t, key, -1):
            return "reproduced", f"encoder-only decisively below predictor-only: {_numbers(t)}"
        if _decisive(t, key, +1):
            return "not reproduced", f"encoder-only decisively above predictor-only: {_numbers(t)}"
        return "inconclusive", f"no decisive difference, not equivalent: {_numbers(t)}"
    return _judge("F5 encoder more sensitive", comparison, encoder_only, predictor_only, fp, baselines, alpha,
                  margin, floor, rules, key_alpha)


@rule
def per_token_no_benefit(pairs: Mapping[str, tuple[pd.Series, pd.Series]], fp: pd.Series,
                         baselines: pd.Series | Mapping[str, pd.Series], alpha: float = ALPHA,
                         margin: float = MARGIN, floor: float = FLOOR, key_alpha: float | None = None) -> Verdict:
    """F3 "per-token activations give no consistent benefit over per-tensor", over several settings at once.

    pairs: name -> (per-token outcomes, per-tensor outcomes) of one method / bit width. Pairs at the floor or
    ceiling are skipped. Not reproduced when per-token is decisively better in ANY pair (exact McNemar at
    alpha / k, Bonferroni over the k testable pairs); reproduced when in EVERY testable pair per-token is
    equivalent to per-tensor or decisively worse; inconclusive otherwise (a null result is not support).
    The row shows the pair most favourable to per-token (effect = per-token - per-tensor).
    """
    if not pairs:
        raise InvalidValue("per_token_no_benefit: pairs must hold at least one (per-token, per-tensor) pair")
    _, key = _levels("F3", alpha, key_alpha)
    judged = {name: _judge("F3", name, tok, ten, fp, baselines, alpha, margin, floor,
                           lambda t, eq, key: ("inconclusive", ""), key_alpha) for name, (tok, ten) in pairs.items()}
    testable = {k: v for k, v in judged.items() if v.outcome != "not testable"}
    top = max(testable.values() if testable else judged.values(), key=lambda v: (v.effect, -v.p))
    finding, comparison = "F3 per-token no consistent benefit", f"per-token vs per-tensor: {top.comparison}"
    if not testable:
        return Verdict(finding, comparison, top.effect, top.ci_low, top.ci_high, top.level, top.p, top.mde,
                       "not testable", f"every pair untestable: {top.why}")
    k = len(testable)
    better, settled = [], []
    for name, v in testable.items():
        tok, ten = pairs[name]
        xa, xb = _align(tok, tok, name), _align(tok, ten, name)
        if v.p < key / k and v.effect > 0:
            better.append(name)
        elif _equivalence(tok, xa, xb, margin, key).equivalent or (v.p < key and v.effect < 0):
            settled.append(name)
    counts = f"{len(better)} of {k} pairs favour per-token (p < {key / k:.2g}), {len(settled)} equivalent or " \
             f"favour per-tensor"
    if better:
        outcome = "not reproduced"
    else:
        outcome = "reproduced" if len(settled) == k else "inconclusive"
    return Verdict(finding, comparison, top.effect, top.ci_low, top.ci_high, top.level, top.p, top.mde, outcome,
                   counts)


def _stratum(value: Any, level: str, key: Any) -> Any:
    """``value`` restricted to one stratum: Series indexed by ``level`` -> that stratum's rows (level dropped);
    mappings and tuples element-wise; anything else (a baseline without the level, a number) unchanged."""
    if isinstance(value, pd.Series) and level in (value.index.names or []):
        return value.xs(key, level=level)
    if isinstance(value, Mapping):
        return {k: _stratum(v, level, key) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_stratum(v, level, key) for v in value)
    return value


def _strata(values: Sequence[Any], level: str) -> list[Any]:
    """The values of index level ``level`` in the first Series among ``values`` that has it (searched into mappings
    and tuples); [] when none has it."""
    found = next((v for v in _series_in(values) if level in (v.index.names or [])), None)
    return [] if found is None else list(pd.unique(found.index.get_level_values(level)))


@rule
def with_strata(rule_fn: Callable[..., Verdict], level: str, *args: Any, **kwargs: Any) -> Verdict:
    """``rule_fn(*args, **kwargs)`` on all units, which decides (its tests cluster by episode), with each stratum's
    own outcome (each value of the index level ``level``, e.g. "planner_seed", of the Series arguments: the same
    rule on that stratum's units alone) added to ``why`` as the seed-to-seed spread: a labelled measurement that
    does not change the outcome."""
    pooled = rule_fn(*args, **kwargs)
    keys = _strata(list(args) + list(kwargs.values()), level)
    if not keys:
        raise InvalidValue(f"with_strata: no Series argument has the index level {level!r}")
    if len(keys) == 1:
        return pooled
    per = [rule_fn(*_stratum(args, level, k), **_stratum(kwargs, level, k)).outcome for k in keys]
    counts = ", ".join(f"{per.count(o)} {o}" for o in OUTCOMES if per.count(o))
    return dataclasses.replace(pooled, why=f"{pooled.why}; spread over {len(keys)} {level}s (each alone): {counts}")


def verdict_table(verdicts: Sequence[Verdict]) -> pd.DataFrame:
    """The one table a notebook ends with: finding, comparison, episodes (distinct episodes, "x k seeds" where
    planner seeds repeat them), effect (points with its interval at the level its claims were judged; F6 in rho), p
    (of a difference, clustered by episode), p equiv (of equivalence within the margin), p Holm (of the smaller of
    the two, adjusted within the table; "-" before ``holm_adjusted``), mde, verdict, why - one row per verdict, in
    order."""
    rows = []
    for v in verdicts:
        rho = v.finding.startswith("F6")
        scale, unit = (1, "") if rho else (100, " pts")
        fmt = "{:+.2f}" if rho else "{:+.0f}"
        effect = f"{fmt.format(v.effect * scale)} [{fmt.format(v.ci_low * scale)}, " \
                 f"{fmt.format(v.ci_high * scale)}]{unit} ({v.level * 100:.4g}%)"
        mde = f"{v.mde:.2f}" if rho else f"{v.mde * 100:.0f} pts"
        repeats = v.units // v.episodes if v.episodes and v.units % v.episodes == 0 else 0
        episodes = f"{v.episodes}" + (f" x {repeats} seeds" if repeats > 1 else
                                      f" ({v.units} units)" if v.units != v.episodes else "")
        rows.append({"finding": v.finding, "comparison": v.comparison, "episodes": episodes, "effect": effect,
                     "p": f"{v.p:.2g}", "p equiv": "-" if math.isnan(v.p_equivalence) else f"{v.p_equivalence:.2g}",
                     "p Holm": "-" if math.isnan(v.p_adjusted) else f"{v.p_adjusted:.2g}",
                     "mde": mde, "verdict": v.outcome, "why": v.why})
    return pd.DataFrame(rows, columns=["finding", "comparison", "episodes", "effect", "p", "p equiv", "p Holm", "mde",
                                       "verdict", "why"])
