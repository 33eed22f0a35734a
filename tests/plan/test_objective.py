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
