"""wmqlib.stats against values derived by hand (each test says how)."""

import math

import numpy as np
import pandas as pd
import pytest

from wmqlib import stats
from wmqlib.validate import InvalidValue

Z95 = 1.959963984540054
Z90 = 1.6448536269514722


def pairs(both=0, a_only=0, b_only=0, neither=0):
    """Aligned outcomes with the given 2 x 2 table (a, b)."""
    a = [True] * both + [True] * a_only + [False] * b_only + [False] * neither
    b = [True] * both + [False] * a_only + [True] * b_only + [False] * neither
    return np.array(a), np.array(b)


def phi(x):
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def test_wilson_interval_zero_successes_upper_is_z2_over_n_plus_z2():
    low, high = stats.wilson_interval(0, 10)
    assert low == 0 and high == pytest.approx(1.96**2 / (10 + 1.96**2), rel=1e-12)
    with pytest.raises(InvalidValue, match="successes <= n"):
        stats.wilson_interval(3, 2)


def test_mcnemar_fifteen_discordant_all_one_way():
    t = stats.mcnemar(*pairs(both=20, a_only=15, neither=15))
    assert (t.units, t.a_only, t.b_only) == (50, 15, 0)
    assert t.p == pytest.approx(2 * 0.5**15, rel=1e-12)
    assert t.effect == pytest.approx(0.3) and t.discordance == pytest.approx(0.3)


def test_mcnemar_small_tables_by_hand():
    # 3 vs 1 discordant: P(X <= 1 | Bin(4, 1/2)) = 5/16, two-sided 10/16
    assert stats.mcnemar(*pairs(a_only=3, b_only=1, neither=6)).p == pytest.approx(10 / 16)
    # 5 vs 5: 2 * 638/1024 > 1, capped at 1; no discordant pair: p = 1
    assert stats.mcnemar(*pairs(a_only=5, b_only=5)).p == 1.0
    assert stats.mcnemar(*pairs(both=4, neither=4)).p == 1.0
    # direction: b ahead gives a negative effect, same p
    t = stats.mcnemar(*pairs(a_only=1, b_only=3, neither=6))
    assert t.effect == pytest.approx(-0.2) and t.p == pytest.approx(10 / 16)


def test_binomial_cdf_exact():
    assert stats.binomial_cdf(5, 10) == 638 / 1024
    assert stats.binomial_cdf(-1, 10) == 0.0 and stats.binomial_cdf(12, 10) == 1.0


def test_mcnemar_rejects_misaligned_and_non_boolean():
    with pytest.raises(InvalidValue, match="same units"):
        stats.mcnemar([True, False], [True])
    with pytest.raises(InvalidValue, match="booleans"):
        stats.mcnemar([0.5, 1], [1, 0])


def test_stratified_mcnemar_pools_discordant_pairs():
    # seed 0: 4 gained, seed 1: 3 gained and 1 lost -> pooled 7 vs 1: 2 * 9/256
    a0, b0 = pairs(a_only=4, neither=6)
    a1, b1 = pairs(a_only=3, b_only=1, both=6)
    a, b = np.concatenate([a0, a1]), np.concatenate([b0, b1])
    strata = np.repeat([0, 1], 10)
    assert stats.mcnemar(a, b).p == pytest.approx(2 * 9 / 256)
    table = stats.per_stratum(a, b, strata)
    with pytest.raises(InvalidValue, match="strata"):
        stats.per_stratum(a, b, strata[:3])
    assert list(table["stratum"]) == [0, 1, "all"]
    assert list(table["a_only"]) == [4, 3, 7] and list(table["b_only"]) == [0, 1, 1]
    assert table["effect"].tolist() == pytest.approx([0.4, 0.2, 0.3])
    assert table["p"].tolist() == pytest.approx([2 / 16, 10 / 16, 18 / 256])


def test_paired_interval_without_discordance_is_plus_minus_z2_over_n_plus_z2():
    # b = c = 0: T(d) = -sqrt(U d / (1 - d)) for d > 0, so |T| = z at d = z^2 / (U + z^2)
    low, high = stats.paired_interval(*pairs(both=30, neither=20))
    assert high == pytest.approx(Z95**2 / (50 + Z95**2), abs=1e-9) and low == pytest.approx(-high, abs=1e-9)


def test_paired_interval_all_discordant_one_way():
    # c = 0 and b = U: T(d) = sqrt(U (1 - d) / (1 + d)), so the lower limit is (U - z^2) / (U + z^2)
    low, high = stats.paired_interval(*pairs(a_only=20))
    assert low == pytest.approx((20 - Z95**2) / (20 + Z95**2), abs=1e-9) and high == pytest.approx(1.0)


@pytest.mark.parametrize("table", [(10, 3, 1, 36), (10, 8, 1, 31), (5, 6, 1, 38), (0, 9, 2, 39), (20, 4, 4, 22)])
def test_paired_interval_excludes_zero_exactly_when_the_score_test_rejects(table):
    # T(0) = (b - c) / sqrt(b + c) is McNemar's score statistic
    a, b = pairs(*table)
    low, high = stats.paired_interval(a, b)
    n10, n01 = table[1], table[2]
    assert low <= (n10 - n01) / 50 <= high
    assert (low > 0 or high < 0) == (abs(n10 - n01) / math.sqrt(n10 + n01) > Z95)


def _score_by_grid(n10, n01, units, d):
    """Tango's T(d) with the restricted MLE of P(a fails, b succeeds) found by a grid search of the profile
    log-likelihood n10 log(q + d) + n01 log q + n_concordant log(1 - 2q - d), not by the closed form."""
    q = np.linspace(max(0.0, -d) + 1e-9, (1 - d) / 2 - 1e-9, 400_001)
    with np.errstate(divide="ignore", invalid="ignore"):
        loglik = n10 * np.log(q + d) + n01 * np.log(q) + (units - n10 - n01) * np.log(1 - 2 * q - d)
    best = q[np.nanargmax(np.where(np.isfinite(loglik), loglik, -np.inf))]
    return (n10 - n01 - units * d) / math.sqrt(units * (2 * best + d * (1 - d)))


@pytest.mark.parametrize("table", [(10, 8, 2, 30), (5, 3, 7, 25), (20, 12, 0, 18)])
def test_paired_interval_limits_are_where_the_score_statistic_reaches_z(table):
    low, high = stats.paired_interval(*pairs(*table))
    units = sum(table)
    assert _score_by_grid(table[1], table[2], units, low) == pytest.approx(Z95, abs=2e-3)
    assert _score_by_grid(table[1], table[2], units, high) == pytest.approx(-Z95, abs=2e-3)


def test_equivalence_without_discordance_by_hand():
    # b = c = 0: T(-m) = sqrt(U m / (1 - m)), TOST p = 1 - Phi(T(-m)) (both sides equal)
    eq = stats.equivalence(*pairs(both=30, neither=20), margin=0.1)
    assert eq.p == pytest.approx(1 - phi(math.sqrt(50 * 0.1 / 0.9)), rel=1e-6)
    assert eq.equivalent and eq.ci_high == pytest.approx(Z90**2 / (50 + Z90**2), abs=1e-9)
    small = stats.equivalence(*pairs(both=6, neither=4), margin=0.1)  # U = 10: sqrt(10/9) -> p 0.146
    assert small.p == pytest.approx(1 - phi(math.sqrt(10 / 9)), rel=1e-6) and not small.equivalent


def test_equivalence_p_agrees_with_its_interval():
    for table in [(20, 3, 2, 25), (20, 8, 1, 21), (40, 6, 6, 48), (40, 2, 9, 49)]:
        eq = stats.equivalence(*pairs(*table), margin=0.1)
        assert eq.equivalent == (-0.1 < eq.ci_low and eq.ci_high < 0.1)
    with pytest.raises(InvalidValue, match="margin"):
        stats.equivalence(*pairs(both=3), margin=0)


def test_mcnemar_power_by_hand():
    # 6 units all discordant (psi = 1): only a_only = 0 or 6 gives p = 2/64 < 0.05, so power = pi^6 + (1 - pi)^6
    # with pi = (1 + d) / 2
    assert stats.mcnemar_power(6, 0.5, discordance=1.0) == pytest.approx(0.75**6 + 0.25**6, rel=1e-12)
    assert stats.mcnemar_power(6, 1.0) == pytest.approx(1.0) and stats.mcnemar_power(5, 1.0) == 0.0  # 2/32 > 0.05
    assert stats.mcnemar_power(50, 0.0, discordance=0.3) < 0.05  # the exact test keeps its level


def test_min_detectable_effect_by_hand_and_by_its_power():
    # 6 units, psi = d: detection needs all 6 discordant one way, P = d^6, so the MDE is 0.8^(1/6)
    assert stats.min_detectable_effect(6) == pytest.approx(0.8 ** (1 / 6), abs=1e-5)
    assert math.isnan(stats.min_detectable_effect(5))
    d = stats.min_detectable_effect(100, 0.3)
    assert stats.mcnemar_power(100, d, 0.3) >= 0.8 > stats.mcnemar_power(100, d - 1e-4, 0.3) - 1e-3
    assert stats.min_detectable_effect(200, 0.3) < d < stats.min_detectable_effect(100, 0.5)


def test_min_detectable_effect_power_matches_a_simulation():
    rng = np.random.default_rng(0)
    d, psi, units, runs = stats.min_detectable_effect(100, 0.3), 0.3, 100, 3000
    hits = 0
    for _ in range(runs):
        u = rng.random(units)
        a = u < (psi + d) / 2
        b = (u >= (psi + d) / 2) & (u < psi)
        hits += stats.mcnemar(a, b).p < 0.05
    assert hits / runs == pytest.approx(0.8, abs=0.03)  # 4 standard errors


def test_spearman_by_hand_and_with_ties():
    # d^2 = 4: rho = 1 - 6 * 4 / (5 * 24) = 0.8
    assert stats.spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]).rho == pytest.approx(0.8)
    # average ranks (1.5, 1.5, 3) vs (1, 2, 3): rho = 1.5 / sqrt(1.5 * 2) = sqrt(3) / 2
    assert stats.spearman([1, 1, 2], [1, 2, 3]).rho == pytest.approx(math.sqrt(3) / 2)
    x = np.arange(10.0)
    y = x.copy()
    y[[0, 9]] = y[[9, 0]]  # rho = 1 - 6 * 2 * 81 / 990
    c = stats.spearman(x, y)
    assert c.rho == pytest.approx(1 - 6 * 162 / 990)
    half = 1.96 * math.sqrt(1.06 / 7)  # spearman's default z
    assert (c.ci_low, c.ci_high) == pytest.approx((math.tanh(math.atanh(c.rho) - half),
                                                   math.tanh(math.atanh(c.rho) + half)))
    assert math.isnan(stats.spearman([1, 2, 3], [1, 2, 3]).ci_low)


def test_rank_correlation_per_group():
    t = pd.DataFrame({"g": ["a"] * 5 + ["b"] * 5, "x": [1, 2, 3, 4, 5] * 2, "y": [2, 1, 4, 3, 5, 5, 4, 3, 2, 1]})
    out = stats.rank_correlation(t, "x", "y", "g")
    assert list(out.columns) == ["g", "n", "rho", "ci_low", "ci_high"]
    assert out["rho"].tolist() == pytest.approx([0.8, -1.0])


def test_success_tables_and_curves():
    t = pd.DataFrame({"s": ["a"] * 4 + ["b"] * 4, "round": [0, 0, 1, 1] * 2,
                      "success": [0, 1, 1, 1, 0, 0, 0, 1], "plan_loss": np.arange(8.0)})
    table = stats.success_table(t, "s")
    assert table["success"].tolist()[0].startswith("3/4 75%")
    curve = stats.success_curve(t, "s", step="round")
    assert list(curve["round"]) == [0, 1, 0, 1] and curve["success_rate"].tolist() == [0.5, 1, 0, 0.5]
    assert curve["plan_loss"].tolist() == [0.5, 2.5, 4.5, 6.5]
    # quartiles of two values x < y (linear interpolation): x + (y - x) / 4 and x + 3 (y - x) / 4
    assert curve["plan_loss_q25"].tolist() == [0.25, 2.25, 4.25, 6.25]
    assert curve["plan_loss_q75"].tolist() == [0.75, 2.75, 4.75, 6.75]
    traced = stats.success_curve(t.rename(columns={"round": "iteration"}), "s")
    assert "iteration" not in traced and list(traced["opt_steps"]) == [1, 2, 1, 2]
    with pytest.raises(InvalidValue, match="not in the table"):
        stats.success_rates(t, "missing")


def test_pick_exactly_one_row():
    rates = pd.DataFrame({"env": ["wall", "wall"], "bits": ["W4", "W8"]})
    assert stats.pick(rates, env="wall", bits="W8")["bits"] == "W8"
    with pytest.raises(InvalidValue, match="found 2"):
        stats.pick(rates, env="wall")


def test_clustered_mcnemar_counts_an_episode_once():
    # one unit per cluster: the same p as McNemar
    for table in [(10, 3, 1, 36), (0, 9, 2, 39), (5, 5, 5, 5)]:
        a, b = pairs(*table)
        assert stats.clustered_mcnemar(a, b, np.arange(a.size)).p == pytest.approx(stats.mcnemar(a, b).p)
    # 5 episodes x 3 planner seeds, a ahead on every unit: s_c = 3 for each episode, P(|sum of +-3| >= 15) = 2/32,
    # where pooling the 15 units gives 2 * 0.5**15
    a, b = pairs(a_only=15)
    episodes = np.tile(np.arange(5), 3)
    assert stats.clustered_mcnemar(a, b, episodes).p == pytest.approx(1 / 16)
    assert stats.mcnemar(a, b).p == pytest.approx(2 * 0.5**15)
    # clusters whose units cancel (one seed gains, one loses) carry no evidence: sizes (2, 0, 1) -> t = 3,
    # P(|+-2 +-1| >= 3) = 1/2
    a = np.array([1, 1, 1, 0, 1, 0], bool)
    b = np.array([0, 0, 0, 1, 0, 0], bool)
    assert stats.clustered_mcnemar(a, b, [0, 0, 1, 1, 2, 2]).p == pytest.approx(0.5)
    with pytest.raises(InvalidValue, match="clusters"):
        stats.clustered_mcnemar(a, b, [0, 1])


# ----- clusters: one episode planned under several planner seeds -----

def _copies(x: np.ndarray, k: int) -> np.ndarray:
    return np.tile(x, k)


def test_design_effect_of_exact_copies_by_hand():
    rng = np.random.default_rng(3)
    a, b = rng.random(20) < 0.6, rng.random(20) < 0.4
    labels = np.tile(np.arange(20), 2)
    # C clusters of two identical units: robust / independent variance = (2C - 1) / (C - 1)
    assert stats.design_effect(_copies(a, 2), _copies(b, 2), labels) == pytest.approx(39 / 19)
    assert stats.design_effect(a, b, np.arange(20)) == 1.0  # every unit its own cluster
    assert stats.design_effect(a, b) == 1.0
    assert stats.design_effect(a, a, np.zeros(20)) == 1.0  # no discordant unit
    with pytest.raises(InvalidValue, match="label every unit"):
        stats.design_effect(a, b, np.arange(3))


def test_copies_of_episodes_do_not_narrow_the_clustered_interval():
    a = np.r_[np.ones(30, bool), np.zeros(20, bool)]
    b = np.r_[np.ones(20, bool), np.zeros(30, bool)]
    labels = np.tile(np.arange(50), 3)
    once = stats.paired_interval(a, b)
    naive = stats.paired_interval(_copies(a, 3), _copies(b, 3))
    clustered = stats.paired_interval(_copies(a, 3), _copies(b, 3), clusters=labels)
    assert naive[1] - naive[0] < once[1] - once[0]  # pooling copies claims more precision than one copy has
    assert clustered[1] - clustered[0] >= once[1] - once[0] - 1e-9
    eq = stats.equivalence(_copies(a, 3), _copies(b, 3), margin=0.3, clusters=labels)
    assert (eq.ci_low, eq.ci_high) == pytest.approx(stats.paired_interval(_copies(a, 3), _copies(b, 3), 0.9,
                                                                          clusters=labels))


def test_seed_spread_compares_the_seeds_on_the_episodes_all_of_them_ran():
    # "q": seed 0 ran episodes 0-3 (a key setting), seed 1 episodes 0-1; "fp": one seed only (no spread)
    rows = [("q", 0, e, s) for e, s in enumerate([True, False, True, True])]
    rows += [("q", 1, e, s) for e, s in enumerate([True, True])]
    rows += [("fp", 0, e, True) for e in range(4)]
    runs = pd.DataFrame(rows, columns=["label", "planner_seed", "episode", "success"])
    out = stats.seed_spread(runs, "label")
    assert list(out.index) == ["q"] and out.loc["q", "episodes"] == 2  # episodes 2-3 only seed 0 ran
    assert (out.loc["q", 0], out.loc["q", 1], out.loc["q", "range (pts)"]) == (0.5, 1.0, 50.0)
    with pytest.raises(InvalidValue, match=r"columns \['seed'\] are not in the table"):
        stats.seed_spread(runs, "label", seed="seed")
