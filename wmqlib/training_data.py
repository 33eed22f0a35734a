"""A checkpoint's training data, regenerated: the recipe it was trained with, and a sample of its trajectories
rendered again (the "dataset" calibration source of ``wmqlib.study``). Data generation is deterministic per recipe,
so the shipped models' data take seconds to regenerate instead of being stored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from wmqlib.envs import TrajectoryData, env_class, make_env
from wmqlib.models import CheckpointError, WorldModel
from wmqlib.recipes import PRESETS, TrainConfig, data_policy
from wmqlib.validate import check_int

def checkpoint_recipe(provenance: dict[str, Any], folder: str | Path) -> TrainConfig:
    """The recipe a wmq checkpoint was trained with, from its ``provenance`` (config.json's, ``WorldModel.provenance``;
    a fine-tuned checkpoint such as wmqlib.qat's: its base's, under ``base_provenance``). ``folder``: the checkpoint's
    folder, only named: recipes written before the architecture was nested and the data policy named (the first
    shipped models) are matched to the ``PRESETS`` entry named like the folder (or like ``base_checkpoint``).
    CheckpointError when no recipe is found (e.g. a converted DINO-WM release).
    """
    recipe = provenance.get("recipe") or (provenance.get("base_provenance") or {}).get("recipe")
    if isinstance(recipe, dict) and "model" in recipe:
        return TrainConfig.from_dict(recipe)
    legacy = ("env", "n_traj", "traj_len", "seed", "img_size")
    names = (Path(folder).name, provenance.get("base_checkpoint"))
    cfg = next((PRESETS[n] for n in names if n in PRESETS and isinstance(recipe, dict)
                and all(recipe.get(k) == getattr(PRESETS[n], k) for k in legacy)), None)
    if cfg is None:
        raise CheckpointError(f"checkpoint {folder} records no training recipe that says how its data were generated "
                              "(config.json provenance 'recipe'): its training data cannot be regenerated")
    return cfg


def training_data_recipe(provenance: dict[str, Any], folder: str | Path) -> dict[str, Any]:
    """How a checkpoint's training data were generated: {"env", "n_traj", "traj_len", "seed", "img_size", "policy"}
    (``wmqlib.envs.generate_dataset``'s arguments), from ``checkpoint_recipe(provenance, folder)``."""
    cfg = checkpoint_recipe(provenance, folder)
    return {"env": cfg.env, "n_traj": cfg.n_traj, "traj_len": cfg.traj_len, "seed": cfg.seed,
            "img_size": cfg.img_size, "policy": data_policy(cfg)}


def training_sample(model: WorldModel, folder: str | Path, n: int, seed: int) -> TrajectoryData:
    """``n`` trajectories of the training data of ``model``, the checkpoint loaded from ``folder``, regenerated
    (deterministic; nothing is read or written).

    All ``n_traj`` trajectories of ``training_data_recipe(model.provenance, folder)`` are regenerated (states and
    actions only: the shipped models' data take seconds), their action / proprio mean and std checked against
    ``model.normalization()`` (computed from those data when it was trained, so a mismatch means the generator changed
    since: CheckpointError), then ``n`` of them, drawn without replacement by ``np.random.default_rng(seed)`` and kept
    in index order, are rendered: frames (n, T+1, img, img, 3). Returns a TrajectoryData with the full data's
    statistics; ``meta`` holds the recipe and the chosen ``trajectories``.
    """
    recipe = training_data_recipe(model.provenance, folder)
    normalization = model.normalization()
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
