"""Loading released DINO-WM checkpoint folders offline, without the DINO-WM source tree and without unpickling code.

A released folder (``outputs/<name>``) holds ``hydra.yaml`` (the resolved training config) and
``checkpoints/model_latest.pth`` / ``model_<epoch>.pth``: a ``torch.save`` dict of whole pickled modules
(predictor, decoder, action_encoder, proprio_encoder, optimizers, epoch), saved on CUDA. The DINOv2 encoder is not
in it; DINO-WM fetched it from torch.hub, wmq reads a local ``dinov2_vits14_pretrain.pth`` instead.

The pickle is read through the restricted unpickler (``safe_pickle``), the modules' state_dicts are copied into
wmq modules with strict key and shape matching, and the architecture is derived from hydra.yaml plus the weights
themselves (DINOv2 widths, embedding sizes), so a mismatch fails loudly instead of loading garbage.

hydra.yaml is read with a bounded YAML loader (at most ``MAX_HYDRA_BYTES``, ``MAX_YAML_DEPTH`` levels and
``MAX_YAML_NODES`` nodes once aliases are expanded, so a "billion laughs" file is refused in milliseconds), and
every value wmq uses is checked (type and range, ``HYDRA_INT_BOUNDS``); any problem is a CheckpointError naming
the file and the field.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml

from wmqlib.envs import env_class, env_names
from wmqlib.models.config import WorldModelConfig
from wmqlib.models.errors import CheckpointError
from wmqlib.models.safe_pickle import load_pickled_checkpoint, load_tensor_dict, module_state_dict
from wmqlib.models.world_model import WorldModel, merge_normalization, read_normalization
from wmqlib.validate import InvalidValue, check_choice, check_float, check_int

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
MAX_HYDRA_BYTES = 1 << 20  # a resolved DINO-WM training config is a few KB
MAX_YAML_DEPTH = 32  # nesting levels of hydra.yaml (DINO-WM's has 4)
MAX_YAML_NODES = 100_000  # YAML nodes after expanding aliases (DINO-WM's has a few hundred)
# (minimum, maximum) of the hydra.yaml integers wmq uses: at least 10x the released models' sizes, small enough that
# building the architecture to compare it with the weights takes no noticeable time or memory.
HYDRA_INT_BOUNDS = {
    "num_hist": (1, 64), "frameskip": (1, 64), "img_size": (16, 4096),
    "predictor.depth": (1, 64), "predictor.heads": (1, 256), "predictor.dim_head": (1, 1024),
    "predictor.mlp_dim": (1, 65536),
    "decoder.channel": (2, 4096), "decoder.n_res_block": (1, 64), "decoder.n_res_channel": (1, 4096),
    "decoder.n_embed": (1, 65536),
}


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


class _YamlTooLarge(Exception):
    """Raised inside the bounded YAML loader; read_hydra turns it into a CheckpointError naming the file."""


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader composing at most MAX_YAML_DEPTH levels (it recurses once per level)."""

    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.depth += 1
        try:
            if self.depth > MAX_YAML_DEPTH:
                raise _YamlTooLarge(f"it nests more than {MAX_YAML_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _check_expanded_size(root: yaml.Node) -> None:
    """Count the nodes of the composed graph with aliases expanded (memoised, so linear in the file); refuse more
    than MAX_YAML_NODES or a recursive alias."""
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]

    def children(node: yaml.Node) -> list[yaml.Node]:
        if isinstance(node, yaml.MappingNode):
            return [n for pair in node.value for n in pair]
        return list(node.value) if isinstance(node, yaml.SequenceNode) else []

    while stack:
        node, expanded = stack.pop()
        key = id(node)
        if not expanded:
            if key in size:
                continue
            if key in on_path:
                raise _YamlTooLarge("an alias refers to a node containing it (a recursive structure)")
            on_path.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in children(node))
        else:
            on_path.discard(key)
            size[key] = 1 + sum(size[id(child)] for child in children(node))
            if size[key] > MAX_YAML_NODES:
                raise _YamlTooLarge(f"its aliases expand to more than {MAX_YAML_NODES} nodes")


def read_hydra(folder: Path) -> dict[str, Any]:
    """The resolved training config ``folder/hydra.yaml`` as a dict (bounded: see the module docstring)."""
    path = folder / "hydra.yaml"
    if not path.is_file():
        raise CheckpointError(
            f"missing {path}: a released DINO-WM folder holds hydra.yaml next to checkpoints/model_latest.pth "
            f"(copy the whole outputs/<name> folder, not only the .pth)"
        )
    if path.stat().st_size > MAX_HYDRA_BYTES:
        raise CheckpointError(f"{path} is {path.stat().st_size} bytes; a DINO-WM training config is a few KB "
                              f"(wmq reads at most {MAX_HYDRA_BYTES})")
    try:
        loader = _BoundedLoader(path.read_bytes().decode("utf-8"))
        try:
            node = loader.get_single_node()
            if node is not None:
                _check_expanded_size(node)
            config = None if node is None else loader.construct_document(node)
        finally:
            loader.dispose()
    except _YamlTooLarge as error:
        raise CheckpointError(f"{path} is refused: {error}; a DINO-WM training config is small and flat") from None
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as error:
        raise CheckpointError(f"{path} is not valid YAML: {str(error)[:500]}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} does not hold a mapping of config fields")
    return config


def _field(hydra: dict[str, Any], dotted: str, default: Any = None, source: str | Path = "hydra.yaml") -> Any:
    node: Any = hydra
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is None:
                raise CheckpointError(f"{source} has no field {dotted!r}, which wmq needs to rebuild the model")
            return default
        node = node[part]
    return node


def _hydra_int(hydra: dict[str, Any], dotted: str, source: str | Path, default: int | None = None) -> int:
    low, high = HYDRA_INT_BOUNDS[dotted]
    try:
        return check_int(dotted, _field(hydra, dotted, default, source), low, high)
    except InvalidValue as error:
        raise CheckpointError(f"{source}: {error}") from None


def _hydra_float(hydra: dict[str, Any], dotted: str, source: str | Path, default: float) -> float:
    try:
        value = check_float(dotted, _field(hydra, dotted, default, source), 0.0, 1.0)
    except InvalidValue as error:
        raise CheckpointError(f"{source}: {error}") from None
    if value >= 1.0:
        raise CheckpointError(f"{source}: {dotted} must be a number in [0, 1), got {value}")
    return value


def released_env(hydra: dict[str, Any], source: str | Path = "hydra.yaml") -> str:
    """The wmq env name of a released model (hydra ``env.name``); unknown envs raise CheckpointError naming the
    allowed ones."""
    name = _field(hydra, "env.name", source=source)
    try:
        return check_choice("env.name", name, env_names())
    except InvalidValue:
        shown = repr(name) if isinstance(name, str) and len(name) < 80 else f"a {type(name).__name__}"
        raise CheckpointError(f"{source} env.name is {shown}; wmq supports released models for envs "
                              f"{env_names()}") from None


def released_normalization(env: str) -> tuple[dict[str, Any] | None, str]:
    """The statistics a released model of ``env`` carries (DINO-WM's published constants) and their source, or
    (None, "") when DINO-WM publishes none (Wall)."""
    published = env_class(env).released_normalization
    if published is None:
        return None, ""
    return dict(published), "DINO-WM published constants"


def _missing_stats_hint(env: str) -> str:
    return (f"released {env!r} models need normalization={{'action_mean', 'action_std', 'proprio_mean', "
            f"'proprio_std'}} computed over its training dataset (DINO-WM publishes constants only for "
            f"{[e for e in env_names() if env_class(e).released_normalization]}); e.g. the action_mean/... fields of wmqlib.envs.TrajectoryData")


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
    shapes = {"cls_token": 3, "pos_embed": 3, "patch_embed.proj.weight": 4, "blocks.0.mlp.fc1.weight": 2}
    for key, ndim in shapes.items():
        if state[key].ndim != ndim or not state[key].is_floating_point():
            raise CheckpointError(f"DINOv2 weights {path}: {key!r} is a {state[key].ndim}-d {state[key].dtype} "
                                  f"tensor, expected {ndim}-d floating point: not a DINOv2 ViT state_dict")
    return state


def _dinov2_sizes(state: dict[str, torch.Tensor]) -> dict[str, int]:
    dim = state["cls_token"].shape[-1]
    positions = state["pos_embed"].shape[1] - 1
    pos_grid = math.isqrt(max(positions, 0))
    if positions < 1 or pos_grid**2 != positions or dim < 1 or dim % DINOV2_HEAD_DIM:
        raise CheckpointError(
            f"DINOv2 weights have pos_embed {tuple(state['pos_embed'].shape)} and width {dim}: expected a square "
            f"position grid and a width divisible by {DINOV2_HEAD_DIM}"
        )
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    return dict(encoder_dim=dim, encoder_depth=depth, encoder_heads=dim // DINOV2_HEAD_DIM,
                encoder_mlp_dim=state["blocks.0.mlp.fc1.weight"].shape[0],
                patch_size=state["patch_embed.proj.weight"].shape[-1], encoder_pos_grid=pos_grid)


def released_config(hydra: dict[str, Any], dinov2: dict[str, torch.Tensor],
                    parts: dict[str, dict[str, torch.Tensor]], source: str | Path = "hydra.yaml") -> WorldModelConfig:
    """The WorldModelConfig of a released model from its hydra.yaml, DINOv2 weights and module state_dicts.

    Every hydra value is checked (type and ``HYDRA_INT_BOUNDS``); ``source`` names hydra.yaml in errors.
    """
    for name, allowed in (("concat_dim", 1), ("num_action_repeat", 1), ("num_proprio_repeat", 1), ("num_pred", 1)):
        value = _field(hydra, name, allowed, source)
        if isinstance(value, bool) or value != allowed:
            shown = repr(value) if isinstance(value, (int, float, str)) and len(repr(value)) < 40 else \
                f"a {type(value).__name__}"
            raise CheckpointError(f"{source} {name} is {shown}; wmq supports only {name} = {allowed} (as released)")
    feature_key = _field(hydra, "encoder.feature_key", "x_norm_patchtokens", source)
    if feature_key != "x_norm_patchtokens":
        shown = repr(feature_key) if isinstance(feature_key, str) and len(feature_key) < 80 else \
            f"a {type(feature_key).__name__}"
        raise CheckpointError(f"{source} encoder.feature_key is {shown}; wmq supports 'x_norm_patchtokens'")
    frameskip = _hydra_int(hydra, "frameskip", source)
    action_weight = parts["action_encoder"].get("patch_embed.weight")
    proprio_weight = parts["proprio_encoder"].get("patch_embed.weight")
    qkv = parts["predictor"].get("transformer.layers.0.0.to_qkv.weight")
    for key, weight in (("action_encoder.patch_embed.weight", action_weight),
                        ("proprio_encoder.patch_embed.weight", proprio_weight),
                        ("predictor.transformer.layers.0.0.to_qkv.weight", qkv)):
        if weight is None or weight.ndim < 2:
            raise CheckpointError(f"checkpoint {key} is {'absent' if weight is None else tuple(weight.shape)}; "
                                  f"expected a DINO-WM weight of at least 2 dims")
    action_in = action_weight.shape[1]
    if action_in % frameskip:
        raise CheckpointError(f"action encoder input {action_in} is not a multiple of {source} frameskip {frameskip}")
    heads = _hydra_int(hydra, "predictor.heads", source)
    img_size = _hydra_int(hydra, "img_size", source)
    default_dim_head = max(qkv.shape[0] // (3 * heads), 1)
    fields = dict(
        env=released_env(hydra, source),
        proprio_dim=proprio_weight.shape[1],
        num_hist=_hydra_int(hydra, "num_hist", source),
        frameskip=frameskip,
        env_action_dim=action_in // frameskip,
        img_size=img_size,
        grid_size=img_size // DECODER_SCALE,
        **_dinov2_sizes(dinov2),
        predictor_depth=_hydra_int(hydra, "predictor.depth", source),
        predictor_heads=heads,
        predictor_dim_head=_hydra_int(hydra, "predictor.dim_head", source, default_dim_head),
        predictor_mlp_dim=_hydra_int(hydra, "predictor.mlp_dim", source),
        predictor_dropout=_hydra_float(hydra, "predictor.dropout", source, 0.0),
        predictor_emb_dropout=_hydra_float(hydra, "predictor.emb_dropout", source, 0.0),
        proprio_emb_dim=proprio_weight.shape[0],
        action_emb_dim=action_weight.shape[0],
        # VQVAE constructor defaults apply where hydra.yaml leaves a decoder field out.
        decoder_channel=_hydra_int(hydra, "decoder.channel", source, 128),
        decoder_res_blocks=_hydra_int(hydra, "decoder.n_res_block", source, 2),
        decoder_res_channel=_hydra_int(hydra, "decoder.n_res_channel", source, 32),
        decoder_n_embed=_hydra_int(hydra, "decoder.n_embed", source, 512),
    )
    try:
        return WorldModelConfig(**fields)
    except ValueError as error:
        raise CheckpointError(f"{source} and the weights give an architecture wmq cannot build: {error}") from None


def released_parts(payload: Any, source: Path) -> dict[str, dict[str, torch.Tensor]]:
    """State_dicts of the modules in an unpickled released checkpoint, checked against the released classes."""
    if not isinstance(payload, dict):
        raise CheckpointError(f"{source} holds a {type(payload).__name__}, not DINO-WM's dict of pickled modules")
    parts = {}
    for name, qualname in RELEASED_PARTS.items():
        if name not in payload:
            if name == "decoder":
                continue
            keys = sorted(str(k)[:40] for k in list(payload)[:20])
            raise CheckpointError(f"{source} has no {name!r} (keys: {keys}); not a DINO-WM checkpoint")
        found = getattr(payload[name], "qualname", type(payload[name]).__name__)
        if found != qualname:
            raise CheckpointError(f"{source}: {name!r} is a {found}, expected a pickled {qualname}")
        parts[name] = module_state_dict(payload[name], f"{source}: checkpoint[{name!r}]")
    return parts


def _weights_dtype(parts: dict[str, dict[str, torch.Tensor]], source: Path) -> torch.dtype:
    """The one floating dtype of the released modules' weights (DINO-WM saves float32)."""
    dtypes = {v.dtype for part in parts.values() for v in part.values() if v.is_floating_point()}
    if len(dtypes) != 1:
        raise CheckpointError(f"{source}: the pickled modules hold weights of dtypes "
                              f"{sorted(str(d) for d in dtypes) or 'none floating'}; expected one floating dtype")
    return dtypes.pop()


def load_released(folder: str | Path, device: torch.device | str = "cpu",
                  dinov2_weights: str | Path | None = None, epoch: int | str = "latest",
                  normalization: dict[str, Any] | str | Path | None = None) -> WorldModel:
    """A WorldModel from a released DINO-WM folder (eval mode, weights on ``device``, in the checkpoint's dtype).

    folder: ``outputs/<name>`` holding hydra.yaml and checkpoints/; dinov2_weights: local DINOv2 .pth (cast to the
    checkpoint's dtype when saved in another one, e.g. fp16; recorded in the provenance); epoch: "latest" or an int;
    normalization: z-score stats (a dict or a JSON file); those left out come from DINO-WM's published constants
    (PushT) and are an error where none are published (Wall). The provenance says which statistics came from where.
    Every input is checked before the checkpoint is read.
    """
    folder = Path(folder)
    hydra = read_hydra(folder)
    source = folder / "hydra.yaml"
    env = released_env(hydra, source)
    given, given_source = read_normalization(normalization)
    carried, carried_source = released_normalization(env)
    merge_normalization(given, given_source, carried, carried_source, missing_hint=_missing_stats_hint(env))
    checkpoint = released_checkpoint_file(folder, epoch)
    dinov2 = load_dinov2(dinov2_weights, device)
    payload = load_pickled_checkpoint(checkpoint, device, what="DINO-WM checkpoint")
    parts = released_parts(payload, checkpoint)
    dtype = _weights_dtype(parts, checkpoint)
    dinov2_dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in dinov2.values() if v.is_floating_point()})
    dinov2 = {k: v.to(dtype) if v.is_floating_point() else v for k, v in dinov2.items()}
    config = released_config(hydra, dinov2, parts, source)
    stats, stats_source = merge_normalization(
        given, given_source, carried, carried_source,
        shapes={"action_mean": (config.env_action_dim,), "action_std": (config.env_action_dim,),
                "proprio_mean": (config.proprio_dim,), "proprio_std": (config.proprio_dim,)},
        missing_hint=_missing_stats_hint(env))
    state = {f"encoder.{k}": v for k, v in dinov2.items()}
    for name, part in parts.items():
        state.update({f"{name}.{k}": v for k, v in part.items()})
    if "decoder" not in parts:
        warnings.warn(f"{checkpoint} has no decoder: WorldModel.decode will return images from an untrained decoder",
                      stacklevel=2)
    # Statistics are not in the checkpoint: start them neutral, set_normalization fills them below.
    state.update(action_mean=torch.zeros(config.env_action_dim), action_std=torch.ones(config.env_action_dim),
                 proprio_mean=torch.zeros(config.proprio_dim), proprio_std=torch.ones(config.proprio_dim))
    try:
        model = WorldModel.from_state_dict(config, state, fresh_prefixes=("decoder.",))
    except CheckpointError as error:
        raise CheckpointError(
            f"{checkpoint}: {error}\n(the architecture was derived from {source} and the DINOv2 "
            f"weights {dinov2_weights}; check that they belong to this checkpoint)"
        ) from None
    model.set_normalization(**stats)
    epoch_value = payload.get("epoch")
    saved_as = ", ".join(dinov2_dtypes)
    model.provenance = {
        "source": "DINO-WM release",
        "folder": str(folder.resolve()),
        "checkpoint": checkpoint.name,
        "epoch": epoch_value if isinstance(epoch_value, int) and not isinstance(epoch_value, bool) else
        (epoch_value[:40] if isinstance(epoch_value, str) else f"not recorded ({type(epoch_value).__name__})"),
        "dinov2_weights": str(Path(dinov2_weights).resolve()),
        "dinov2_dtype": saved_as if saved_as == str(dtype).removeprefix("torch.") else
        f"{saved_as}, cast to {str(dtype).removeprefix('torch.')}",
        "normalization": stats_source,
        "decoder": "loaded" if "decoder" in parts else "absent from checkpoint (untrained)",
    }
    return model.to(device).eval()
