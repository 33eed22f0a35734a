"""wmqlib.interaction: the change of the deficit to FP between the first and the last planning stage."""

import math

import numpy as np
import pytest

from wmqlib.interaction import deficit_change
from wmqlib.validate import InvalidValue


def test_a_deficit_closed_on_every_episode_by_hand():
    n = 10
    fp = np.ones(n, dtype=bool)
    out = deficit_change(fp, np.zeros(n, dtype=bool), fp, fp)
    assert (out.deficit_first, out.deficit_last, out.effect) == (1.0, 0.0, -1.0)
    assert out.p == pytest.approx(2 / 2**n)  # all ten signs flipped the same way, two-sided
    assert out.ci_low == out.ci_high == -1.0  # no spread across episodes


def test_fp_gaining_alone_widens_the_deficit():
    fp_first, q = np.array([0, 0, 1, 1] * 5, bool), np.zeros(20, bool)
    out = deficit_change(fp_first, q, np.ones(20, bool), q)
    assert out.effect == pytest.approx(0.5) and out.ci_low > 0 and out.p < 0.01


def test_no_change_gives_p_one_and_an_interval_around_zero():
    rng = np.random.default_rng(0)
    fp, q = rng.random(40) < 0.7, rng.random(40) < 0.4
    out = deficit_change(fp, q, fp, q)
    assert out.effect == 0.0 and out.p == 1.0 and out.ci_low == out.ci_high == 0.0


def test_planner_seeds_of_one_episode_count_once():
    # 5 episodes x 3 seeds, every unit closes its deficit: 5 clusters of sum -3 -> p = 2 / 2^5, not 2 / 2^15
    n = 15
    fp = np.ones(n, dtype=bool)
    out = deficit_change(fp, np.zeros(n, bool), fp, fp, clusters=np.repeat(np.arange(5), 3))
    assert (out.clusters, out.units) == (5, 15)
    assert out.p == pytest.approx(2 / 2**5)


def test_the_interval_is_the_normal_one_over_cluster_means():
    change = np.array([-1, 0, 0, -1, 1, 0, -1, 0])  # built from q gaining (-1) or FP gaining (+1)
    fp_last = np.array([1, 1, 1, 1, 1, 1, 1, 1], bool)
    fp_first = np.where(change == 1, False, True)
    q_first = np.zeros(8, bool)
    q_last = change == -1
    out = deficit_change(fp_first, q_first, fp_last, q_last)
    se = change.std(ddof=1) / math.sqrt(8)
    assert out.effect == pytest.approx(change.mean())
    assert (out.ci_low, out.ci_high) == pytest.approx((change.mean() - 1.959964 * se, change.mean() + 1.959964 * se))


@pytest.mark.parametrize("field,value,match", [
    ("q_first", np.zeros(3, bool), "q_first must be 1-D with one entry per unit"),
    ("fp_last", np.full(4, 2), "fp_last must hold successes"),
    ("clusters", np.zeros(3), "clusters must label every unit"),
])
def test_bad_input_names_the_field(field, value, match):
    args = {"fp_first": np.ones(4, bool), "q_first": np.ones(4, bool), "fp_last": np.ones(4, bool),
            "q_last": np.ones(4, bool), "clusters": None, field: value}
    with pytest.raises(InvalidValue, match=match):
        deficit_change(**args)
