"""Wall: DINO-WM's dot in a 65x65 room split by a wall with a door, vectorised over batches of states.

Facts follow the released environment (gaoyuezhou/dino_wm ``env/wall``), default configuration:

- state = proprio = the dot position (x, y) in pixels of the 65x65 image, x = column, y = row.
- dynamics: ``next = pos + 2 * action``. A move that meets a wall stops there (:func:`wall_step` states the rule).
- walls: border lines at pixels 4 and 60 on every side; the middle wall covers columns wall_x - 3 .. wall_x + 3
  (wall_x = 32) except the door rows door_y - 4 .. door_y + 4 (door_y = 30).
- frames: white background, black walls, the dot a Gaussian of std 1.7 px normalised to peak 1 whose intensity lowers
  the green and blue channels by ``floor(255 * intensity)`` (the dot is red), drawn at 65x65 and resized bilinearly
  (torchvision's tensor ``Resize``: bilinear, half-pixel centres, antialiased when shrinking) to ``render_size``.
  The release keeps the resized frame as float; here it is rounded to uint8 (at most 0.5/255 apart).
- start/goal sampler: :func:`random_start_goal`, bit-identical to the release's ``generate_random_state(seed)``.
- success: ``||goal - cur|| < 4.5`` pixels.
- training data: :func:`wall_walks`, random walks like the released generator's, half of them through the door.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

from wmqlib.envs.base import DATA_STREAM, WmqEnv, as_float_array, register_env, resize_images, wrap_angle

IMG_SIZE = 65
BORDER_LO, BORDER_HI = 4.0, 60.0  # border wall pixels: border_wall_loc - 1 and img_size - border_wall_loc
WALL_HALF_WIDTH = 3  # wall_width 6 // 2: columns wall_x - 3 .. wall_x + 3 are wall
DOOR_HALF = 4  # door_space: rows door_y - 4 .. door_y + 4 are open
DOT_STD = 1.7
SAMPLE_PADDING = 2 * DOT_STD  # the sampler's clearance from walls, as released
SUCCESS_RADIUS = 4.5
ACTION_LIMIT = 1.8  # the released data's largest step length (action_upper_bd); the space, not a clip
WALL_X_RANGE = (20, 44)  # the released layout generator's ranges (wall_padding 20, door_padding 10)
DOOR_Y_RANGE = (10, 54)
MAX_PIECE = 10.0  # px, < 16 (door channel to far border, any layout): longer moves are split into pieces
_RENDER_CHUNK = 2048
_STOP_OFFSET, _PLANE_MARGIN = 0.5, 0.3  # the release's fixed offsets after a collision


@dataclass(frozen=True)
class WallLayout:
    """Where the middle wall and its door are (pixels). Default: the released single layout."""

    wall_x: int = 32
    door_y: int = 30

    def __post_init__(self) -> None:
        for field, value, (lo, hi) in (("wall_x", self.wall_x, WALL_X_RANGE), ("door_y", self.door_y, DOOR_Y_RANGE)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{field} must be an int in [{lo}, {hi}], got {value!r}")
            if not lo <= value <= hi:
                raise ValueError(f"{field} must be in [{lo}, {hi}] (the released layouts), got {value}")

    @property
    def wall_left(self) -> int:
        """Leftmost wall column (the left collision plane)."""
        return self.wall_x - WALL_HALF_WIDTH

    @property
    def wall_right(self) -> int:
        """Rightmost wall column (the right collision plane)."""
        return self.wall_x + WALL_HALF_WIDTH

    @property
    def door_low(self) -> int:
        """Lowest open row of the door."""
        return self.door_y - DOOR_HALF

    @property
    def door_high(self) -> int:
        """Highest open row of the door."""
        return self.door_y + DOOR_HALF

    def wall_mask(self) -> np.ndarray:
        """bool (65, 65) [row, col]: True where a wall pixel is (black)."""
        rows, cols = np.mgrid[0:IMG_SIZE, 0:IMG_SIZE]
        door = (rows >= self.door_low) & (rows <= self.door_high)
        mask = (cols >= self.wall_left) & (cols <= self.wall_right) & ~door
        for line in (int(BORDER_LO), int(BORDER_HI)):
            mask[:, line] = True
            mask[line, :] = True
        return mask


def _x_at(p: np.ndarray, d: np.ndarray, y_line: float | np.ndarray) -> np.ndarray:
    """x where the line through p (N, 2) along d (N, 2) meets the row y_line; p's x if the move is horizontal."""
    dy = d[:, 1]
    safe = np.where(dy == 0, 1.0, dy)
    return np.where(dy == 0, p[:, 0], p[:, 0] + (y_line - p[:, 1]) * d[:, 0] / safe)


def _y_at(p: np.ndarray, d: np.ndarray, x_line: float | np.ndarray) -> np.ndarray:
    """y where the line through p (N, 2) along d (N, 2) meets the column x_line; p's y if the move is vertical."""
    dx = d[:, 0]
    safe = np.where(dx == 0, 1.0, dx)
    return np.where(dx == 0, p[:, 1], p[:, 1] + (x_line - p[:, 0]) * d[:, 1] / safe)


def _move(p: np.ndarray, q: np.ndarray, layout: WallLayout) -> tuple[np.ndarray, np.ndarray]:
    """One move from p to q (N, 2) under the released collision rule; returns (positions (N, 2), collided (N,))."""
    d = q - p
    x1, y1, x2, y2 = p[:, 0], p[:, 1], q[:, 0], q[:, 1]
    lw, rw, db, dt = layout.wall_left, layout.wall_right, layout.door_low, layout.door_high

    # 1. Door lintels first: crossing the top (bottom) edge of the opening within the wall's columns stops 0.5 px
    #    inside the opening (the release also shifts x by +0.5) - if the dot reached the wall's columns through the
    #    opening. (The release omits that condition, so a long diagonal move could enter the wall face beside the
    #    door and come out at the lintel on the far side.)
    x_top, x_bot = _x_at(p, d, dt), _x_at(p, d, db)
    y_entry = np.where(x1 < lw, _y_at(p, d, lw), np.where(x1 > rw, _y_at(p, d, rw), y1))
    hit_top = (d[:, 1] > 0) & (y2 > dt) & (y1 < dt) & (x_top >= lw) & (x_top <= rw) & (y_entry >= db)
    hit_bot = (d[:, 1] < 0) & (y2 < db) & (y1 > db) & (x_bot >= lw) & (x_bot <= rw) & (y_entry <= dt)

    # 2. Vertical planes of the dot's half-room (chosen by which side of wall_x it starts on): the wall face, which
    #    has the door, and the border. Touching a plane counts as crossing it, as released.
    right_side = x1 >= layout.wall_x
    left_plane = np.where(right_side, float(rw), BORDER_LO)
    right_plane = np.where(right_side, BORDER_HI, float(lw))
    blocked = []
    for plane, has_door in ((left_plane, right_side), (right_plane, ~right_side)):
        y = _y_at(p, d, plane)
        crosses = np.sign(x1 - plane) * np.sign(x2 - plane) <= 0
        blocked.append((crosses & ~(has_door & (y >= db) & (y <= dt)), y))
    (b_left, y_left), (b_right, y_right) = blocked
    v_hit = b_left | b_right
    vx, vy = np.where(b_left, left_plane, right_plane), np.where(b_left, y_left, y_right)

    # 3. Horizontal border planes.
    c_top = np.sign(y1 - BORDER_LO) * np.sign(y2 - BORDER_LO) <= 0
    c_bot = np.sign(y1 - BORDER_HI) * np.sign(y2 - BORDER_HI) <= 0
    h_hit = c_top | c_bot
    hy = np.where(c_top, BORDER_LO, BORDER_HI)
    hx = np.where(c_top, _x_at(p, d, BORDER_LO), _x_at(p, d, BORDER_HI))

    # 4. The nearer of the two hits wins; step back 0.5 px off the plane (the release adds +0.5 along the plane too),
    #    then keep 0.3 px inside the half-room.
    use_v = v_hit & (~h_hit | (np.hypot(x1 - vx, y1 - vy) < np.hypot(x1 - hx, y1 - hy)))
    hit = v_hit | h_hit
    nx = np.where(use_v, vx + _STOP_OFFSET * np.sign(x1 - vx), hx + _STOP_OFFSET)
    ny = np.where(use_v, vy + _STOP_OFFSET, hy + _STOP_OFFSET * np.sign(y1 - hy))
    nx = np.clip(nx, left_plane, right_plane)
    ny = np.clip(ny, BORDER_LO, BORDER_HI)
    nx = np.where(nx <= left_plane, left_plane + _PLANE_MARGIN,
                  np.where(nx >= right_plane, right_plane - _PLANE_MARGIN, nx))
    ny = np.where(ny <= BORDER_LO, BORDER_LO + _PLANE_MARGIN, np.where(ny >= BORDER_HI, BORDER_HI - _PLANE_MARGIN, ny))

    out = np.where(hit[:, None], np.stack([nx, ny], axis=1), q)
    out = np.where(hit_top[:, None], np.stack([x_top + _STOP_OFFSET, np.full_like(x_top, dt - _STOP_OFFSET)], 1), out)
    out = np.where(hit_bot[:, None], np.stack([x_bot + _STOP_OFFSET, np.full_like(x_bot, db + _STOP_OFFSET)], 1), out)
    return out, hit | hit_top | hit_bot


def wall_step(pos: np.ndarray, action: np.ndarray, layout: WallLayout = WallLayout()) -> np.ndarray:
    """One Wall transition for a batch: positions (N, 2) px and raw actions (N, 2) -> next positions (N, 2).

    The dot moves to ``pos + 2 * action`` unless the straight move meets a wall. The released rule, in order:
    crossing a door lintel (the row door_y +- 4 within the wall's columns) stops the dot at the crossing,
    0.5 px back inside the opening; otherwise, crossing the wall face outside the door or a border line stops it at
    the nearer crossing, 0.5 px back (and +0.5 px along the plane), kept 0.3 px inside its half of the room.
    Three deliberate differences, all for moves the released data never makes (its longest is 3.6 px): purely
    vertical/horizontal moves use the exact crossing point (the release divides by zero there and lets the dot into
    the wall); the lintel stop applies only to a dot that reached the wall's columns through the door (a move of
    over 8 px could otherwise pass through the wall face); and moves longer than ``MAX_PIECE`` px are executed as
    equal pieces, stopping at the first collision, so that one huge move cannot pass the door and then jump the far
    border. Every other move follows the released rule.
    """
    step = 2.0 * action
    pieces = np.maximum(1, np.ceil(np.hypot(step[:, 0], step[:, 1]) / MAX_PIECE)).astype(np.int64)
    if pieces.max() == 1:
        return _move(pos, pos + step, layout)[0]
    cur = pos.copy()
    active = np.ones(len(pos), dtype=bool)
    piece = step / pieces[:, None]
    for i in range(int(pieces.max())):
        rows = np.flatnonzero(active & (i < pieces))
        moved, hit = _move(cur[rows], cur[rows] + piece[rows], layout)
        cur[rows] = moved
        active[rows[hit]] = False  # a collision ends the whole move, as it ends a single released move
    return cur


def render_native(pos: np.ndarray, layout: WallLayout = WallLayout()) -> np.ndarray:
    """Released 65x65 frames of dot positions (N, 2): uint8 (N, 65, 65, 3), [row, col, rgb]."""
    grid = np.arange(IMG_SIZE, dtype=np.float64)
    walls = layout.wall_mask()
    out = np.empty((len(pos), IMG_SIZE, IMG_SIZE, 3), dtype=np.uint8)
    norm = 2 * math.pi * DOT_STD * DOT_STD
    for lo in range(0, len(pos), _RENDER_CHUNK):
        p = pos[lo:lo + _RENDER_CHUNK]
        dx = grid[None, None, :] - p[:, 0, None, None]  # (n, 1, col)
        dy = grid[None, :, None] - p[:, 1, None, None]  # (n, row, 1)
        dist = np.sqrt(dx * dx + dy * dy)
        dot = np.exp(-(dist ** 2) / (2 * DOT_STD * DOT_STD)) / norm
        dot /= dot.max(axis=(1, 2), keepdims=True)  # peak 1 on the pixel grid, as released
        lowered = 255 - (dot * 255).astype(np.uint8)  # the cast truncates, as torch's .to(uint8) does
        frame = out[lo:lo + _RENDER_CHUNK]
        frame[..., 0] = 255
        frame[..., 1] = lowered
        frame[..., 2] = lowered
        frame[:, walls] = 0
    return out


def random_start_goal(seed: int, layout: WallLayout = WallLayout()) -> tuple[np.ndarray, np.ndarray]:
    """The released Wall start/goal sampler: (start (2,), goal (2,)) on opposite sides of the wall.

    x is uniform on each side with 2 * dot_std clearance from the wall and border_wall_loc - 1 + 2 * dot_std from
    the border, y uniform in the free band, and the direction is swapped with probability 0.5. Uses
    ``np.random.RandomState(seed)`` in the release's draw order, so the same seed gives the released pair.
    """
    rs = np.random.RandomState(seed)
    border = BORDER_LO + SAMPLE_PADDING
    start_x = rs.uniform(low=border, high=layout.wall_left - SAMPLE_PADDING)
    goal_x = rs.uniform(low=layout.wall_right + SAMPLE_PADDING, high=IMG_SIZE - 1 - border)
    start_y = rs.uniform(low=border, high=IMG_SIZE - 1 - border)
    goal_y = rs.uniform(low=border, high=IMG_SIZE - 1 - border)
    if rs.uniform(low=0, high=1) < 0.5:
        start_x, goal_x = goal_x, start_x
    return np.array([start_x, start_y]), np.array([goal_x, goal_y])


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


def wall_walks(rng: np.random.Generator, n: int, horizon: int, layout: WallLayout = WallLayout(),
               door_fraction: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Random-walk starts (n, 2) and raw actions (n, horizon, 2) for Wall datasets.

    Every walk keeps its heading with von Mises noise and draws step lengths like the released generator. A
    ``door_fraction`` of them start 2-16 px from the wall face, within 10 px of the door row, steer toward a point
    in front of the door, then to a point beyond it, then wander on; the rest start anywhere in the free room with a
    uniform heading. Headings are closed-loop, so actions are computed while simulating the dynamics
    (:func:`wmqlib.envs.wall_step`).
    """
    if not 0.0 <= door_fraction <= 1.0:
        raise ValueError(f"door_fraction must be in [0, 1], got {door_fraction}")
    seek = rng.random(n) < door_fraction
    side = np.where(rng.random(n) < 0.5, -1.0, 1.0)  # -1: start left of the wall
    lo, hi = BORDER_LO + 1.0, BORDER_HI - 1.0
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
        pull = np.where(stage < 2, DOOR_PULL * wrap_angle(bearing - heading), 0.0)
        heading = wrap_angle(heading + pull + noise[:, t])
        actions[:, t] = lengths[:, t, None] * np.stack([np.cos(heading), np.sin(heading)], axis=1)
        pos = wall_step(pos, actions[:, t], layout)
        past_entry = (np.hypot(*(pos - entry).T) < 2.5) | (side * (pos[:, 0] - face) <= 1.0)
        stage = np.where((stage == 0) & past_entry, 1, stage)
        stage = np.where((stage == 1) & (side * (pos[:, 0] - exit_[:, 0]) <= 0), 2, stage)
    return start, actions


@register_env
class Wall(WmqEnv):
    """DINO-WM's Wall environment (see the module docstring for every rule).

    Args:
        render_size: side of ``obs["visual"]`` in pixels (64 for the small models, 224 for released checkpoints).
        wall_x, door_y: the layout (default the released one); ``reset(options={"layout": (wall_x, door_y)})``
            changes it for one episode.
        render_mode: ``"rgb_array"`` (default) or None.
    """

    name = "wall"
    state_dim = 2
    proprio_dim = 2
    _extra_reset_options = frozenset({"layout"})
    plan_opt_steps = 10
    mpc_max_rounds = 50
    num_hist = 1
    predictor_emb_dropout = 0.1
    success_components = (("agent_x", 0, "px", SUCCESS_RADIUS), ("agent_y", 1, "px", SUCCESS_RADIUS))
    episode_samplers = ("random_state",)
    default_sampler = "random_state"
    unkeyed_sampler = "random_state"
    data_policies = ("walks",)
    default_data_policy = "walks"

    @classmethod
    def sample_episode(cls, seed: int, sampler: str = "random_state",
                       horizon: int = 25) -> tuple[np.ndarray, np.ndarray, None]:
        """The released ``generate_random_state(seed)`` start and goal (DINO-WM's ``goal_source: random_state``);
        ``horizon`` does not matter (the goal is drawn directly)."""
        cls.check_sampler(sampler)
        return (*random_start_goal(seed), None)

    @classmethod
    def collect_trajectories(cls, n_traj: int, traj_len: int, seed: int, policy: str = "walks",
                             progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Random walks that use the door (:func:`wall_walks`, half of them seek the door), one generator for the
        batch."""
        cls.check_data_policy(policy)
        sim = cls()
        start, actions = wall_walks(np.random.default_rng([DATA_STREAM, seed]), n_traj, traj_len, sim.layout)
        return sim.rollout_states(start, actions), actions

    @classmethod
    def state_features(cls, states: np.ndarray) -> np.ndarray:
        """The dot position x, y: (..., 2)."""
        return np.asarray(states, dtype=np.float64)[..., :2].copy()

    def data_summary(self, states: np.ndarray) -> dict[str, float]:
        """The fraction of trajectories that change side of the wall."""
        return {"crossed_fraction": float(self.crossed(states).mean())}

    def __init__(self, render_size: int = 64, wall_x: int = 32, door_y: int = 30,
                 render_mode: str | None = "rgb_array") -> None:
        self.default_layout = WallLayout(wall_x, door_y)
        self.layout = self.default_layout
        super().__init__(render_size=render_size, render_mode=render_mode)
        self.action_space = spaces.Box(-ACTION_LIMIT, ACTION_LIMIT, (2,), dtype=np.float32)
        self._pos = np.array([BORDER_LO + 10.0, float(door_y)])  # a free spot until reset() picks the start

    def _proprio_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(2), np.full(2, IMG_SIZE - 1.0)

    def _apply_reset_options(self, options: dict[str, Any]) -> None:
        layout = options.get("layout")
        if layout is None:
            self.layout = self.default_layout
        elif isinstance(layout, WallLayout):
            self.layout = layout
        else:
            if len(layout) != 2:
                raise ValueError(f"layout must be (wall_x, door_y), got {layout!r}")
            self.layout = WallLayout(*layout)

    def _sample_state(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return random_start_goal(int(rng.integers(2 ** 32)), self.layout)

    def set_state(self, state: Any) -> None:
        """Put the dot at ``state`` (2,) = (x, y) pixels (no collision check: any finite position is accepted)."""
        self._pos = self.check_state(state).copy()

    def get_state(self) -> np.ndarray:
        """The dot position (x, y), float64 (2,)."""
        return self._pos.copy()

    def advance(self, action: Any) -> np.ndarray:
        """Move the dot by one raw action (2,) under :func:`wall_step`; return the new state (2,)."""
        self._pos = wall_step(self._pos[None], self.check_action(action)[None], self.layout)[0]
        return self._pos.copy()

    def proprio_of(self, states: np.ndarray) -> np.ndarray:
        """Proprio = state: float32 (..., 2)."""
        return np.asarray(states, dtype=np.float32).copy()

    def _render_states(self, states: np.ndarray, size: int) -> np.ndarray:
        return resize_images(render_native(states, self.layout), size, antialias=True)

    def _simulate(self, states: np.ndarray, actions: np.ndarray) -> np.ndarray:
        visited = np.empty((len(states), actions.shape[1] + 1, 2))
        visited[:, 0] = states
        for t in range(actions.shape[1]):
            visited[:, t + 1] = wall_step(visited[:, t], actions[:, t], self.layout)
        return visited

    def _success_and_distance(self, goal: np.ndarray, cur: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dist = np.linalg.norm(goal - cur, axis=-1)
        return dist < SUCCESS_RADIUS, dist

    def crossed(self, states: Any) -> np.ndarray:
        """Whether each trajectory of states (N, T+1, 2) ever changes side of the wall: bool (N,)."""
        states = as_float_array(states, (None, None, 2), "states")
        side = states[:, :, 0] >= self.layout.wall_x
        return np.any(side != side[:, :1], axis=1)
