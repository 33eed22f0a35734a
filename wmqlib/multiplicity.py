"""Multiplicity control within one table of verdicts: Holm's (1979) step-down adjustment of the family-wise error.

With m tests and p-values sorted ascending p_(1) <= ... <= p_(m), Holm rejects p_(k) while p_(k) <= alpha / (m - k
+ 1) for every earlier k, and stops at the first failure. The equivalent adjusted p-values, compared directly with
alpha, are

    p~_(k) = max_{j <= k} min(1, (m - j + 1) p_(j)),

so a verdict decides on its adjusted p and a table shows both. Holm controls the family-wise error under any
dependence between the tests (the verdicts of one notebook share their FP arm), which Benjamini-Hochberg's false
discovery rate does not without further assumptions; it is uniformly more powerful than Bonferroni.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from wmqlib.validate import InvalidValue


def holm(p: Any) -> np.ndarray:
    """Holm-adjusted p-values of ``p`` (M,), in the input order. NaN entries (tests not run, e.g. a "not testable"
    verdict) stay NaN and do not count in m. Raises InvalidValue for a p outside [0, 1]."""
    p = np.asarray(p, dtype=float)
    if p.ndim != 1:
        raise InvalidValue(f"holm: p must be 1-D, got shape {p.shape}")
    finite = ~np.isnan(p)
    if np.any((p[finite] < 0) | (p[finite] > 1)):
        raise InvalidValue(f"holm: every p must lie in [0, 1], got {p[finite][(p[finite] < 0) | (p[finite] > 1)]}")
    out = np.full(p.shape, np.nan)
    index = np.flatnonzero(finite)
    order = index[np.argsort(p[index], kind="stable")]
    m = order.size
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out
