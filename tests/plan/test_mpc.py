"""MPC control logic with scripted planners and executors (no env, no model)."""

from __future__ import annotations

import pytest
import torch

from wmqlib.plan import MPCConfig, PlanResult, mpc


def _constant_planner(calls: list, horizon: int = 4, action_dim: int = 2):
    """Plans action value = episode index + 10 * round for every step; records (episodes, init) per call."""
    def plan_fn(episodes, init):
        rnd = len(calls)
        calls.append((episodes.clone(), None if init is None else init.clone()))
        plan = (episodes[:, None, None].float() + 10 * rnd).expand(-1, horizon, action_dim).clone()
        steps = torch.arange(horizon, dtype=torch.float32)[None, :, None] / 100  # tags each step
        plan = plan + steps
        losses = torch.full((3, len(episodes)), float(rnd))
        return PlanResult(plan=plan, plans=plan[None].expand(3, -1, -1, -1), losses=losses)
    return plan_fn


def test_success_is_latched_and_finished_episodes_stop():
    calls, executed = [], []
    succeed_at = {0: 0, 1: 2, 2: 99}  # episode -> round at which execution reports success

    def execute(episodes, actions):
        rnd = len(executed)
        executed.append((episodes.clone(), actions.clone()))
        return torch.tensor([succeed_at[int(e)] <= rnd for e in episodes])

    res = mpc(_constant_planner(calls), execute, 3, MPCConfig(max_rounds=4))
    assert res.success.tolist() == [True, True, False]
    assert res.rounds.tolist() == [1, 3, 4]
    assert [c[0].tolist() for c in calls] == [[0, 1, 2], [1, 2], [1, 2], [2]]
    torch.testing.assert_close(res.final_loss, torch.tensor([0.0, 2.0, 3.0]))
    assert len(res.history) == 4 and res.history[0][1].plan.shape == (3, 4, 2)
    # success after each round, latched: episode 0 from round 1, episode 1 from round 3, episode 2 never
    assert res.success_per_round.tolist() == [[True, False, False], [True, False, False], [True, True, False],
                                              [True, True, False]]
    assert torch.equal(res.success_per_round[-1], res.success)


def test_success_per_round_stops_with_the_loop():
    res = mpc(_constant_planner([]), lambda e, a: torch.ones(len(e), dtype=torch.bool), 2, MPCConfig(max_rounds=5))
    assert res.success_per_round.shape == (1, 2) and res.success_per_round.all()  # all done after round 1


def test_execute_steps_and_warm_start_pass_the_rest_of_the_plan():
    calls, executed = [], []

    def execute(episodes, actions):
        executed.append(actions.clone())
        return torch.zeros(len(episodes), dtype=torch.bool)

    mpc(_constant_planner(calls), execute, 2, MPCConfig(max_rounds=2, execute_steps=1))
    assert executed[0].shape == (2, 1, 2)
    assert calls[0][1] is None
    expected = torch.tensor([0.0, 1.0])[:, None, None] + torch.tensor([0.01, 0.02, 0.03])[None, :, None]
    torch.testing.assert_close(calls[1][1], expected.expand(2, 3, 2))


def test_no_warm_start_and_bad_config():
    calls = []
    mpc(_constant_planner(calls), lambda e, a: torch.zeros(len(e), dtype=torch.bool), 1,
        MPCConfig(max_rounds=2, execute_steps=2, warm_start=False))
    assert calls[1][1] is None
    with pytest.raises(ValueError, match="execute_steps"):
        mpc(_constant_planner([]), lambda e, a: torch.zeros(len(e), dtype=torch.bool), 1,
            MPCConfig(execute_steps=5))
    with pytest.raises(ValueError, match="max_rounds"):
        MPCConfig(max_rounds=0)
    with pytest.raises(TypeError, match="warm_start"):
        MPCConfig(warm_start="yes")
    with pytest.raises(TypeError, match="MPCConfig.replay must be True or False"):
        MPCConfig(replay=1)
    assert MPCConfig().replay  # DINO-WM's evaluator replays from the start by default
