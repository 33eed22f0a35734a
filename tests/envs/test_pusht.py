import math

import numpy as np
import pymunk
import pytest

from wmqlib.envs import PushT
from wmqlib.envs.pusht_physics import (AGENT_RADIUS, BLOCK_FILL, GOAL_GREEN, GOAL_POSE, T_BAR, T_STEM, WALL_GRAY, Sim,
                                       agent_velocities, draw_state, sample_start_state, t_polygons)


def state(agent=(256.0, 450.0), block=(256.0, 250.0, 0.0), vel=(0.0, 0.0)):
    return np.array([*agent, *block, *vel], dtype=float)


def run(env, start, actions):
    env.reset(options={"state": start})
    return np.array([env.get_state()] + [env.advance(a) for a in actions])


def local(points, block):
    """World points (..., 2) in the block frame of block pose (x, y, angle)."""
    c, s = math.cos(block[2]), math.sin(block[2])
    d = np.asarray(points) - block[:2]
    return np.stack([c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1]], axis=-1)


def distance_to_t(p):
    """Distance (px) from block-frame points (N, 2) to the T (0 inside)."""
    def box(lo, hi):
        q = np.maximum(np.maximum(lo - p, p - hi), 0.0)
        return np.hypot(q[:, 0], q[:, 1])
    return np.minimum(box(np.array([-60.0, 0.0]), np.array([60.0, 30.0])),
                      box(np.array([-15.0, 30.0]), np.array([15.0, 120.0])))


def test_pushing_the_stem_moves_the_block_along_the_push():
    env = PushT()
    # the stem's end is 120 px below the body origin: agent 80 px below it, pushing up
    path = run(env, state(agent=(256, 450), block=(256, 250, 0)), [[0.0, -0.3]] * 20)
    moved = path[-1, 2:4] - path[0, 2:4]
    assert moved[1] < -40 and abs(moved[0]) < 5
    assert abs((path[-1, 4] + math.pi) % (2 * math.pi) - math.pi) < 0.05  # a centred push barely turns it


def test_pushing_off_centre_turns_the_block():
    env = PushT()
    path = run(env, state(agent=(306, 200), block=(256, 250, 0)), [[0.0, 0.3]] * 15)  # onto the bar's right arm
    turn = abs((path[-1, 4] - path[0, 4] + math.pi) % (2 * math.pi) - math.pi)
    assert turn > 0.2


def test_block_does_not_move_without_contact():
    env = PushT()
    path = run(env, state(agent=(60, 60), block=(300, 300, 1.0)), [[0.2, 0.0], [0.0, 0.2], [-0.2, -0.1]] * 3)
    np.testing.assert_array_equal(path[:, 2:5], np.repeat(path[:1, 2:5], len(path), axis=0))
    assert not np.allclose(path[-1, :2], path[0, :2])


def test_action_moves_the_agent_toward_agent_plus_100_action():
    env = PushT()
    env.reset(options={"state": state(agent=(100, 100))})
    after = env.advance([0.3, -0.1])
    step = after[:2] - np.array([100.0, 100.0])
    assert 0 < np.linalg.norm(step) < np.linalg.norm([30.0, -10.0])  # PD lag: not there yet
    np.testing.assert_allclose(step / np.linalg.norm(step), np.array([3.0, -1.0]) / math.sqrt(10), atol=1e-9)
    assert after[5] > 0 and after[6] < 0  # still moving toward the target
    for _ in range(60):
        after = env.advance([0.0, 0.0])
    assert np.hypot(after[5], after[6]) < 1e-3  # zero action: the PD controller brings the agent to rest


def test_actions_are_clipped_to_the_action_space():
    env = PushT()
    big = run(env, state(agent=(100, 100)), [[5.0, -3.0]] * 3)
    clipped = run(env, state(agent=(100, 100)), [[1.0, -1.0]] * 3)
    np.testing.assert_array_equal(big, clipped)


def ticks(start, action, steps):
    """Agent position and block pose after every 10 ms tick of ``steps`` control steps: (steps * 10, 5)."""
    sim = Sim()
    sim.reset_to(start)
    s = sim.state()
    vels = agent_velocities(s[None, :2], s[None, 5:7], np.tile(action, (1, steps, 1)))[0]
    out = []
    for v in vels.reshape(-1, 2).tolist():
        sim.run([v])
        out.append(sim.state()[:5])
    return np.array(out)


@pytest.mark.parametrize("direction", [(1.0, 0.0), (1.0, 1.0), (0.0, -1.0), (-1.0, 0.3), (-1.0, -1.0)])
def test_agent_never_tunnels_through_the_block_at_the_maximum_action(direction):
    block = np.array([256.0, 220.0, 0.4])
    u = np.array(direction) / np.linalg.norm(direction)
    cog = block[:2] + local([[0.0, 45.0]], np.array([0, 0, -block[2]]))[0]  # centre of gravity, world
    start = state(agent=cog - u * 110.0, block=block)  # outside the T, aiming at its centre of gravity
    assert distance_to_t(local(start[None, :2], block))[0] > AGENT_RADIUS
    action = np.clip(np.array(direction), -1, 1)  # the largest action along this direction
    path = ticks(start, action, 5)
    in_block_frame = np.array([local(p[None, :2], p[2:5])[0] for p in path])
    # every tick the agent's centre stays outside the T (sunk in by at most ~one tick of travel, 6 px) ...
    assert np.all(distance_to_t(in_block_frame) > AGENT_RADIUS - 8.0)
    # ... and moves less than the T's 30 px thickness relative to it, so it cannot hop across between two ticks
    assert np.all(np.hypot(*np.diff(in_block_frame, axis=0).T) < 15.0)
    assert (path[-1, 2:4] - block[:2]) @ u > 60  # it pushed the block ahead


def test_success_criterion_on_hand_made_states():
    env = PushT()
    goal = np.array([200.0, 300.0, 250.0, 260.0, 0.10, 0.0, 0.0])
    cases = [
        (np.array([200.0, 300.0, 250.0, 260.0, 0.10, 50.0, 50.0]), True),  # velocities do not count
        (np.array([212.0, 300.0, 250.0, 275.0, 0.10, 0.0, 0.0]), True),  # ||(12, 0, 0, 15)|| = 19.2
        (np.array([212.0, 300.0, 250.0, 277.0, 0.10, 0.0, 0.0]), False),  # 20.8 px
        (np.array([200.0, 300.0, 250.0, 260.0, 0.10 + math.pi / 9 - 0.01, 0.0, 0.0]), True),
        (np.array([200.0, 300.0, 250.0, 260.0, 0.10 + math.pi / 9 + 0.01, 0.0, 0.0]), False),
        (np.array([200.0, 300.0, 250.0, 260.0, 2 * math.pi - 0.2, 0.0, 0.0]), True),  # wraps: 0.3 rad apart
    ]
    for cur, expected in cases:
        success, dist = env.eval_state(goal, cur)
        assert success == expected
        assert dist == pytest.approx(np.linalg.norm(goal - cur))
    success, _ = env.eval_state(goal, np.stack([c for c, _ in cases]))
    np.testing.assert_array_equal(success, [e for _, e in cases])


def test_set_state_places_bodies_and_runs_one_tick():
    env = PushT()
    s = state(agent=(120, 80), block=(300, 310, 5.5))
    env.set_state(s)
    np.testing.assert_allclose(env.get_state(), s, atol=1e-9)
    moving = state(agent=(120, 80), block=(300, 310, 5.5), vel=(50.0, -20.0))
    env.set_state(moving)
    np.testing.assert_allclose(env.get_state()[:2], [120.5, 79.8])  # moved by v * 10 ms, as the release's reset
    np.testing.assert_allclose(env.get_state()[2:], moving[2:], atol=1e-9)
    assert 0 <= env.get_state()[4] < 2 * math.pi


def test_drawing_uses_the_physics_transform():
    sim = Sim()
    sim.reset_to(state(block=(210.0, 270.0, 2.2)))
    for poly, verts in zip(t_polygons(210.0, 270.0, 2.2), (T_BAR, T_STEM)):
        expected = [tuple(sim.block.local_to_world(v)) for v in verts]
        np.testing.assert_allclose(poly, expected, atol=1e-9)
    body = pymunk.Body(1, 1)
    body.position, body.angle = GOAL_POSE[:2], GOAL_POSE[2]
    np.testing.assert_allclose(t_polygons(*GOAL_POSE)[1][1], body.local_to_world(T_STEM[1]), atol=1e-9)


def test_scene_colours_and_shapes():
    scene = np.asarray(draw_state(state(agent=(400.0, 420.0), block=(120.0, 120.0, 0.0))))
    assert scene.shape == (512, 512, 3)
    np.testing.assert_array_equal(scene[5, 256], WALL_GRAY)  # top border segment
    np.testing.assert_array_equal(scene[256, 509], [255, 255, 255])  # outside the border: background
    gx = GOAL_POSE[0] - 15 * math.sin(GOAL_POSE[2])  # the goal bar's centre, body (0, 15)
    gy = GOAL_POSE[1] + 15 * math.cos(GOAL_POSE[2])
    np.testing.assert_array_equal(scene[round(gy), round(gx)], GOAL_GREEN)
    np.testing.assert_array_equal(scene[135, 120], BLOCK_FILL)  # inside the bar at y 120..150
    np.testing.assert_array_equal(scene[420, 400], [78, 126, 255])  # the agent's lighter core
    np.testing.assert_array_equal(scene[420, 400 + 13], [65, 105, 225])  # its RoyalBlue rim
    np.testing.assert_array_equal(scene[420, 400 + 18], [255, 255, 255])


def test_render_sizes_and_antialias_modes():
    s = state(agent=(400.0, 420.0), block=(200.0, 150.0, 0.7))
    smooth = PushT(render_size=64).observe(s[None])["visual"][0]
    sharp = PushT(render_size=64, antialias=False).observe(s[None])["visual"][0]
    assert smooth.shape == sharp.shape == (64, 64, 3)
    assert not np.array_equal(smooth, sharp)
    assert np.abs(smooth.astype(int) - sharp).mean() < 10  # same scene, different filters
    assert PushT(render_size=224).render().shape == (224, 224, 3)
    with pytest.raises(TypeError, match="antialias must be a bool"):
        PushT(antialias="yes")


def test_start_state_sampler_follows_the_released_ranges():
    rng = np.random.default_rng(3)
    states = np.stack([sample_start_state(rng) for _ in range(300)])
    assert states[:, :2].min() >= 50 and states[:, :2].max() < 450
    assert states[:, 2:4].min() >= 100 and states[:, 2:4].max() < 400
    assert np.all(states[:, :4] == np.round(states[:, :4]))
    assert states[:, 4].min() >= 0 and states[:, 4].max() < 2 * math.pi and np.all(states[:, 5:] == 0)
