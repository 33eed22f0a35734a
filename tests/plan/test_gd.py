"""Gradient planner: optimum of seeded quadratics, batched == solo, loss bookkeeping, gradients through a model."""

from __future__ import annotations

import pytest
import torch

from wmqlib.plan import GDConfig, Objective, encode_observations, gd, make_generators

SEEDS = [5, 6, 9]


@pytest.mark.parametrize("cfg", [
    GDConfig(opt_steps=60),  # released: SGD lr 1, noise 0.003
    GDConfig(opt_steps=150, optimizer="adam", lr=0.05, action_noise=0.0, samples=4),
])
def test_gd_finds_quadratic_optimum(quadratic, cfg):
    cost = quadratic(SEEDS)
    res = gd(cost, cfg, make_generators(SEEDS), action_dim=4)
    assert res.plan.shape == (3, 5, 4)
    assert (res.plan - cost.target).abs().max() < 0.03


def test_sgd_step_is_the_released_update(quadratic):
    """One SGD step without noise: a1 = a0 - lr * 2 w (a0 - target), from the seeded N(0, 1) start."""
    cost = quadratic([1])
    cfg = GDConfig(opt_steps=1, lr=0.5, action_noise=0.0)
    a0 = torch.randn(1, 1, 5, 4, generator=torch.Generator().manual_seed(1))
    expected = a0 - 0.5 * 2 * cost.weight[:, None] * (a0 - cost.target[:, None])
    res = gd(cost, cfg, make_generators([1]), action_dim=4)
    torch.testing.assert_close(res.plan, expected[:, 0])


def test_batched_equals_solo(quadratic):
    cfg = GDConfig(opt_steps=20, samples=3)
    batched = gd(quadratic(SEEDS), cfg, make_generators(SEEDS), action_dim=4)
    for e, seed in enumerate(SEEDS):
        solo = gd(quadratic([seed]), cfg, make_generators([seed]), action_dim=4)
        assert torch.equal(solo.plans[:, 0], batched.plans[:, e])
        assert torch.equal(solo.losses[:, 0], batched.losses[:, e])


def test_losses_are_costs_of_recorded_plans(quadratic):
    cost = quadratic(SEEDS)
    res = gd(cost, GDConfig(opt_steps=15, samples=2), make_generators(SEEDS), action_dim=4)
    assert res.plans.shape == (15, 3, 5, 4) and res.losses.shape == (15, 3)
    for k in range(15):
        torch.testing.assert_close(res.losses[k], cost(res.plans[k][:, None])[:, 0])
    assert torch.all(res.losses[-1] < res.losses[0])


def test_gradients_flow_through_model_not_into_parameters(tiny_model, tiny_obs):
    start, goal = (encode_observations(tiny_model, o) for o in tiny_obs)
    objective = Objective(tiny_model, start, goal)
    res = gd(objective, GDConfig(opt_steps=25, lr=0.1, action_noise=0.0), make_generators([0, 1, 2]), 4)
    assert torch.all(res.losses[-1] < res.losses[0])
    assert all(p.grad is None for p in tiny_model.parameters())


def test_warm_start_and_zero_init(quadratic):
    cost = quadratic([2])
    init = torch.full((1, 2, 4), 0.25)
    res = gd(cost, GDConfig(opt_steps=1, lr=1e-9, action_noise=0.0, init="zeros"), make_generators([2]), 4, init=init)
    torch.testing.assert_close(res.plan[:, :2], init)
    torch.testing.assert_close(res.plan[:, 2:], torch.zeros(1, 3, 4))


def test_non_differentiable_cost_is_reported(quadratic):
    cost = quadratic([1])
    with pytest.raises(TypeError, match="differentiable"):
        gd(lambda a: cost(a.detach()), GDConfig(opt_steps=2), make_generators([1]), 4)


@pytest.mark.parametrize("field, value, exc", [
    ("optimizer", "lbfgs", ValueError), ("init", "uniform", ValueError), ("lr", 0.0, ValueError),
    ("action_noise", -1.0, ValueError), ("samples", 0, ValueError), ("opt_steps", True, TypeError),
])
def test_config_validation_names_field(field, value, exc):
    with pytest.raises(exc, match=field):
        GDConfig(**{field: value})


def test_gd_gradients_flow_through_fake_quantized_model(wall_world_model, wall_obs):
    """W4A8 fake quantization (rounding in weights AND activations) passes gradients straight through."""
    from wmqlib.quant import RTN, PerChannel, PerToken, QuantLinear, quantize

    qmodel, _ = quantize(wall_world_model, RTN(4, PerChannel(), a_bits=8, a_granularity=PerToken()))
    assert any(isinstance(m, QuantLinear) for m in qmodel.predictor.modules())
    start, goal = (encode_observations(qmodel, o) for o in wall_obs)
    objective = Objective(qmodel, start, goal)
    actions = torch.randn(3, 4, 5, 10, generator=torch.Generator().manual_seed(0), requires_grad=True)
    costs = objective(actions)
    (grad,) = torch.autograd.grad(costs.sum(), actions)
    assert torch.isfinite(grad).all()
    assert (grad.flatten(2).abs().sum(dim=2) > 0).all()  # every candidate of every episode gets a gradient
    fp = Objective(wall_world_model, *(encode_observations(wall_world_model, o) for o in wall_obs))(actions)
    assert not torch.allclose(costs, fp)  # the quantization is really in the loop
    res = gd(objective, GDConfig(opt_steps=10, lr=0.05), make_generators([0, 1, 2]), qmodel.action_dim)
    assert torch.all(res.losses[-1] < res.losses[0])


def test_adam_update_matches_torch_optim(quadratic):
    """The written-out Adam equals torch.optim.Adam on the same gradients (noise off, one start)."""
    cost = quadratic([4])
    res = gd(cost, GDConfig(opt_steps=5, optimizer="adam", lr=0.1, action_noise=0.0), make_generators([4]), 4)
    a = torch.randn(1, 1, 5, 4, generator=torch.Generator().manual_seed(4)).requires_grad_(True)
    opt = torch.optim.Adam([a], lr=0.1)
    for _ in range(5):
        opt.zero_grad()
        cost(a).sum().backward()
        opt.step()
    torch.testing.assert_close(res.plan, a.detach()[:, 0])
