"""Planning episodes (start state, goal state) drawn by seed, following DINO-WM's evaluation protocol.

Episode k of a split uses seed ``seed * k + 1`` (``"eval"``) or ``seed * k + 2`` (``"calib"``), k = 0 .. n-1, the
released ``eval_seed`` rule, so evaluation and calibration never share an episode when ``seed >= 2``. Each env
class draws its own episodes (``WmqEnv.sample_episode``) with one of its named samplers (``episode_samplers``,
default ``default_sampler``):

- Wall ``"random_state"``: start and goal from the released random-state sampler, as DINO-WM's ``goal_source:
  random_state`` does; the released evaluation episodes.
- PushT ``"demo"`` (default): as DINO-WM's ``goal_source: dset``, the goal is reached by replaying a
  ``frameskip * goal_H``-action window of a held-out demonstration (the scripted demonstrator pushing the T into
  the goal pose) from the window's first state. ``"scripted"``: the same from a run of the exploratory pusher
  (wmq's first sampler, much harder windows). The replayed actions ride along as ``Episode.actions``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wmqlib.envs.base import EPISODE_STREAM, env_class, env_names
from wmqlib.validate import check_int

SPLIT_OFFSETS = {"eval": 1, "calib": 2, "online": 3}  # online: training episodes of ``wmqlib.online``
__all__ = ["EPISODE_STREAM", "Episode", "SPLIT_OFFSETS", "episode_seeds", "sample_episodes"]


@dataclass(frozen=True, eq=False)
class Episode:
    """One planning task. start_state, goal_state: float64 (S,); actions: raw (frameskip * goal_H, 2) or None.

    Arrays are read-only copies; two episodes are equal when every field is equal.
    """

    start_state: np.ndarray
    goal_state: np.ndarray
    seed: int
    env: str
    split: str = "eval"
    actions: np.ndarray | None = field(default=None)

    def __post_init__(self) -> None:
        for name in ("start_state", "goal_state", "actions"):
            value = getattr(self, name)
            if value is not None:
                arr = np.array(value, dtype=np.float64)
                arr.setflags(write=False)
                object.__setattr__(self, name, arr)

    def __eq__(self, other: Any) -> bool:
        if not isinstance(other, Episode):
            return NotImplemented
        same_actions = (self.actions is None and other.actions is None) or (
            self.actions is not None and other.actions is not None and np.array_equal(self.actions, other.actions))
        return (self.seed, self.env, self.split) == (other.seed, other.env, other.split) and same_actions and \
            np.array_equal(self.start_state, other.start_state) and np.array_equal(self.goal_state, other.goal_state)

    def __hash__(self) -> int:
        return hash((self.seed, self.env, self.split, self.start_state.tobytes(), self.goal_state.tobytes()))


def episode_seeds(n: int, seed: int = 99, split: str = "eval") -> list[int]:
    """The per-episode seeds of a split: ``[seed * k + offset for k in range(n)]`` (offset 1 eval, 2 calib, 3
    online); with seed >= 3 the splits never share a seed."""
    check_int("n", n, 1)
    check_int("seed", seed, 3, why=" (0 repeats one episode, 1 or 2 make the splits' seeds overlap)")
    if split not in SPLIT_OFFSETS:
        raise ValueError(f"split must be one of {sorted(SPLIT_OFFSETS)}, got {split!r}")
    return [seed * k + SPLIT_OFFSETS[split] for k in range(n)]


def sample_episodes(env: str, n: int, seed: int = 99, split: str = "eval", goal_H: int = 5,
                    frameskip: int = 5, sampler: str | None = None) -> list[Episode]:
    """``n`` episodes of ``env`` ("wall" or "pusht") for ``split``; the same arguments give the same episodes.

    goal_H (model steps) and frameskip (env steps per model step) set the PushT replay length ``goal_H *
    frameskip``; Wall goals do not depend on them (the released sampler draws them directly). ``sampler``: one of
    the env class's ``episode_samplers`` (None = its ``default_sampler``).
    """
    if env not in env_names():
        raise ValueError(f"env must be one of {env_names()}, got {env!r}")
    cls = env_class(env)
    seeds = episode_seeds(n, seed, split)
    check_int("goal_H", goal_H, 1)
    check_int("frameskip", frameskip, 1)
    sampler = cls.check_sampler(sampler)
    episodes = []
    for s in seeds:
        start, goal, actions = cls.sample_episode(s, sampler, goal_H * frameskip)
        episodes.append(Episode(start, goal, seed=s, env=env, split=split, actions=actions))
    return episodes
