"""The study's caches as one object: what a run derives from a checkpoint, and what settings share.

``Caches`` holds, per process: the checkpoint facts a setting implies (folder, env, weights fingerprint: building a
``wmqlib.setting.Setting`` reads no file, a run asks these), the FP models, the last few quantized copies, the
calibrations (in memory and as ``<calib_dir>/<key>.safetensors``, written atomically) and the episodes. ``CACHES``
is the process's instance, which the notebooks' calls share. ``provenance()`` says where results are computed.
``training_sample`` regenerates trajectories of a checkpoint's own training data (the "dataset" calibration source).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import platform
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wmqlib import evaluate as ev
from wmqlib.envs import Episode, TrajectoryData, WmqEnv, env_class, make_env, sample_episodes
from wmqlib.models import WorldModel, load_world_model, resolve_checkpoint
from wmqlib.models.checkpoint import CONFIG_FILE, WEIGHTS_FILE, read_checkpoint_config
from wmqlib.models.errors import CheckpointError
from wmqlib.paths import RESULTS_DIR
from wmqlib.plan import CEMConfig, MPCConfig
from wmqlib.probe import ProbeFrames, probe_frames
from wmqlib.setting import Setting
from wmqlib.quant import Calibration, QuantReport, quantize
from wmqlib.sweep import canonical, config_key
from wmqlib.train import PRESETS, TrainConfig, data_policy
from wmqlib.validate import atomic_path, check_int

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
        self._samples: dict[tuple[Any, ...], TrajectoryData] = {}

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

    def training_sample(self, setting: Setting) -> TrajectoryData:
        """``training_sample`` of the setting's checkpoint: ``n_calib`` trajectories of its training data, drawn with
        the setting's ``seed`` (made once per process)."""
        folder, _, sha = self.checkpoint(setting.checkpoint)
        key = (sha, setting.n_calib, setting.seed)
        if key not in self._samples:
            self._samples[key] = training_sample(folder, self.model(setting).normalization(), setting.n_calib,
                                                 setting.seed)
        return self._samples[key]

    def _calibration_fields(self, setting: Setting) -> dict[str, Any]:
        """What the setting's calibration depends on (its key). Settings at the default calib_rounds (2) and
        calib_source ("planning") give the fields calibrations were keyed by before those options existed."""
        identity = self.identity(setting)
        common = {"model_sha": identity["model_sha"], "env": identity["env"], "n_calib": setting.n_calib,
                  "seed": setting.seed, "device": setting.device}
        if setting.calib_source == "dataset":  # training trajectories: no episodes, planner or rounds
            return {**common, "source": "dataset"}
        rounds = setting.calib_rounds
        fields = {**common, "sampler": self.sampler(setting), "goal_H": setting.goal_H,
                  "planner": self.calib_planner(setting), "mpc_rounds": rounds,
                  "mpc": MPCConfig(max_rounds=rounds)}  # the MPCConfig keys the round semantics (replay from start)
        if setting.calib_source != "planning":
            fields["source"] = setting.calib_source
        return fields

    def calibration(self, setting: Setting, recompute: bool = False) -> Calibration:
        """Calibration of ``setting``'s FP model from its ``calib_source`` (FP planning by default), cached in memory
        and on disk (written atomically). recompute: collect again (once per process and key), overwrite the file."""
        fields = self._calibration_fields(setting)
        key = config_key(fields)
        path = self.calib_dir / f"{key}.safetensors"
        stale = recompute and key not in self._fresh
        if key in self._calibrations and not stale:
            return self._calibrations[key]
        if path.is_file() and not stale:
            calib = Calibration.load(path)
        else:
            if setting.calib_source == "dataset":
                calib = ev.collect_calibration(self.model(setting), source="dataset",
                                               data=self.training_sample(setting))
            else:
                calib = ev.collect_calibration(self.model(setting), self.env(setting),
                                               self.episodes(setting, "calib"), fields["planner"],
                                               mpc_rounds=setting.calib_rounds, source=setting.calib_source)
            with atomic_path(path) as tmp:  # whole or absent, whatever kills the run
                calib.save(tmp)
            self._fresh.add(key)
        self._calibrations[key] = calib
        return calib

    def quantized_key(self, setting: Setting) -> str:
        """The in-memory key of the setting's quantized copy: weights, device, recipe, scope, overrides (when
        given) and the calibration's fields."""
        fields = {"model_sha": self.identity(setting)["model_sha"], "device": setting.device,
                  "recipe": setting.recipe, "scope": setting.scope, "calibration": self._calibration_fields(setting)}
        if setting.overrides is not None:
            fields["overrides"] = setting.overrides
        return config_key(fields)

    def quantized(self, setting: Setting, recompute: bool = False) -> tuple[Any, QuantReport | None]:
        """(model to plan with, its QuantReport or None for FP): ``quantize(model, recipe, calibration, scope,
        overrides)``, calibrating first when the recipe or an override's recipe needs it."""
        model = self.model(setting)
        if setting.recipe is None:
            return model, None
        key = self.quantized_key(setting)
        if key in self._quantized and not recompute:
            self._quantized.move_to_end(key)
            return self._quantized[key]
        recipes = [setting.recipe, *(recipe for _, recipe in setting.overrides or ())]
        needs = any(r.needs_calibration or r.static_activations for r in recipes)
        calib = self.calibration(setting, recompute) if needs else None
        overrides = dict(setting.overrides) if setting.overrides is not None else None
        self._quantized[key] = quantize(model, setting.recipe, calib, scope=setting.scope, overrides=overrides)
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


# ----- the training data of a checkpoint (the "dataset" calibration source) -----------------------------------------

def checkpoint_recipe(folder: str | os.PathLike) -> TrainConfig:
    """The ``wmqlib.train`` recipe the wmq checkpoint in ``folder`` was trained with.

    Read from its config.json provenance (a fine-tuned checkpoint such as wmqlib.qat's: its base's, under
    ``base_provenance``). Recipes written before the architecture was nested and the data policy named (the first
    shipped models) are matched to the ``wmqlib.train.PRESETS`` entry named like the folder (or like
    ``base_checkpoint``). CheckpointError when no recipe is found (e.g. a converted DINO-WM release).
    """
    folder = Path(folder)
    prov = read_checkpoint_config(folder).get("provenance") or {}
    recipe = prov.get("recipe") or (prov.get("base_provenance") or {}).get("recipe")
    if isinstance(recipe, dict) and "model" in recipe:
        return TrainConfig.from_dict(recipe)
    legacy = ("env", "n_traj", "traj_len", "seed", "img_size")
    names = (folder.name, prov.get("base_checkpoint"))
    cfg = next((PRESETS[n] for n in names if n in PRESETS and isinstance(recipe, dict)
                and all(recipe.get(k) == getattr(PRESETS[n], k) for k in legacy)), None)
    if cfg is None:
        raise CheckpointError(f"checkpoint {folder} records no training recipe that says how its data were generated "
                              "(config.json provenance 'recipe'): its training data cannot be regenerated")
    return cfg


def training_data_recipe(folder: str | os.PathLike) -> dict[str, Any]:
    """How the training data of the wmq checkpoint in ``folder`` were generated: {"env", "n_traj", "traj_len",
    "seed", "img_size", "policy"} (``wmqlib.envs.generate_dataset``'s arguments), from ``checkpoint_recipe``."""
    cfg = checkpoint_recipe(folder)
    return {"env": cfg.env, "n_traj": cfg.n_traj, "traj_len": cfg.traj_len, "seed": cfg.seed,
            "img_size": cfg.img_size, "policy": data_policy(cfg)}


def training_sample(folder: str | os.PathLike, normalization: dict[str, Any], n: int, seed: int) -> TrajectoryData:
    """``n`` trajectories of the checkpoint's training data, regenerated (deterministic; no file is written).

    All ``n_traj`` trajectories of ``training_data_recipe(folder)`` are regenerated (states and actions only: the
    shipped models' data take seconds), their action / proprio mean and std checked against the model's
    ``normalization`` (``WorldModel.normalization()``; computed from those data when it was trained, so a mismatch
    means the generator changed since: CheckpointError), then ``n`` of them, drawn without replacement by
    ``np.random.default_rng(seed)`` and kept in index order, are rendered. Returns a TrajectoryData with the full
    data's statistics; ``meta`` holds the recipe and the chosen ``trajectories``.
    """
    recipe = training_data_recipe(folder)
    check_int("training_sample n (Setting.n_calib)", n, 1, recipe["n_traj"],
              f" (the training data hold {recipe['n_traj']} trajectories)")
    cls = env_class(recipe["env"])
    states, actions = cls.collect_trajectories(recipe["n_traj"], recipe["traj_len"], recipe["seed"],
                                               recipe["policy"], False)
    renderer = make_env(recipe["env"], render_size=recipe["img_size"])
    proprio = renderer.proprio_of(states)
    stats = {}
    for name, values in (("action", actions), ("proprio", proprio.astype(np.float64))):
        flat = values.reshape(-1, values.shape[-1])
        stats[f"{name}_mean"], stats[f"{name}_std"] = flat.mean(axis=0), flat.std(axis=0, ddof=1)
    for name, value in stats.items():
        if not np.allclose(value, np.asarray(normalization[name], dtype=np.float64), rtol=1e-5, atol=1e-7):
            raise CheckpointError(f"the regenerated training data of {folder} do not match the model: their {name} "
                                  f"is {value.tolist()}, the model's {normalization[name]}; the data generator has "
                                  "changed since it was trained, so calib_source='dataset' cannot reproduce its data")
    pick = np.sort(np.random.default_rng(seed).choice(recipe["n_traj"], n, replace=False))
    size, steps = recipe["img_size"], recipe["traj_len"] + 1
    frames = renderer.observe(states[pick].reshape(n * steps, -1), size)["visual"].reshape(n, steps, size, size, 3)
    return TrajectoryData(recipe["env"], frames, actions[pick], proprio[pick], states[pick], **stats,
                          meta={**recipe, "trajectories": pick.tolist()})
