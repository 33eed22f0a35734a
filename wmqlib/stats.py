"""Statistics of the study: success intervals and tables, paired comparisons, equivalence, power, rank correlation.

Every setting plans the SAME units (a unit = one (planner seed, episode) pair) with the same planner draws, so two
settings are compared on paired per-unit boolean outcomes ``a`` and ``b`` (shape ``(U,)``, aligned unit by unit).
The 2 x 2 table of a pair of settings has two discordant cells, which carry all the information about the
difference ``d = rate(a) - rate(b)``:

    n10 = #{a succeeds, b fails}      n01 = #{a fails, b succeeds}      d_hat = (n10 - n01) / U

- ``mcnemar``: the exact McNemar test. Under H0 (a and b exchangeable within each unit) every discordant unit
  goes either way with probability 1/2, so ``n10 ~ Bin(n10 + n01, 1/2)`` and the two-sided p-value is
  ``min(1, 2 * P(X <= min(n10, n01)))``.
- ``paired_interval``: Tango's (1998) score interval for ``d``, the set of ``d`` whose score statistic
  ``T(d) = (n10 - n01 - U d) / sqrt(U (2 q(d) + d (1 - d)))`` (``q(d)`` the maximum-likelihood P(a fails, b
  succeeds) under the constraint) lies within ``+-z``. Chosen because it inverts the same score statistic as
  McNemar's test (``T(0) = (n10 - n01) / sqrt(n10 + n01)``), so interval and test tell one story; it stays inside
  [-1, 1], is defined when no unit is discordant, and its coverage is close to nominal for small U and rates near
  0 or 1 (Tango 1998; Newcombe 1998), where Wald intervals fail - PushT sits there.
- ``equivalence``: two one-sided tests (TOST) of ``|d| < margin`` at level alpha, i.e. "equivalent" when the
  ``1 - 2 alpha`` (90% for alpha 0.05) Tango interval lies inside ``(-margin, margin)``; p = the larger one-sided p.
- ``min_detectable_effect``: the smallest ``|d|`` that the exact McNemar test detects with the stated power, from
  its exact power (``mcnemar_power``) under a stated discordance.
- ``spearman`` / ``rank_correlation`` (Fisher z interval).
- Clusters (one episode planned under several planner seeds): ``mcnemar`` on all units pools the discordant pairs
  of all strata into one exact test, valid only when units are independent; it counts the same episode under two
  planner seeds as two units, which is optimistic when the episode rather than the draws decides. The study's
  inference therefore clusters by episode: ``clustered_mcnemar`` is the exact sign-flip test that counts an
  episode once however many planner seeds planned it; ``design_effect`` is the ratio of the cluster-robust to the
  independent-units variance of d_hat (at least 1), and ``paired_interval`` / ``equivalence`` / the MDE given
  ``clusters`` use the effective counts n10 / deff, n01 / deff, U / deff (Rao and Scott's 1992 correction for
  clustered binary data), so the interval widens by about sqrt(deff). ``per_stratum`` gives each stratum's rates
  and test: the seed-to-seed spread, shown as a separate measurement.

No scipy: the binomial tail is summed exactly with integers, the normal distribution comes from the standard
library (``statistics.NormalDist``), root finding is bisection.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from wmqlib.validate import InvalidValue, check_float, check_int

_NORMAL = NormalDist()


# ----- single proportions -------------------------------------------------------------------------------------------

def wilson_interval(successes: Any, n: Any, z: float = 1.96) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for a binomial proportion (Wilson 1927), elementwise over arrays.

    successes, n: counts (scalars or arrays, 0 <= successes <= n); z: normal quantile (1.96 -> 95%).
    Returns (low, high) float arrays in [0, 1]; NaN where n == 0.
    """
    k, m = np.asarray(successes, dtype=float), np.asarray(n, dtype=float)
    if np.any(m < 0) or np.any(k < 0) or np.any(k > m):
        raise InvalidValue(f"wilson_interval needs 0 <= successes <= n, got successes={successes!r}, n={n!r}")
    z = check_float("wilson_interval: z", z, minimum=0, strict=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / m
        denom = 1 + z**2 / m
        centre = (p + z**2 / (2 * m)) / denom
        half = z * np.sqrt(p * (1 - p) / m + z**2 / (4 * m**2)) / denom
    return np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)


def _by(table: pd.DataFrame, by: str | Sequence[str], *columns: str) -> list[str]:
    by = [by] if isinstance(by, str) else list(by)
    missing = [c for c in [*by, *columns] if c not in table.columns]
    if missing:
        raise InvalidValue(f"columns {missing} are not in the table; available: {list(table.columns)}")
    return by


def success_summary(successes: int, n: int) -> dict[str, Any]:
    """A success count as the model cards, the diagnostics and the explorer report it: {"successes", "episodes",
    "success_rate", "ci95": the Wilson 95% interval [low, high], rounded to 4 decimals}."""
    low, high = wilson_interval(successes, n)
    return {"successes": int(successes), "episodes": int(n), "success_rate": successes / n,
            "ci95": [round(float(low), 4), round(float(high), 4)]}


def success_rates(table: pd.DataFrame, by: str | Sequence[str], success: str = "success",
                  z: float = 1.96) -> pd.DataFrame:
    """Per group of ``by``: n units, successes, success_rate and its Wilson interval (ci_low, ci_high).

    table: one row per unit with a boolean column ``success``. Returns one row per group, groups sorted.
    """
    by = _by(table, by, success)
    out = table.groupby(by, dropna=False, sort=True)[success].agg(n="count", successes="sum").reset_index()
    out["successes"] = out["successes"].astype(int)
    out["success_rate"] = out["successes"] / out["n"]
    out["ci_low"], out["ci_high"] = wilson_interval(out["successes"].to_numpy(), out["n"].to_numpy(), z)
    return out


def success_table(table: pd.DataFrame, by: str | Sequence[str]) -> pd.DataFrame:
    """``success_rates`` per group with a readable ``success`` column, "46/50 92% [81, 97]" (Wilson 95%), and the
    mean final ``state_dist`` per group (``mean_state_dist``) when the table has one."""
    out = success_rates(table, by)
    if "state_dist" in table.columns:
        dist = table.groupby(_by(table, by), dropna=False, sort=True)["state_dist"].mean()
        out["mean_state_dist"] = dist.to_numpy()
    out["success"] = [f"{k}/{n} {r:.0%} [{lo * 100:.0f}, {hi * 100:.0f}]" for k, n, r, lo, hi in
                      out[["successes", "n", "success_rate", "ci_low", "ci_high"]].itertuples(index=False)]
    return out


def seed_spread(runs: pd.DataFrame, by: str | Sequence[str], seed: str = "planner_seed",
                episode: str = "episode") -> pd.DataFrame:
    """Success rate per planner seed of every group of ``by`` run with several seeds, on the episodes all its seeds
    ran (a key setting's first seed runs more episodes than the others; the spread compares like with like).

    runs: one row per (setting, seed, episode) with boolean ``success``. Returns one row per group (index ``by``),
    one column per seed, ``range (pts)`` (largest minus smallest rate, in points) and ``episodes`` (the shared ones).
    """
    keys = _by(runs, by, seed, episode)
    seeds = runs.groupby(keys, sort=False)[seed].transform("nunique")
    runs = runs[seeds > 1]
    shared = runs.groupby([*keys, episode], sort=False)[seed].transform("nunique") == seeds[seeds > 1]
    runs = runs[shared]
    rates = success_rates(runs, [*keys, seed])
    out = rates.pivot_table(index=keys, columns=seed, values="success_rate", aggfunc="first")
    out["range (pts)"] = (out.max(axis=1) - out.min(axis=1)) * 100
    out["episodes"] = runs.groupby(keys)[episode].nunique()
    return out


def success_curve(trace: pd.DataFrame, by: str | Sequence[str], step: str = "iteration",
                  loss: str | None = "plan_loss") -> pd.DataFrame:
    """Success rate with its Wilson 95% interval per group and step (a CEM iteration or an MPC round).

    trace: one row per (unit, step) with boolean ``success``. step: the step column; "iteration" (0-based CEM
    iterations) is reported as ``opt_steps = iteration + 1`` (the budget the row reflects), any other column
    (e.g. "round") as it is. loss: a column whose median and quartiles over the units per group and step are added
    (``loss``, ``<loss>_q25``, ``<loss>_q75``; skipped when None or absent).
    Returns columns ``by``, the step (or opt_steps), n, successes, success_rate, ci_low, ci_high[, the loss's three].
    """
    by = _by(trace, by, step)
    out = success_rates(trace, [*by, step])
    if loss is not None and loss in trace.columns:
        groups = trace.groupby([*by, step], dropna=False, sort=True)[loss]
        out[loss] = groups.median().to_numpy()
        out[f"{loss}_q25"], out[f"{loss}_q75"] = groups.quantile(0.25).to_numpy(), groups.quantile(0.75).to_numpy()
    if step == "iteration":
        out = out.assign(opt_steps=out["iteration"] + 1).drop(columns="iteration")
    return out


def pick(rates: pd.DataFrame, **match: Any) -> pd.Series:
    """The single row of ``rates`` whose columns equal ``match``; InvalidValue naming the match when there is not
    exactly one (so a verdict never silently reads the wrong setting)."""
    rows = rates
    for column, value in match.items():
        if column not in rows.columns:
            raise InvalidValue(f"pick: column {column!r} is not in the table; available: {list(rates.columns)}")
        rows = rows[rows[column] == value]
    if len(rows) != 1:
        raise InvalidValue(f"pick: expected one row with {match}, found {len(rows)}")
    return rows.iloc[0]


# ----- paired outcomes ----------------------------------------------------------------------------------------------

def _outcomes(field: str, values: Any) -> np.ndarray:
    """(U,) bool array from booleans / 0-1 values; InvalidValue naming ``field`` otherwise."""
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.size == 0:
        raise InvalidValue(f"{field} must be a non-empty 1-D sequence of per-unit outcomes, got shape {arr.shape}")
    if arr.dtype != bool:
        if not np.issubdtype(arr.dtype, np.number) or not np.isin(arr, (0, 1)).all():
            raise InvalidValue(f"{field} must hold booleans (or 0 / 1), got values {np.unique(arr)[:5].tolist()}")
        arr = arr.astype(bool)
    return arr


def _pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    a, b = _outcomes("a", a), _outcomes("b", b)
    if a.shape != b.shape:
        raise InvalidValue(f"a and b must hold the same units (paired), got {a.size} and {b.size} outcomes")
    return a, b


def binomial_cdf(k: int, n: int) -> float:
    """P(X <= k) for X ~ Bin(n, 1/2), summed exactly in integers (no rounding until the final division)."""
    n = check_int("binomial_cdf: n", n, minimum=0)
    k = check_int("binomial_cdf: k", k)
    if k < 0:
        return 0.0
    return sum(math.comb(n, i) for i in range(min(k, n) + 1)) / 2**n


@dataclass(frozen=True)
class McNemar:
    """Exact McNemar test of paired outcomes: ``units`` compared, ``a_only`` = #(a succeeds, b fails),
    ``b_only`` = #(a fails, b succeeds), ``effect`` = rate(a) - rate(b), two-sided exact ``p``."""
    units: int
    a_only: int
    b_only: int
    effect: float
    p: float

    @property
    def discordance(self) -> float:
        """Fraction of units on which a and b disagree."""
        return (self.a_only + self.b_only) / self.units


def mcnemar(a: Any, b: Any) -> McNemar:
    """Exact two-sided McNemar test of ``a`` vs ``b`` (bool ``(U,)``, aligned units); see the module docstring.

    Stratified use (units of several planner seeds): call it on all units. It pools the discordant pairs of all
    strata, which is exact for independent units (under H0 each discordant unit is a fair coin whatever its
    stratum); ``per_stratum`` shows each stratum, ``clustered_mcnemar`` counts an episode once across strata.
    """
    a, b = _pair(a, b)
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    p = min(1.0, 2 * binomial_cdf(min(a_only, b_only), a_only + b_only))
    return McNemar(a.size, a_only, b_only, (a_only - b_only) / a.size, p)


def clustered_mcnemar(a: Any, b: Any, clusters: Any) -> McNemar:
    """Exact paired test for units that come in clusters, e.g. one episode planned under several planner seeds,
    whose outcomes are driven by the episode as much as by the draws (the pooled ``mcnemar`` then counts one
    episode several times and its p is too small).

    Per cluster c, s_c = sum over its units of (a - b). Under H0 (a and b exchangeable within each cluster,
    jointly over its units) each s_c is +|s_c| or -|s_c| with probability 1/2, independently across clusters, so
    p = P(|sum_c e_c |s_c|| >= |sum_c s_c|), computed exactly by convolving the clusters' two-point laws. With one
    unit per cluster this is ``mcnemar``'s p. a, b, clusters: ``(U,)``; returns ``McNemar`` with this p.
    """
    a, b = _pair(a, b)
    labels = np.asarray(clusters)
    if labels.shape != a.shape:
        raise InvalidValue(f"clusters must label every unit: got {labels.size} labels for {a.size} units")
    per_cluster = np.zeros(labels.size, dtype=int)
    np.add.at(per_cluster, np.unique(labels, return_inverse=True)[1].ravel(), a.astype(int) - b.astype(int))
    test = mcnemar(a, b)
    return McNemar(test.units, test.a_only, test.b_only, test.effect, signflip_p(per_cluster))


def signflip_p(sums: Any) -> float:
    """Exact two-sided sign-flip (randomisation) p of integer per-cluster sums ``(C,)``: under H0 each s_c is
    +|s_c| or -|s_c| with probability 1/2, independently, and p = P(|sum_c e_c |s_c|| >= |sum_c s_c|), computed by
    convolving the clusters' two-point laws (exact; memory grows with sum |s_c|)."""
    sums = np.asarray(sums)
    if sums.ndim != 1 or not np.issubdtype(sums.dtype, np.integer):
        raise InvalidValue(f"signflip_p: sums must be 1-D integers, got {sums.dtype} of shape {sums.shape}")
    sizes = np.abs(sums[sums != 0])
    total, observed = int(sizes.sum()), abs(int(sums.sum()))
    law = np.zeros(2 * total + 1)  # law[total + v] = P(sum = v); partial sums never leave [-total, total]
    law[total] = 1.0
    for size in sizes:
        law = 0.5 * (np.roll(law, size) + np.roll(law, -size))
    return 1.0 if observed == 0 else min(1.0, float(law[np.abs(np.arange(-total, total + 1)) >= observed].sum()))


def _tango_score(a_only: float, b_only: float, units: float, d: float) -> float:
    """Tango's score statistic T(d) for H0: rate(a) - rate(b) = d (decreasing in d; +-inf at the boundary)."""
    big_b = -a_only - b_only + (2 * units - a_only + b_only) * d
    c = -b_only * d * (1 - d)
    q = (math.sqrt(max(big_b**2 - 8 * units * c, 0.0)) - big_b) / (4 * units)  # restricted MLE of P(a fails, b ok)
    var = units * (2 * q + d * (1 - d))
    num = a_only - b_only - units * d
    if var <= 1e-300:
        return 0.0 if num == 0 else math.copysign(math.inf, num)
    return num / math.sqrt(var)


def _score_root(a_only: float, b_only: float, units: float, target: float, low: float, high: float) -> float:
    """The d in [low, high] where T(d) = target (T decreasing), by bisection to 1e-12."""
    for _ in range(60):
        mid = (low + high) / 2
        if _tango_score(a_only, b_only, units, mid) > target:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def design_effect(a: Any, b: Any, clusters: Any = None) -> float:
    """Variance inflation of d_hat = mean(a - b) from clustered units (bool ``a``, ``b`` and labels ``clusters``,
    all ``(U,)``): the cluster-robust variance C / (C - 1) * sum_c (s_c - m_c d_hat)^2 / U^2 (s_c, m_c: cluster c's
    sum of a - b and its size) over the independent-units variance sum_u (d_u - d_hat)^2 / (U (U - 1)), floored
    at 1 (clustering is never read as more evidence than independent units). 1 when ``clusters`` is None, every
    unit is its own cluster, there is a single cluster or no unit is discordant."""
    a, b = _pair(a, b)
    if clusters is None:
        return 1.0
    labels = np.asarray(clusters)
    if labels.shape != a.shape:
        raise InvalidValue(f"clusters must label every unit: got {labels.size} labels for {a.size} units")
    diff = a.astype(float) - b.astype(float)
    _, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    units, count = diff.size, sizes.size
    if count in (1, units) or not diff.any():
        return 1.0
    sums = np.zeros(count)
    np.add.at(sums, inverse.ravel(), diff)
    mean = diff.mean()
    robust = count / (count - 1) * np.sum((sums - sizes * mean) ** 2) / units**2
    independent = np.sum((diff - mean) ** 2) / (units * (units - 1))
    return max(1.0, float(robust / independent)) if independent > 0 else 1.0


def _effective(a: Any, b: Any, clusters: Any) -> tuple[float, float, float, float]:
    """(n10, n01, U) divided by ``design_effect`` (the Rao-Scott effective counts), and the effect."""
    test, deff = mcnemar(a, b), design_effect(a, b, clusters)
    return test.a_only / deff, test.b_only / deff, test.units / deff, test.effect


def paired_interval(a: Any, b: Any, level: float = 0.95, clusters: Any = None) -> tuple[float, float]:
    """Tango's score interval at ``level`` for rate(a) - rate(b) on paired outcomes (bool ``(U,)``); see the
    module docstring for why this method; with ``clusters`` ``(U,)`` (the episode of each unit) on the effective
    counts of ``design_effect``. Returns (low, high) in [-1, 1]."""
    level = check_float("paired_interval: level", level, minimum=0, maximum=1, strict=True)
    if level >= 1:
        raise InvalidValue(f"paired_interval: level must be in (0, 1), got {level}")
    z = _NORMAL.inv_cdf((1 + level) / 2)
    a_only, b_only, units, effect = _effective(a, b, clusters)
    args = (a_only, b_only, units)
    return (_score_root(*args, z, -1.0, effect), _score_root(*args, -z, effect, 1.0))


@dataclass(frozen=True)
class Equivalence:
    """TOST of ``|rate(a) - rate(b)| < margin``: ``effect``, the ``1 - 2 alpha`` interval (ci_low, ci_high), the
    TOST ``p`` (the larger one-sided p) and ``equivalent`` (p < alpha, i.e. the interval inside the margin)."""
    effect: float
    ci_low: float
    ci_high: float
    p: float
    margin: float
    alpha: float
    equivalent: bool


def equivalence(a: Any, b: Any, margin: float = 0.10, alpha: float = 0.05, clusters: Any = None) -> Equivalence:
    """Two one-sided score tests (Tango's statistic) that rate(a) - rate(b) lies inside (-margin, margin).

    a, b: bool ``(U,)`` paired outcomes; margin: the largest difference called "close" (0.10 = 10 points);
    alpha: level of each one-sided test, so the interval shown is the ``1 - 2 alpha`` (90%) one; clusters
    ``(U,)``: the episode of each unit (effective counts of ``design_effect``), None for independent units.
    """
    margin = check_float("equivalence: margin", margin, minimum=0, maximum=1, strict=True)
    alpha = check_float("equivalence: alpha", alpha, minimum=0, maximum=0.5, strict=True)
    a_only, b_only, units, effect = _effective(a, b, clusters)
    args = (a_only, b_only, units)
    p_low = 1 - _NORMAL.cdf(min(_tango_score(*args, -margin), 40.0))  # H0: d <= -margin
    p_high = _NORMAL.cdf(max(_tango_score(*args, margin), -40.0))     # H0: d >= margin
    low, high = paired_interval(a, b, level=1 - 2 * alpha, clusters=clusters)
    p = max(p_low, p_high)
    return Equivalence(effect, low, high, p, margin, alpha, bool(p < alpha))


def _binomial_pmfs(units: int, p: float) -> np.ndarray:
    """(U + 1, U + 1) matrix: row m holds the pmf of Bin(m, p) at k = 0..U (zero for k > m)."""
    log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, units + 1)))])
    m, k = np.arange(units + 1)[:, None], np.arange(units + 1)[None, :]
    rest = np.clip(m - k, 0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_p = np.where(k == 0, 0.0, k * np.log(p)) + np.where(rest == 0, 0.0, rest * np.log1p(-p))
        out = np.exp(log_fact[m] - log_fact[k] - log_fact[rest] + log_p)
    return np.where(k <= m, out, 0.0)


def _rejections(units: int, alpha: float) -> np.ndarray:
    """(U + 1, U + 1) bool: with m discordant units, does ``a_only = k`` give exact McNemar p < alpha."""
    cdf = np.cumsum(_binomial_pmfs(units, 0.5), axis=1)
    m, k = np.arange(units + 1)[:, None], np.arange(units + 1)[None, :]
    tail = np.take_along_axis(cdf, np.clip(np.minimum(k, m - k), 0, None), axis=1)
    return (k <= m) & (2 * tail < alpha)


def mcnemar_power(units: int, effect: float, discordance: float | None = None, alpha: float = 0.05) -> float:
    """Exact power of the two-sided exact McNemar test at ``alpha`` on ``units`` paired units when
    rate(a) - rate(b) = ``effect`` (its sign does not matter) and a fraction psi = max(discordance, |effect|) of the
    units is discordant (psi cannot be below |effect|; discordance None means psi = |effect|, every discordant unit
    one way). The number of discordant units is D ~ Bin(U, psi), and given D, a_only ~ Bin(D, (psi + d) / (2 psi)):

        power = sum_D P(D) P(exact p < alpha | D)
    """
    units = check_int("mcnemar_power: units", units, minimum=1)
    d = abs(check_float("mcnemar_power: effect", effect, minimum=-1, maximum=1))
    alpha = check_float("mcnemar_power: alpha", alpha, minimum=0, maximum=1, strict=True)
    psi0 = 0.0 if discordance is None else check_float("mcnemar_power: discordance", discordance, 0, 1)
    return _power(units, d, psi0, _rejections(units, alpha))


def _power(units: int, d: float, psi0: float, reject: np.ndarray) -> float:
    psi = max(psi0, d)
    if psi == 0:
        return 0.0
    p_discordant = _binomial_pmfs(units, psi)[units]  # (U + 1,) P(D = m)
    given = (_binomial_pmfs(units, (psi + d) / (2 * psi)) * reject).sum(axis=1)
    return float(np.sum(p_discordant * given))


def min_detectable_effect(units: int, discordance: float | None = None, alpha: float = 0.05,
                          power: float = 0.8) -> float:
    """Smallest difference |rate(a) - rate(b)| that the two-sided exact McNemar test at ``alpha`` detects with
    probability ``power`` on ``units`` paired units, by exact power (``mcnemar_power``; bisection to 1e-6).

    discordance: the fraction of discordant units assumed under the alternative (psi = max(discordance, d)): the
    observed discordance of a pair, or a planning value; None means psi = d, the most favourable case. Larger
    discordance means a larger MDE. Returns NaN when even d = 1 is not detectable (U < 6 at alpha 0.05).
    """
    units = check_int("min_detectable_effect: units", units, minimum=1)
    alpha = check_float("min_detectable_effect: alpha", alpha, minimum=0, maximum=1, strict=True)
    power = check_float("min_detectable_effect: power", power, minimum=0, maximum=1, strict=True)
    psi0 = 0.0 if discordance is None else check_float("min_detectable_effect: discordance", discordance, 0, 1)
    reject = _rejections(units, alpha)
    if _power(units, 1.0, psi0, reject) < power:
        return math.nan
    low, high = 0.0, 1.0  # power increases with d (a larger share of the discordant units goes one way)
    while high - low > 1e-6:
        mid = (low + high) / 2
        low, high = (low, mid) if _power(units, mid, psi0, reject) >= power else (mid, high)
    return high


def per_stratum(a: Any, b: Any, strata: Any) -> pd.DataFrame:
    """One row per stratum (e.g. planner seed): stratum, units, rate_a, rate_b, effect (rate_a - rate_b),
    a_only, b_only, p (exact McNemar within the stratum), then a row "all" with the pooled test. Shows how much
    the comparison moves from seed to seed."""
    a, b = _pair(a, b)
    labels = np.asarray(strata)
    if labels.shape != a.shape:
        raise InvalidValue(f"strata must label every unit: got {labels.size} labels for {a.size} units")
    rows = []
    for name, mask in [*((s, labels == s) for s in pd.unique(labels)), ("all", np.ones_like(a))]:
        t = mcnemar(a[mask], b[mask])
        rows.append({"stratum": name, "units": t.units, "rate_a": a[mask].mean(), "rate_b": b[mask].mean(),
                     "effect": t.effect, "a_only": t.a_only, "b_only": t.b_only, "p": t.p})
    return pd.DataFrame(rows)


# ----- rank correlation ---------------------------------------------------------------------------------------------

def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (1-based; ties share their mean rank) along the last axis of a 1-D or 2-D array."""
    flat = np.atleast_2d(x)
    out = np.empty(flat.shape, dtype=float)
    for i, row in enumerate(flat):
        s = np.sort(row)
        out[i] = (np.searchsorted(s, row, "left") + np.searchsorted(s, row, "right") + 1) / 2
    return out.reshape(x.shape)


def _pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation along the last axis (NaN where either side is constant)."""
    xc, yc = x - x.mean(-1, keepdims=True), y - y.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (xc * yc).sum(-1) / np.sqrt((xc**2).sum(-1) * (yc**2).sum(-1))


def _finite_pair(x: Any, y: Any, field: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.ndim != 1 or x.shape != y.shape:
        raise InvalidValue(f"{field}: x and y must be 1-D of one length, got shapes {x.shape} and {y.shape}")
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


@dataclass(frozen=True)
class Correlation:
    """Spearman's rho on ``n`` finite pairs with its Fisher-z interval (NaN for n <= 3 or |rho| = 1)."""
    n: int
    rho: float
    ci_low: float
    ci_high: float


def spearman(x: Any, y: Any, z: float = 1.96) -> Correlation:
    """Spearman rank correlation of ``x`` and ``y`` (``(N,)``; non-finite pairs dropped) with an approximate
    interval from Fisher's z with the Fieller-Hartley-Pearson variance 1.06 / (n - 3)."""
    x, y = _finite_pair(x, y, "spearman")
    n = x.size
    rho = float(_pearson(_ranks(x), _ranks(y))) if n >= 2 else math.nan
    if n <= 3 or not abs(rho) < 1:
        return Correlation(n, rho, math.nan, math.nan)
    half, centre = z * math.sqrt(1.06 / (n - 3)), math.atanh(rho)
    return Correlation(n, rho, math.tanh(centre - half), math.tanh(centre + half))


def rank_correlation(table: pd.DataFrame, x: str, y: str, by: str | Sequence[str], z: float = 1.96) -> pd.DataFrame:
    """``spearman`` of columns ``x`` and ``y`` per group of ``by``: columns ``by``, n, rho, ci_low, ci_high."""
    by = _by(table, by, x, y)
    rows = [{**dict(zip(by, key if isinstance(key, tuple) else (key,))),
             **vars(spearman(g[x].to_numpy(), g[y].to_numpy(), z))} for key, g in table.groupby(by, sort=True)]
    return pd.DataFrame(rows, columns=[*by, "n", "rho", "ci_low", "ci_high"])


