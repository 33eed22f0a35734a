"""Loading released DINO-WM checkpoint folders offline, without the DINO-WM source tree and without unpickling code.

A released folder (``outputs/<name>``) holds ``hydra.yaml`` (the resolved training config) and
``checkpoints/model_latest.pth`` / ``model_<epoch>.pth``: a ``torch.save`` dict of whole pickled modules
(predictor, decoder, action_encoder, proprio_encoder, optimizers, epoch), saved on CUDA. The DINOv2 encoder is not
in it; DINO-WM fetched it from torch.hub, wmq reads a local ``dinov2_vits14_pretrain.pth`` instead.

The pickle is read through the restricted unpickler (``safe_pickle``), the modules' state_dicts are copied into
wmq modules with strict key and shape matching, and the architecture is derived from hydra.yaml plus the weights
themselves (DINOv2 widths, embedding sizes), so a mismatch fails loudly instead of loading garbage.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml

from wmqlib.models.config import ENV_NAMES, WorldModelConfig
from wmqlib.models.errors import CheckpointError
from wmqlib.models.safe_pickle import load_pickled_checkpoint, load_tensor_dict, module_state_dict
from wmqlib.models.world_model import STAT_NAMES, WorldModel

# Published DINO-WM z-score constants (PushT dataset actions are rel_actions / 100). Wall's come from its dataset.
RELEASED_NORMALIZATION: dict[str, dict[str, tuple[float, ...]]] = {
    "pusht": {
        "action_mean": (-0.0087, 0.0068),
        "action_std": (0.2019, 0.2002),
        "proprio_mean": (236.6155, 264.5674, -2.93032027, 2.54307914),
        "proprio_std": (101.1202, 87.0112, 74.84556075, 74.14009094),
    },
}
# Pickled classes expected at the top of each checkpoint entry; None = the entry is optional.
RELEASED_PARTS = {
    "predictor": "models.vit.ViTPredictor",
    "action_encoder": "models.proprio.ProprioceptiveEmbedding",
    "proprio_encoder": "models.proprio.ProprioceptiveEmbedding",
    "decoder": "models.vqvae.VQVAE",
}
DECODER_SCALE = 16  # DINO-WM's VQ-VAE upsamples 16x: the token grid is img_size // 16 per side
DINOV2_HEAD_DIM = 64  # every DINOv2 ViT (S, B, L, g) uses 64-wide heads
DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth"


def is_released_folder(path: Path) -> bool:
    """True when ``path`` looks like a released DINO-WM run folder (hydra.yaml or checkpoints/ inside)."""
    return path.is_dir() and ((path / "hydra.yaml").is_file() or (path / "checkpoints").is_dir())


def released_checkpoint_file(folder: Path, epoch: int | str = "latest") -> Path:
    """``folder/checkpoints/model_latest.pth`` or ``model_<epoch>.pth``; a clear error lists what exists."""
    if epoch != "latest" and (isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0):
        raise ValueError(f"epoch must be 'latest' or a non-negative int, got {epoch!r}")
    path = folder / "checkpoints" / f"model_{epoch}.pth"
    if not path.is_file():
        found = sorted(p.name for p in (folder / "checkpoints").glob("model_*.pth"))
        raise CheckpointError(f"no checkpoint {path.name} in {folder / 'checkpoints'}; available: {found or 'none'}")
    return path


def read_hydra(folder: Path) -> dict[str, Any]:
    """The resolved training config ``folder/hydra.yaml`` as a dict."""
    path = folder / "hydra.yaml"
    if not path.is_file():
        raise CheckpointError(
            f"missing {path}: a released DINO-WM folder holds hydra.yaml next to checkpoints/model_latest.pth "
            f"(copy the whole outputs/<name> folder, not only the .pth)"
        )
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise CheckpointError(f"{path} is not valid YAML: {error}") from error
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} does not hold a mapping of config fields")
    return config


def _field(hydra: dict[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = hydra
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is None:
                raise CheckpointError(f"hydra.yaml has no field {dotted!r}, which wmq needs to rebuild the model")
            return default
        node = node[part]
    return node


def released_env(hydra: dict[str, Any]) -> str:
    """The wmq env name of a released model (hydra ``env.name``); unknown envs raise ValueError naming the allowed."""
    name = _field(hydra, "env.name")
    if name not in ENV_NAMES:
        raise ValueError(f"hydra.yaml env.name is {name!r}; wmq supports released models for envs {ENV_NAMES}")
    return name


def released_normalization(env: str, normalization: dict[str, Any] | None) -> tuple[dict[str, Any], str]:
    """The z-score statistics to attach and where they come from; Wall has no published constants."""
    if normalization is not None:
        unknown = sorted(set(normalization) - set(STAT_NAMES))
        if unknown:
            raise ValueError(f"normalization has unknown keys {unknown}; allowed: {list(STAT_NAMES)}")
        return dict(normalization), "given by the caller"
    if env not in RELEASED_NORMALIZATION:
        raise ValueError(
            f"released {env!r} models need normalization={{'action_mean', 'action_std', 'proprio_mean', "
            f"'proprio_std'}} computed over its training dataset (DINO-WM publishes constants only for "
            f"{sorted(RELEASED_NORMALIZATION)}); e.g. the action_mean/... fields of wmqlib.envs.TrajectoryData"
        )
    return dict(RELEASED_NORMALIZATION[env]), "DINO-WM published constants"


def load_dinov2(path: str | Path | None, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """A DINOv2 ViT state_dict from a local ``dinov2_*_pretrain.pth`` (torch's weights-only loader)."""
    if path is None:
        raise CheckpointError(
            "released DINO-WM checkpoints do not contain the DINOv2 encoder: pass "
            f"dinov2_weights='path/to/dinov2_vits14_pretrain.pth' (download it once from {DINOV2_URL})"
        )
    state = load_tensor_dict(path, device, what="DINOv2 weights")
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight", "norm.weight"):
        if key not in state:
            raise CheckpointError(f"DINOv2 weights {path} have no {key!r}: not a DINOv2 ViT state_dict")
    return state


def _dinov2_sizes(state: dict[str, torch.Tensor]) -> dict[str, int]:
    dim = state["cls_token"].shape[-1]
    positions = state["pos_embed"].shape[1] - 1
    pos_grid = math.isqrt(positions)
    if pos_grid**2 != positions or dim % DINOV2_HEAD_DIM:
        raise CheckpointError(
            f"DINOv2 weights have pos_embed {tuple(state['pos_embed'].shape)} and width {dim}: expected a square "
            f"position grid and a width divisible by {DINOV2_HEAD_DIM}"
        )
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    return dict(encoder_dim=dim, encoder_depth=depth, encoder_heads=dim // DINOV2_HEAD_DIM,
                encoder_mlp_dim=state["blocks.0.mlp.fc1.weight"].shape[0],
                patch_size=state["patch_embed.proj.weight"].shape[-1], encoder_pos_grid=pos_grid)


def released_config(hydra: dict[str, Any], dinov2: dict[str, torch.Tensor],
                    parts: dict[str, dict[str, torch.Tensor]]) -> WorldModelConfig:
    """The WorldModelConfig of a released model from its hydra.yaml, DINOv2 weights and module state_dicts."""
    for name, allowed in (("concat_dim", 1), ("num_action_repeat", 1), ("num_proprio_repeat", 1), ("num_pred", 1)):
        value = _field(hydra, name, allowed)
        if value != allowed:
            raise CheckpointError(f"hydra.yaml {name} is {value!r}; wmq supports only {name} = {allowed} (as released)")
    feature_key = _field(hydra, "encoder.feature_key", "x_norm_patchtokens")
    if feature_key != "x_norm_patchtokens":
        raise CheckpointError(f"hydra.yaml encoder.feature_key is {feature_key!r}; wmq supports 'x_norm_patchtokens'")
    frameskip = int(_field(hydra, "frameskip"))
    action_in = parts["action_encoder"]["patch_embed.weight"].shape[1]
    if action_in % frameskip:
        raise CheckpointError(f"action encoder input {action_in} is not a multiple of frameskip {frameskip}")
    proprio_weight = parts["proprio_encoder"]["patch_embed.weight"]
    heads = int(_field(hydra, "predictor.heads"))
    qkv_rows = parts["predictor"]["transformer.layers.0.0.to_qkv.weight"].shape[0]
    img_size = int(_field(hydra, "img_size"))
    return WorldModelConfig(
        env=released_env(hydra),
        proprio_dim=proprio_weight.shape[1],
        num_hist=int(_field(hydra, "num_hist")),
        frameskip=frameskip,
        env_action_dim=action_in // frameskip,
        img_size=img_size,
        grid_size=img_size // DECODER_SCALE,
        **_dinov2_sizes(dinov2),
        predictor_depth=int(_field(hydra, "predictor.depth")),
        predictor_heads=heads,
        predictor_dim_head=int(_field(hydra, "predictor.dim_head", qkv_rows // (3 * heads))),
        predictor_mlp_dim=int(_field(hydra, "predictor.mlp_dim")),
        predictor_dropout=float(_field(hydra, "predictor.dropout", 0.0)),
        predictor_emb_dropout=float(_field(hydra, "predictor.emb_dropout", 0.0)),
        proprio_emb_dim=proprio_weight.shape[0],
        action_emb_dim=parts["action_encoder"]["patch_embed.weight"].shape[0],
        # VQVAE constructor defaults apply where hydra.yaml leaves a decoder field out.
        decoder_channel=int(_field(hydra, "decoder.channel", 128)),
        decoder_res_blocks=int(_field(hydra, "decoder.n_res_block", 2)),
        decoder_res_channel=int(_field(hydra, "decoder.n_res_channel", 32)),
        decoder_n_embed=int(_field(hydra, "decoder.n_embed", 512)),
    )


def released_parts(payload: Any, source: Path) -> dict[str, dict[str, torch.Tensor]]:
    """State_dicts of the modules in an unpickled released checkpoint, checked against the released classes."""
    if not isinstance(payload, dict):
        raise CheckpointError(f"{source} holds a {type(payload).__name__}, not DINO-WM's dict of pickled modules")
    parts = {}
    for name, qualname in RELEASED_PARTS.items():
        if name not in payload:
            if name == "decoder":
                continue
            raise CheckpointError(f"{source} has no {name!r} (keys: {sorted(payload)}); not a DINO-WM checkpoint")
        found = getattr(payload[name], "qualname", type(payload[name]).__name__)
        if found != qualname:
            raise CheckpointError(f"{source}: {name!r} is a {found}, expected a pickled {qualname}")
        parts[name] = module_state_dict(payload[name], f"checkpoint[{name!r}]")
    return parts


def load_released(folder: str | Path, device: torch.device | str = "cpu",
                  dinov2_weights: str | Path | None = None, epoch: int | str = "latest",
                  normalization: dict[str, Any] | None = None) -> WorldModel:
    """A WorldModel from a released DINO-WM folder (eval mode, weights on ``device``, float32 as saved).

    folder: ``outputs/<name>`` holding hydra.yaml and checkpoints/; dinov2_weights: local DINOv2 .pth;
    epoch: "latest" or an int; normalization: z-score stats (required for Wall, defaults to the published PushT
    constants). Every input is checked before the checkpoint is read.
    """
    folder = Path(folder)
    hydra = read_hydra(folder)
    env = released_env(hydra)
    stats, stats_source = released_normalization(env, normalization)
    checkpoint = released_checkpoint_file(folder, epoch)
    dinov2 = load_dinov2(dinov2_weights, device)
    payload = load_pickled_checkpoint(checkpoint, device, what="DINO-WM checkpoint")
    parts = released_parts(payload, checkpoint)
    config = released_config(hydra, dinov2, parts)
    state = {f"encoder.{k}": v for k, v in dinov2.items()}
    for name, part in parts.items():
        state.update({f"{name}.{k}": v for k, v in part.items()})
    if "decoder" not in parts:
        warnings.warn(f"{checkpoint} has no decoder: WorldModel.decode will return images from an untrained decoder",
                      stacklevel=2)
    # Statistics are not in the checkpoint: start them neutral, set_normalization checks and fills them below.
    state.update(action_mean=torch.zeros(config.env_action_dim), action_std=torch.ones(config.env_action_dim),
                 proprio_mean=torch.zeros(config.proprio_dim), proprio_std=torch.ones(config.proprio_dim))
    try:
        model = WorldModel.from_state_dict(config, state, fresh_prefixes=("decoder.",))
    except CheckpointError as error:
        raise CheckpointError(
            f"{checkpoint}: {error}\n(the architecture was derived from {folder / 'hydra.yaml'} and the DINOv2 "
            f"weights {dinov2_weights}; check that they belong to this checkpoint)"
        ) from None
    model.set_normalization(**stats)
    model.provenance = {
        "source": "DINO-WM release",
        "folder": str(folder.resolve()),
        "checkpoint": checkpoint.name,
        "epoch": payload.get("epoch") if isinstance(payload.get("epoch"), int) else str(payload.get("epoch")),
        "dinov2_weights": str(Path(dinov2_weights).resolve()),
        "normalization": stats_source,
        "decoder": "loaded" if "decoder" in parts else "absent from checkpoint (untrained)",
    }
    return model.to(device).eval()
