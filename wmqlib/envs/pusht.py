"""PushT: DINO-WM's T-pushing task as a ``WmqEnv`` (the simulated world is ``pusht_physics``).

- state (7) = agent x, y, block x, y, block angle mod 2 pi, agent vx, vy; proprio (4) = agent x, y, vx, vy.
- ``set_state`` places the bodies (angle before position) and runs one 10 ms tick, as the release does on reset.
- success: ``||goal[:4] - cur[:4]|| < 20`` and wrapped angle difference < pi/9; state_dist = ||goal - cur|| (7-d).
- episodes and training data come from the scripted policies of ``policies`` (a pusher and a demonstrator).

One deliberate difference: actions are clipped to [-1, 1] per component (the released data's std is 0.2), which
bounds the agent's speed (about 7 px per tick) well below the 15 px radius, so it cannot tunnel through the block.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from gymnasium import spaces
from PIL import Image
from tqdm.auto import tqdm

from wmqlib.envs.base import DATA_STREAM, EPISODE_STREAM, WmqEnv, register_env, resize_images
from wmqlib.envs.policies import pusht_demonstration, pusht_trajectory
from wmqlib.envs.pusht_physics import ACTION_LIMIT, DT, WINDOW, Sim, agent_velocities, draw_state, sample_start_state

SUCCESS_POS, SUCCESS_ANGLE = 20.0, math.pi / 9
DEMO_MAX_LEN = 300  # control steps a held-out demonstration may take at most
_DEMO_TAG = 0x44454D4F  # separates the demonstration streams from the scripted pusher's
_PUSHER_EVERY = 4  # "mixed" data: every 4th trajectory comes from the exploratory pusher

@register_env
class PushT(WmqEnv):
    """DINO-WM's PushT environment (see the module docstrings here and in ``pusht_physics`` for every rule).

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
        self._sim = Sim()
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
        sim = Sim()
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
