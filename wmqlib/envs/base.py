"""The interface every wmq environment implements, the shared input checks and image resizing, and ``make_env``.

A :class:`WmqEnv` is a gymnasium environment whose whole physical state is a flat float64 vector, so that planners
can restart it anywhere (``reset(options={"state": s})``), evaluate goals on states (``eval_state``) and execute many
plans at once from given states (``rollout_actions``) without touching the environment's own episode.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces

from wmqlib.validate import check_choice

MIN_RENDER_SIZE, MAX_RENDER_SIZE = 8, 1024
_RESIZE_CHUNK = 256  # images per interpolate call: bounds the float32 copy (~65 MB at 224 px)

_REGISTRY: dict[str, type["WmqEnv"]] = {}
# Mixed into the generators of training data and of planning episodes, so the two streams never coincide.
DATA_STREAM = 0x44415441
EPISODE_STREAM = 0x45504953


def register_env(cls: type["WmqEnv"]) -> type["WmqEnv"]:
    """Class decorator: make ``cls`` constructible as ``make_env(cls.name)``."""
    _REGISTRY[cls.name] = cls
    return cls


def env_names() -> tuple[str, ...]:
    """The names ``make_env`` accepts, sorted."""
    return tuple(sorted(_REGISTRY))


def env_class(name: str) -> type["WmqEnv"]:
    """The class registered as ``name`` (``"wall"`` or ``"pusht"``): its per-env facts without building an env."""
    if not isinstance(name, str):
        raise TypeError(f"env name must be a str, one of {env_names()}; got {type(name).__name__}")
    if name not in _REGISTRY:
        raise ValueError(f"unknown env {name!r}; allowed: {env_names()}")
    return _REGISTRY[name]


def make_env(name: str, **kwargs: Any) -> "WmqEnv":
    """Build the environment called ``name`` (``"wall"`` or ``"pusht"``) with constructor ``kwargs``."""
    return env_class(name)(**kwargs)


def check_render_size(size: Any, field: str = "render_size") -> int:
    """Return ``size`` as an int, or raise if it is not an integer in [MIN_RENDER_SIZE, MAX_RENDER_SIZE]."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise TypeError(f"{field} must be an int in [{MIN_RENDER_SIZE}, {MAX_RENDER_SIZE}], got {size!r}")
    if not MIN_RENDER_SIZE <= size <= MAX_RENDER_SIZE:
        raise ValueError(f"{field} must be in [{MIN_RENDER_SIZE}, {MAX_RENDER_SIZE}] pixels, got {size}")
    return int(size)


def as_float_array(x: Any, shape: tuple[int | None, ...], field: str) -> np.ndarray:
    """``x`` as a finite float64 array of ``shape`` (None = any length), else a ValueError naming ``field``."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{field} must be a numeric array of shape {_fmt(shape)}, got {type(x).__name__}") from err
    if arr.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, arr.shape)):
        raise ValueError(f"{field} must have shape {_fmt(shape)}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{field} must be finite, got NaN or inf")
    return arr


def _fmt(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("N" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def wrap_angle(angle: np.ndarray) -> np.ndarray:
    """Angles (any shape, radians) wrapped into [-pi, pi)."""
    return (angle + np.pi) % (2 * np.pi) - np.pi


def resize_images(images: np.ndarray, size: int, antialias: bool = True) -> np.ndarray:
    """Bilinearly resize square RGB images to ``size`` x ``size``.

    images: (N, H, W, 3) uint8 or float in [0, 255]. Returns uint8 (N, size, size, 3), rounded to nearest.
    Interpolation is ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` on float32, which is
    what torchvision's ``Resize`` does to tensors; ``antialias=True`` widens the kernel when shrinking (no effect when
    enlarging), ``antialias=False`` samples like ``cv2.resize(..., INTER_LINEAR)``.
    """
    n, h, w, _ = images.shape
    if (h, w) == (size, size):
        return np.clip(np.rint(images), 0, 255).astype(np.uint8)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for lo in range(0, n, _RESIZE_CHUNK):
        chunk = torch.from_numpy(np.ascontiguousarray(images[lo:lo + _RESIZE_CHUNK])).permute(0, 3, 1, 2).float()
        res = F.interpolate(chunk, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias)
        out[lo:lo + _RESIZE_CHUNK] = res.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


class WmqEnv(gym.Env, abc.ABC):
    """A planning environment whose full state is a float64 vector of length ``state_dim``.

    Observations are ``{"visual": uint8 (render_size, render_size, 3), "proprio": float32 (proprio_dim,)}``; the raw
    action is a float (2,) vector. ``reset(seed=..., options={"state": s, "goal_state": g})`` starts at ``s`` (else at a
    state drawn from the env's seeded sampler); when a goal is known, ``step`` returns ``reward = -state_dist`` and
    ``terminated = success`` from :meth:`eval_state`, otherwise reward 0 and never terminates.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 10}
    name: ClassVar[str]
    state_dim: ClassVar[int]
    proprio_dim: ClassVar[int]
    action_dim: ClassVar[int] = 2
    _extra_reset_options: ClassVar[frozenset[str]] = frozenset()

    # ---- per-env facts of DINO-WM's protocol and of wmq's data (class attributes, read via env_class(name)) ------
    #: CEM iterations of the protocol's planner (300 samples, top 30, horizon 5).
    plan_opt_steps: ClassVar[int]
    #: MPC planning rounds per episode at most in the protocol.
    mpc_max_rounds: ClassVar[int]
    #: frames of history DINO-WM's predictor sees (its released num_hist).
    num_hist: ClassVar[int]
    #: DINO-WM's predictor embedding dropout for this env.
    predictor_emb_dropout: ClassVar[float]
    #: the state components that decide success: (name, state column, unit "px" | "deg", tolerance in that unit),
    #: as the env's success test uses them (the state probe scores against these).
    success_components: ClassVar[tuple[tuple[str, int, str, float], ...]]
    #: DINO-WM's published z-score statistics of a released model for this env (action_mean / action_std /
    #: proprio_mean / proprio_std), or None where it publishes none.
    released_normalization: ClassVar[dict[str, tuple[float, ...]] | None] = None
    #: names :meth:`sample_episode` accepts, and the one the protocol uses.
    episode_samplers: ClassVar[tuple[str, ...]]
    default_sampler: ClassVar[str]
    #: the sampler every result cached before samplers were named used: left out of the study's result keys, so
    #: those results keep their keys (any other sampler is part of the key).
    unkeyed_sampler: ClassVar[str]
    #: names :meth:`collect_trajectories` accepts, and the one training data use.
    data_policies: ClassVar[tuple[str, ...]]
    default_data_policy: ClassVar[str]

    @classmethod
    def check_sampler(cls, sampler: str | None) -> str:
        """``sampler`` (None = ``default_sampler``) if this env has it, else a ValueError naming the allowed ones."""
        return cls.default_sampler if sampler is None else check_choice(f"sampler (env {cls.name!r})", sampler,
                                                                        cls.episode_samplers)

    @classmethod
    def check_data_policy(cls, policy: str | None) -> str:
        """``policy`` (None = ``default_data_policy``) if this env has it, else a ValueError naming the allowed."""
        return cls.default_data_policy if policy is None else check_choice(f"data policy (env {cls.name!r})", policy,
                                                                           cls.data_policies)

    @classmethod
    @abc.abstractmethod
    def sample_episode(cls, seed: int, sampler: str, horizon: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """One planning task by episode seed: start (S,), goal (S,) and the feasible raw actions (horizon, 2) that
        reach the goal, or None when the sampler draws the goal directly. ``horizon``: env steps of the window."""

    @classmethod
    @abc.abstractmethod
    def collect_trajectories(cls, n_traj: int, traj_len: int, seed: int, policy: str,
                             progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Training trajectories of data policy ``policy``: states float64 (n_traj, traj_len + 1, S) and raw
        actions float64 (n_traj, traj_len, 2); the same arguments give the same arrays."""

    @classmethod
    @abc.abstractmethod
    def state_features(cls, states: np.ndarray) -> np.ndarray:
        """The parts of states (..., S) that decide success, as features a regression can fit: (..., F) float64
        (angles as sin / cos)."""

    def data_summary(self, states: np.ndarray) -> dict[str, float]:
        """Facts about training states (N, T+1, S) worth recording in a dataset's meta (default: none)."""
        return {}

    def __init__(self, render_size: int = 64, render_mode: str | None = "rgb_array") -> None:
        super().__init__()
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        self.render_size = check_render_size(render_size)
        low, high = self._proprio_bounds()
        self.observation_space = spaces.Dict({
            "visual": spaces.Box(0, 255, (self.render_size, self.render_size, 3), dtype=np.uint8),
            "proprio": spaces.Box(low.astype(np.float32), high.astype(np.float32), dtype=np.float32),
        })
        self._goal: np.ndarray | None = None

    # ---- what each environment defines -------------------------------------------------------------------------
    @abc.abstractmethod
    def _proprio_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds (proprio_dim,) of the proprio observation, for ``observation_space``."""

    @abc.abstractmethod
    def _sample_state(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
        """A start state (S,) and, if the env's sampler draws one, a goal state (S,) from ``rng``."""

    @abc.abstractmethod
    def _apply_reset_options(self, options: dict[str, Any]) -> None:
        """Apply env-specific reset options (e.g. the Wall layout) before the start state is set."""

    @abc.abstractmethod
    def set_state(self, state: Any) -> None:
        """Put the environment in ``state`` (state_dim,)."""

    @abc.abstractmethod
    def get_state(self) -> np.ndarray:
        """The current state, float64 (state_dim,)."""

    @abc.abstractmethod
    def advance(self, action: Any) -> np.ndarray:
        """Apply one raw action (2,) without rendering; return the new state (state_dim,)."""

    @abc.abstractmethod
    def proprio_of(self, states: np.ndarray) -> np.ndarray:
        """Proprio (..., proprio_dim) float32 of states (..., state_dim)."""

    @abc.abstractmethod
    def _render_states(self, states: np.ndarray, size: int) -> np.ndarray:
        """Frames uint8 (N, size, size, 3) of valid states (N, state_dim)."""

    @abc.abstractmethod
    def _simulate(self, states: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """All states (N, T+1, S) visited when executing valid actions (N, T, 2) from valid states (N, S)."""

    @abc.abstractmethod
    def _success_and_distance(self, goal: np.ndarray, cur: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Success (N,) bool and state distance (N,) of broadcast (N, S) goal/current states."""

    # ---- the shared interface ----------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        """Start an episode; returns ``(obs, info)`` with ``info["state"]`` (and ``info["goal_state"]`` if known)."""
        super().reset(seed=seed)
        options = {} if options is None else options
        if not isinstance(options, dict):
            raise TypeError(f"options must be a dict or None, got {type(options).__name__}")
        allowed = {"state", "goal_state"} | self._extra_reset_options
        unknown = set(options) - allowed
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; allowed: {sorted(allowed)}")
        self._apply_reset_options(options)
        if "state" in options:
            start = self.check_state(options["state"])
            goal = options.get("goal_state")
        else:
            start, goal = self._sample_state(self.np_random)
            goal = options.get("goal_state", goal)
        self._goal = None if goal is None else self.check_state(goal, "goal_state")
        self.set_state(start)
        return self._observation(), self._info()

    def step(self, action: Any) -> tuple[dict, float, bool, bool, dict]:
        """Apply one raw action (2,); returns ``(obs, reward, terminated, truncated, info)``."""
        self.advance(action)
        info = self._info()
        reward, terminated = 0.0, False
        if self._goal is not None:
            success, dist = self.eval_state(self._goal, info["state"])
            reward, terminated = -float(dist), bool(success)
            info.update(success=bool(success), state_dist=float(dist))
        return self._observation(), reward, terminated, False, info

    def render(self, size: int | None = None) -> np.ndarray:
        """The current frame, uint8 (size, size, 3); ``size`` defaults to ``render_size``."""
        size = self.render_size if size is None else check_render_size(size, "size")
        return self._render_states(self.get_state()[None], size)[0]

    def observe(self, states: Any, size: int | None = None) -> dict[str, np.ndarray]:
        """Observations of states (N, S): ``{"visual": uint8 (N, size, size, 3), "proprio": float32 (N, p)}``."""
        size = self.render_size if size is None else check_render_size(size, "size")
        states = self.check_states(states)
        return {"visual": self._render_states(states, size), "proprio": self.proprio_of(states)}

    def eval_state(self, goal_state: Any, cur_state: Any) -> tuple[Any, Any]:
        """DINO-WM's success test and state distance; (S,) inputs give scalars, (N, S) inputs arrays (N,)."""
        goal = np.asarray(goal_state, dtype=np.float64)
        cur = np.asarray(cur_state, dtype=np.float64)
        for field, arr in (("goal_state", goal), ("cur_state", cur)):
            if arr.ndim not in (1, 2) or arr.shape[-1] != self.state_dim:
                raise ValueError(
                    f"{field} must have shape ({self.state_dim},) or (N, {self.state_dim}), got {arr.shape}")
        if goal.ndim == 2 and cur.ndim == 2 and len(goal) != len(cur):
            raise ValueError(f"goal_state and cur_state batch sizes differ: {len(goal)} vs {len(cur)}")
        success, dist = self._success_and_distance(np.atleast_2d(goal), np.atleast_2d(cur))
        if goal.ndim == 1 and cur.ndim == 1:
            return success[0], dist[0]
        return success, dist

    def rollout_actions(self, states: Any, actions: Any, render_size: int | None = None):
        """Execute plans from given states without touching this env's episode.

        states: (N, S) start states; actions: (N, T, 2) raw env actions. Returns final states float64 (N, S), or
        ``(final_states, frames uint8 (N, T+1, size, size, 3))`` when ``render_size`` is given (frame 0 = start).
        """
        if render_size is None:
            return self.rollout_states(states, actions)[:, -1]
        size = check_render_size(render_size)
        visited = self.rollout_states(states, actions)
        n, t1 = visited.shape[:2]
        frames = self._render_states(visited.reshape(n * t1, -1), size).reshape(n, t1, size, size, 3)
        return visited[:, -1], frames

    def rollout_states(self, states: Any, actions: Any) -> np.ndarray:
        """Every state visited executing raw actions (N, T, 2) from states (N, S): float64 (N, T+1, S), [:, 0] = start
        (PushT: the start after set_state's tick)."""
        states = self.check_states(states)
        return self._simulate(states, as_float_array(actions, (len(states), None, self.action_dim), "actions"))

    def check_state(self, state: Any, field: str = "state") -> np.ndarray:
        """``state`` as finite float64 (state_dim,), else a clear error."""
        return as_float_array(state, (self.state_dim,), field)

    def check_states(self, states: Any, field: str = "states") -> np.ndarray:
        """``states`` as finite float64 (N, state_dim), else a clear error."""
        return as_float_array(states, (None, self.state_dim), field)

    def check_action(self, action: Any) -> np.ndarray:
        """``action`` as finite float64 (action_dim,), else a clear error."""
        return as_float_array(action, (self.action_dim,), "action")

    def _observation(self) -> dict[str, np.ndarray]:
        state = self.get_state()
        return {"visual": self.render(), "proprio": self.proprio_of(state)}

    def _info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"state": self.get_state()}
        if self._goal is not None:
            info["goal_state"] = self._goal.copy()
        return info
