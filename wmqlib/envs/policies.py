"""PushT's scripted policies: a noisy pusher that moves the T anywhere and a demonstrator that pushes the T into
the goal pose (Wall's random walks are ``wall.wall_walks``).

Both draw every random number from a ``np.random.Generator`` they are given, so a seed fixes the data; they read
the world's constants from ``pusht_physics`` and step the PushT env they are given.
"""

from __future__ import annotations

import math

import numpy as np

from wmqlib.envs import pusht_physics as physics
from wmqlib.envs.base import WmqEnv, wrap_angle

# PushT: the T's outline (union of bar and stem) in body coordinates, counter-clockwise in the screen frame.
_T_OUTLINE = np.array([(-60, 0), (60, 0), (60, 30), (15, 30), (15, 120), (-15, 120), (-15, 30), (-60, 30)], float)
_EDGES = np.roll(_T_OUTLINE, -1, axis=0) - _T_OUTLINE  # (8, 2) each outline edge as a vector
_EDGE_LEN = np.hypot(_EDGES[:, 0], _EDGES[:, 1])  # (8,)
# Outward normals (8, 2): the outline runs counter-clockwise on screen (y down), so outward is (dy, -dx).
_NORMALS = np.stack([_EDGES[:, 1], -_EDGES[:, 0]], axis=1) / _EDGE_LEN[:, None]


def _steer(agent: np.ndarray, target: np.ndarray, limit: float, rng: np.random.Generator,
           noise: float) -> np.ndarray:
    """The PushT action (2,) that moves the agent toward ``target`` (world px), its length capped at ``limit``, plus
    Gaussian noise of std ``noise``, clipped to the env's action range."""
    action = (target - agent) / physics.ACTION_SCALE
    norm = np.hypot(*action)
    if norm > limit:
        action *= limit / norm
    return np.clip(action + rng.normal(0.0, noise, 2), -physics.ACTION_LIMIT, physics.ACTION_LIMIT)


def _close_in(policy: PushTPusher | PushTDemonstrator, state: np.ndarray, agent: np.ndarray) -> np.ndarray:
    """The "close" phase both policies share: head for touching distance of the contact (world px, (2,)); push
    once within 8 px of it or after 8 steps."""
    target = policy._world(state, physics.AGENT_RADIUS + 3.0)
    if np.hypot(*(target - agent)) < 8.0 or policy._steps > 8:
        policy._phase, policy._steps = "push", 0
    return target


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
        self._phase, self._steps = "plan", 0

    def _plan(self, state: np.ndarray) -> None:
        self._steps = 0
        if self.rng.random() < self.wander_prob:
            self._phase, self._goal = "wander", self.rng.uniform(60, 452, 2)
            self._duration = int(self.rng.integers(3, 9))
            return
        for _ in range(8):  # prefer contacts whose approach side is inside the arena
            k = self.rng.choice(len(_EDGES), p=_EDGE_LEN / _EDGE_LEN.sum())
            u = self.rng.uniform(0.1, 0.9)
            self._contact = _T_OUTLINE[k] + u * _EDGES[k]
            self._normal = _NORMALS[k]
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
            target = self._world(state, physics.AGENT_RADIUS + 45.0)
            if np.hypot(*(target - agent)) < 12.0 or self._steps > 15:
                self._phase, self._steps = "close", 0
        elif self._phase == "close":
            target = _close_in(self, state, agent)
        else:
            target = self._world(state, -40.0, push=True)
            if self._steps >= self._duration:
                self._phase = "plan"
        return _steer(agent, target, self.max_action, self.rng, self.noise)


def _to_world(local: np.ndarray, state: np.ndarray) -> np.ndarray:
    """Body-frame point (2,) of the block in ``state`` (7,) -> world px (2,)."""
    c, s = math.cos(state[4]), math.sin(state[4])
    return np.array([state[2] + c * local[0] - s * local[1], state[3] + s * local[0] + c * local[1]])


def pusht_trajectory(rng: np.random.Generator, horizon: int, env: WmqEnv,
                     start: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One trajectory of the scripted pusher in ``env`` (a PushT): states (horizon + 1, 7) and raw actions
    (horizon, 2). ``start`` (7,) defaults to a draw from the release's reset distribution."""
    env.set_state(physics.sample_start_state(rng) if start is None else start)
    policy = PushTPusher(rng)
    states = np.empty((horizon + 1, env.state_dim))
    actions = np.empty((horizon, 2))
    states[0] = env.get_state()
    for t in range(horizon):
        actions[t] = policy(states[t])
        states[t + 1] = env.advance(actions[t])
    return states, actions


# PushT demonstrator: the T's centre of gravity in body coordinates (halfway between the bar's and the stem's
# centroids) and its radius of gyration about it (moment 2 * the bar's moment about the body origin, mass 1).
_T_COM = np.array([0.0, 45.0])
_T_GYRATION = math.sqrt(2 * (120.0 ** 2 + 30.0 ** 2) / 12 + 2 * 15.0 ** 2)  # ~57 px
_ARENA_LO, _ARENA_HI = 25.0, 487.0  # agent waypoints stay inside the border walls


class PushTDemonstrator:
    """A scripted demonstrator that pushes the T into the goal pose, standing in for DINO-WM's human demonstrations.

    Every few control steps it scores candidate contacts on the T's outline by how fast a push there would shrink
    the pose error (the centre-of-gravity offset and the angle, weighted by the radius of gyration), using the
    block's response to a kinematic push (the block has no velocity of its own: damping is 0): a push of speed u
    along the inward normal n at offset r from the centre moves it by ``v = n / (1 + (r x n)^2 / k^2)`` and turns it
    by ``w = (r x n) / k^2 * |v|``, k the radius of gyration. It draws a contact among the best (softmax over the
    scores, ``temperature`` sets how greedy), walks around the block (waypoints on a circle 110 px from its
    centre), closes in and pushes for a number of steps that shrinks near the goal, slowing down there too. Once
    the T is within ``done_pos`` px and ``done_angle`` rad of the goal pose it backs away and rests. Actions are
    ``(waypoint - agent) / 100`` capped in norm plus Gaussian noise of std ``noise``, clipped to [-1, 1].
    """

    def __init__(self, rng: np.random.Generator, max_action: float = 0.35, noise: float = 0.03,
                 temperature: float = 0.15, done_pos: float = 6.0, done_angle: float = 0.08,
                 goal: tuple[float, float, float] = physics.GOAL_POSE) -> None:
        self.rng = rng
        self.max_action, self.noise, self.temperature = max_action, noise, temperature
        self.done_pos, self.done_angle = done_pos, done_angle
        self.goal = np.asarray(goal, dtype=np.float64)
        self._phase, self._steps, self._duration = "plan", 0, 0
        self.done = False

    def _errors(self, state: np.ndarray) -> tuple[np.ndarray, float]:
        """Centre-of-gravity offset goal - current (2,) in px and wrapped angle error goal - current in rad."""
        goal_com = _to_world(_T_COM, np.array([0, 0, *self.goal[:2], self.goal[2]]))
        com = _to_world(_T_COM, state)
        return goal_com - com, float(wrap_angle(np.array(self.goal[2] - state[4])))

    def _plan(self, state: np.ndarray) -> None:
        e_pos, e_ang = self._errors(state)
        k = _T_GYRATION
        cand_edges = np.repeat(np.arange(len(_EDGES)), 6)
        u = self.rng.uniform(0.1, 0.9, len(cand_edges))
        local = _T_OUTLINE[cand_edges] + u[:, None] * _EDGES[cand_edges]
        c, s = math.cos(state[4]), math.sin(state[4])
        rot = np.array([[c, -s], [s, c]])
        r = (local - _T_COM) @ rot.T  # world offsets from the centre of gravity
        n_in = -_NORMALS[cand_edges] @ rot.T  # world inward normals
        cross = r[:, 0] * n_in[:, 1] - r[:, 1] * n_in[:, 0]
        speed = 1.0 / (1.0 + cross ** 2 / k ** 2)
        v, w = n_in * speed[:, None], cross / k ** 2 * speed
        err = math.sqrt(float(e_pos @ e_pos) + (k * e_ang) ** 2) + 1e-9
        score = (v @ e_pos + k ** 2 * w * e_ang) / err  # rate of pose-error decrease per unit push speed
        approach = local + (physics.AGENT_RADIUS + 45.0) * _NORMALS[cand_edges]
        world_approach = (approach - 0.0) @ rot.T + state[2:4]
        inside = np.all((world_approach > _ARENA_LO) & (world_approach < _ARENA_HI), axis=1)
        score = np.where(inside, score, -np.inf)
        best = np.flatnonzero(score > 0)
        if best.size == 0:  # nothing helps from here: take the least bad contact (any, when none is reachable)
            best = np.array([int(np.argmax(score))])
        logits = (score[best] - score[best].max()) / self.temperature if np.isfinite(score[best]).any() else \
            np.zeros(best.size)
        p = np.exp(logits) / np.exp(logits).sum()
        pick = best[self.rng.choice(len(best), p=p)]
        self._contact, self._normal = local[pick], _NORMALS[cand_edges[pick]]
        self._duration = int(np.clip(round(err / 12.0), 1, 6))
        self._speed = float(np.clip(0.08 + err / 250.0, 0.08, self.max_action))
        near = np.hypot(*(self._world(state, physics.AGENT_RADIUS + 3.0) - state[:2])) < 10.0
        self._phase, self._steps = ("push" if near else "around"), 0

    def _world(self, state: np.ndarray, offset: float) -> np.ndarray:
        return _to_world(self._contact + offset * self._normal, state)

    def _around(self, state: np.ndarray, target: np.ndarray) -> np.ndarray:
        """The next waypoint towards ``target`` that keeps clear of the block: along a circle around its centre."""
        centre = _to_world(_T_COM, state)
        agent = state[:2]
        a_agent = math.atan2(agent[1] - centre[1], agent[0] - centre[0])
        a_target = math.atan2(target[1] - centre[1], target[0] - centre[0])
        delta = float(wrap_angle(np.array(a_target - a_agent)))
        if abs(delta) < 0.5:
            return target
        radius = 110.0
        a = a_agent + math.copysign(min(abs(delta), 0.6), delta)
        return np.clip(centre + radius * np.array([math.cos(a), math.sin(a)]), _ARENA_LO, _ARENA_HI)

    def __call__(self, state: np.ndarray) -> np.ndarray:
        """The raw action (2,) for the current PushT state (7,)."""
        agent = state[:2]
        e_pos, e_ang = self._errors(state)
        origin_err = np.hypot(*(self.goal[:2] - state[2:4]))
        if not self.done and origin_err < self.done_pos and abs(e_ang) < self.done_angle:
            self.done = True
            self._retreat = np.clip(agent + 60.0 * (agent - _to_world(_T_COM, state)) /
                                    (np.hypot(*(agent - _to_world(_T_COM, state))) + 1e-9), _ARENA_LO, _ARENA_HI)
        limit = self.max_action
        if self.done:
            target, limit = self._retreat, 0.15
        else:
            if self._phase == "plan":
                self._plan(state)
            self._steps += 1
            if self._phase == "around":
                goal = self._world(state, physics.AGENT_RADIUS + 40.0)
                target = self._around(state, goal)
                if np.hypot(*(goal - agent)) < 12.0 or self._steps > 20:
                    self._phase, self._steps = "close", 0
            elif self._phase == "close":
                target = _close_in(self, state, agent)
            else:
                target = self._world(state, -40.0)
                limit = self._speed
                if self._steps >= self._duration:
                    self._phase = "plan"
        return _steer(agent, target, limit, self.rng, self.noise)


def pusht_demonstration(rng: np.random.Generator, horizon: int, env: WmqEnv, start: np.ndarray | None = None,
                        min_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One demonstration of :class:`PushTDemonstrator` in ``env`` (a PushT) from ``start`` (7,) or a draw from the
    release's reset distribution. Returns states (T + 1, 7) and raw actions (T, 2).

    T = ``horizon`` when ``min_len`` is None; otherwise the demonstration ends, like a human one, once the
    demonstrator has put the T in place (but not before ``min_len`` steps, and at ``horizon`` steps at most).
    """
    env.set_state(physics.sample_start_state(rng) if start is None else start)
    policy = PushTDemonstrator(rng)
    states = np.empty((horizon + 1, env.state_dim))
    actions = np.empty((horizon, 2))
    states[0] = env.get_state()
    for t in range(horizon):
        if min_len is not None and policy.done and t >= min_len:
            return states[:t + 1], actions[:t]
        actions[t] = policy(states[t])
        states[t + 1] = env.advance(actions[t])
    return states, actions
