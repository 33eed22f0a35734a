"""PushT: DINO-WM's pymunk T-pushing task, simulated as released and drawn headless with PIL.

Facts follow the released environment (gaoyuezhou/dino_wm ``env/pusht``, itself from Diffusion Policy):

- a 512x512 px world with four static border segments (radius 2, from 5 to 506), no gravity and ``damping = 0``
  (bodies lose all velocity every tick, so the block only moves while pushed); physics at 100 Hz, control at 10 Hz.
- the agent: a kinematic circle of radius 15. A raw action a (2,) moves it by a PD controller (kp 100, kv 20)
  toward ``agent_pos + 100 * a`` for ten 10 ms ticks (DINO-WM's dataset actions are relative pixel moves / 100).
  Being kinematic, the agent passes through the border walls, as in the release.
- the block: a T of mass 1 (bar 120x30 px, stem 30x90 px, body origin at the top middle of the bar), centre of
  gravity halfway between the two boxes' centroids, moment twice the bar's (the release passes the bar's vertices
  for both boxes). Shapes have pymunk's default friction 0 (the release sets ``body.friction``, which pymunk ignores).
- state (7) = agent x, y, block x, y, block angle mod 2 pi, agent vx, vy; proprio (4) = agent x, y, vx, vy.
- ``set_state`` places the bodies (angle before position) and runs one 10 ms tick, as the release does on reset.
- the goal T pose (256, 256, pi/4) is drawn light green in every frame.
- success: ``||goal[:4] - cur[:4]|| < 20`` and wrapped angle difference < pi/9; state_dist = ||goal - cur|| (7-d).

One deliberate difference: actions are clipped to [-1, 1] per component (the released data's std is 0.2), which
bounds the agent's speed (about 7 px per tick) well below the 15 px radius, so it cannot tunnel through the block.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pymunk
from gymnasium import spaces
from PIL import Image, ImageDraw

from wmqlib.envs.base import DATA_STREAM, EPISODE_STREAM, WmqEnv, register_env, resize_images

WINDOW = 512
SIM_HZ, CONTROL_HZ = 100, 10
SUBSTEPS = SIM_HZ // CONTROL_HZ
DT = 1.0 / SIM_HZ
KP, KV = 100.0, 20.0
ACTION_SCALE = 100.0
ACTION_LIMIT = 1.0
AGENT_RADIUS = 15.0
GOAL_POSE = (256.0, 256.0, math.pi / 4)
SUCCESS_POS, SUCCESS_ANGLE = 20.0, math.pi / 9
DEMO_MAX_LEN = 300  # control steps a held-out demonstration may take at most
_DEMO_TAG = 0x44454D4F  # separates the demonstration streams from the scripted pusher's
_PUSHER_EVERY = 4  # "mixed" data: every 4th trajectory comes from the exploratory pusher
_SCALE, _LENGTH = 30.0, 4.0
T_BAR = ((-_LENGTH * _SCALE / 2, _SCALE), (_LENGTH * _SCALE / 2, _SCALE), (_LENGTH * _SCALE / 2, 0.0),
         (-_LENGTH * _SCALE / 2, 0.0))
T_STEM = ((-_SCALE / 2, _SCALE), (-_SCALE / 2, _LENGTH * _SCALE), (_SCALE / 2, _LENGTH * _SCALE), (_SCALE / 2, _SCALE))
WALL_SEGMENTS = (((5, 506), (5, 5)), ((5, 5), (506, 5)), ((506, 5), (506, 506)), ((5, 506), (506, 506)))
WALL_RADIUS = 2.0
# pygame colour names the release uses; "light" = the release's 1.2x brightened fill (capped at 255, truncated).
WHITE, GOAL_GREEN, WALL_GRAY = (255, 255, 255), (144, 238, 144), (211, 211, 211)
BLOCK_EDGE, BLOCK_FILL = (119, 136, 153), (142, 163, 183)
AGENT_EDGE, AGENT_FILL = (65, 105, 225), (78, 126, 255)
_EDGE_WIDTH = 4  # the release's outlines: fat segments of radius 2


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def t_polygons(x: float, y: float, angle: float) -> list[np.ndarray]:
    """World vertices (4, 2) of the T's bar and stem for a body at origin (x, y) rotated by ``angle`` radians."""
    return [_rotate(np.array(poly), angle) + (x, y) for poly in (T_BAR, T_STEM)]


class _Sim:
    """One pymunk space holding the released bodies; ``reset_to`` rebuilds it so no contact history carries over."""

    def __init__(self) -> None:
        self.space = self.agent = self.block = None

    def reset_to(self, state: np.ndarray) -> None:
        space = pymunk.Space()
        space.gravity = (0, 0)
        space.damping = 0
        space.add(*[pymunk.Segment(space.static_body, a, b, WALL_RADIUS) for a, b in WALL_SEGMENTS])
        agent = pymunk.Body(body_type=pymunk.Body.KINEMATIC)
        space.add(agent, pymunk.Circle(agent, AGENT_RADIUS))
        block = pymunk.Body(1, 2 * pymunk.moment_for_poly(1, T_BAR))
        bar, stem = pymunk.Poly(block, T_BAR), pymunk.Poly(block, T_STEM)
        block.center_of_gravity = (bar.center_of_gravity + stem.center_of_gravity) / 2
        space.add(block, bar, stem)
        agent.velocity = (float(state[5]), float(state[6]))
        agent.position = (float(state[0]), float(state[1]))
        block.angle = float(state[4])
        block.position = (float(state[2]), float(state[3]))
        space.step(DT)
        self.space, self.agent, self.block = space, agent, block

    def state(self) -> np.ndarray:
        a, b = self.agent, self.block
        return np.array([a.position.x, a.position.y, b.position.x, b.position.y, b.angle % (2 * math.pi),
                         a.velocity.x, a.velocity.y])

    def run(self, velocities: list) -> None:
        """Tick once per agent velocity (the PD controller's output, precomputed by :func:`agent_velocities`)."""
        agent, step = self.agent, self.space.step
        for v in velocities:
            agent.velocity = v
            step(DT)


def agent_velocities(pos: np.ndarray, vel: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """The PD controller's agent velocities for every tick: (N, T, SUBSTEPS, 2) px/s.

    pos, vel: (N, 2) agent position (px) and velocity (px/s) at the first control step; actions (N, T, 2) clipped raw
    actions. The kinematic agent ignores contacts, so its path depends on the actions only and is integrated here
    with the release's arithmetic (``acc = kp (target - p) + kv (0 - v); v += acc dt; p += v dt``, pymunk's
    kinematic update), vectorised over plans.
    """
    n, horizon = actions.shape[:2]
    out = np.empty((n, horizon, SUBSTEPS, 2))
    p, v = pos.copy(), vel.copy()
    for t in range(horizon):
        target = p + actions[:, t] * ACTION_SCALE
        for i in range(SUBSTEPS):
            acc = KP * (target - p) + KV * (0.0 - v)
            v = v + acc * DT
            p = p + v * DT
            out[:, t, i] = v
    return out


def draw_state(state: np.ndarray) -> Image.Image:
    """The 512x512 scene of one state (7,) as the release draws it with pygame: goal T, border, block, agent."""
    img = Image.new("RGB", (WINDOW, WINDOW), WHITE)
    draw = ImageDraw.Draw(img)
    for poly in t_polygons(*GOAL_POSE):
        draw.polygon([tuple(v) for v in np.round(poly)], fill=GOAL_GREEN)
    for a, b in WALL_SEGMENTS:
        _fat_line(draw, np.array([a, b], dtype=float), WALL_GRAY)
    for poly in t_polygons(state[2], state[3], state[4]):
        pts = np.round(poly)
        draw.polygon([tuple(v) for v in pts], fill=BLOCK_FILL)
        _fat_line(draw, np.vstack([pts, pts[:1]]), BLOCK_EDGE)
    cx, cy = round(state[0]), round(state[1])
    for radius, colour in ((AGENT_RADIUS, AGENT_EDGE), (AGENT_RADIUS - 4, AGENT_FILL)):
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=colour)
    return img


def _fat_line(draw: ImageDraw.ImageDraw, pts: np.ndarray, colour: tuple[int, int, int]) -> None:
    """A polyline of width 4 with round joints, as pygame draws pymunk's fat segments."""
    pts = np.round(pts)
    draw.line([tuple(v) for v in pts], fill=colour, width=_EDGE_WIDTH)
    r = _EDGE_WIDTH / 2
    for x, y in pts:
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)


@register_env
class PushT(WmqEnv):
    """DINO-WM's PushT environment (see the module docstring for every rule).

    Args:
        render_size: side of ``obs["visual"]`` in pixels (64 for the small models, 224 for released checkpoints).
        antialias: shrink the 512 px scene with PIL's antialiased bilinear filter (default). ``False`` samples like
            the release's ``cv2.resize(INTER_LINEAR)`` (bilinear without antialiasing: aliased when shrinking a lot).
        render_mode: ``"rgb_array"`` (default) or None.
    """

    name = "pusht"
    state_dim = 7
    proprio_dim = 4
    plan_opt_steps = 30
    mpc_max_rounds = 30
    num_hist = 3
    predictor_emb_dropout = 0.0
    success_components = (("agent_x", 0, "px", SUCCESS_POS), ("agent_y", 1, "px", SUCCESS_POS),
                          ("block_x", 2, "px", SUCCESS_POS), ("block_y", 3, "px", SUCCESS_POS),
                          ("block_angle", 4, "deg", math.degrees(SUCCESS_ANGLE)))
    released_normalization = {  # DINO-WM's PushT dataset statistics (its actions are rel_actions / 100)
        "action_mean": (-0.0087, 0.0068),
        "action_std": (0.2019, 0.2002),
        "proprio_mean": (236.6155, 264.5674, -2.93032027, 2.54307914),
        "proprio_std": (101.1202, 87.0112, 74.84556075, 74.14009094),
    }
    episode_samplers = ("demo", "scripted")
    default_sampler = "demo"
    unkeyed_sampler = "scripted"
    data_policies = ("demo", "pusher", "mixed")
    default_data_policy = "mixed"

    @classmethod
    def sample_episode(cls, seed: int, sampler: str = "demo",
                       horizon: int = 25) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """DINO-WM's ``goal_source: dset``: the goal is reached by replaying a ``horizon``-action segment of a
        held-out trajectory from the segment's first state; the segment's actions come back as a feasible plan.

        ``"demo"``: the held-out trajectory is a demonstration (:func:`wmqlib.envs.policies.pusht_demonstration`)
        from the release's reset distribution that ends once the T is in place (at least ``horizon`` and at most
        ``DEMO_MAX_LEN`` steps); the segment starts anywhere in it. ``"scripted"``: a ``2 * horizon``-step run of
        the exploratory pusher, the segment starting in its first ``horizon + 1`` steps (wmq's first sampler).
        """
        from wmqlib.envs.policies import pusht_demonstration, pusht_trajectory

        sampler = cls.check_sampler(sampler)
        sim = cls()
        if sampler == "scripted":
            rng = np.random.default_rng([EPISODE_STREAM, seed])
            states, actions = pusht_trajectory(rng, 2 * horizon, sim)
            offset = int(rng.integers(0, horizon + 1))
        else:
            rng = np.random.default_rng([EPISODE_STREAM, _DEMO_TAG, seed])
            states, actions = pusht_demonstration(rng, max(DEMO_MAX_LEN, horizon), sim, min_len=horizon)
            offset = int(rng.integers(0, len(actions) - horizon + 1))
        segment = actions[offset:offset + horizon]
        goal = sim.rollout_actions(states[offset][None], segment[None])[0]
        return states[offset], goal, segment

    @classmethod
    def state_features(cls, states: np.ndarray) -> np.ndarray:
        """Agent x, y, block x, y, sin and cos of the block angle: (..., 6)."""
        states = np.asarray(states, dtype=np.float64)
        return np.concatenate([states[..., :4], np.sin(states[..., 4:5]), np.cos(states[..., 4:5])], axis=-1)

    @classmethod
    def collect_trajectories(cls, n_traj: int, traj_len: int, seed: int, policy: str = "mixed",
                             progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Trajectory i from its own generator (seed, i): ``"pusher"`` the exploratory pusher
        (:func:`wmqlib.envs.policies.pusht_trajectory`), ``"demo"`` the demonstrator
        (:func:`wmqlib.envs.policies.pusht_demonstration`), ``"mixed"`` the pusher for every 4th trajectory
        (i = 3, 7, ...) and the demonstrator for the others."""
        from tqdm.auto import tqdm

        from wmqlib.envs.policies import pusht_demonstration, pusht_trajectory

        policy = cls.check_data_policy(policy)
        sim = cls()
        states = np.empty((n_traj, traj_len + 1, cls.state_dim))
        actions = np.empty((n_traj, traj_len, 2))
        for i in tqdm(range(n_traj), desc=f"pusht {policy} trajectories", disable=not progress):
            pusher = policy == "pusher" or (policy == "mixed" and i % _PUSHER_EVERY == _PUSHER_EVERY - 1)
            if pusher:
                states[i], actions[i] = pusht_trajectory(np.random.default_rng([DATA_STREAM, seed, i]), traj_len, sim)
            else:
                rng = np.random.default_rng([DATA_STREAM, _DEMO_TAG, seed, i])
                states[i], actions[i] = pusht_demonstration(rng, traj_len, sim)
        return states, actions

    def __init__(self, render_size: int = 64, antialias: bool = True, render_mode: str | None = "rgb_array") -> None:
        if not isinstance(antialias, bool):
            raise TypeError(f"antialias must be a bool, got {antialias!r}")
        self.antialias = antialias
        super().__init__(render_size=render_size, render_mode=render_mode)
        self.action_space = spaces.Box(-ACTION_LIMIT, ACTION_LIMIT, (2,), dtype=np.float32)
        self._sim = _Sim()
        self._sim.reset_to(np.array([256.0, 400.0, 256.0, 300.0, 0.0, 0.0, 0.0]))

    def _proprio_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        speed = 1000.0  # px/s; the PD controller's steady speed at the largest action is ~700
        return np.array([0.0, 0.0, -speed, -speed]), np.array([WINDOW, WINDOW, speed, speed], dtype=float)

    def _apply_reset_options(self, options: dict[str, Any]) -> None:
        return None

    def _sample_state(self, rng: np.random.Generator) -> tuple[np.ndarray, None]:
        return sample_start_state(rng), None

    def set_state(self, state: Any) -> None:
        """Place agent and block at ``state`` (7,) and run one 10 ms tick (the release's reset)."""
        self._sim.reset_to(self.check_state(state))

    def get_state(self) -> np.ndarray:
        """The current state, float64 (7,)."""
        return self._sim.state()

    def advance(self, action: Any) -> np.ndarray:
        """Run one 10 Hz control step (ten 100 Hz ticks) for raw action (2,); return the new state (7,)."""
        action = np.clip(self.check_action(action), -ACTION_LIMIT, ACTION_LIMIT)
        sim = self._sim
        pos = np.array([[sim.agent.position.x, sim.agent.position.y]])
        vel = np.array([[sim.agent.velocity.x, sim.agent.velocity.y]])
        sim.run(agent_velocities(pos, vel, action[None, None])[0, 0].tolist())
        return sim.state()

    def proprio_of(self, states: np.ndarray) -> np.ndarray:
        """Proprio = agent x, y, vx, vy: float32 (..., 4)."""
        states = np.asarray(states)
        return np.concatenate([states[..., :2], states[..., 5:7]], axis=-1).astype(np.float32)

    def _render_states(self, states: np.ndarray, size: int) -> np.ndarray:
        out = np.empty((len(states), size, size, 3), dtype=np.uint8)
        if self.antialias or size == WINDOW:
            # PIL's bilinear resize widens its kernel when shrinking (the filter torch's antialias mode copies)
            for k, s in enumerate(states):
                scene = draw_state(s)
                out[k] = np.asarray(scene if size == WINDOW else scene.resize((size, size), Image.Resampling.BILINEAR))
            return out
        chunk = 32  # 512 px scenes are 0.8 MB each: resize a few at a time
        for lo in range(0, len(states), chunk):
            scenes = np.stack([np.asarray(draw_state(s)) for s in states[lo:lo + chunk]])
            out[lo:lo + chunk] = resize_images(scenes, size, antialias=False)
        return out

    def _simulate(self, states: np.ndarray, actions: np.ndarray) -> np.ndarray:
        actions = np.clip(actions, -ACTION_LIMIT, ACTION_LIMIT)
        n, horizon = actions.shape[:2]
        visited = np.empty((n, horizon + 1, 7))
        # The first control step starts after set_state's tick, which moved the agent by v * dt.
        start_pos = states[:, :2] + states[:, 5:7] * DT
        vels = agent_velocities(start_pos, states[:, 5:7], actions)
        sim = _Sim()
        for k in range(n):
            sim.reset_to(states[k])
            visited[k, 0] = sim.state()
            per_step = vels[k].tolist()
            for t in range(horizon):
                sim.run(per_step[t])
                visited[k, t + 1] = sim.state()
        return visited

    def _success_and_distance(self, goal: np.ndarray, cur: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos_diff = np.linalg.norm(goal[..., :4] - cur[..., :4], axis=-1)
        # |difference| wrapped into [0, pi]; equals the release's min(d, 2 pi - d) for angles in [0, 2 pi)
        angle_diff = np.abs((goal[..., 4] - cur[..., 4] + np.pi) % (2 * np.pi) - np.pi)
        success = (pos_diff < SUCCESS_POS) & (angle_diff < SUCCESS_ANGLE)
        return success, np.linalg.norm(goal - cur, axis=-1)


def sample_start_state(rng: np.random.Generator) -> np.ndarray:
    """A random PushT state (7,) with the release's reset distribution: agent x, y in [50, 450), block x, y in
    [100, 400) (integers), block angle ``2 pi N(0, 1) - pi`` (taken mod 2 pi), agent at rest."""
    agent = rng.integers(50, 450, size=2)
    block = rng.integers(100, 400, size=2)
    angle = (rng.standard_normal() * 2 * np.pi - np.pi) % (2 * np.pi)
    return np.array([agent[0], agent[1], block[0], block[1], angle, 0.0, 0.0], dtype=np.float64)
