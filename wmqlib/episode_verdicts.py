"""The paper's planning-dynamics findings judged episode by episode: F4 as an interaction, F6 within episodes.

Same outcomes and ``Verdict`` as ``wmqlib.verdicts``; units are episodes, and where an episode is planned under
several planner seeds its units form a cluster that counts once.

- ``iterations_repair`` (F4, "more planning repairs predictor errors, not encoder errors"): the change of the
  quantized model's per-episode deficit to FP from the first to the last planning stage
  (``wmqlib.interaction.deficit_change``). The data say **repaired** when the deficit shrinks decisively (exact
  clustered sign-flip p < alpha, change < 0); **irreversible** when it provably shrinks by less than ``margin``
  (the lower end of the ``1 - 2 alpha`` interval above -margin) and not decisively; else nothing. The rule is
  given the paper's claim for the scope ("repaired" for the predictor, "irreversible" for the encoder): the
  claim's outcome is *reproduced*, the other one *not reproduced*, neither *inconclusive*. *Not testable* when FP
  is not decisively above the best baseline at the last stage, or the quantized model has no deficit to repair
  at the first stage (FP rate - Q rate <= ``floor``).
- ``loss_misaligned`` (F6, "at low bits the planning loss no longer ranks plans by their outcome"): per episode,
  Spearman's rho between the model's loss and the true outcome of the same candidate plans
  (``wmqlib.alignment``), quantized vs FP, paired by episode. *Not reproduced* when the mean difference is
  provably within +-``rho_margin`` (TOST: its ``1 - 2 alpha`` normal interval inside the margin; checked first, as
  a change inside the margin is negligible even when decisive); *reproduced* when the quantized rho is decisively
  lower (sign-flip test of the mean per-episode difference, Monte Carlo with a fixed seed, p < alpha);
  *inconclusive* otherwise; *not testable* when FP is not decisively above the best
  baseline or FP's own mean rho is not decisively above 0 (the loss ranks nothing even at full precision).
- ``loss_stalls`` (F6, "at low bits the planning loss fails to decrease over the iterations"): per episode, the
  relative drop of the planning loss from CEM's first to its last iteration (``study.loss_drop``: 1 - last /
  first, under the model that plans), quantized vs FP, paired by episode; the same decision as ``loss_misaligned``
  with ``drop_margin`` (not testable also when FP's own loss does not decisively drop).

The MDE of both rules is the normal approximation (z_(1-alpha/2) + z_0.8) x the standard error of the mean change.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from statistics import NormalDist

import numpy as np
import pandas as pd

from wmqlib.interaction import deficit_change
from wmqlib.validate import InvalidValue, check_choice
from wmqlib.verdicts import ALPHA, FLOOR, MARGIN, POWER, Verdict, _align, _levels, _untestable, episodes_of, rule

CLAIMS = ("repaired", "irreversible")
RHO_MARGIN = 0.10  # a change of the mean per-episode rho smaller than this is negligible
DROP_MARGIN = 0.10  # ... and of the mean relative drop of the planning loss over CEM's iterations
N_PERMUTATIONS = 20_000


def _mde(se: float, alpha: float) -> float:
    """Smallest mean change a two-sided level-alpha test detects with power ``POWER``, normal approximation."""
    normal = NormalDist()
    return (normal.inv_cdf(1 - alpha / 2) + normal.inv_cdf(POWER)) * se


@rule
def iterations_repair(fp_first: pd.Series, q_first: pd.Series, fp_last: pd.Series, q_last: pd.Series,
                      baselines: pd.Series | Mapping[str, pd.Series], claim: str, comparison: str,
                      alpha: float = ALPHA, margin: float = MARGIN, floor: float = FLOOR,
                      key_alpha: float | None = None) -> Verdict:
    """F4 for one scope (module docstring). All series are per-unit successes aligned on ``fp_first``'s index;
    units of one episode (its "episode_seed" index level, ``verdicts.episodes_of``) form a cluster; ``claim``: what the paper says
    of this scope, "repaired" or "irreversible"; the claims are judged at ``key_alpha`` (``verdicts._levels``)."""
    check_choice("iterations_repair: claim", claim, CLAIMS)
    alpha, key = _levels("F4", alpha, key_alpha)
    a = [_align(fp_first, s, name) for name, s in
         (("fp_first", fp_first), ("q_first", q_first), ("fp_last", fp_last), ("q_last", q_last))]
    labels = episodes_of(fp_first)
    change = deficit_change(*a, clusters=labels, level=1 - 2 * key)
    decisive = deficit_change(*a, clusters=labels, level=1 - key)
    se = (decisive.ci_high - decisive.effect) / NormalDist().inv_cdf(1 - key / 2)
    numbers = (f"deficit {change.deficit_first * 100:+.0f} -> {change.deficit_last * 100:+.0f} points, change "
               f"{change.effect * 100:+.0f} [{change.ci_low * 100:+.0f}, {change.ci_high * 100:+.0f}] "
               f"({(1 - 2 * key) * 100:.4g}%), p {change.p:.2g}, {change.clusters} episodes")
    why = _untestable(fp_last, baselines, [], alpha, floor)
    if why is None and change.deficit_first <= floor:
        why = f"no deficit to repair at the first stage: {numbers}"
    if why is not None:
        outcome = "not testable"
    else:
        repaired = change.p < key and change.effect < 0
        irreversible = not (change.p < alpha and change.effect < 0) and change.ci_low > -margin
        found = "repaired" if repaired else "irreversible" if irreversible else None
        outcome = "inconclusive" if found is None else "reproduced" if found == claim else "not reproduced"
        why = f"{found or 'neither repaired nor provably irreversible'}: {numbers}"
    # the irreversibility claim's p: one-sided normal test that the change is at most -margin
    p_small = 1 - NormalDist().cdf((change.effect + margin) / se) if se > 0 else float(change.effect <= -margin)
    return Verdict(f"F4 iterations {claim}", comparison, change.effect, decisive.ci_low, decisive.ci_high,
                   1 - key, change.p, _mde(se, key) if math.isfinite(se) else math.nan, outcome, why,
                   p_equivalence=p_small if math.isfinite(se) else math.nan)


def _signflip_mc(diff: np.ndarray, seed: int) -> float:
    """Two-sided sign-flip p of mean(diff) = 0 by ``N_PERMUTATIONS`` seeded random flips ((k + 1) / (B + 1))."""
    flips = np.random.default_rng(seed).choice((-1.0, 1.0), size=(N_PERMUTATIONS, diff.size))
    null = np.abs(flips @ diff)
    return float((np.sum(null >= abs(diff.sum()) - 1e-12) + 1) / (N_PERMUTATIONS + 1))


def _paired_mean(name: str, q_values: pd.Series, fp_values: pd.Series, fp: pd.Series,
                 baselines: pd.Series | Mapping[str, pd.Series], comparison: str, what: str, worse: str,
                 alpha: float, margin: float, seed: int, key_alpha: float | None) -> Verdict:
    """The body of F6's two rules: a per-episode quantity of the quantized and the FP model (``what``, e.g.
    "rho"; indexed by episode, aligned on ``q_values``; NaN drops the episode), compared by the mean paired
    difference Q - FP. Equivalence within +-``margin`` first (TOST, ``1 - 2 alpha`` normal interval), then
    "reproduced" when the quantized value is decisively lower (sign-flip p < alpha; ``worse`` says what that
    means), else inconclusive; not testable when FP is not decisively above the best baseline (``fp`` /
    ``baselines``: successes) or FP's own mean is not decisively above 0."""
    alpha, key = _levels(name, alpha, key_alpha)
    if not (isinstance(q_values, pd.Series) and isinstance(fp_values, pd.Series)) \
            or len(q_values) != len(fp_values) or not q_values.index.is_unique \
            or not q_values.index.isin(fp_values.index).all():
        raise InvalidValue(f"{name}: the quantized and the FP {what} must be pd.Series of per-episode values over "
                           f"the same episodes")
    q, f = q_values.to_numpy(dtype=float), fp_values.reindex(q_values.index).to_numpy(dtype=float)
    keep = np.isfinite(q) & np.isfinite(f)
    if keep.sum() < 3:
        raise InvalidValue(f"{name}: need per-episode {what} of at least 3 episodes for both models, got "
                           f"{keep.sum()}")
    diff, n = q[keep] - f[keep], int(keep.sum())
    normal = NormalDist()
    se = float(diff.std(ddof=1) / math.sqrt(n))
    effect = float(diff.mean())
    z, z_key, z2 = normal.inv_cdf(1 - alpha / 2), normal.inv_cdf(1 - key / 2), normal.inv_cdf(1 - key)
    p = _signflip_mc(diff, seed)
    fp_low = float(f[keep].mean() - z * f[keep].std(ddof=1) / math.sqrt(n))
    numbers = (f"mean {what} Q {q[keep].mean():.2f}, FP {f[keep].mean():.2f}; change {effect:+.2f} "
               f"[{effect - z_key * se:+.2f}, {effect + z_key * se:+.2f}], p {p:.2g}, {n} episodes")
    why = _untestable(fp, baselines, [], alpha, 0.0)
    if why is None and not fp_low > 0:
        why = f"FP's own mean {what} is not decisively above 0: {numbers}"
    if why is not None:
        outcome = "not testable"
    elif effect - z2 * se > -margin and effect + z2 * se < margin:  # a change inside the margin is negligible
        outcome, why = "not reproduced", f"{what} within +-{margin} of FP's: {numbers}"
    elif p < key and effect < 0:
        outcome, why = "reproduced", f"{worse}: {numbers}"
    else:
        outcome, why = "inconclusive", numbers
    p_tost = max(1 - normal.cdf((effect + margin) / se), normal.cdf((effect - margin) / se)) if se > 0 \
        else float(abs(effect) >= margin)
    return Verdict(name, comparison, effect, effect - z_key * se, effect + z_key * se, 1 - key, p, _mde(se, key),
                   outcome, why, p_equivalence=p_tost)


@rule
def loss_misaligned(q_rho: pd.Series, fp_rho: pd.Series, fp: pd.Series,
                    baselines: pd.Series | Mapping[str, pd.Series], comparison: str, alpha: float = ALPHA,
                    rho_margin: float = RHO_MARGIN, seed: int = 0, key_alpha: float | None = None) -> Verdict:
    """F6 within episodes (module docstring): per-episode rho of the quantized and the FP model (indexed by
    episode, aligned on ``q_rho``; NaN: a flat loss); ``fp`` / ``baselines``: FP's and the baselines' successes
    for testability."""
    return _paired_mean("F6 loss misaligned within episodes", q_rho, fp_rho, fp, baselines, comparison, "rho",
                        "the loss ranks plans decisively worse", alpha, rho_margin, seed, key_alpha)


@rule
def loss_stalls(q_drop: pd.Series, fp_drop: pd.Series, fp: pd.Series,
                baselines: pd.Series | Mapping[str, pd.Series], comparison: str, alpha: float = ALPHA,
                drop_margin: float = DROP_MARGIN, seed: int = 0, key_alpha: float | None = None) -> Verdict:
    """F6 over iterations (module docstring): per-episode relative drop of the planning loss over CEM's
    iterations (``study.loss_drop``) of the quantized and the FP model (indexed by episode, aligned on
    ``q_drop``); ``fp`` / ``baselines``: FP's and the baselines' successes for testability."""
    return _paired_mean("F6 loss stalls over iterations", q_drop, fp_drop, fp, baselines, comparison, "loss drop",
                        "the loss decreases decisively less over the iterations", alpha, drop_margin, seed,
                        key_alpha)
