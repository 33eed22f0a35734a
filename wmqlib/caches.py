"""The study's caches as one object: what a run derives from a checkpoint, and what settings share.

``Caches`` holds, per process: the checkpoint facts a setting implies (folder, env, weights fingerprint: building a
``wmqlib.setting.Setting`` reads no file, a run asks these), the FP models, the last few quantized copies, the
calibrations (in memory and as ``<calib_dir>/<key>.safetensors``, written atomically) and the episodes. ``CACHES``
is the process's instance, which the notebooks' calls share. ``provenance()`` says where results are computed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import platform
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from wmqlib import evaluate as ev
from wmqlib.envs import Episode, WmqEnv, env_class, make_env, sample_episodes
from wmqlib.models import WorldModel, load_world_model, resolve_checkpoint
from wmqlib.models.checkpoint import CONFIG_FILE, WEIGHTS_FILE, read_checkpoint_config
from wmqlib.models.errors import CheckpointError
from wmqlib.paths import RESULTS_DIR
from wmqlib.plan import CEMConfig, MPCConfig
from wmqlib.probe import ProbeFrames, probe_frames
from wmqlib.setting import Setting
from wmqlib.quant import Calibration, QuantReport, quantize
from wmqlib.sweep import canonical, config_key
from wmqlib.validate import atomic_path


CALIB_MPC_ROUNDS = 2  # the reference protocol: FP planning for 2 MPC iterations on the calibration seeds
MODEL_CACHE_SIZE = 4  # quantized copies kept in memory (imagined rollouts re-use the model a table came from)


class Caches:
    """Everything the study computes once and shares between settings, in one object: checkpoint facts (folder,
    env, weights fingerprint), FP models, quantized copies (the last ``MODEL_CACHE_SIZE``), calibrations (in memory
    and as ``<calib_dir>/<key>.safetensors``) and episodes. ``calib_dir`` None = ``data/results/calibration``."""

    def __init__(self, calib_dir: str | os.PathLike | None = None) -> None:
        self.calib_dir = Path(calib_dir) if calib_dir is not None else RESULTS_DIR / "calibration"
        self._checkpoints: dict[tuple[Any, ...], tuple[str, str]] = {}
        self._models: dict[tuple[str, str], WorldModel] = {}
        self._quantized: OrderedDict[str, tuple[Any, QuantReport | None]] = OrderedDict()
        self._calibrations: dict[str, Calibration] = {}
        self._fresh: set[str] = set()
        self._episodes: dict[tuple[Any, ...], tuple[Episode, ...]] = {}
        self._frames: dict[tuple[Any, ...], ProbeFrames] = {}

    def checkpoint(self, checkpoint: str | os.PathLike) -> tuple[Path, str, str]:
        """(folder, env, fingerprint) of a wmq checkpoint: a shipped name ("mini-wall") or a wmq folder.

        The fingerprint is the sha256 (16 hex digits) of config.json and model.safetensors (both read and hashed
        once per size and mtime), so cached results and calibrations follow the weights, not the name. Raises
        CheckpointError for anything else (convert a released DINO-WM folder with ``wmqlib.models.convert``).
        """
        folder = resolve_checkpoint(checkpoint)
        if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
            raise CheckpointError(
                f"checkpoint {str(checkpoint)!r} ({folder}) is not a wmq checkpoint folder ({CONFIG_FILE} + "
                f"{WEIGHTS_FILE}); convert a released DINO-WM folder with `python -m wmqlib.models.convert`")
        stats = [(folder / name).stat() for name in (CONFIG_FILE, WEIGHTS_FILE)]
        key = (str(folder.resolve()), *((st.st_mtime_ns, st.st_size) for st in stats))
        if key not in self._checkpoints:  # read and hashed once per version of the files (settings ask often)
            env = read_checkpoint_config(folder)["config"]["env"]
            digest = hashlib.sha256()
            for name in (CONFIG_FILE, WEIGHTS_FILE):
                digest.update(hashlib.sha256((folder / name).read_bytes()).hexdigest().encode())
            self._checkpoints[key] = (env, digest.hexdigest()[:16])
        env, fingerprint = self._checkpoints[key]
        return folder, env, fingerprint

    def env_name(self, setting: Setting) -> str:
        """The environment the setting's checkpoint was trained on ("wall", "pusht")."""
        return self.checkpoint(setting.checkpoint)[1]

    def identity(self, setting: Setting) -> dict[str, Any]:
        """What identifies the setting's results: its fields (``calib_planner`` resolved) plus ``env`` and
        ``model_sha`` (the weights fingerprint). Its ``config_key`` names the cached result file."""
        _, env, sha = self.checkpoint(setting.checkpoint)
        resolved = canonical(dataclasses.replace(setting, calib_planner=self.calib_planner(setting),
                                                 sampler=self.sampler(setting)))
        unkeyed = (("planner_seed", 0), ("objective", None), ("sampler", env_class(env).unkeyed_sampler))
        for name, unset in unkeyed:  # keys of results from before the field
            if resolved[name] == unset:
                del resolved[name]
        return {**resolved, "env": env, "model_sha": sha}

    def calib_planner(self, setting: Setting) -> CEMConfig:
        """The FP CEM planner of the setting's calibration run: its own, else CEM with the env's protocol budget."""
        return setting.calib_planner or CEMConfig(horizon=setting.planner.horizon,
                                                  opt_steps=env_class(self.env_name(setting)).plan_opt_steps)

    def sampler(self, setting: Setting) -> str:
        """The setting's episode sampler resolved against its env (None = the env's default); ValueError naming the
        env's samplers for an unknown one."""
        return env_class(self.env_name(setting)).check_sampler(setting.sampler)

    def model(self, setting: Setting) -> WorldModel:
        """The full-precision model of ``setting`` in eval mode on its device (loaded once per weights and device)."""
        folder, _, sha = self.checkpoint(setting.checkpoint)
        if (sha, setting.device) not in self._models:
            self._models[sha, setting.device] = load_world_model(folder, device=setting.device)
        return self._models[sha, setting.device]

    def env(self, setting: Setting) -> WmqEnv:
        """The setting's environment, rendering at the model's image size."""
        return make_env(self.env_name(setting), render_size=self.model(setting).config.img_size)

    def episodes(self, setting: Setting, split: str = "eval") -> list[Episode]:
        """The setting's episodes of ``split`` ("eval": n_evals, "calib": n_calib), drawn once per process."""
        n = setting.n_evals if split == "eval" else setting.n_calib
        env = self.env_name(setting)
        frameskip, sampler = self.model(setting).config.frameskip, self.sampler(setting)
        key = (env, n, setting.seed, split, setting.goal_H, frameskip, sampler)
        if key not in self._episodes:
            self._episodes[key] = tuple(sample_episodes(env, n, seed=setting.seed, split=split,
                                                        goal_H=setting.goal_H, frameskip=frameskip, sampler=sampler))
        return list(self._episodes[key])

    def probe_frames(self, setting: Setting, n_traj: int, seed: int, traj_len: int = 20) -> ProbeFrames:
        """Scripted frames of the setting's env at its model's image size for the state probe (made once)."""
        env, size = self.env_name(setting), self.model(setting).config.img_size
        key = (env, n_traj, seed, traj_len, size)
        if key not in self._frames:
            self._frames[key] = probe_frames(env, n_traj, traj_len, seed, size)
        return self._frames[key]

    def _calibration_fields(self, setting: Setting) -> dict[str, Any]:
        identity = self.identity(setting)
        return {"model_sha": identity["model_sha"], "env": identity["env"], "n_calib": setting.n_calib,
                "sampler": self.sampler(setting),
                "seed": setting.seed, "goal_H": setting.goal_H, "planner": self.calib_planner(setting),
                "mpc_rounds": CALIB_MPC_ROUNDS, "mpc": MPCConfig(max_rounds=CALIB_MPC_ROUNDS),
                "device": setting.device}  # the MPCConfig keys the round semantics (replay from the start)

    def calibration(self, setting: Setting, recompute: bool = False) -> Calibration:
        """FP-planning calibration of ``setting``'s model, cached in memory and on disk (written atomically).
        recompute: collect again (once per process and key) and overwrite the file."""
        fields = self._calibration_fields(setting)
        key = config_key(fields)
        path = self.calib_dir / f"{key}.safetensors"
        stale = recompute and key not in self._fresh
        if key in self._calibrations and not stale:
            return self._calibrations[key]
        if path.is_file() and not stale:
            calib = Calibration.load(path)
        else:
            calib = ev.collect_calibration(self.model(setting), self.env(setting), self.episodes(setting, "calib"),
                                           fields["planner"], mpc_rounds=CALIB_MPC_ROUNDS)
            with atomic_path(path) as tmp:  # whole or absent, whatever kills the run
                calib.save(tmp)
            self._fresh.add(key)
        self._calibrations[key] = calib
        return calib

    def quantized(self, setting: Setting, recompute: bool = False) -> tuple[Any, QuantReport | None]:
        """(model to plan with, its QuantReport or None for FP)."""
        model = self.model(setting)
        if setting.recipe is None:
            return model, None
        key = config_key({"model_sha": self.identity(setting)["model_sha"], "device": setting.device,
                          "recipe": setting.recipe, "scope": setting.scope,
                          "calibration": self._calibration_fields(setting)})
        if key in self._quantized and not recompute:
            self._quantized.move_to_end(key)
            return self._quantized[key]
        needs = setting.recipe.needs_calibration or setting.recipe.static_activations
        calib = self.calibration(setting, recompute) if needs else None
        self._quantized[key] = quantize(model, setting.recipe, calib, scope=setting.scope)
        while len(self._quantized) > MODEL_CACHE_SIZE:
            self._quantized.popitem(last=False)
        return self._quantized[key]


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
