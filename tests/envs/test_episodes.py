import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wmqlib.envs import Episode, PushT, episode_seeds, make_env, sample_episodes
from wmqlib.envs.wall import random_start_goal


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(3, 10 ** 6), n=st.integers(1, 300))
def test_the_splits_seeds_never_overlap(seed, n):
    splits = [set(episode_seeds(n, seed, split)) for split in ("eval", "calib", "online")]
    assert [len(s) for s in splits] == [n] * 3
    assert not (splits[0] & splits[1] or splits[0] & splits[2] or splits[1] & splits[2])


def test_seeds_follow_the_released_rule():
    assert episode_seeds(4, 99, "eval") == [1, 100, 199, 298]
    assert episode_seeds(3, 99, "calib") == [2, 101, 200]


@pytest.mark.parametrize("seed, error", [(2, "make the splits' seeds overlap"), (1, "make the splits' seeds overlap"),
                                         (0, "repeats one episode"), (-3, "seed must be an int >= 3")])
def test_degenerate_seeds_are_refused(seed, error):
    with pytest.raises(ValueError, match=error):
        episode_seeds(5, seed)


@pytest.mark.parametrize("kwargs, error", [
    ({"env": "maze", "n": 2}, "env must be one of"), ({"env": "wall", "n": 0}, "n must be an int >= 1"),
    ({"env": "wall", "n": 2, "split": "test"}, "split must be one of"),
    ({"env": "pusht", "n": 2, "goal_H": 0}, "goal_H must be an int >= 1"),
    ({"env": "pusht", "n": 2, "frameskip": 2.5}, "frameskip must be an int"),
])
def test_bad_arguments_are_refused(kwargs, error):
    with pytest.raises((ValueError, TypeError), match=error):
        sample_episodes(**kwargs)


@pytest.mark.parametrize("env", ["wall", "pusht"])
def test_sampler_gives_identical_episodes_twice(env):
    first, second = sample_episodes(env, 4, seed=7), sample_episodes(env, 4, seed=7)
    assert first == second and len(set(first) | set(second)) == 4
    calib = sample_episodes(env, 4, seed=7, split="calib")
    assert not set(first) & set(calib)
    assert all(e.env == env and e.split == "eval" for e in first) and [e.seed for e in first] == [1, 8, 15, 22]


def test_wall_episodes_are_the_released_sampler_draws():
    episodes = sample_episodes("wall", 3, seed=99)
    for episode, seed in zip(episodes, [1, 100, 199]):
        start, goal = random_start_goal(seed)
        np.testing.assert_array_equal(episode.start_state, start)
        np.testing.assert_array_equal(episode.goal_state, goal)
        assert episode.actions is None and (start[0] < 32) != (goal[0] < 32)


@pytest.mark.parametrize("sampler", ["scripted", "demo"])
def test_pusht_goals_are_reached_by_replaying_the_episode_actions(sampler):
    env = make_env("pusht")
    episodes = sample_episodes("pusht", 3 if sampler == "scripted" else 8, seed=99, goal_H=2, frameskip=5,
                               sampler=sampler)
    for episode in episodes:
        assert episode.start_state.shape == episode.goal_state.shape == (7,) and episode.actions.shape == (10, 2)
        final = env.rollout_actions(episode.start_state[None], episode.actions[None])[0]
        np.testing.assert_array_equal(final, episode.goal_state)
    block_moves = [np.hypot(*(e.goal_state[2:4] - e.start_state[2:4])) for e in episodes]
    assert max(block_moves) > 5.0  # both policies move the block in some windows


def test_episodes_are_read_only_and_compare_by_value():
    episode = sample_episodes("wall", 1)[0]
    with pytest.raises(ValueError):
        episode.start_state[0] = 3.0
    with pytest.raises(AttributeError):
        episode.seed = 4
    copy = Episode(episode.start_state.copy(), episode.goal_state.copy(), episode.seed, episode.env)
    assert copy == episode and hash(copy) == hash(episode)
    moved = Episode(episode.start_state + 1, episode.goal_state, episode.seed, episode.env)
    assert moved != episode


def test_the_scripted_sampler_is_wmqs_first_one():
    from wmqlib.envs.base import EPISODE_STREAM
    from wmqlib.envs.policies import pusht_trajectory

    episode = sample_episodes("pusht", 2, seed=99, sampler="scripted")[1]
    rng = np.random.default_rng([EPISODE_STREAM, 100])
    states, actions = pusht_trajectory(rng, 50, PushT())
    offset = int(rng.integers(0, 26))
    np.testing.assert_array_equal(episode.start_state, states[offset])
    np.testing.assert_array_equal(episode.actions, actions[offset:offset + 25])


def test_demo_windows_ask_for_less_block_travel_than_scripted_ones():
    def travel(sampler):
        episodes = sample_episodes("pusht", 10, seed=99, sampler=sampler)
        return np.median([np.hypot(*(e.goal_state[2:4] - e.start_state[2:4])) for e in episodes])

    assert travel("demo") < 0.5 * travel("scripted")
    with pytest.raises(ValueError, match="sampler .*must be one of"):
        sample_episodes("wall", 1, sampler="demo")
