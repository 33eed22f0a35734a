"""Training data: scripted trajectories rendered to frames, stored as one npz, and served as DINO-WM windows.

``generate_dataset`` writes frames uint8 (N, T+1, H, W, 3), actions float64 (N, T, 2) (raw env actions), proprio
float32 (N, T+1, p), states float64 (N, T+1, S) and the action/proprio mean and std over the whole dataset
(sample std, as torch's default). ``TrajectoryWindows`` cuts (num_hist + 1)-frame windows ``frameskip`` env steps
apart with the actions in between stacked per frame, ``"(n f) d -> n (f d)"``, as DINO-WM's trajectory slicer.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from wmqlib.envs.base import DATA_STREAM, check_render_size, env_class, env_names, make_env
from wmqlib.validate import atomic_path, check_int

FORMAT_VERSION = 1
__all__ = ["DATA_STREAM", "FORMAT_VERSION", "TrajectoryData", "TrajectoryWindows", "collect_trajectories",
           "generate_dataset"]
_ARRAYS = ("frames", "actions", "proprio", "states", "action_mean", "action_std", "proprio_mean", "proprio_std")
_RENDER_BATCH = 64  # trajectories rendered per progress-bar update


@dataclass(frozen=True, eq=False)
class TrajectoryData:
    """A loaded dataset. Shapes: frames uint8 (N, T+1, H, W, 3); actions (N, T, 2) raw; proprio (N, T+1, p);
    states (N, T+1, S); action_mean/std (2,); proprio_mean/std (p,). ``meta`` holds how it was generated."""

    env: str
    frames: np.ndarray
    actions: np.ndarray
    proprio: np.ndarray
    states: np.ndarray
    action_mean: np.ndarray
    action_std: np.ndarray
    proprio_mean: np.ndarray
    proprio_std: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n, t1 = self.frames.shape[:2]
        expected = {"frames": (n, t1, None, None, 3), "actions": (n, t1 - 1, 2), "proprio": (n, t1, None),
                    "states": (n, t1, None), "action_mean": (2,), "action_std": (2,),
                    "proprio_mean": (self.proprio.shape[-1],), "proprio_std": (self.proprio.shape[-1],)}
        for name, shape in expected.items():
            got = getattr(self, name).shape
            if len(got) != len(shape) or any(s is not None and s != g for s, g in zip(shape, got)):
                raise ValueError(f"dataset field {name} has shape {got}, expected {shape} (None = any)")
        if self.frames.dtype != np.uint8:
            raise ValueError(f"dataset frames must be uint8, got {self.frames.dtype}")

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def traj_len(self) -> int:
        """Actions per trajectory, T."""
        return self.actions.shape[1]

    @property
    def img_size(self) -> int:
        """Frame side in pixels."""
        return self.frames.shape[2]

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TrajectoryData":
        """Read a file written by :func:`generate_dataset`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no dataset file at {path}")
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in (*_ARRAYS, "env", "meta") if k not in npz.files]
            if missing:
                raise ValueError(f"{path} is not a wmq dataset: missing arrays {missing}")
            arrays = {k: npz[k] for k in _ARRAYS}
            env, meta = str(npz["env"]), json.loads(str(npz["meta"]))
        return cls(env=env, meta=meta, **arrays)

    def subset(self, indices: Any) -> "TrajectoryData":
        """The trajectories at ``indices`` with the SAME normalisation statistics (e.g. a validation split)."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.ndim != 1 or (idx.size and (idx.min() < -len(self) or idx.max() >= len(self))):
            raise ValueError(f"indices must be a 1-d array of trajectory indices in [0, {len(self)})")
        return TrajectoryData(self.env, self.frames[idx], self.actions[idx], self.proprio[idx], self.states[idx],
                              self.action_mean, self.action_std, self.proprio_mean, self.proprio_std, dict(self.meta))

    def split(self, val_fraction: float = 0.1, seed: int = 0) -> tuple["TrajectoryData", "TrajectoryData"]:
        """(train, validation) subsets by a seeded permutation of trajectories; both keep this dataset's stats."""
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        n_val = max(1, int(round(val_fraction * len(self))))
        if n_val >= len(self):
            raise ValueError(f"val_fraction {val_fraction} leaves no training trajectory out of {len(self)}")
        perm = np.random.default_rng(seed).permutation(len(self))
        return self.subset(np.sort(perm[n_val:])), self.subset(np.sort(perm[:n_val]))


def collect_trajectories(env: str, n_traj: int, traj_len: int, seed: int, progress: bool = True,
                         policy: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Scripted trajectories: states float64 (n_traj, traj_len + 1, S) and raw actions float64 (n_traj, traj_len, 2).

    ``policy``: one of the env class's ``data_policies`` (None = its ``default_data_policy``); see its
    ``collect_trajectories`` (Wall: door-using random walks; PushT: demonstrations, the exploratory pusher, or a mix).
    """
    cls = env_class(env)
    return cls.collect_trajectories(n_traj, traj_len, seed, cls.check_data_policy(policy), progress)


def generate_dataset(env: str, n_traj: int, traj_len: int, seed: int, img_size: int, path: str | os.PathLike,
                     progress: bool = True, policy: str | None = None) -> Path:
    """Generate, render and save a dataset; returns the npz path (written atomically: a crash leaves no file).

    env: "wall" or "pusht"; traj_len: actions per trajectory (frames T+1); img_size: frame side in pixels;
    policy: the data policy (None = the env's default). The same arguments give the same arrays on every machine.
    """
    if env not in env_names():
        raise ValueError(f"env must be one of {env_names()}, got {env!r}")
    check_int("n_traj", n_traj, 2)
    check_int("traj_len", traj_len, 1)
    check_int("seed", seed, 0)
    policy = env_class(env).check_data_policy(policy)
    renderer = make_env(env, render_size=check_render_size(img_size, "img_size"))
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"path must end in .npz, got {path}")
    states, actions = collect_trajectories(env, n_traj, traj_len, seed, progress, policy)
    frames = np.empty((n_traj, traj_len + 1, img_size, img_size, 3), dtype=np.uint8)
    for lo in tqdm(range(0, n_traj, _RENDER_BATCH), desc=f"{env} frames", disable=not progress):
        batch = states[lo:lo + _RENDER_BATCH]
        frames[lo:lo + len(batch)] = renderer.observe(batch.reshape(-1, batch.shape[-1]), img_size)["visual"].reshape(
            len(batch), traj_len + 1, img_size, img_size, 3)
    proprio = renderer.proprio_of(states)
    stats = {}
    for name, values in (("action", actions), ("proprio", proprio.astype(np.float64))):
        flat = values.reshape(-1, values.shape[-1])
        stats[f"{name}_mean"], stats[f"{name}_std"] = flat.mean(axis=0), flat.std(axis=0, ddof=1)
        if np.any(stats[f"{name}_std"] == 0):
            raise ValueError(f"{name} has zero variance in some dimension; generate more or longer trajectories")
    meta = {"format_version": FORMAT_VERSION, "env": env, "n_traj": n_traj, "traj_len": traj_len, "seed": seed,
            "img_size": img_size, "policy": policy, **renderer.data_summary(states)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a file object: numpy adds no ".npz" to its name
        np.savez_compressed(fh, frames=frames, actions=actions, proprio=proprio, states=states, env=np.array(env),
                            meta=np.array(json.dumps(meta)), **stats)
    return path


class TrajectoryWindows(Dataset):
    """DINO-WM training windows over a :class:`TrajectoryData`.

    Window (i, s) holds frames s, s + f, ..., s + num_hist * f of trajectory i (f = frameskip) and, per frame, the f
    raw actions that follow it, so it needs s + (num_hist + 1) * f <= T. Item: ``visual`` float32
    (num_hist+1, 3, H, W) in [-1, 1] (``x / 255`` normalised with mean 0.5, std 0.5), ``proprio`` float32
    (num_hist+1, p) z-scored, ``action`` float32 (num_hist+1, f * 2) z-scored then stacked, ``state`` float32
    (num_hist+1, S) raw.
    """

    def __init__(self, data: TrajectoryData, num_hist: int, frameskip: int) -> None:
        check_int("num_hist", num_hist, 1)
        check_int("frameskip", frameskip, 1)
        span = (num_hist + 1) * frameskip
        if span > data.traj_len:
            raise ValueError(f"(num_hist + 1) * frameskip = {span} env steps exceeds the trajectory length "
                             f"{data.traj_len}; use shorter windows or longer trajectories")
        self.data, self.num_hist, self.frameskip = data, num_hist, frameskip
        self._starts = data.traj_len - span + 1
        self._actions = ((data.actions - data.action_mean) / data.action_std).astype(np.float32)
        self._proprio = ((data.proprio - data.proprio_mean) / data.proprio_std).astype(np.float32)

    def __len__(self) -> int:
        return len(self.data) * self._starts

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"window index {index} out of range for {len(self)} windows")
        traj, start = divmod(index % len(self), self._starts)
        frames = start + self.frameskip * np.arange(self.num_hist + 1)
        acts = self._actions[traj, start:start + (self.num_hist + 1) * self.frameskip]
        visual = torch.from_numpy(self.data.frames[traj, frames]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return {
            "visual": visual,
            "proprio": torch.from_numpy(self._proprio[traj, frames]),
            "action": torch.from_numpy(acts.reshape(self.num_hist + 1, self.frameskip * acts.shape[-1])),
            "state": torch.from_numpy(self.data.states[traj, frames].astype(np.float32)),
        }
