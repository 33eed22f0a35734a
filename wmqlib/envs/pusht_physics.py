"""The PushT world as DINO-WM released it: a pymunk simulation drawn headless with PIL (the env is ``pusht``).

Facts follow the released environment (gaoyuezhou/dino_wm ``env/pusht``, itself from Diffusion Policy):

- a 512x512 px world with four static border segments (radius 2, from 5 to 506), no gravity and ``damping = 0``
  (bodies lose all velocity every tick, so the block only moves while pushed); physics at 100 Hz, control at 10 Hz.
- the agent: a kinematic circle of radius 15. A raw action a (2,) moves it by a PD controller (kp 100, kv 20)
  toward ``agent_pos + 100 * a`` for ten 10 ms ticks (DINO-WM's dataset actions are relative pixel moves / 100).
  Being kinematic, the agent passes through the border walls, as in the release.
- the block: a T of mass 1 (bar 120x30 px, stem 30x90 px, body origin at the top middle of the bar), centre of
  gravity halfway between the two boxes' centroids, moment twice the bar's (the release passes the bar's vertices
  for both boxes). Shapes have pymunk's default friction 0 (the release sets ``body.friction``, which pymunk ignores).
- state (7) = agent x, y, block x, y, block angle mod 2 pi, agent vx, vy.
- the goal T pose (256, 256, pi/4) is drawn light green in every frame.
- the reset distribution (``sample_start_state``): agent and block at random integer positions, random angle.
"""

from __future__ import annotations

import math

import numpy as np
import pymunk
from PIL import Image, ImageDraw

WINDOW = 512
SIM_HZ, CONTROL_HZ = 100, 10
SUBSTEPS = SIM_HZ // CONTROL_HZ
DT = 1.0 / SIM_HZ
KP, KV = 100.0, 20.0
ACTION_SCALE = 100.0
ACTION_LIMIT = 1.0
AGENT_RADIUS = 15.0
GOAL_POSE = (256.0, 256.0, math.pi / 4)
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


class Sim:
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


def sample_start_state(rng: np.random.Generator) -> np.ndarray:
    """A random PushT state (7,) with the release's reset distribution: agent x, y in [50, 450), block x, y in
    [100, 400) (integers), block angle ``2 pi N(0, 1) - pi`` (taken mod 2 pi), agent at rest."""
    agent = rng.integers(50, 450, size=2)
    block = rng.integers(100, 400, size=2)
    angle = (rng.standard_normal() * 2 * np.pi - np.pi) % (2 * np.pi)
    return np.array([agent[0], agent[1], block[0], block[1], angle, 0.0, 0.0], dtype=np.float64)
