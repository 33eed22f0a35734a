"""The study's caches, and nothing else: what runs derive from a checkpoint and share, kept once per process.

``Caches`` holds the stores, keyed as ``wmqlib.setting.Resolved`` says and filled by ``wmqlib.study.prepare``:

    checkpoint(name) / resolved(setting)  a checkpoint's folder, env and weights fingerprint, read and hashed once
                                          per version of its files; a setting resolved against them (no other I/O)
    models        (model_sha, device) -> the FP WorldModel
    quantized     quantized_key -> (quantized model, QuantReport), the last ``MODEL_CACHE_SIZE`` used
    calibrations  calibration_key -> Calibration, in memory and as ``<calib_dir>/<key>.safetensors`` (atomic writes)
    episodes      (env, n, seed, split, goal_H, frameskip, sampler) -> episodes
    samples       (model_sha, n, seed) -> TrajectoryData, a checkpoint's regenerated training data
    frames        (env, n_traj, seed, traj_len, size) -> the state probe's ProbeFrames

``CACHES`` is the process's instance, which the notebooks' calls share. ``provenance()`` says where results are
computed.
"""

from __future__ import annotations

import os
import platform
from collections import OrderedDict
from pathlib import Path
from typing import Any, NamedTuple

import torch

from wmqlib.envs import Episode, TrajectoryData
from wmqlib.models import WorldModel, resolve_checkpoint
from wmqlib.models.checkpoint import CONFIG_FILE, WEIGHTS_FILE, fingerprint
from wmqlib.models.errors import CheckpointError
from wmqlib.paths import RESULTS_DIR
from wmqlib.probe import ProbeFrames
from wmqlib.quant import Calibration
from wmqlib.setting import Resolved, Setting, resolve_setting
from wmqlib.validate import atomic_path

MODEL_CACHE_SIZE = 4  # quantized copies kept in memory (imagined rollouts re-use the model a table came from)


class CheckpointId(NamedTuple):
    """What identifies a wmq checkpoint: its ``folder``, the ``env`` it was trained on and ``model_sha``, the sha256
    (16 hex digits) of its config.json and model.safetensors, so cached results follow the weights, not the name."""

    folder: Path
    env: str
    model_sha: str


class Recent(OrderedDict):
    """A mapping that keeps the ``size`` entries used last: reading one makes it the newest, storing one drops the
    oldest beyond ``size``."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def __getitem__(self, key: Any) -> Any:
        self.move_to_end(key)
        return super().__getitem__(key)

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


class CalibrationStore:
    """Calibrations by key, in memory and as ``<folder>/<key>.safetensors``: ``key in store`` (either), ``store[key]``
    (memory, else the file, loaded once), ``store[key] = calib`` (memory and the file, written atomically: whole or
    absent, whatever kills the run). ``fresh``: the keys stored by this process (a recompute happens once per key)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.fresh: set[str] = set()
        self._memory: dict[str, Calibration] = {}

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.safetensors"

    def __contains__(self, key: str) -> bool:
        return key in self._memory or self.path(key).is_file()

    def __getitem__(self, key: str) -> Calibration:
        if key not in self._memory:
            self._memory[key] = Calibration.load(self.path(key))
        return self._memory[key]

    def __setitem__(self, key: str, calib: Calibration) -> None:
        with atomic_path(self.path(key)) as tmp:
            calib.save(tmp)
        self._memory[key] = calib
        self.fresh.add(key)


class Caches:
    """The stores of one process (module docstring); ``calib_dir`` None = ``data/results/calibration``."""

    def __init__(self, calib_dir: str | os.PathLike | None = None) -> None:
        self.calib_dir = Path(calib_dir) if calib_dir is not None else RESULTS_DIR / "calibration"
        self.models: dict[tuple[str, str], WorldModel] = {}
        self.quantized = Recent(MODEL_CACHE_SIZE)
        self.calibrations = CalibrationStore(self.calib_dir)
        self.episodes: dict[tuple[Any, ...], tuple[Episode, ...]] = {}
        self.samples: dict[tuple[Any, ...], TrajectoryData] = {}
        self.frames: dict[tuple[Any, ...], ProbeFrames] = {}
        self._fingerprints: dict[tuple[Any, ...], tuple[str, str]] = {}

    def checkpoint(self, checkpoint: str | os.PathLike) -> CheckpointId:
        """The ``CheckpointId`` of a wmq checkpoint: a shipped name ("mini-wall") or a wmq folder.

        config.json and model.safetensors are read and hashed (``wmqlib.models.checkpoint.fingerprint``) once per size
        and mtime. Raises CheckpointError for anything else (convert a released DINO-WM folder with
        ``wmqlib.models.convert``).
        """
        folder = resolve_checkpoint(checkpoint)
        if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
            raise CheckpointError(
                f"checkpoint {str(checkpoint)!r} ({folder}) is not a wmq checkpoint folder ({CONFIG_FILE} + "
                f"{WEIGHTS_FILE}); convert a released DINO-WM folder with `python -m wmqlib.models.convert`")
        stats = [(folder / name).stat() for name in (CONFIG_FILE, WEIGHTS_FILE)]
        version = (str(folder.resolve()), *((st.st_mtime_ns, st.st_size) for st in stats))
        if version not in self._fingerprints:  # read and hashed once per version of the files
            self._fingerprints[version] = fingerprint(folder)
        return CheckpointId(folder, *self._fingerprints[version])

    def resolved(self, setting: Setting) -> Resolved:
        """``setting`` resolved against its checkpoint (``wmqlib.setting.resolve_setting``): once per run, and passed
        down."""
        folder, env, model_sha = self.checkpoint(setting.checkpoint)
        return resolve_setting(setting, folder, env, model_sha)


CACHES = Caches()  # the process's caches, shared by the notebooks' calls


def provenance() -> dict[str, Any]:
    """Where results are computed now: torch version, intra-op threads, CPU model, Python and platform. Planning
    reproduces bit for bit only on the same machine type, torch build and thread count (float reduction order
    changes CEM's elites), so every cached result carries these."""
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": _cpu_model(),
            "python": platform.python_version(), "platform": platform.platform(terse=True)}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
