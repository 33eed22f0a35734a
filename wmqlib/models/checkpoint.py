"""wmq's own checkpoint format, and one loader for every kind of world-model checkpoint.

Format: a folder with
  ``config.json``       {"format": "wmq-world-model", "format_version": 1, "config": WorldModelConfig fields
                         (architecture, env, num_hist, frameskip), "normalization": z-score stats in env units,
                         "dtype": weight dtype, "provenance": where the weights came from}
  ``model.safetensors`` the full state_dict (encoder, predictor, action/proprio encoders, decoder, stats).
Loading never unpickles. ``load_world_model`` also accepts short names of the shipped models
(``data/checkpoints/<name>``) and released DINO-WM folders (see ``dinowm``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import wmqlib
from wmqlib.models.config import WorldModelConfig
from wmqlib.models.dinowm import is_released_folder, load_released
from wmqlib.models.errors import CheckpointError
from wmqlib.models.world_model import STAT_NAMES, WorldModel
from wmqlib.paths import CHECKPOINTS_DIR

FORMAT = "wmq-world-model"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def resolve_device(device: torch.device | str) -> torch.device:
    """"auto" -> CUDA when available else CPU; anything else as torch.device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from error


def available_checkpoints(directory: str | Path | None = None) -> list[str]:
    """Short names of the wmq checkpoints under ``directory`` (default: the repository's data/checkpoints)."""
    directory = Path(directory) if directory is not None else CHECKPOINTS_DIR
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir() if (p / CONFIG_FILE).is_file())


def resolve_checkpoint(name_or_path: str | Path, directory: str | Path | None = None) -> Path:
    """A checkpoint path: an existing path as given, else a short name under ``directory`` (data/checkpoints)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    directory = Path(directory) if directory is not None else CHECKPOINTS_DIR
    if isinstance(name_or_path, str) and "/" not in name_or_path and (directory / name_or_path).exists():
        return directory / name_or_path
    raise CheckpointError(
        f"no checkpoint {str(name_or_path)!r}: not an existing path and not a short name in {directory} "
        f"(available: {available_checkpoints(directory) or 'none'})"
    )


def save_world_model(model: WorldModel, path: str | Path, provenance: dict[str, Any] | None = None) -> Path:
    """Write ``model`` to the folder ``path`` (created) as config.json + model.safetensors; returns the folder.

    ``provenance`` (JSON-able) is merged over ``model.provenance``. Files are written atomically (temp + rename).
    """
    if not isinstance(model, WorldModel):
        raise TypeError(f"save_world_model needs a WorldModel, got {type(model).__name__}")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "normalization": model.normalization(),
        "dtype": str(model.dtype).removeprefix("torch."),
        "provenance": {**model.provenance, **(provenance or {}), "wmqlib_version": wmqlib.__version__},
    }
    text = json.dumps(meta, indent=2) + "\n"  # fails here, before any file is touched, if provenance is not JSON-able
    weights_tmp = folder / f".{WEIGHTS_FILE}.tmp"
    save_file(tensors, str(weights_tmp), metadata={"format": FORMAT})
    os.replace(weights_tmp, folder / WEIGHTS_FILE)
    config_tmp = folder / f".{CONFIG_FILE}.tmp"
    config_tmp.write_text(text)
    os.replace(config_tmp, folder / CONFIG_FILE)
    return folder


def read_checkpoint_config(folder: str | Path) -> dict[str, Any]:
    """The parsed, format-checked config.json of a wmq checkpoint folder."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"missing {path}: a wmq checkpoint folder holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({error}); the file is truncated or corrupt") from error
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a wmq checkpoint config (format must be {FORMAT!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has format_version {meta.get('format_version')!r}; this wmqlib reads "
                              f"{FORMAT_VERSION}")
    for key in ("config", "normalization"):
        if not isinstance(meta.get(key), dict):
            raise CheckpointError(f"{path} has no {key!r} mapping")
    return meta


def _load_wmq(folder: Path, device: torch.device) -> WorldModel:
    meta = read_checkpoint_config(folder)
    try:
        config = WorldModelConfig.from_dict(meta["config"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{folder / CONFIG_FILE}: invalid config: {error}") from error
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"missing {weights}: a wmq checkpoint folder holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        state = load_file(str(weights), device=str(device))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{weights} could not be read ({error}); the file is truncated or corrupt") from error
    try:
        model = WorldModel.from_state_dict(config, state)
    except CheckpointError as error:
        raise CheckpointError(f"{weights}: {error}") from None
    stored = {name: meta["normalization"].get(name) for name in STAT_NAMES}
    if stored != model.normalization():
        raise CheckpointError(f"{folder / CONFIG_FILE} normalization differs from the statistics in {weights}; "
                              f"the folder was edited by hand or mixes two checkpoints")
    model.provenance = dict(meta.get("provenance") or {})
    return model


def load_world_model(name_or_path: str | Path, device: torch.device | str = "cpu",
                     dinov2_weights: str | Path | None = None, epoch: int | str = "latest", *,
                     dtype: torch.dtype | None = None, normalization: dict[str, Any] | None = None) -> WorldModel:
    """Load a world model in eval mode on ``device``.

    name_or_path: a short name of a shipped model ("mini-wall", "mini-pusht" -> data/checkpoints/<name>), a wmq
        checkpoint folder, or a released DINO-WM folder (``outputs/<name>``, or a .pth file inside its
        checkpoints/); device: "cpu", "cuda", "cuda:N" or "auto".
    dinov2_weights, epoch: released folders only - the local DINOv2 .pth and the epoch ("latest" or an int).
    dtype: cast the weights (e.g. torch.bfloat16); None keeps the saved dtype.
    normalization: z-score stats {"action_mean", "action_std", "proprio_mean", "proprio_std"} replacing the
        stored ones (required for released Wall models, whose stats DINO-WM does not publish).
    """
    device = resolve_device(device)
    path = resolve_checkpoint(name_or_path)
    if path.is_file() and path.suffix == ".pth" and path.parent.name == "checkpoints":
        epoch = path.stem.removeprefix("model_")
        epoch = int(epoch) if epoch.isdigit() else epoch
        path = path.parent.parent
    if is_released_folder(path):
        model = load_released(path, device, dinov2_weights, epoch, normalization)
    elif (path / CONFIG_FILE).is_file() or (path / WEIGHTS_FILE).is_file():
        for name, value, default in (("dinov2_weights", dinov2_weights, None), ("epoch", epoch, "latest")):
            if value != default:
                raise ValueError(f"{name} applies to released DINO-WM folders only; {path} is a wmq checkpoint")
        model = _load_wmq(path, device)
        if normalization is not None:
            model.set_normalization(**normalization)
    else:
        raise CheckpointError(
            f"{path} is neither a wmq checkpoint ({CONFIG_FILE} + {WEIGHTS_FILE}) nor a released DINO-WM folder "
            f"(hydra.yaml + checkpoints/model_latest.pth)"
        )
    if dtype is not None:
        model = model.to(dtype)
    return model.to(device).eval()
