import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from wmqlib.envs import Wall, WallLayout
from wmqlib.envs.wall import random_start_goal, render_native, truncated_normal, wall_step, wall_walks

LAYOUT = WallLayout()  # wall columns 29..35, door rows 26..34, borders at 4 and 60


def run(start, actions, layout=LAYOUT):
    """Positions (T+1, 2) of one dot stepped one action at a time."""
    pos = [np.asarray(start, float)]
    for a in actions:
        pos.append(wall_step(pos[-1][None], np.asarray(a, float)[None], layout)[0])
    return np.array(pos)


def test_straight_path_through_the_door_reaches_the_other_side():
    path = run([20.0, 30.0], [[1.0, 0.0]] * 10)
    np.testing.assert_allclose(path[-1], [40.0, 30.0])
    back = run([44.0, 28.0], [[-1.5, 0.0]] * 8)
    np.testing.assert_allclose(back[-1], [20.0, 28.0])


def test_moving_into_the_wall_stops_half_a_pixel_before_it():
    # 28 -> 30 crosses the wall face x = 29 at y = 10 (no door): stop at 29 - 0.5, shifted +0.5 in y as released
    path = run([20.0, 10.0], [[1.0, 0.0]] * 5)
    np.testing.assert_allclose(path[4], [28.0, 10.0])
    np.testing.assert_allclose(path[5], [28.5, 10.5])
    right = run([40.0, 50.0], [[-2.0, 0.0]])  # 40 -> 36 is free; 36 -> 32 meets x = 35 from the right
    np.testing.assert_allclose(right[-1], [36.0, 50.0])
    np.testing.assert_allclose(run([36.0, 50.0], [[-2.0, 0.0]])[-1], [35.5, 50.5])


def test_border_and_door_lintel_collisions():
    np.testing.assert_allclose(run([10.0, 30.0], [[-4.0, 0.0]])[-1], [4.5, 30.5])  # left border x = 4
    np.testing.assert_allclose(run([50.0, 57.0], [[0.0, 3.0]])[-1], [50.5, 59.5])  # bottom border y = 60
    # inside the door, moving down into the wall below it: stop under the lintel y = 34 (x + 0.5 as released)
    np.testing.assert_allclose(run([31.0, 30.0], [[0.0, 3.0]])[-1], [31.5, 33.5])
    np.testing.assert_allclose(run([33.0, 28.0], [[0.5, -2.0]])[-1], [34.0, 26.5])  # crosses y = 26 at x = 33.5


def test_long_moves_cannot_jump_the_far_border():
    # 2 * 40 px through the door: the release (one plane per side) would leave the room; pieces stop at x = 60
    end = run([20.0, 30.0], [[40.0, 0.0]])[-1]
    assert 35.0 < end[0] < 60.0
    np.testing.assert_allclose(end, [59.5, 30.5])


ACTION = st.tuples(st.floats(-12, 12), st.floats(-12, 12))
LAYOUTS = st.builds(WallLayout, st.integers(20, 44), st.integers(10, 54))


@settings(max_examples=120, deadline=None)
@given(layout=st.one_of(st.just(LAYOUT), LAYOUTS), x=st.floats(4.5, 59.5), y=st.floats(4.5, 59.5),
       actions=st.lists(ACTION, min_size=1, max_size=12))
def test_random_paths_stay_in_the_room_and_change_side_only_through_the_door(layout, x, y, actions):
    assume(not (layout.wall_left < x < layout.wall_right and not layout.door_low <= y <= layout.door_high))
    path = run([x, y], actions, layout)
    px, py = path[:, 0], path[:, 1]
    assert np.all((px > 4) & (px < 60) & (py > 4) & (py < 60))
    in_wall = (px > layout.wall_left) & (px < layout.wall_right) & ((py < layout.door_low) | (py > layout.door_high))
    assert not in_wall.any()
    for p, q, a in zip(path[:-1], path[1:], actions):
        crossed = (p[0] <= layout.wall_left and q[0] >= layout.wall_right) or (
            p[0] >= layout.wall_right and q[0] <= layout.wall_left)
        if crossed:  # the dot moved along p + s * a until it stopped, so it passed x = wall_x on that line
            y_mid = p[1] + (layout.wall_x - p[0]) * a[1] / a[0]
            assert layout.door_low <= y_mid <= layout.door_high


@settings(max_examples=100, deadline=None)
@given(x=st.floats(5, 28), y=st.floats(5, 12),
       steps=st.lists(st.tuples(st.floats(0.5, 12), st.floats(-0.3, 0.3)), min_size=1, max_size=10))
def test_paths_into_the_wall_outside_the_door_never_cross_it(x, y, steps):
    path = run([x, y], steps)
    assert np.all(path[:, 0] < LAYOUT.wall_left)


def test_batched_step_equals_single_steps():
    rng = np.random.default_rng(0)
    pos = rng.uniform(5, 59, (64, 2))
    act = rng.normal(0, 3, (64, 2))
    batch = wall_step(pos, act)
    for k in range(64):
        np.testing.assert_array_equal(batch[k], wall_step(pos[k:k + 1], act[k:k + 1])[0])


def test_native_frame_follows_the_definition():
    frame = render_native(np.array([[20.0, 40.0]]))[0]  # [row, col, rgb]; the dot is at column 20, row 40
    np.testing.assert_array_equal(frame[40, 20], [255, 0, 0])
    one_px = 255 - int(255 * math.exp(-1 / (2 * 1.7 ** 2)))  # intensity of a pixel 1 px from the centre
    for r, c in ((40, 21), (40, 19), (39, 20), (41, 20)):
        np.testing.assert_array_equal(frame[r, c], [255, one_px, one_px])
    diag = 255 - int(255 * math.exp(-2 / (2 * 1.7 ** 2)))
    np.testing.assert_array_equal(frame[41, 21], [255, diag, diag])
    assert (frame[4] == 0).all() and (frame[60] == 0).all() and (frame[:, 4] == 0).all() and (frame[:, 60] == 0).all()
    assert (frame[10, 29:36] == 0).all() and (frame[50, 29:36] == 0).all()  # the wall, above and below the door
    assert (frame[26:35, 29:36] == 255).all()  # the door is open (and far from the dot)
    assert (frame[28, 28] == 255).all() and (frame[28, 36] == 255).all()
    np.testing.assert_array_equal(frame[2, 2], [255, 255, 255])  # outside the border lines: background


def test_peak_is_at_the_pixels_nearest_a_fractional_position():
    frame = render_native(np.array([[20.5, 40.25]]))[0]
    lowered = np.where(frame[..., 0] == 255, 255 - frame[..., 1].astype(int), 0)  # walls are black, not red
    assert lowered.max() == 255
    assert set(zip(*np.nonzero(lowered == 255))) == {(40, 20), (40, 21)}
    assert lowered[45, 20] < lowered[42, 20] < lowered[41, 20] < 255


def test_resized_frames_keep_walls_black_and_background_white():
    env = Wall(render_size=224)
    env.reset(options={"state": [12.0, 50.0]})
    img = env.render()
    assert img.shape == (224, 224, 3)
    np.testing.assert_array_equal(img[40, 110], [0, 0, 0])  # native row ~11.6, column 32: the wall
    np.testing.assert_array_equal(img[110, 110], [255, 255, 255])  # the door
    np.testing.assert_array_equal(img[0, 0], [255, 255, 255])
    peak = np.unravel_index(np.argmax(img[..., 0].astype(int) - img[..., 1]), img.shape[:2])  # reddest pixel
    assert abs(peak[0] - 50.5 * 224 / 65 + 0.5) <= 2 and abs(peak[1] - 12.5 * 224 / 65 + 0.5) <= 2
    assert env.render(64).shape == (64, 64, 3)


def test_eval_state_uses_the_released_threshold():
    env = Wall()
    assert env.eval_state(np.array([30.0, 30.0]), np.array([30.0, 34.49]))[0]
    success, dist = env.eval_state(np.array([30.0, 30.0]), np.array([30.0, 34.5]))
    assert not success and dist == pytest.approx(4.5)
    success, dist = env.eval_state(np.array([10.0, 10.0]), np.array([[13.0, 14.0], [13.0, 13.0]]))
    np.testing.assert_array_equal(success, [False, True])
    np.testing.assert_allclose(dist, [5.0, math.sqrt(18)])


def test_sampler_reproduces_the_released_draws():
    u = np.random.RandomState(7).random_sample(5)  # start_x, goal_x, start_y, goal_y, swap coin
    lo, left_hi, right_lo, hi = 4 + 3.4, 29 - 3.4, 35 + 3.4, 64 - 7.4
    sx, gx = lo + (left_hi - lo) * u[0], right_lo + (hi - right_lo) * u[1]
    sy, gy = lo + (hi - lo) * u[2], lo + (hi - lo) * u[3]
    if u[4] < 0.5:
        sx, gx = gx, sx
    start, goal = random_start_goal(7)
    np.testing.assert_allclose(start, [sx, sy], rtol=1e-12)
    np.testing.assert_allclose(goal, [gx, gy], rtol=1e-12)


def test_sampler_puts_start_and_goal_on_opposite_sides():
    pairs = [random_start_goal(s) for s in range(200)]
    starts, goals = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    assert np.all((starts[:, 0] < 32) != (goals[:, 0] < 32))
    both = np.concatenate([starts, goals])
    assert both.min() >= 7.4 and both.max() <= 56.6
    assert np.all((both[:, 0] <= 25.6) | (both[:, 0] >= 38.4))
    assert 0.35 < np.mean(starts[:, 0] < 32) < 0.65


def test_layouts_move_the_wall_and_are_validated():
    env = Wall(render_size=65)
    env.reset(options={"state": [10.0, 10.0], "layout": (40, 20)})
    img = env.render()
    assert (img[50, 37:44] == 0).all() and (img[20, 37:44] == 255).all() and (img[50, 30] == 255).all()
    np.testing.assert_allclose(env.rollout_actions(np.array([[30.0, 50.0]]), np.array([[[4.0, 0.0]]]))[0],
                               [36.5, 50.5])
    env.reset(options={"state": [10.0, 10.0]})
    assert env.layout == WallLayout()  # a layout lasts one episode
    with pytest.raises(ValueError, match=r"wall_x must be in \[20, 44\]"):
        Wall(wall_x=50)
    with pytest.raises(ValueError, match="layout must be"):
        env.reset(options={"layout": (30,)})


def test_crossed_counts_trajectories_that_change_side():
    env = Wall()
    states = np.stack([run([20.0, 30.0], [[1.0, 0.0]] * 10), run([20.0, 10.0], [[1.0, 0.0]] * 10)])
    np.testing.assert_array_equal(env.crossed(states), [True, False])


def test_truncated_normal_respects_its_bounds():
    x = truncated_normal(np.random.default_rng(0), (5000,), 1.0, 0.4, 0.2, 1.8)
    assert x.min() >= 0.2 and x.max() <= 1.8 and abs(x.mean() - 1.0) < 0.02


def test_wall_walks_take_released_step_lengths():
    start, actions = wall_walks(np.random.default_rng(1), 300, 25)
    assert start.shape == (300, 2) and actions.shape == (300, 25, 2)
    lengths = np.hypot(actions[..., 0], actions[..., 1])
    assert lengths.min() >= 0.2 - 1e-12 and lengths.max() <= 1.8 + 1e-12
    assert np.all(np.abs(actions) <= Wall().action_space.high[0])


def test_door_seeking_walks_cross_the_wall():
    env = Wall()
    start, actions = wall_walks(np.random.default_rng(2), 400, 25, door_fraction=1.0)
    assert env.crossed(env.rollout_states(start, actions)).mean() > 0.85
    start, actions = wall_walks(np.random.default_rng(2), 400, 25, door_fraction=0.0)
    assert env.crossed(env.rollout_states(start, actions)).mean() < 0.2  # free walks rarely find the door
    with pytest.raises(ValueError, match="door_fraction"):
        wall_walks(np.random.default_rng(0), 2, 3, door_fraction=1.5)
