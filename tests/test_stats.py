"""wmqlib.stats: intervals, success tables and curves, comparisons, rank correlations."""

import numpy as np
import pandas as pd
import pytest

from wmqlib import stats


def test_success_table_and_curve():
    trace = pd.DataFrame({"m": ["a"] * 4 + ["b"] * 4, "episode": [0, 0, 1, 1] * 2, "iteration": [0, 1] * 4,
                          "success": [False, True, False, True, False, False, True, True],
                          "state_dist": [9.0, 1.0, 9.0, 3.0, 8.0, 8.0, 2.0, 2.0],
                          "plan_loss": [4.0, 2.0, 6.0, 1.0, 1.0, 1.0, 3.0, 3.0]})
    table = stats.success_table(stats.at_opt_steps(trace, 2), "m")
    assert list(table["successes"]) == [2, 1]
    assert list(table["mean_state_dist"]) == [2.0, 5.0]
    assert table["success"].iloc[0] == "2/2 100% [34, 100]"  # Wilson 95% for 2/2: [0.342, 1]
    curve = stats.success_curve(trace, "m")
    assert list(curve["opt_steps"]) == [1, 2, 1, 2]
    assert list(curve["success_rate"]) == [0.0, 1.0, 0.5, 0.5]
    assert list(curve["plan_loss"]) == [5.0, 1.5, 2.0, 2.0]


def test_pick_finds_exactly_one_row():
    rates = pd.DataFrame({"env": ["wall", "wall", "pusht"], "bits": ["FP", "W4A16", "FP"], "x": [1, 2, 3]})
    assert stats.pick(rates, env="wall", bits="W4A16")["x"] == 2
    with pytest.raises(ValueError, match="found 2"):
        stats.pick(rates, env="wall")
    with pytest.raises(ValueError, match="found 0"):
        stats.pick(rates, env="wall", bits="W3A16")


def test_compare_similar_and_verdict():
    hi, lo, mid = {"ci_low": 0.7, "ci_high": 0.9}, {"ci_low": 0.1, "ci_high": 0.3}, {"ci_low": 0.2, "ci_high": 0.8}
    assert stats.compare(hi, lo) == 1 and stats.compare(lo, hi) == -1 and stats.compare(mid, hi) == 0
    a = {"success_rate": 0.80, "ci_low": 0.66, "ci_high": 0.89}
    close = {"success_rate": 0.74, "ci_low": 0.60, "ci_high": 0.84}
    apart = {"success_rate": 0.62, "ci_low": 0.48, "ci_high": 0.74}
    far = {"success_rate": 0.20, "ci_low": 0.11, "ci_high": 0.33}
    assert (stats.similar(a, close), stats.similar(a, apart), stats.similar(a, far)) == (1, 0, -1)
    assert stats.verdict([1, 0]) == "reproduced"
    assert stats.verdict([-1, 0, 0]) == "not reproduced"
    assert stats.verdict([1, -1]) == "inconclusive" and stats.verdict([0, 0]) == "inconclusive"
    assert stats.verdict([]) == "inconclusive"
    with pytest.raises(ValueError, match="decisions"):
        stats.verdict([2])


def test_rank_correlation_matches_hand_values():
    df = pd.DataFrame({"g": ["a"] * 4 + ["b"] * 4, "x": [1, 2, 3, 4, 1, 2, 3, 4],
                       "y": [10, 20, 30, 1000, 4, 3, 2, 1]})
    out = stats.rank_correlation(df, "x", "y", "g")
    assert list(out["n"]) == [4, 4]
    np.testing.assert_allclose(out["rho"], [1.0, -1.0])
    assert out["ci_low"].isna().all()  # no interval for a perfect correlation


def test_rank_correlation_interval_is_fisher_z():
    x = np.arange(20.0)
    y = x + np.where(x % 3 == 0, 6.0, 0.0)  # a monotone trend with ties broken by bumps
    out = stats.rank_correlation(pd.DataFrame({"g": "a", "x": x, "y": y}), "x", "y", "g").iloc[0]
    d = pd.Series(x).rank() - pd.Series(y).rank()  # no ties: the textbook formula holds
    rho = 1 - 6 * (d**2).sum() / (20 * (20**2 - 1))
    half = 1.96 * np.sqrt(1.06 / 17)
    assert out["rho"] == pytest.approx(rho) and 0 < rho < 1
    assert out["ci_low"] == pytest.approx(np.tanh(np.arctanh(rho) - half))
    assert out["ci_high"] == pytest.approx(np.tanh(np.arctanh(rho) + half))


def test_wilson_interval_reference_values():
    low, high = stats.wilson_interval(47, 50)  # hand-computed: p = .94, z = 1.96
    assert low == pytest.approx(0.8378, abs=1e-4) and high == pytest.approx(0.9794, abs=1e-4)
    low, high = stats.wilson_interval(np.array([0, 50]), np.array([50, 50]))
    assert low[0] == 0 and high[1] == 1 and 0 < high[0] < 0.08 and 0.92 < low[1] < 1
    assert np.isnan(stats.wilson_interval(0, 0)[0])
    with pytest.raises(ValueError, match="successes"):
        stats.wilson_interval(5, 3)


def test_success_rates_adds_ci_columns():
    table = pd.DataFrame({"bits": [4, 4, 4, 8, 8], "success": [True, False, True, True, True]})
    out = stats.success_rates(table, "bits")
    assert out["n"].tolist() == [3, 2] and out["successes"].tolist() == [2, 2]
    assert out["success_rate"].tolist() == pytest.approx([2 / 3, 1.0])
    assert (out["ci_low"] <= out["success_rate"]).all() and (out["success_rate"] <= out["ci_high"]).all()
    with pytest.raises(ValueError, match="not in the table"):
        stats.success_rates(table, "method")


def test_per_episode_reads_each_traced_setting_at_its_budget():
    traced = pd.DataFrame({"config_key": ["w"] * 6 + ["p"] * 4, "env": ["wall"] * 6 + ["pusht"] * 4,
                           "episode": [0, 0, 0, 1, 1, 1, 0, 0, 1, 1], "iteration": [0, 1, 2] * 2 + [0, 1] * 2,
                           "success": [False, False, True, False, True, True, False, True, True, True],
                           "planner.opt_steps": [3] * 6 + [2] * 4})
    plain = pd.DataFrame({"config_key": ["g", "g"], "env": ["wall"] * 2, "episode": [0, 1],
                          "success": [True, False], "planner.opt_steps": [7, 7]})
    table = pd.concat([traced, plain], ignore_index=True)
    out = stats.per_episode(table, {"wall": 2, "pusht": 5})
    assert list(out["config_key"]) == ["w", "w", "p", "p", "g", "g"]
    assert list(out["opt_steps"]) == [2, 2, 2, 2, 7, 7]  # pusht's trace is shorter than 5: its last iteration
    assert list(out["success"]) == [False, True, True, True, True, False]
    last = stats.per_episode(table)
    assert list(last["opt_steps"]) == [3, 3, 2, 2, 7, 7] and list(last["success"][:2]) == [True, True]
