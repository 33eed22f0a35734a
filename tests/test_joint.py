"""wmqlib.joint: the joint-embedding terms, each by hand or by its defining property."""

import math

import pytest
import torch
import torch.nn.functional as F

from wmqlib.joint import (RANK_MARGIN, VAR_EPS, InverseDynamics, JointWeights, covariance_penalty, regularisers,
                          temporal_ranking, variance_hinge)


def test_variance_hinge_is_zero_above_unit_spread_and_one_for_a_constant():
    z = torch.tensor([[-2.0, 3.0], [2.0, -3.0]])  # std over the batch: 2.83 and 4.24
    assert variance_hinge(z) == 0
    assert variance_hinge(torch.ones(8, 3)) == pytest.approx(1 - math.sqrt(VAR_EPS))
    half = torch.tensor([[0.5], [-0.5]])  # std 0.707
    assert variance_hinge(half) == pytest.approx(1 - math.sqrt(0.5 + VAR_EPS))


def test_covariance_penalty_by_hand():
    x = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])  # var 2 each, cov 2: off-diagonal 2 * 2^2 / 2 features = 4
    assert covariance_penalty(x) == pytest.approx(4.0)
    y = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])  # uncorrelated columns
    assert covariance_penalty(y) == pytest.approx(0.0)


def test_temporal_ranking_rewards_latents_that_drift_away_with_time():
    t = torch.arange(4.0)
    growing = (t * 3.0)[None, :, None, None].expand(2, 4, 2, 3)  # MSE from frame 0: 9, 36, 81 (ratios 4, 2.25)
    shrinking = torch.tensor([0.0, 9.0, 6.0, 3.0])[None, :, None, None].expand(2, 4, 2, 3)  # 81, 36, 9: back home
    assert temporal_ranking(growing) < temporal_ranking(shrinking)
    # by hand: mean of softplus(log 9 - log 36 + m) and softplus(log 36 - log 81 + m)
    expected = (F.softplus(torch.tensor(math.log(9 / 36) + RANK_MARGIN))
                + F.softplus(torch.tensor(math.log(36 / 81) + RANK_MARGIN))) / 2
    assert temporal_ranking(growing) == pytest.approx(float(expected), rel=1e-4)
    assert temporal_ranking(growing[:, :2]) == 0  # nothing to rank with two frames


def test_inverse_dynamics_is_seeded_and_shaped():
    a, b = InverseDynamics(4, 8, 10, seed=3), InverseDynamics(4, 8, 10, seed=3)
    z0, z1 = torch.randn(5, 4, 8), torch.randn(5, 4, 8)
    assert a(z0, z1).shape == (5, 10) and torch.equal(a(z0, z1), b(z0, z1))
    assert not torch.equal(a(z0, z1), InverseDynamics(4, 8, 10, seed=4)(z0, z1))
    assert not torch.equal(a(z0, z1), a(z1, z0))  # the order of the frames matters


def test_regularisers_scale_with_their_weights_and_skip_rank_at_zero():
    gen = torch.Generator().manual_seed(0)
    visual, actions = torch.randn(6, 4, 4, 8, generator=gen), torch.randn(6, 4, 10, generator=gen)
    idm = InverseDynamics(4, 8, 10)
    one = regularisers(visual, idm, actions, JointWeights(1.0, 1.0, 1.0, 1.0))
    two = regularisers(visual, idm, actions, JointWeights(2.0, 2.0, 2.0, 2.0))
    assert set(one) == {"var", "cov", "idm", "rank"}
    for key in one:
        assert float(two[key]) == pytest.approx(2 * float(one[key]))
    assert "rank" not in regularisers(visual, idm, actions, JointWeights())


def test_negative_weights_are_refused():
    with pytest.raises(ValueError, match="JointWeights.rank_weight"):
        JointWeights(rank_weight=-1.0)
