"""Does a quantized model's deficit to FP change with more planning? The paired difference of differences behind
"more iterations repair predictor errors, not encoder errors" (the paper's MPC-rounds finding).

Per episode e and stage r (an MPC round, or a CEM iteration), the deficit is d_r(e) = s_FP,r(e) - s_Q,r(e) in
{-1, 0, 1}, success latched up to r. The change from the first to the last stage,

    c(e) = d_last(e) - d_first(e)  in {-2, ..., 2},

is negative where more planning closed the gap to FP for that episode. Latched success makes each arm's own gain
one-sided (it never loses an episode), but the deficit's change can go either way: FP can gain an episode the
quantized model does not. Where units repeat (one episode under several planner seeds), the episode is the
cluster: the test sums c over a cluster's units, and the interval averages them per cluster.

- ``p``: exact two-sided sign-flip test of "no change" over clusters (``stats.signflip_p``);
- ``ci_low``, ``ci_high``: the ``level`` interval of the mean change, mean over clusters of the per-cluster mean
  change +- z * its standard error across clusters (normal approximation; C >= 20 clusters is the intended use);
- the rules ("repaired", "irreversible", "inconclusive") that read these live in ``wmqlib.verdicts``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from wmqlib.stats import signflip_p
from wmqlib.validate import InvalidValue, check_float


@dataclass(frozen=True)
class DeficitChange:
    """The change of a quantized model's per-episode deficit to FP from the first to the last stage.

    clusters: distinct episodes; units: (episode, planner seed) pairs; deficit_first / deficit_last: mean deficit
    (FP rate - Q rate) at each stage; effect: mean change (negative = the deficit shrank), ci_low / ci_high its
    ``level`` interval; p: the exact sign-flip p of no change."""
    clusters: int
    units: int
    deficit_first: float
    deficit_last: float
    effect: float
    ci_low: float
    ci_high: float
    level: float
    p: float


def _as_bool(name: str, x: Any, shape: tuple[int, ...] | None) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1 or (shape is not None and arr.shape != shape):
        raise InvalidValue(f"deficit_change: {name} must be 1-D with one entry per unit"
                           + (f" ({shape[0]})" if shape else "") + f", got shape {arr.shape}")
    if arr.dtype != bool and not np.isin(arr, (0, 1)).all():
        raise InvalidValue(f"deficit_change: {name} must hold successes (bool or 0 / 1)")
    return arr.astype(bool)


def deficit_change(fp_first: Any, q_first: Any, fp_last: Any, q_last: Any, clusters: Any = None,
                   level: float = 0.95) -> DeficitChange:
    """``DeficitChange`` of per-unit successes (U,) of FP and the quantized model at the first and the last stage,
    all aligned unit by unit; ``clusters`` (U,) labels each unit's episode (None: every unit its own episode)."""
    level = check_float("deficit_change: level", level, minimum=0, maximum=1, strict=True)
    fp1 = _as_bool("fp_first", fp_first, None)
    q1, fp2, q2 = (_as_bool(n, v, fp1.shape) for n, v in (("q_first", q_first), ("fp_last", fp_last),
                                                           ("q_last", q_last)))
    labels = np.arange(fp1.size) if clusters is None else np.asarray(clusters)
    if labels.shape != fp1.shape:
        raise InvalidValue(f"deficit_change: clusters must label every unit: got {labels.size} labels for "
                           f"{fp1.size} units")
    first, last = fp1.astype(int) - q1.astype(int), fp2.astype(int) - q2.astype(int)
    change = last - first
    _, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    sums = np.zeros(sizes.size, dtype=int)
    np.add.at(sums, inverse.ravel(), change)
    means = sums / sizes
    c = means.size
    effect = float(means.mean())
    se = float(means.std(ddof=1) / math.sqrt(c)) if c > 1 else math.nan
    z = NormalDist().inv_cdf((1 + level) / 2)
    return DeficitChange(c, fp1.size, float(first.mean()), float(last.mean()), effect, effect - z * se,
                         effect + z * se, level, signflip_p(sums))
