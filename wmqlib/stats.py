"""Statistics of the study: intervals, success tables and curves, comparisons and rank correlations.

(Being rewritten: paired statistics and verdict rules land here.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd


def wilson_interval(successes: Any, n: Any, z: float = 1.96) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for a binomial proportion (Wilson 1927), elementwise over arrays.

    successes, n: counts (scalars or arrays, 0 <= successes <= n); z: normal quantile (1.96 -> 95%).
    Returns (low, high) float arrays in [0, 1]; NaN where n == 0.
    """
    k, m = np.asarray(successes, dtype=float), np.asarray(n, dtype=float)
    if np.any(m < 0) or np.any(k < 0) or np.any(k > m):
        raise ValueError(f"need 0 <= successes <= n, got successes={successes!r}, n={n!r}")
    if not (isinstance(z, (int, float)) and z > 0 and math.isfinite(z)):
        raise ValueError(f"z must be a positive finite number, got {z!r}")
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / m
        denom = 1 + z**2 / m
        centre = (p + z**2 / (2 * m)) / denom
        half = z * np.sqrt(p * (1 - p) / m + z**2 / (4 * m**2)) / denom
    return np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)


def success_rates(table: pd.DataFrame, by: str | Sequence[str], success: str = "success",
                  z: float = 1.96) -> pd.DataFrame:
    """Per group of ``by``: n episodes, successes, success_rate and its Wilson interval (ci_low, ci_high).

    table: one row per episode with a boolean column ``success``. Returns one row per group, groups sorted.
    """
    by = [by] if isinstance(by, str) else list(by)
    missing = [c for c in [*by, success] if c not in table.columns]
    if missing:
        raise ValueError(f"columns {missing} not in the table; available: {list(table.columns)}")
    grouped = table.groupby(by, dropna=False, sort=True)[success]
    out = grouped.agg(n="count", successes="sum").reset_index()
    out["successes"] = out["successes"].astype(int)
    out["success_rate"] = out["successes"] / out["n"]
    out["ci_low"], out["ci_high"] = wilson_interval(out["successes"].to_numpy(), out["n"].to_numpy(), z)
    return out


def pick(rates: pd.DataFrame, **match: Any) -> pd.Series:
    """The single row of ``rates`` whose columns equal ``match``; ValueError naming the match when there is not
    exactly one (so a verdict never silently reads the wrong setting)."""
    rows = rates
    for column, value in match.items():
        rows = rows[rows[column] == value]
    if len(rows) != 1:
        raise ValueError(f"expected one row with {match}, found {len(rows)}")
    return rows.iloc[0]


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


def compare(a: pd.Series | dict, b: pd.Series | dict) -> int:
    """+1 when a's Wilson interval lies entirely above b's, -1 entirely below, 0 when they overlap (undecided).

    a, b: rows with ``ci_low`` and ``ci_high`` (e.g. from ``success_rates``).
    """
    if a["ci_low"] > b["ci_high"]:
        return 1
    if a["ci_high"] < b["ci_low"]:
        return -1
    return 0


def similar(a: pd.Series | dict, b: pd.Series | dict, tolerance: float = 0.1) -> int:
    """Decision for a claim "a is close to b": +1 when the Wilson intervals overlap and the success rates differ by
    at most ``tolerance``, -1 when the intervals are disjoint, 0 otherwise (overlapping but further apart)."""
    if compare(a, b) != 0:
        return -1
    return 1 if abs(a["success_rate"] - b["success_rate"]) <= tolerance else 0


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


def at_opt_steps(trace: pd.DataFrame, k: int) -> pd.DataFrame:
    """Per-episode rows of a traced table as if planned with ``opt_steps = k`` (its iteration k - 1).

    Raises ValueError when the trace is shorter than ``k`` iterations or ``trace`` has no ``iteration`` column.
    """
    if "iteration" not in trace.columns:
        raise ValueError("at_opt_steps needs a traced table (Setting(trace=True)): it has no 'iteration' column")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"at_opt_steps: k must be an int >= 1, got {k!r}")
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
