"""wmqlib.ceiling: CEM and MPC on the true simulator, on hand-placed Wall episodes."""

import numpy as np
import pytest

from wmqlib.ceiling import simulator_plan
from wmqlib.envs import Episode, make_env
from wmqlib.envs.wall import SUCCESS_RADIUS
from wmqlib.models import load_world_model
from wmqlib.plan import CEMConfig, GDConfig, MPCConfig

PLANNER = CEMConfig(samples=100, topk=10, opt_steps=5)


def episode(start, goal, seed):
    return Episode(start_state=np.array(start, float), goal_state=np.array(goal, float), seed=seed, env="wall")


# 0: goal 8 px away on the start's side; 1: goal behind the middle wall, the door (rows 26-34) far from both
EPISODES = [episode([15.0, 15.0], [21.0, 20.0], 1), episode([13.6, 51.9], [44.8, 51.8], 2)]


@pytest.fixture(scope="module")
def setup(tiny):
    return load_world_model(tiny), make_env("wall")


def test_a_goal_in_reach_is_reached_and_a_goal_behind_the_wall_is_not(setup):
    model, env = setup
    table = simulator_plan(model, env, EPISODES, PLANNER)
    assert list(table["episode"]) == [0, 1] and list(table["seed"]) == [1, 2]
    assert list(table["success"]) == [True, False]
    assert table["state_dist"][0] < SUCCESS_RADIUS < table["state_dist"][1]
    assert list(table["rounds"]) == [1, 1]  # open loop: one plan each


def test_same_seed_same_plans_and_another_seed_other_plans(setup):
    model, env = setup
    first = simulator_plan(model, env, EPISODES, PLANNER)
    assert first.equals(simulator_plan(model, env, EPISODES, PLANNER))
    assert not np.array_equal(first["state_dist"], simulator_plan(model, env, EPISODES, PLANNER, seed=1)["state_dist"])


def test_mpc_keeps_the_open_loop_successes_and_replans_the_rest(setup):
    model, env = setup
    open_loop = simulator_plan(model, env, EPISODES, PLANNER)
    closed = simulator_plan(model, env, EPISODES, PLANNER, MPCConfig(max_rounds=3))
    # round 1 of MPC is the open-loop plan (same generators, no warm start): its success ends the episode there
    assert closed["success"][0] and closed["rounds"][0] == 1 and closed["state_dist"][0] == open_loop["state_dist"][0]
    assert 1 <= closed["rounds"][1] <= 3 and (closed["success"][1] or closed["rounds"][1] == 3)


def test_bad_input_is_refused(setup):
    model, env = setup
    with pytest.raises(TypeError, match="planner must be a CEMConfig"):
        simulator_plan(model, env, EPISODES, GDConfig())
    with pytest.raises(ValueError, match="episodes must be a non-empty"):
        simulator_plan(model, env, [], PLANNER)
    with pytest.raises(ValueError, match="start_state"):
        simulator_plan(model, env, [episode([1.0, 2.0, 3.0], [4.0, 5.0, 6.0], 0)], PLANNER)
