"""CEM: finds the optimum of seeded quadratics, batched == solo, per-iteration losses, config validation."""

from __future__ import annotations

import pytest
import torch

from wmqlib.plan import CEMConfig, cem, make_generators

SEEDS = [3, 11, 42]


def test_cem_finds_quadratic_optimum(quadratic):
    cost = quadratic(SEEDS)
    res = cem(cost, CEMConfig(opt_steps=30), make_generators(SEEDS), action_dim=4)
    assert res.plan.shape == (3, 5, 4)
    assert (res.plan - cost.target).abs().max() < 0.05
    assert torch.all(res.final_loss < 1e-3)


def test_batched_equals_solo(quadratic):
    cfg = CEMConfig(opt_steps=8, samples=64, topk=8)
    batched = cem(quadratic(SEEDS), cfg, make_generators(SEEDS), action_dim=4)
    for e, seed in enumerate(SEEDS):
        solo = cem(quadratic([seed]), cfg, make_generators([seed]), action_dim=4)
        assert torch.equal(solo.plans[:, 0], batched.plans[:, e])
        assert torch.equal(solo.losses[:, 0], batched.losses[:, e])


def test_losses_are_costs_of_recorded_plans(quadratic):
    cost = quadratic(SEEDS)
    cfg = CEMConfig(opt_steps=12, samples=50, topk=5)
    res = cem(cost, cfg, make_generators(SEEDS), action_dim=4)
    assert res.plans.shape == (12, 3, 5, 4) and res.losses.shape == (12, 3)
    assert torch.equal(res.plan, res.plans[-1])
    for k in range(cfg.opt_steps):
        torch.testing.assert_close(res.losses[k], cost(res.plans[k][:, None])[:, 0])
    assert torch.all(res.losses[-1] < res.losses[0])


def test_sample_zero_is_the_mean_and_warm_start(quadratic):
    """With a warm start at the optimum, candidate 0 (the mean) is already optimal, so it stays elite."""
    cost = quadratic(SEEDS)
    calls = []

    def spy(actions):
        calls.append(actions.clone())
        return cost(actions)

    res = cem(spy, CEMConfig(opt_steps=2, samples=20, topk=2), make_generators(SEEDS), 4, init=cost.target)
    torch.testing.assert_close(calls[0][:, 0], cost.target)
    assert calls[0].shape == (3, 20, 5, 4)
    assert torch.all(res.losses[0] < cost(torch.zeros(3, 1, 5, 4))[:, 0])


def test_nan_costs_are_never_elite(quadratic):
    cost = quadratic(SEEDS)

    def half_nan(actions):  # NaN for every candidate whose first coordinate is positive
        c = cost(actions)
        return torch.where(actions[..., 0, 0] > 0, torch.full_like(c, float("nan")), c)

    res = cem(half_nan, CEMConfig(opt_steps=5, samples=100, topk=10), make_generators(SEEDS), 4)
    assert torch.all(res.plan[:, 0, 0] <= 0)
    assert torch.isfinite(res.plans).all()


@pytest.mark.parametrize("field, value, exc", [
    ("horizon", 0, ValueError), ("samples", 1, ValueError), ("topk", 400, ValueError),
    ("opt_steps", 2.5, TypeError), ("var_scale", 0.0, ValueError), ("var_scale", "1", TypeError),
])
def test_config_validation_names_field(field, value, exc):
    with pytest.raises(exc, match=field):
        CEMConfig(**{field: value})


def test_bad_inputs(quadratic):
    with pytest.raises(ValueError, match="init"):
        cem(quadratic(SEEDS), CEMConfig(), make_generators(SEEDS), 4, init=torch.zeros(3, 6, 4))
    with pytest.raises(ValueError, match="generators"):
        cem(quadratic(SEEDS), CEMConfig(), [], 4)
    with pytest.raises(TypeError, match="CEMConfig"):
        cem(quadratic(SEEDS), {"horizon": 5}, make_generators(SEEDS), 4)
    with pytest.raises(TypeError, match="seeds"):
        make_generators([1.5])


@pytest.mark.cuda
def test_cem_on_cuda(quadratic):
    """Planning runs where the generators live; batched == solo holds on CUDA too."""
    cpu_cost = quadratic(SEEDS)

    def cost(actions):
        return (cpu_cost.weight.cuda()[:, None] * (actions - cpu_cost.target.cuda()[:, None]) ** 2).sum(dim=(2, 3))

    res = cem(cost, CEMConfig(opt_steps=30), make_generators(SEEDS, "cuda"), action_dim=4)
    assert res.plan.device.type == "cuda" and res.losses.device.type == "cuda"
    assert (res.plan.cpu() - cpu_cost.target).abs().max() < 0.05
    solo = cem(lambda a: cost(a.expand(3, -1, -1, -1))[1:2], CEMConfig(opt_steps=30),
               make_generators(SEEDS[1:2], "cuda"), action_dim=4)
    torch.testing.assert_close(solo.plans[:, 0], res.plans[:, 1])
    with pytest.raises(ValueError, match="generator on 'cpu'"):
        cem(cost, CEMConfig(), make_generators(SEEDS), action_dim=4, device="cuda")
