"""wmqlib.rssm_loss: the RSSM objective's terms by hand on constructed inputs, and by their defining properties."""

import math

import pytest
import torch

from wmqlib.joint import InverseDynamics, JointWeights
from wmqlib.rssm_loss import RSSMWeights, embedding_error, filter_window, free_bits_kl, gaussian_kl, rssm_losses


def test_gaussian_kl_by_hand():
    zero, one = torch.zeros(3), torch.ones(3)
    assert gaussian_kl(one, one, one, one) == 0  # a distribution against itself
    assert gaussian_kl(one, one, zero, one) == pytest.approx(3 * 0.5)  # mean shift 1, unit std: 1/2 per dimension
    # KL(N(0, 1) || N(0, 2)) = log 2 + 1 / 8 - 1 / 2 per dimension
    assert gaussian_kl(zero, one, zero, 2 * one) == pytest.approx(3 * (math.log(2) + 1 / 8 - 1 / 2))
    assert gaussian_kl(torch.zeros(4, 5, 2), torch.ones(4, 5, 2), torch.ones(4, 5, 2), torch.ones(4, 5, 2)).shape \
        == (4, 5)


def test_free_bits_clamp_below_and_stop_the_gradient_there():
    kl = torch.tensor([0.2, 3.0], requires_grad=True)
    loss = free_bits_kl(kl, 1.0)
    assert loss.item() == pytest.approx((1.0 + 3.0) / 2)
    loss.backward()
    assert kl.grad.tolist() == [0.0, 0.5]  # the step within its budget gets no push
    assert free_bits_kl(torch.tensor([0.2, 3.0]), 0.0) == pytest.approx(1.6)  # no clamp


def test_embedding_error_is_the_mse_over_the_concatenated_features():
    e, p = torch.zeros(2, 3), torch.zeros(2, 1)
    assert embedding_error(e, e, p, p) == 0
    assert embedding_error(e + 1, e, p, p) == pytest.approx(3 / 4)  # 3 of 4 features off by 1
    assert embedding_error(e, e, p + 2, p) == pytest.approx(4 / 4)  # 1 of 4 features off by 2


def windows(model, b=5, length=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = model.config
    return (torch.randn(b, length, c.embed_dim, generator=g), torch.randn(b, length, c.proprio_emb_dim, generator=g),
            torch.randn(b, length, model.action_dim, generator=g))


def test_the_rollout_term_is_zero_on_the_models_own_imagination(tiny_rssm):
    model = tiny_rssm()
    e, p, a = windows(model)
    with torch.no_grad():
        imagined = model.rollout({"visual": e[:, :1, None], "proprio": p[:, :1]}, a[:, :2])
    e_own, p_own = imagined["visual"][:, :, 0], imagined["proprio"]  # frame 0 is the start itself
    terms = rssm_losses(model, e_own, p_own, a, torch.Generator().manual_seed(1), RSSMWeights())
    assert set(terms) == {"roll", "filter", "kl"}
    assert terms["roll"] == 0
    assert rssm_losses(model, e, p, a, torch.Generator().manual_seed(1), RSSMWeights())["roll"] > 0


def test_filtering_is_seeded_by_its_generator_and_shaped(tiny_rssm):
    model = tiny_rssm()
    e, p, a = windows(model, b=4, length=4)
    one = filter_window(model, e, p, a, torch.Generator().manual_seed(3))
    again = filter_window(model, e, p, a, torch.Generator().manual_seed(3))
    other = filter_window(model, e, p, a, torch.Generator().manual_seed(4))
    assert [x.shape for x in one] == [(4, 4, 12), (4, 4, 3), (4, 3)]  # KL of steps 1..L-1 only
    assert all(torch.equal(x, y) for x, y in zip(one, again))
    assert not torch.equal(one[0], other[0])  # the posterior is sampled
    assert (one[2] >= 0).all()


def test_weights_scale_their_terms_and_regularisers_come_with_the_embedding(tiny_rssm):
    model = tiny_rssm()
    e, p, a = windows(model)
    idm = InverseDynamics(1, 12, model.action_dim, seed=0)

    @torch.no_grad()
    def terms(weights, joint=None):
        return rssm_losses(model, e, p, a, torch.Generator().manual_seed(2), weights, joint and idm, joint)

    base = terms(RSSMWeights(1.0, 0.0), JointWeights(1.0, 1.0, 1.0))
    double = terms(RSSMWeights(2.0, 0.0), JointWeights(2.0, 2.0, 2.0))
    assert set(base) == {"roll", "filter", "kl", "var", "cov", "idm"}
    for key in ("kl", "var", "cov", "idm"):
        assert float(double[key]) == pytest.approx(2 * float(base[key]))
    assert terms(RSSMWeights(0.0, 1.0))["kl"] == 0
    # a budget above every step's KL: the term is exactly weight * free_bits
    assert float(terms(RSSMWeights(0.5, 1e6))["kl"]) == pytest.approx(0.5 * 1e6)


def test_negative_weights_are_refused():
    with pytest.raises(ValueError, match="RSSMWeights.kl_weight"):
        RSSMWeights(kl_weight=-1.0)
    with pytest.raises(ValueError, match="RSSMWeights.free_bits"):
        RSSMWeights(free_bits=float("nan"))
