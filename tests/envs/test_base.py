import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from wmqlib.envs import PushT, Wall, env_names, make_env
from wmqlib.envs.base import resize_images

START = {"wall": np.array([20.0, 40.0]), "pusht": np.array([200.0, 420.0, 256.0, 300.0, 0.4, 30.0, -20.0])}


@pytest.fixture(params=["wall", "pusht"])
def env(request):
    return make_env(request.param, render_size=32)


def test_make_env_builds_each_registered_env():
    assert env_names() == ("pusht", "wall")
    assert isinstance(make_env("wall"), Wall) and isinstance(make_env("pusht", render_size=48), PushT)
    assert make_env("pusht", render_size=48).render_size == 48


def test_make_env_rejects_unknown_names_listing_allowed():
    with pytest.raises(ValueError, match=r"unknown env 'maze'.*'pusht', 'wall'"):
        make_env("maze")
    with pytest.raises(TypeError, match="env name must be a str"):
        make_env(3)


@pytest.mark.parametrize("bad", [0, 7, 2048, 64.0, True])
def test_render_size_is_validated(bad):
    with pytest.raises((ValueError, TypeError), match="render_size"):
        make_env("wall", render_size=bad)


def test_gymnasium_env_checker_passes(env):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, skip_render_check=False)
    messages = [str(w.message) for w in caught]
    # Wall's action box is the released data's range [-1.8, 1.8]; gymnasium merely recommends [-1, 1].
    allowed = "we recommend using a symmetric and normalized space"
    assert [m for m in messages if allowed not in m and "not having a spec" not in m] == []


def test_spaces_describe_observations(env):
    obs, info = env.reset(seed=5)
    assert env.observation_space.contains(obs)
    assert obs["visual"].shape == (32, 32, 3) and obs["visual"].dtype == np.uint8
    assert obs["proprio"].dtype == np.float32 and obs["proprio"].shape == (env.proprio_dim,)
    assert info["state"].dtype == np.float64 and info["state"].shape == (env.state_dim,)


def test_same_seed_gives_same_episode_and_other_seeds_differ(env):
    obs_a, info_a = env.reset(seed=11)
    obs_b, info_b = env.reset(seed=11)
    _, info_c = env.reset(seed=12)
    np.testing.assert_array_equal(info_a["state"], info_b["state"])
    np.testing.assert_array_equal(obs_a["visual"], obs_b["visual"])
    assert not np.array_equal(info_a["state"], info_c["state"])


def test_reset_with_state_starts_there(env):
    state = START[env.name].copy()
    state[-2:] = 0.0 if env.name == "pusht" else state[-2:]
    _, info = env.reset(options={"state": state})
    np.testing.assert_allclose(info["state"], state, atol=1e-9)
    np.testing.assert_array_equal(env.get_state(), info["state"])


def test_reset_rejects_unknown_options_and_bad_states(env):
    with pytest.raises(ValueError, match="unknown reset options.*'state'"):
        env.reset(options={"start": START[env.name]})
    with pytest.raises(ValueError, match=rf"state must have shape \({env.state_dim},\)"):
        env.reset(options={"state": np.zeros(env.state_dim + 1)})
    with pytest.raises(ValueError, match="state must be finite"):
        env.reset(options={"state": np.full(env.state_dim, np.nan)})


def test_step_rejects_bad_actions(env):
    env.reset(options={"state": START[env.name]})
    with pytest.raises(ValueError, match=r"action must have shape \(2,\)"):
        env.step(np.zeros(3))
    with pytest.raises(ValueError, match="action must be finite"):
        env.step(np.array([np.inf, 0.0]))
    with pytest.raises(TypeError, match="action must be a numeric array"):
        env.step("left")


def test_goal_gives_reward_and_termination(env):
    start = START[env.name]
    env.reset(options={"state": start, "goal_state": start})
    _, reward, terminated, truncated, info = env.step(np.zeros(2))
    success, dist = env.eval_state(start, info["state"])
    assert reward == pytest.approx(-dist) and terminated == success and truncated is False
    assert info["success"] == success and "goal_state" in info
    env.reset(options={"state": start})
    _, reward, terminated, _, info = env.step(np.zeros(2))
    assert reward == 0.0 and terminated is False and "goal_state" not in info


def test_eval_state_batches_and_broadcasts(env):
    rng = np.random.default_rng(0)
    goals = START[env.name] + rng.normal(0, 3, (6, env.state_dim))
    cur = START[env.name] + rng.normal(0, 3, (6, env.state_dim))
    success, dist = env.eval_state(goals, cur)
    assert success.shape == dist.shape == (6,) and success.dtype == bool
    for k in range(6):
        s, d = env.eval_state(goals[k], cur[k])
        assert s == success[k] and d == pytest.approx(dist[k])
    s_b, d_b = env.eval_state(goals[0], cur)
    assert d_b.shape == (6,) and d_b[0] == pytest.approx(dist[0])
    with pytest.raises(ValueError, match="goal_state must have shape"):
        env.eval_state(np.zeros(env.state_dim + 2), cur)
    with pytest.raises(ValueError, match="batch sizes differ"):
        env.eval_state(goals[:2], cur)


def test_rollout_actions_equals_stepping_one_by_one(env):
    rng = np.random.default_rng(1)
    starts = np.stack([START[env.name], START[env.name] + 5.0])
    actions = rng.normal(0, 0.4, (2, 6, 2))
    final, frames = env.rollout_actions(starts, actions, render_size=24)
    assert final.shape == (2, env.state_dim) and frames.shape == (2, 7, 24, 24, 3) and frames.dtype == np.uint8
    for k in range(2):
        env.reset(options={"state": starts[k]})
        np.testing.assert_array_equal(frames[k, 0], env.render(24))
        for t in range(6):
            env.step(actions[k, t])
            np.testing.assert_array_equal(frames[k, t + 1], env.render(24))
        np.testing.assert_array_equal(env.get_state(), final[k])
    np.testing.assert_array_equal(env.rollout_actions(starts, actions), final)


def test_rollout_actions_leaves_the_env_episode_alone(env):
    env.reset(options={"state": START[env.name]})
    before = env.get_state()
    env.rollout_actions(np.stack([START[env.name]] * 3), np.ones((3, 4, 2)) * 0.5)
    np.testing.assert_array_equal(env.get_state(), before)


def test_rollout_actions_validates_shapes(env):
    with pytest.raises(ValueError, match=rf"states must have shape \(N, {env.state_dim}\)"):
        env.rollout_actions(np.zeros(env.state_dim), np.zeros((1, 3, 2)))
    with pytest.raises(ValueError, match=r"actions must have shape \(2, N, 2\)"):
        env.rollout_actions(np.stack([START[env.name]] * 2), np.zeros((3, 4, 2)))


def test_observe_matches_render_of_each_state(env):
    states = np.stack([START[env.name], START[env.name] + 7.0])
    obs = env.observe(states, 20)
    assert obs["visual"].shape == (2, 20, 20, 3) and obs["proprio"].shape == (2, env.proprio_dim)
    env.reset(options={"state": states[1]})
    # PushT's reset tick moves the agent by velocity * 10 ms, so compare with a frame of the state itself
    np.testing.assert_array_equal(obs["visual"][1], env.observe(states[1:], 20)["visual"][0])
    with pytest.raises(ValueError, match="size must be in"):
        env.observe(states, 4)


def test_resize_images_bilinear_half_pixel_reference():
    img = np.zeros((1, 2, 2, 3))
    img[0, :, 1] = 100.0
    out = resize_images(img, 4)  # output centres map to x = -0.25, 0.25, 0.75, 1.25 (clamped at the edges)
    np.testing.assert_array_equal(out[0, 0, :, 0], [0, 25, 75, 100])
    np.testing.assert_array_equal(resize_images(img, 2)[0, :, :, 0], [[0, 100], [0, 100]])
    flat = np.full((2, 9, 9, 3), 200, np.uint8)
    assert (resize_images(flat, 5, antialias=False) == 200).all() and (resize_images(flat, 13) == 200).all()
