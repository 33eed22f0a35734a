"""wmqlib.multiplicity: Holm's adjusted p-values, by hand and by their defining step-down property."""

import numpy as np
import pytest

from wmqlib.multiplicity import holm
from wmqlib.validate import InvalidValue


def test_holm_by_hand():
    # sorted: 0.005 x4 = 0.02, 0.01 x3 = 0.03, 0.03 x2 = 0.06, 0.04 x1 = 0.04 -> running max 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_equals_the_step_down_procedure_at_every_alpha():
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = rng.uniform(0, 0.2, rng.integers(1, 12))
        adjusted = holm(p)
        for alpha in (0.01, 0.05, 0.1):
            order = np.argsort(p)
            rejected = np.zeros(p.size, dtype=bool)
            for k, i in enumerate(order):  # reject while p_(k) <= alpha / (m - k), k from 0
                if p[i] > alpha / (p.size - k):
                    break
                rejected[i] = True
            assert np.array_equal(adjusted <= alpha, rejected)


def test_holm_keeps_nan_out_of_the_family_and_caps_at_one():
    out = holm([0.02, np.nan, 0.9])  # m = 2: 0.02 x 2, then max(0.04, 0.9 x 1)
    assert out[0] == pytest.approx(0.04) and np.isnan(out[1]) and out[2] == pytest.approx(0.9)
    assert list(holm([0.6, 0.7])) == [1.0, 1.0]
    assert holm([0.3]) == pytest.approx([0.3])  # a family of one is not adjusted


@pytest.mark.parametrize("bad", [[-0.1], [1.5], [[0.1, 0.2]]])
def test_holm_refuses_what_is_not_a_p_value(bad):
    with pytest.raises(InvalidValue, match="holm"):
        holm(bad)
