"""Scripted data-collection policies: Wall random walks that use the door, and a noisy PushT pusher.

Both draw every random number from a ``np.random.Generator`` they are given, so a seed fixes the data.
"""

from __future__ import annotations

import math

import numpy as np

from wmqlib.envs import pusht, wall

# Wall: the released data generator's step model (DotDataset config): heading noise von Mises with concentration
# 1 / 0.2, step length a normal(1, 0.4) truncated to [0.2, 1.8]; the env moves 2 px per unit of action.
HEADING_CONCENTRATION = 1 / 0.2
STEP_MEAN, STEP_STD, STEP_LOW, STEP_HIGH = 1.0, 0.4, 0.2, 1.8
DOOR_PULL = 0.6  # fraction of the bearing error a door-seeking walk corrects per step
DOOR_REACH = (2.0, 16.0)  # px between a door-seeking walk's start and the wall face


def truncated_normal(rng: np.random.Generator, size: tuple[int, ...], mean: float, std: float, low: float,
                     high: float) -> np.ndarray:
    """Samples of a normal(mean, std) truncated to [low, high], by rejection (float64, ``size``)."""
    out = rng.normal(mean, std, size)
    bad = (out < low) | (out > high)
    while bad.any():
        out[bad] = rng.normal(mean, std, int(bad.sum()))
        bad = (out < low) | (out > high)
    return out


def _wrap(angle: np.ndarray) -> np.ndarray:
    return (angle + np.pi) % (2 * np.pi) - np.pi


def wall_walks(rng: np.random.Generator, n: int, horizon: int, layout: wall.WallLayout = wall.WallLayout(),
               door_fraction: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Random-walk starts (n, 2) and raw actions (n, horizon, 2) for Wall datasets.

    Every walk keeps its heading with von Mises noise and draws step lengths like the released generator. A
    ``door_fraction`` of them start 2-16 px from the wall face, within 10 px of the door row, steer toward a point
    in front of the door, then to a point beyond it, then wander on; the rest start anywhere in the free room with a
    uniform heading. Headings are closed-loop, so actions are computed while simulating the dynamics
    (:func:`wmqlib.envs.wall.wall_step`).
    """
    if not 0.0 <= door_fraction <= 1.0:
        raise ValueError(f"door_fraction must be in [0, 1], got {door_fraction}")
    seek = rng.random(n) < door_fraction
    side = np.where(rng.random(n) < 0.5, -1.0, 1.0)  # -1: start left of the wall
    lo, hi = wall.BORDER_LO + 1.0, wall.BORDER_HI - 1.0
    x_any = np.where(side < 0, rng.uniform(lo, layout.wall_left - 1.0, n), rng.uniform(layout.wall_right + 1.0, hi, n))
    face = np.where(side < 0, layout.wall_left, layout.wall_right)
    x_door = face + side * rng.uniform(*DOOR_REACH, n)
    y_door = layout.door_y + rng.uniform(-10.0, 10.0, n)
    pos = np.stack([np.where(seek, x_door, x_any), np.where(seek, y_door, rng.uniform(lo, hi, n))], axis=1)
    pos = np.clip(pos, lo, hi)
    start = pos.copy()

    # Door-seeking waypoints: in front of the door, 5 px from the face, then an exit point 4-16 px past the other face.
    entry = np.stack([face + side * 5.0, layout.door_y + rng.uniform(-2.0, 2.0, n)], axis=1)
    exit_face = np.where(side < 0, layout.wall_right, layout.wall_left)
    exit_ = np.stack([exit_face - side * rng.uniform(4.0, 16.0, n), layout.door_y + rng.uniform(-3.0, 3.0, n)], axis=1)
    stage = np.where(seek, 0, 2)  # 0: to entry, 1: to exit, 2: free walk

    heading = rng.uniform(-np.pi, np.pi, n)
    lengths = truncated_normal(rng, (n, horizon), STEP_MEAN, STEP_STD, STEP_LOW, STEP_HIGH)
    noise = rng.vonmises(0.0, HEADING_CONCENTRATION, (n, horizon))
    actions = np.empty((n, horizon, 2))
    for t in range(horizon):
        target = np.where((stage == 0)[:, None], entry, exit_)
        bearing = np.arctan2(target[:, 1] - pos[:, 1], target[:, 0] - pos[:, 0])
        pull = np.where(stage < 2, DOOR_PULL * _wrap(bearing - heading), 0.0)
        heading = _wrap(heading + pull + noise[:, t])
        actions[:, t] = lengths[:, t, None] * np.stack([np.cos(heading), np.sin(heading)], axis=1)
        pos = wall.wall_step(pos, actions[:, t], layout)
        past_entry = (np.hypot(*(pos - entry).T) < 2.5) | (side * (pos[:, 0] - face) <= 1.0)
        stage = np.where((stage == 0) & past_entry, 1, stage)
        stage = np.where((stage == 1) & (side * (pos[:, 0] - exit_[:, 0]) <= 0), 2, stage)
    return start, actions


# PushT: the T's outline (union of bar and stem) in body coordinates, counter-clockwise in the screen frame.
_T_OUTLINE = np.array([(-60, 0), (60, 0), (60, 30), (15, 30), (15, 120), (-15, 120), (-15, 30), (-60, 30)], float)


class PushTPusher:
    """A noisy scripted pusher that makes the T move and turn.

    It repeatedly picks a random point on the T's outline (uniform in length), goes around to a point 45 px outside
    it, closes in to touching distance and pushes through it (the push direction jittered by ~0.3 rad) for a few
    control steps; off-centre contacts turn the block. Sometimes it wanders to a random point instead. Waypoints
    follow the block as it moves. Actions are ``(waypoint - agent) / 100`` capped at ``max_action`` in norm (the
    agent then moves ~15-20 px per step, like the released data whose actions have std 0.2) plus Gaussian noise.
    """

    def __init__(self, rng: np.random.Generator, max_action: float = 0.35, noise: float = 0.04,
                 wander_prob: float = 0.15) -> None:
        self.rng = rng
        self.max_action, self.noise, self.wander_prob = max_action, noise, wander_prob
        edges = np.roll(_T_OUTLINE, -1, axis=0) - _T_OUTLINE
        self._edge_len = np.hypot(edges[:, 0], edges[:, 1])
        # Outward normals: the outline runs counter-clockwise on screen (y down), so outward is (dy, -dx).
        self._normals = np.stack([edges[:, 1], -edges[:, 0]], axis=1) / self._edge_len[:, None]
        self._edges = edges
        self._phase, self._steps = "plan", 0

    def _plan(self, state: np.ndarray) -> None:
        self._steps = 0
        if self.rng.random() < self.wander_prob:
            self._phase, self._goal = "wander", self.rng.uniform(60, 452, 2)
            self._duration = int(self.rng.integers(3, 9))
            return
        for _ in range(8):  # prefer contacts whose approach side is inside the arena
            k = self.rng.choice(len(self._edges), p=self._edge_len / self._edge_len.sum())
            u = self.rng.uniform(0.1, 0.9)
            self._contact = _T_OUTLINE[k] + u * self._edges[k]
            self._normal = self._normals[k]
            if np.all((self._world(state, 60.0) > 30) & (self._world(state, 60.0) < 482)):
                break
        self._push_turn = self.rng.normal(0.0, 0.3)
        self._duration = int(self.rng.integers(4, 13))
        self._phase = "around"

    def _world(self, state: np.ndarray, offset: float, push: bool = False) -> np.ndarray:
        """A point ``offset`` px outside the contact along its normal (inside if negative), in world px."""
        direction = self._normal
        if push:
            c, s = math.cos(self._push_turn), math.sin(self._push_turn)
            direction = np.array([c * direction[0] - s * direction[1], s * direction[0] + c * direction[1]])
        local = self._contact + offset * direction
        return _to_world(local, state)

    def __call__(self, state: np.ndarray) -> np.ndarray:
        """The raw action (2,) for the current PushT state (7,)."""
        agent = state[:2]
        if self._phase == "plan":
            self._plan(state)
        self._steps += 1
        if self._phase == "wander":
            target = self._goal
            if self._steps >= self._duration:
                self._phase = "plan"
        elif self._phase == "around":
            target = self._world(state, pusht.AGENT_RADIUS + 45.0)
            if np.hypot(*(target - agent)) < 12.0 or self._steps > 15:
                self._phase, self._steps = "close", 0
        elif self._phase == "close":
            target = self._world(state, pusht.AGENT_RADIUS + 3.0)
            if np.hypot(*(target - agent)) < 8.0 or self._steps > 8:
                self._phase, self._steps = "push", 0
        else:
            target = self._world(state, -40.0, push=True)
            if self._steps >= self._duration:
                self._phase = "plan"
        action = (target - agent) / pusht.ACTION_SCALE
        norm = np.hypot(*action)
        if norm > self.max_action:
            action *= self.max_action / norm
        return np.clip(action + self.rng.normal(0.0, self.noise, 2), -pusht.ACTION_LIMIT, pusht.ACTION_LIMIT)


def _to_world(local: np.ndarray, state: np.ndarray) -> np.ndarray:
    """Body-frame point (2,) of the block in ``state`` (7,) -> world px (2,)."""
    c, s = math.cos(state[4]), math.sin(state[4])
    return np.array([state[2] + c * local[0] - s * local[1], state[3] + s * local[0] + c * local[1]])


def pusht_trajectory(rng: np.random.Generator, horizon: int, env: "pusht.PushT | None" = None,
                     start: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One PushT trajectory of the scripted pusher: states (horizon + 1, 7) and raw actions (horizon, 2).

    ``start`` (7,) defaults to a draw from the release's reset distribution; ``env`` (a PushT) is reused if given.
    """
    env = pusht.PushT() if env is None else env
    env.set_state(pusht.sample_start_state(rng) if start is None else start)
    policy = PushTPusher(rng)
    states = np.empty((horizon + 1, pusht.PushT.state_dim))
    actions = np.empty((horizon, 2))
    states[0] = env.get_state()
    for t in range(horizon):
        actions[t] = policy(states[t])
        states[t + 1] = env.advance(actions[t])
    return states, actions
