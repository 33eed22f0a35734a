"""Objective: hand-derived values of both modes, encode once, chunking, device/dtype handling, bad input."""

from __future__ import annotations

import pytest
import torch

from wmqlib.plan import Objective, ObjectiveConfig, encode_observations, latent_mse, model_device_dtype


def _ramp(batch: int, frames: int) -> dict:
    """visual[:, t] = t everywhere, proprio[:, t] = 2 t everywhere."""
    t = torch.arange(frames, dtype=torch.float32)
    return {"visual": t[None, :, None, None].expand(batch, frames, 3, 4).clone(),
            "proprio": (2 * t)[None, :, None].expand(batch, frames, 2).clone()}


def test_latent_mse_last_and_all_hand_derived():
    pred = _ramp(2, 3)  # frames 0, 1, 2 (H = 2)
    goal = {"visual": torch.zeros(2, 1, 3, 4), "proprio": torch.zeros(2, 1, 2)}
    # last: visual MSE 2^2 = 4, proprio MSE 4^2 = 16 -> 4 + 0.5 * 16 = 12
    torch.testing.assert_close(latent_mse(pred, goal, ObjectiveConfig(alpha=0.5)), torch.full((2,), 12.0))
    # all, base 2: weights (2, 4) / 6 on frames 1, 2: per-frame 1 + 0.5 * 4 = 3 and 12 -> 1 + 8 = 9
    torch.testing.assert_close(latent_mse(pred, goal, ObjectiveConfig(mode="all", alpha=0.5)), torch.full((2,), 9.0))


def test_objective_matches_per_sequence_rollouts(tiny_model, tiny_obs):
    start, goal = (encode_observations(tiny_model, o) for o in tiny_obs)
    assert start["visual"].shape == (3, 1, 4, 6) and start["proprio"].shape == (3, 1, 3)
    actions = torch.randn(3, 5, 4, 4, generator=torch.Generator().manual_seed(0))
    costs = Objective(tiny_model, start, goal)(actions)
    assert costs.shape == (3, 5) and costs.dtype == torch.float32
    for e in range(3):
        z0 = {k: v[e:e + 1] for k, v in start.items()}
        g = {k: v[e:e + 1] for k, v in goal.items()}
        for s in range(5):
            ref = latent_mse(tiny_model.rollout(z0, actions[e, s:s + 1]), g)
            torch.testing.assert_close(costs[e, s], ref[0])


@pytest.mark.parametrize("chunk, calls", [(1, [(1, 1)] * 18), (4, [(1, 4), (1, 2)] * 3), (7, [(1, 6)] * 3),
                                          (12, [(2, 12), (1, 6)]), (1000, [(3, 18)])])
def test_chunking_bounds_batch_and_keeps_costs(tiny_model, tiny_obs, chunk, calls):
    """E = 3 episodes x S = 6 samples: blocks hold whole episodes (B0 starts broadcast over their samples) and at
    most ``chunk`` sequences; an episode is split only when its samples alone exceed ``chunk``."""
    start, goal = (encode_observations(tiny_model, o) for o in tiny_obs)
    actions = torch.randn(3, 6, 2, 4, generator=torch.Generator().manual_seed(1))
    reference = torch.stack([latent_mse(tiny_model.rollout({k: v[e:e + 1] for k, v in start.items()}, actions[e]),
                                        {k: v[e:e + 1] for k, v in goal.items()}) for e in range(3)])
    tiny_model.rollout_batches.clear()
    costs = Objective(tiny_model, start, goal, chunk=chunk)(actions)
    torch.testing.assert_close(costs, reference)
    assert tiny_model.rollout_batches == calls


def test_gradients_reach_every_chunk(tiny_model, tiny_obs):
    start, goal = (encode_observations(tiny_model, o) for o in tiny_obs)
    actions = torch.randn(3, 6, 2, 4, generator=torch.Generator().manual_seed(2), requires_grad=True)
    Objective(tiny_model, start, goal, chunk=4)(actions).sum().backward()
    assert (actions.grad.flatten(2).abs().sum(dim=2) > 0).all()


def test_dtype_and_device_follow_the_model(tiny_model, tiny_obs):
    model = tiny_model.double()
    assert model_device_dtype(model) == (torch.device("cpu"), torch.float64)
    start, goal = (encode_observations(model, o) for o in tiny_obs)
    assert start["visual"].dtype == torch.float64
    costs = Objective(model, start, goal)(torch.zeros(3, 2, 5, 4))
    assert costs.dtype == torch.float32 and torch.isfinite(costs).all()


def test_bad_input_is_reported(tiny_model, tiny_obs):
    start, goal = (encode_observations(tiny_model, o) for o in tiny_obs)
    objective = Objective(tiny_model, start, goal)
    with pytest.raises(ValueError, match="actions must be"):
        objective(torch.zeros(2, 5, 5, 4))
    with pytest.raises(ValueError, match="mode"):
        ObjectiveConfig(mode="first")
    with pytest.raises(ValueError, match="same number of episodes"):
        Objective(tiny_model, start, {k: v[:2] for k, v in goal.items()})
    with pytest.raises(TypeError, match="PlanningModel"):
        Objective(object(), start, goal)
    with pytest.raises(ValueError, match="uint8"):
        encode_observations(tiny_model, {"visual": tiny_obs[0]["visual"].astype("float32"),
                                         "proprio": tiny_obs[0]["proprio"]})


@pytest.mark.parametrize("mode, visual_weight, alpha, expected", [
    # last frame: visual MSE 4, proprio MSE 16 (see test_latent_mse_last_and_all_hand_derived)
    ("last", 0.0, 0.5, 8.0), ("last", 2.0, 0.0, 8.0), ("last", 0.25, 1.0, 17.0),
    # all, base 2, weights (2, 4) / 6 on frames 1 (visual 1, proprio 4) and 2 (visual 4, proprio 16)
    ("all", 0.0, 1.0, (2 * 4 + 4 * 16) / 6), ("all", 3.0, 0.0, 3 * (2 * 1 + 4 * 4) / 6),
])
def test_visual_weight_hand_derived(mode, visual_weight, alpha, expected):
    pred = _ramp(2, 3)
    goal = {"visual": torch.zeros(2, 1, 3, 4), "proprio": torch.zeros(2, 1, 2)}
    cfg = ObjectiveConfig(mode=mode, alpha=alpha, visual_weight=visual_weight)
    torch.testing.assert_close(latent_mse(pred, goal, cfg), torch.full((2,), expected))


@pytest.mark.parametrize("mode", ["last", "all"])
def test_default_objective_is_visual_plus_alpha_proprio_bit_for_bit(mode):
    """visual-only + alpha * proprio-only reproduces the default (visual_weight 1) objective exactly."""
    g = torch.Generator().manual_seed(3)
    pred = {"visual": torch.randn(6, 4, 5, 7, generator=g), "proprio": torch.randn(6, 4, 3, generator=g)}
    goal = {"visual": torch.randn(2, 1, 5, 7, generator=g), "proprio": torch.randn(2, 1, 3, generator=g)}
    default = latent_mse(pred, goal, ObjectiveConfig(mode=mode, alpha=0.7))
    assert ObjectiveConfig().visual_weight == 1.0
    if mode == "last":
        visual = latent_mse(pred, goal, ObjectiveConfig(mode=mode, alpha=0.0))
        proprio = latent_mse(pred, goal, ObjectiveConfig(mode=mode, alpha=1.0, visual_weight=0.0))
        assert torch.equal(default, visual + 0.7 * proprio)
    assert torch.equal(default, latent_mse(pred, goal, ObjectiveConfig(mode=mode, alpha=0.7, visual_weight=1.0)))


def test_each_ablation_ignores_the_other_latent(tiny_model, tiny_obs):
    """Proprio only: the goal's visual latent does not matter; visual only: its proprio latent does not."""
    start, goal = (encode_observations(tiny_model, o) for o in tiny_obs)
    actions = torch.randn(3, 4, 2, 4, generator=torch.Generator().manual_seed(5))
    moved = {"visual": goal["visual"] + 1.0, "proprio": goal["proprio"] - 2.0}
    for cfg, changed in ((ObjectiveConfig(visual_weight=0.0), "visual"), (ObjectiveConfig(alpha=0.0), "proprio")):
        other_goal = goal | {changed: moved[changed]}
        torch.testing.assert_close(Objective(tiny_model, start, other_goal, cfg)(actions),
                                   Objective(tiny_model, start, goal, cfg)(actions), rtol=0, atol=0)
    both = ObjectiveConfig()
    for changed in ("visual", "proprio"):
        assert not torch.equal(Objective(tiny_model, start, goal | {changed: moved[changed]}, both)(actions),
                               Objective(tiny_model, start, goal, both)(actions))


@pytest.mark.parametrize("kwargs, match", [
    ({"visual_weight": -1.0}, "ObjectiveConfig.visual_weight must be a finite number >= 0"),
    ({"visual_weight": float("nan")}, "ObjectiveConfig.visual_weight"),
    ({"visual_weight": "1"}, "ObjectiveConfig.visual_weight"),
    ({"visual_weight": 0.0, "alpha": 0.0}, "must not both be 0"),
    ({"alpha": -0.5}, "ObjectiveConfig.alpha must be a finite number >= 0"),
    ({"base": 0.0}, "ObjectiveConfig.base must be a finite number > 0"),
])
def test_objective_config_names_the_bad_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ObjectiveConfig(**kwargs)
    with pytest.raises(TypeError, match=match):
        ObjectiveConfig(**kwargs)
