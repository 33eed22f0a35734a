"""wmq's own checkpoint format, and one loader for every kind of world-model checkpoint.

Format: a folder with
  ``config.json``       {"format": "wmq-world-model", "format_version": 1, "config": the config's fields
                         (``WorldModelConfig`` or ``RSSMConfig``: env, frameskip, sizes; an RSSM's names its
                         ``architecture``), "normalization": z-score stats in env units, "dtype": weight dtype,
                         "provenance": where the weights came from}
  ``model.safetensors`` the full state_dict (every module of the architecture, and the stats).
The architecture is ``config.architecture`` (``ARCHITECTURES``): absent means DINO-WM, whose files predate the field
and stay byte for byte as they were.
Loading never unpickles. ``load_world_model`` also accepts short names of the shipped models
(``data/checkpoints/<name>``) and released DINO-WM folders (see ``dinowm``). Every field of config.json is
required (no silent defaults); a file that is missing, malformed, oversized or does not match its weights raises
CheckpointError naming it. Weights holding NaN or inf load and save with a ``NonFiniteWeightsWarning``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import wmqlib
from wmqlib.models.base import WorldModelBase
from wmqlib.models.config import ARCHITECTURES, RSSMConfig, WorldModelConfig, config_from_dict
from wmqlib.models.dinowm import is_released_folder, load_released
from wmqlib.models.errors import CheckpointError, NonFiniteWeightsWarning
from wmqlib.models.rssm import RSSM
from wmqlib.models.world_model import STAT_NAMES, WorldModel, merge_normalization, nonfinite_weights, read_normalization
from wmqlib.paths import CHECKPOINTS_DIR
from wmqlib.validate import InvalidValue, atomic_path, atomic_write

FORMAT = "wmq-world-model"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
META_FIELDS = ("format", "format_version", "config", "normalization", "dtype", "provenance")
MAX_CONFIG_BYTES = 1 << 20  # a config.json is about 2 KB
MODEL_TYPES: dict[type, type[WorldModelBase]] = {WorldModelConfig: WorldModel, RSSMConfig: RSSM}


def resolve_device(device: torch.device | str) -> torch.device:
    """"auto" -> CUDA when available else CPU; anything else as torch.device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from error


def check_device_available(device: torch.device) -> None:
    """Raise ValueError when ``device`` is a CUDA device this machine does not have (checked before any file)."""
    if device.type != "cuda":
        return
    if not torch.cuda.is_available():
        raise InvalidValue(f"device={str(device)!r}: CUDA requested but not available (torch {torch.__version__} "
                           f"sees no CUDA device); use device='cpu' or 'auto'")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise InvalidValue(f"device={str(device)!r}: CUDA device {device.index} requested but only "
                           f"{torch.cuda.device_count()} available (cuda:0..cuda:{torch.cuda.device_count() - 1})")


def warn_nonfinite(model: WorldModelBase, where: str | Path) -> None:
    """Warn (NonFiniteWeightsWarning) naming the tensors of ``model`` that hold NaN or inf; ``where`` names the file."""
    bad = nonfinite_weights(model)
    if bad:
        listed = ", ".join(f"{k} ({n})" for k, n in list(bad.items())[:6]) + (" ..." if len(bad) > 6 else "")
        warnings.warn(f"{where}: {len(bad)} weight tensors hold NaN or inf values: {listed}",
                      NonFiniteWeightsWarning, stacklevel=3)


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


def save_world_model(model: WorldModelBase, path: str | Path, provenance: dict[str, Any] | None = None) -> Path:
    """Write ``model`` to the folder ``path`` (created) as config.json + model.safetensors; returns the folder.

    ``provenance`` (JSON-able) is merged over ``model.provenance``. Files are written atomically (temp + rename);
    NaN or inf weights are saved with a NonFiniteWeightsWarning.
    """
    if not isinstance(model, WorldModelBase):
        raise TypeError(f"save_world_model needs a WorldModel or an RSSM, got {type(model).__name__}")
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
    warn_nonfinite(model, folder)
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT})
    atomic_write(folder / CONFIG_FILE, text)
    return folder


def read_checkpoint_config(folder: str | Path) -> dict[str, Any]:
    """The parsed, format-checked config.json of a wmq checkpoint folder; every field is required."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"missing {path}: a wmq checkpoint folder holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{path} is {path.stat().st_size} bytes; a wmq config.json is about 2 KB (at most "
                              f"{MAX_CONFIG_BYTES} are read)")
    try:
        meta = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"{path} is not valid JSON ({type(error).__name__}: {str(error)[:200]}); the file is "
                              f"truncated or corrupt") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a wmq checkpoint config (format must be {FORMAT!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        shown = meta.get("format_version")
        shown = repr(shown) if isinstance(shown, (int, str)) and len(repr(shown)) < 40 else type(shown).__name__
        raise CheckpointError(f"{path} has format_version {shown}; this wmqlib reads {FORMAT_VERSION}")
    missing = [key for key in META_FIELDS if key not in meta]
    if missing:
        raise CheckpointError(f"{path} has no field {missing}; format {FORMAT} version {FORMAT_VERSION} requires "
                              f"{list(META_FIELDS)}")
    for key, kind in (("config", dict), ("normalization", dict), ("provenance", dict), ("dtype", str)):
        if not isinstance(meta[key], kind):
            raise CheckpointError(f"{path} field {key!r} must be a {'mapping' if kind is dict else 'string'}, got "
                                  f"{type(meta[key]).__name__}")
    architecture = meta["config"].get("architecture", "dinowm")
    if not isinstance(architecture, str) or architecture not in ARCHITECTURES:
        shown = repr(architecture)[:40]
        raise CheckpointError(f"{path} config.architecture must be one of {sorted(ARCHITECTURES)}, got {shown}")
    config_type = ARCHITECTURES[architecture]
    required = [f.name for f in dataclasses.fields(config_type)]
    absent = [name for name in required if name not in meta["config"]]
    if absent:
        raise CheckpointError(f"{path} config has no {absent}; a saved checkpoint records every "
                              f"{config_type.__name__} field (no defaults are assumed)")
    return meta


def _load_wmq(folder: Path, device: torch.device) -> WorldModelBase:
    meta = read_checkpoint_config(folder)
    try:
        config = config_from_dict(meta["config"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{folder / CONFIG_FILE}: invalid config: {error}") from error
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"missing {weights}: a wmq checkpoint folder holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        state = load_file(str(weights), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError, MemoryError) as error:
        raise CheckpointError(f"{weights} could not be read ({type(error).__name__}: {str(error)[:300]}); the file "
                              f"is truncated or corrupt") from None
    # Every block holds tensors: more blocks than tensors in the file is a hand-edited config, and building it (even
    # on the meta device) would take time proportional to the claimed depth.
    blocks = config.n_blocks
    if blocks > len(state):
        raise CheckpointError(f"{folder / CONFIG_FILE} describes {blocks} blocks but {weights} holds only "
                              f"{len(state)} tensors; the config does not belong to these weights")
    try:
        model = MODEL_TYPES[type(config)].from_state_dict(config, state)
    except CheckpointError as error:
        raise CheckpointError(f"{weights}: {error}") from None
    stored = {name: meta["normalization"].get(name) for name in STAT_NAMES}
    if stored != model.normalization():
        raise CheckpointError(f"{folder / CONFIG_FILE} normalization differs from the statistics in {weights}; "
                              f"the folder was edited by hand or mixes two checkpoints")
    if meta["dtype"] != str(model.dtype).removeprefix("torch."):
        raise CheckpointError(f"{folder / CONFIG_FILE} says dtype {meta['dtype'][:20]!r} but {weights} holds "
                              f"{str(model.dtype).removeprefix('torch.')} weights; the folder mixes two checkpoints")
    model.provenance = dict(meta["provenance"])
    return model


def load_world_model(name_or_path: str | Path, device: torch.device | str = "cpu",
                     dinov2_weights: str | Path | None = None, epoch: int | str = "latest", *,
                     dtype: torch.dtype | None = None,
                     normalization: dict[str, Any] | str | Path | None = None) -> WorldModelBase:
    """Load a world model in eval mode on ``device``.

    name_or_path: a short name of a shipped model ("mini-wall", "mini-pusht" -> data/checkpoints/<name>), a wmq
        checkpoint folder (any architecture: a ``WorldModel`` or an ``RSSM`` comes back), or a released DINO-WM folder (``outputs/<name>``, or a .pth file inside its
        checkpoints/); device: "cpu", "cuda", "cuda:N" or "auto".
    dinov2_weights, epoch: released folders only - the local DINOv2 .pth and the epoch ("latest" or an int).
    dtype: cast the weights (e.g. torch.bfloat16); None keeps the saved dtype.
    normalization: z-score stats {"action_mean", "action_std", "proprio_mean", "proprio_std"} in env units, as a
        dict or the path of a JSON file holding one. Those given replace the checkpoint's; those left out keep the
        checkpoint's (a wmq folder's stored ones, DINO-WM's published PushT constants) and are an error when it
        has none (released Wall models). ``provenance["normalization"]`` says which came from where.

    Raises ValueError for a CUDA device this machine does not have (before any file is read) and CheckpointError,
    naming the file, for anything wrong with the files. Weights holding NaN or inf load with a
    NonFiniteWeightsWarning.
    """
    device = resolve_device(device)
    check_device_available(device)
    path = resolve_checkpoint(name_or_path)
    if path.is_file() and path.suffix == ".pth" and path.parent.name == "checkpoints":
        epoch = path.stem.removeprefix("model_")
        epoch = int(epoch) if epoch.isdigit() else epoch
        path = path.parent.parent
    if is_released_folder(path):
        model = load_released(path, device, dinov2_weights, epoch, normalization)
        where = path / "checkpoints" / model.provenance["checkpoint"]
    elif (path / CONFIG_FILE).is_file() or (path / WEIGHTS_FILE).is_file():
        for name, value, default in (("dinov2_weights", dinov2_weights, None), ("epoch", epoch, "latest")):
            if value != default:
                raise ValueError(f"{name} applies to released DINO-WM folders only; {path} is a wmq checkpoint")
        given, given_source = read_normalization(normalization)
        model = _load_wmq(path, device)
        if given is not None:
            earlier = model.provenance.get("normalization")
            carried_source = f"stored in {path / CONFIG_FILE}" + (f" ({earlier})" if isinstance(earlier, str) else "")
            shapes = {name: tuple(getattr(model, name).shape) for name in STAT_NAMES}
            stats, source = merge_normalization(given, given_source, model.normalization(), carried_source, shapes)
            model.set_normalization(**stats)
            model.provenance["normalization"] = source
        where = path / WEIGHTS_FILE
    else:
        raise CheckpointError(
            f"{path} is neither a wmq checkpoint ({CONFIG_FILE} + {WEIGHTS_FILE}) nor a released DINO-WM folder "
            f"(hydra.yaml + checkpoints/model_latest.pth)"
        )
    warn_nonfinite(model, where)
    if dtype is not None:
        model = model.to(dtype)
    return model.to(device).eval()


def fingerprint(folder: str | Path) -> tuple[str, str]:
    """(env, sha) of the wmq checkpoint in ``folder``: the env its config names and the sha256 (16 hex digits) of its
    config.json and model.safetensors, so whatever is keyed by it follows the weights, not the name."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        digest.update(hashlib.sha256((folder / name).read_bytes()).hexdigest().encode())
    return read_checkpoint_config(folder)["config"]["env"], digest.hexdigest()[:16]
