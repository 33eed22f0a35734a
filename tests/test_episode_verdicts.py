"""wmqlib.episode_verdicts: F4 as the change of the deficit to FP and F6 within episodes, every outcome."""

import numpy as np
import pandas as pd
import pytest

from wmqlib import study as st
from wmqlib.episode_verdicts import iterations_repair, loss_misaligned, loss_stalls
from wmqlib.validate import InvalidValue


def series(values, n_seeds=1):
    values = np.asarray(values)
    episodes = len(values) // n_seeds
    index = pd.MultiIndex.from_product([range(n_seeds), range(episodes)], names=["planner_seed", "episode_seed"])
    return pd.Series(values, index=index)


N = 30
FP, NONE = series(np.ones(N, bool)), series(np.zeros(N, bool))


def f4(q_first, q_last, claim, fp_first=FP, fp_last=FP, **kwargs):
    return iterations_repair(fp_first, series(q_first), fp_last, series(q_last), {"none": NONE}, claim, "Q vs FP",
                             **kwargs)


def test_f4_a_closed_deficit_is_repaired():
    closed = f4(np.zeros(N, bool), np.ones(N, bool), "repaired")
    assert closed.outcome == "reproduced" and closed.effect == -1.0 and closed.p < 1e-8
    assert f4(np.zeros(N, bool), np.ones(N, bool), "irreversible").outcome == "not reproduced"


def test_f4_an_unchanged_deficit_is_irreversible():
    kept = f4(np.zeros(N, bool), np.zeros(N, bool), "irreversible")
    assert kept.outcome == "reproduced" and kept.effect == 0 and "irreversible" in kept.why
    assert kept.p_equivalence == 0.0  # no episode changed: the change is certainly above -10 points
    assert f4(np.zeros(N, bool), np.zeros(N, bool), "repaired").outcome == "not reproduced"


def test_f4_a_small_uncertain_repair_is_inconclusive():
    last = np.zeros(N, bool)
    last[:4] = True  # 4 of 30 episodes repaired: sign-flip p = 2 / 2^4, interval reaching past -10 points
    out = f4(np.zeros(N, bool), last, "repaired")
    assert out.outcome == "inconclusive" and out.p == pytest.approx(0.125)


def test_f4_without_a_deficit_or_an_fp_above_baselines_is_not_testable():
    assert f4(np.ones(N, bool), np.ones(N, bool), "repaired").outcome == "not testable"
    weak = f4(np.zeros(N, bool), np.ones(N, bool), "repaired", fp_first=NONE, fp_last=NONE)
    assert weak.outcome == "not testable"


def test_f4_counts_an_episode_once_across_planner_seeds():
    fp = series(np.ones(15, bool), n_seeds=3)
    q0, q1 = series(np.zeros(15, bool), n_seeds=3), series(np.ones(15, bool), n_seeds=3)
    out = iterations_repair(fp, q0, fp, q1, {"none": series(np.zeros(15, bool), 3)}, "repaired", "Q vs FP")
    assert out.p == pytest.approx(2 / 2**5)  # 5 episodes, not 15 units
    assert (out.episodes, out.units) == (5, 15)
    # and FP's lead over the baseline counts 5 episodes too (p 0.06): nothing can be judged on them
    assert out.outcome == "not testable" and "not decisively above" in out.why


def rhos(values):
    return pd.Series(values, index=pd.Index(range(len(values)), name="episode_seed"))


def f6(q, f, n=None):
    n = n or len(q)
    fp = pd.Series(np.ones(n, bool), index=pd.Index(range(n), name="episode_seed"))
    none = pd.Series(np.zeros(n, bool), index=fp.index)
    return loss_misaligned(rhos(q), rhos(f), fp, {"none": none}, "Q vs FP")


def test_f6_each_outcome():
    rng = np.random.default_rng(0)
    fp_rho = 0.8 + 0.05 * rng.standard_normal(N)
    assert f6(0.2 + 0.05 * rng.standard_normal(N), fp_rho).outcome == "reproduced"
    assert f6(fp_rho + 0.01 * rng.standard_normal(N), fp_rho).outcome == "not reproduced"
    mixed = fp_rho[:6] + np.array([-0.3, 0.25, -0.25, 0.2, -0.3, 0.3])
    assert f6(mixed, fp_rho[:6]).outcome == "inconclusive"
    assert f6(0.1 * rng.standard_normal(N), 0.1 * rng.standard_normal(N)).outcome == "not testable"


def test_f6_needs_three_episodes_with_both_rhos():
    with pytest.raises(InvalidValue, match="at least 3 episodes"):
        f6([0.5, np.nan, 0.4], [0.6, 0.6, np.nan])




def test_f6_a_decisive_change_inside_the_margin_is_negligible():
    rng = np.random.default_rng(1)
    f = 0.9 + 0.02 * rng.normal(size=50)
    small = f6(f - 0.05 + 0.005 * rng.normal(size=50), f)  # decisively lower, but by 0.05 < 0.1
    assert small.p < 0.05 and small.outcome == "not reproduced" and small.p_equivalence < 0.05


def stalls(q, f):
    n = len(q)
    fp = pd.Series(np.ones(n, bool), index=pd.Index(range(n), name="episode_seed"))
    return loss_stalls(rhos(q), rhos(f), fp, {"none": ~fp}, "Q vs FP")


def test_f6_loss_stalls_each_outcome():
    rng = np.random.default_rng(2)
    fp_drop = 0.6 + 0.05 * rng.standard_normal(N)  # FP's loss falls by 60% over the iterations
    stalled = stalls(0.05 * rng.standard_normal(N), fp_drop)  # the quantized loss does not move
    assert stalled.outcome == "reproduced" and stalled.finding == "F6 loss stalls over iterations"
    assert stalled.effect == pytest.approx(-0.6, abs=0.05)  # mean paired difference Q - FP
    assert stalls(fp_drop + 0.01 * rng.standard_normal(N), fp_drop).outcome == "not reproduced"
    mixed = fp_drop[:6] + np.array([-0.3, 0.25, -0.25, 0.2, -0.3, 0.3])
    assert stalls(mixed, fp_drop[:6]).outcome == "inconclusive"
    flat = stalls(0.01 * rng.standard_normal(N), 0.01 * rng.standard_normal(N))  # FP's own loss does not drop
    assert flat.outcome == "not testable" and "FP's own mean loss drop is not decisively above 0" in flat.why


def test_f6_loss_drop_is_one_minus_last_over_first_per_episode():
    trace = pd.DataFrame({"env": "wall", "bits": "FP", "episode_seed": [1, 1, 1, 4, 4, 4],
                          "iteration": [2, 0, 1, 0, 1, 2], "plan_loss": [0.5, 2.0, 1.0, 1.0, 1.5, 1.25]})
    out = st.loss_drop(trace, ["env", "bits"])
    assert list(out["episode_seed"]) == [1, 4]
    assert list(out["loss_drop"]) == [0.75, -0.25]  # 1 - 0.5 / 2; a loss that rose: 1 - 1.25 / 1
    with pytest.raises(ValueError, match=r"columns \['iteration'\]"):
        st.loss_drop(trace.drop(columns="iteration"), "env")
