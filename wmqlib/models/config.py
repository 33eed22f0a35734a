"""The world-model architectures as frozen, validated dataclasses: ``WorldModelConfig`` (DINO-WM) and
``RSSMConfig`` (a recurrent state-space model); ``config_from_dict`` reads either from a saved dict by its
``architecture`` field.

Every size of the DINO-WM architecture lives here: the DINOv2-style encoder, the ViT predictor, the action /
proprio embeddings and the decoder, plus the data facts the model depends on (env, frameskip, num_hist).
``dinowm_config(env)`` gives the paper-size model (ViT-S/14 encoder, 196 tokens, a 6-layer predictor); the
small models wmq ships are sized by the training code, which builds a ``WorldModelConfig`` directly.

Token geometry: the encoder sees ``grid_size * patch_size`` pixels per side and yields ``grid_size ** 2`` patch
tokens; the model's images (``prepare_obs`` output, ``decode`` output) are ``img_size`` pixels per side, so the
decoder upsamples the token grid by ``img_size // grid_size``. DINO-WM: img 224, patch 14, grid 14 -> the
encoder sees 196 px, the decoder upsamples 16x.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from wmqlib.envs import env_class, env_names


# Decoder upsampling factor -> strides of its two upsampling stacks (each stack supports 2x or 4x, as in DINO-WM's
# VQ-VAE decoder; the released models use (4, 4) for 14 -> 224).
DECODER_STRIDES = {4: (2, 2), 8: (4, 2), 16: (4, 4)}

_INT_FIELDS = (
    "proprio_dim", "num_hist", "frameskip", "env_action_dim", "img_size", "patch_size", "grid_size",
    "encoder_dim", "encoder_depth", "encoder_heads", "encoder_mlp_dim", "encoder_pos_grid",
    "predictor_depth", "predictor_heads", "predictor_dim_head", "predictor_mlp_dim",
    "proprio_emb_dim", "action_emb_dim",
    "decoder_channel", "decoder_res_blocks", "decoder_res_channel", "decoder_n_embed",
)


def _check_env_and_sizes(config: Any, int_fields: tuple[str, ...]) -> None:
    """ValueError naming the field unless ``config.env`` is a registered env and every ``int_fields`` is an int >= 1."""
    name = type(config).__name__
    if config.env not in env_names():
        raise ValueError(f"{name}.env must be one of {env_names()}, got {config.env!r}")
    for field in int_fields:
        value = getattr(config, field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}.{field} must be a positive int, got {value!r}")


class _PlainDict:
    """``to_dict`` / ``from_dict`` / ``replace`` of a frozen config dataclass (validated in ``__post_init__``)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        """Inverse of ``to_dict``; unknown keys raise ValueError naming them and the allowed ones."""
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise ValueError(f"{cls.__name__} got unknown fields {unknown}; allowed: {allowed}")
        return cls(**data)

    def replace(self, **changes: Any) -> Any:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class WorldModelConfig(_PlainDict):
    """Sizes of a DINO-WM world model; validated on construction. Defaults are the paper's sizes.

    Data:
        env: environment name, one of ``wmqlib.envs.env_names()``.
        proprio_dim: raw proprioception size (Wall 2, PushT 4).
        num_hist: frames of history the predictor sees (its window; PushT 3, Wall 1).
        frameskip: env steps per model step; a model-step action stacks ``frameskip`` env actions.
        env_action_dim: raw env action size (2 for Wall and PushT).
    Images and tokens:
        img_size: side of the model's images in pixels (prepare_obs / decode), a multiple of grid_size.
        patch_size: encoder patch side in pixels.
        grid_size: patch tokens per image side; P = grid_size ** 2 tokens per frame.
    Encoder (DINOv2 ViT; ViT-S/14: 384, 12, 6, 1536, pos grid 37):
        encoder_dim, encoder_depth, encoder_heads, encoder_mlp_dim: width, blocks, heads, MLP hidden size.
        encoder_pos_grid: side of the stored position-embedding grid (37 in the DINOv2 weights); it is
            interpolated (bicubic) to grid_size at run time.
    Predictor (ViT with frame-causal attention; paper: 6, 16, 64, 2048, dropout 0.1):
        predictor_depth, predictor_heads, predictor_dim_head, predictor_mlp_dim: layers, heads, head width, MLP.
        predictor_dropout: dropout inside attention and MLP while training, in [0, 1).
        predictor_emb_dropout: dropout after adding the position embedding while training, in [0, 1).
    Embeddings: proprio_emb_dim, action_emb_dim: widths appended to every visual token (paper: 10 and 10).
    Decoder (VQ-VAE-shaped, quantisation off; paper: 384, 4, 128, 2048):
        decoder_channel, decoder_res_blocks, decoder_res_channel: conv width, residual blocks, their width.
        decoder_n_embed: codebook size kept for checkpoint compatibility (the codebook is never used).
    """

    env: str
    proprio_dim: int
    num_hist: int = 1
    frameskip: int = 5
    env_action_dim: int = 2
    img_size: int = 224
    patch_size: int = 14
    grid_size: int = 14
    encoder_dim: int = 384
    encoder_depth: int = 12
    encoder_heads: int = 6
    encoder_mlp_dim: int = 1536
    encoder_pos_grid: int = 37
    predictor_depth: int = 6
    predictor_heads: int = 16
    predictor_dim_head: int = 64
    predictor_mlp_dim: int = 2048
    predictor_dropout: float = 0.1
    predictor_emb_dropout: float = 0.0
    proprio_emb_dim: int = 10
    action_emb_dim: int = 10
    decoder_channel: int = 384
    decoder_res_blocks: int = 4
    decoder_res_channel: int = 128
    decoder_n_embed: int = 2048

    architecture: ClassVar[str] = "dinowm"  # not a field: saved configs predate it (see ARCHITECTURES)

    def __post_init__(self) -> None:
        _check_env_and_sizes(self, _INT_FIELDS)
        for name in ("predictor_dropout", "predictor_emb_dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"WorldModelConfig.{name} must be a float in [0, 1), got {value!r}")
        if self.encoder_dim % self.encoder_heads:
            raise ValueError(
                f"WorldModelConfig.encoder_dim ({self.encoder_dim}) must be divisible by encoder_heads "
                f"({self.encoder_heads})"
            )
        if self.img_size % self.grid_size or self.img_size // self.grid_size not in DECODER_STRIDES:
            raise ValueError(
                f"WorldModelConfig.img_size must be grid_size times one of {sorted(DECODER_STRIDES)} (the decoder's "
                f"upsampling factors), got img_size={self.img_size}, grid_size={self.grid_size}"
            )
        if max(self.decoder_strides) == 4 and self.decoder_channel < 2:
            raise ValueError(
                f"WorldModelConfig.decoder_channel must be >= 2 for a 4x decoder stage, got {self.decoder_channel}"
            )

    @property
    def num_patches(self) -> int:
        """Tokens per frame, P = grid_size ** 2."""
        return self.grid_size**2

    @property
    def visual_dim(self) -> int:
        """Width of the visual latent per token, Dv = encoder_dim."""
        return self.encoder_dim

    @property
    def encoder_img_size(self) -> int:
        """Side in pixels of the images the encoder sees (grid_size * patch_size; 196 for DINO-WM)."""
        return self.grid_size * self.patch_size

    @property
    def action_dim(self) -> int:
        """Model-step action size Da = frameskip * env_action_dim (10 for DINO-WM)."""
        return self.frameskip * self.env_action_dim

    @property
    def latent_dim(self) -> int:
        """Per-token latent width D = encoder_dim + proprio_emb_dim + action_emb_dim (404 for DINO-WM)."""
        return self.encoder_dim + self.proprio_emb_dim + self.action_emb_dim

    @property
    def n_blocks(self) -> int:
        """Blocks whose tensors the weights must hold (encoder, predictor, decoder residual blocks): a bound that
        tells a hand-edited config from these weights before anything is built."""
        return self.encoder_depth + self.predictor_depth + self.decoder_res_blocks

    @property
    def decoder_strides(self) -> tuple[int, int]:
        """Upsampling of the decoder's two stages; their product is img_size // grid_size."""
        return DECODER_STRIDES[self.img_size // self.grid_size]


def dinowm_config(env: str) -> WorldModelConfig:
    """The paper-size DINO-WM config of a released model: ViT-S/14 encoder, 196 tokens, 404-wide predictor.

    The per-env facts (proprio width, num_hist, embedding dropout) come from the env class; frameskip 5.
    """
    if env not in env_names():
        raise ValueError(f"dinowm_config: env must be one of {env_names()}, got {env!r}")
    facts = env_class(env)
    return WorldModelConfig(env=env, frameskip=5, proprio_dim=facts.proprio_dim, num_hist=facts.num_hist,
                            predictor_emb_dropout=facts.predictor_emb_dropout)



_RSSM_INT_FIELDS = (
    "proprio_dim", "frameskip", "env_action_dim", "img_size", "encoder_channels", "encoder_layers", "embed_dim",
    "proprio_emb_dim", "deter_dim", "stoch_dim", "hidden_dim",
)


@dataclass(frozen=True)
class RSSMConfig(_PlainDict):
    """Sizes of a recurrent state-space world model (``wmqlib.models.rssm.RSSM``); validated on construction.

    Defaults follow PlaNet (deterministic 200, stochastic 30, hidden 200, min std 0.1) and Dreamer's 64-px conv
    encoder (4 layers, 32 channels doubling per layer); the small models wmq trains pick their own.

    Data (as ``WorldModelConfig``): env, proprio_dim, frameskip, env_action_dim.
    Images: img_size: side of the model's images in pixels, divisible by 2 ** encoder_layers.
    Encoder: encoder_layers stride-2 4x4 convolutions (padding 1, so each halves the side), the first with
        encoder_channels output channels, doubling per layer; then a linear map to embed_dim (Dv, the visual
        latent). The decoder mirrors it with transposed convolutions.
    Proprio: proprio_emb_dim: width of the proprio embedding (Ep), a per-step linear map as in DINO-WM.
    State: deter_dim (H, the GRU state), stoch_dim (S, the diagonal Gaussian latent), hidden_dim (width of every
        MLP: transition input, posterior, prior and the two prediction heads).
    min_std: floor added to the softplus standard deviation of the Gaussians, > 0 (PlaNet 0.1).
    architecture: always "rssm"; saved with the config so ``load_world_model`` builds this architecture.
    """

    env: str
    proprio_dim: int
    frameskip: int = 5
    env_action_dim: int = 2
    img_size: int = 64
    encoder_channels: int = 32
    encoder_layers: int = 4
    embed_dim: int = 256
    proprio_emb_dim: int = 10
    deter_dim: int = 200
    stoch_dim: int = 30
    hidden_dim: int = 200
    min_std: float = 0.1
    architecture: str = "rssm"

    def __post_init__(self) -> None:
        if self.architecture != "rssm":
            raise ValueError(f"RSSMConfig.architecture must be 'rssm', got {self.architecture!r}")
        _check_env_and_sizes(self, _RSSM_INT_FIELDS)
        if self.img_size % 2**self.encoder_layers:
            raise ValueError(f"RSSMConfig.img_size must be divisible by 2 ** encoder_layers = "
                             f"{2**self.encoder_layers} (each conv halves the side), got img_size={self.img_size}")
        if isinstance(self.min_std, bool) or not isinstance(self.min_std, (int, float)) or not self.min_std > 0:
            raise ValueError(f"RSSMConfig.min_std must be a float > 0, got {self.min_std!r}")

    @property
    def action_dim(self) -> int:
        """Model-step action size Da = frameskip * env_action_dim."""
        return self.frameskip * self.env_action_dim

    @property
    def num_hist(self) -> int:
        """Observed frames a rollout starts from: 1 (the start state is inferred from one frame, h_0 = 0)."""
        return 1

    @property
    def visual_dim(self) -> int:
        """Width of the visual latent per token, Dv = embed_dim (one token per frame)."""
        return self.embed_dim

    @property
    def feature_grid(self) -> int:
        """Side of the last conv's feature map: img_size // 2 ** encoder_layers."""
        return self.img_size // 2**self.encoder_layers

    @property
    def n_blocks(self) -> int:
        """Layers whose tensors the weights must hold (encoder convolutions, decoder transposed convolutions)."""
        return 2 * self.encoder_layers

    @property
    def conv_widths(self) -> tuple[int, ...]:
        """Output channels of the encoder's convolutions: encoder_channels * 2 ** i, i = 0..encoder_layers-1."""
        return tuple(self.encoder_channels * 2**i for i in range(self.encoder_layers))


# The ``architecture`` field of a saved config -> its config type. DINO-WM's config predates the field: a saved
# dict without it is DINO-WM (so checkpoints written before the RSSM load, and hash, unchanged).
ARCHITECTURES: dict[str, type] = {"dinowm": WorldModelConfig, "rssm": RSSMConfig}


def config_from_dict(data: dict[str, Any]) -> WorldModelConfig | RSSMConfig:
    """The config a saved dict describes, by its ``architecture`` field ("dinowm" when absent, see ARCHITECTURES).

    An unknown architecture raises ValueError naming the field and the allowed values; unknown or invalid fields
    raise as the config type's ``from_dict`` does.
    """
    architecture = data.get("architecture", "dinowm")
    if not isinstance(architecture, str) or architecture not in ARCHITECTURES:
        raise ValueError(f"config.architecture must be one of {sorted(ARCHITECTURES)}, got {architecture!r}")
    fields = data if architecture != "dinowm" else {k: v for k, v in data.items() if k != "architecture"}
    return ARCHITECTURES[architecture].from_dict(fields)
