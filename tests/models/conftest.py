"""Fixtures for the model tests: tiny configs, and a released-DINO-WM-layout folder written from scratch
(``released_layout.build_released``)."""

from __future__ import annotations

import pytest

from released_layout import build_released, dinov2_layout_state_dict
from wmqlib.models import WorldModel, WorldModelConfig

TINY = dict(
    env="pusht", proprio_dim=4, num_hist=3, frameskip=2, env_action_dim=2,
    img_size=16, patch_size=4, grid_size=2, encoder_dim=16, encoder_depth=2, encoder_heads=2, encoder_mlp_dim=32,
    encoder_pos_grid=3, predictor_depth=2, predictor_heads=2, predictor_dim_head=8, predictor_mlp_dim=32,
    predictor_dropout=0.0, proprio_emb_dim=3, action_emb_dim=5,
    decoder_channel=4, decoder_res_blocks=1, decoder_res_channel=4, decoder_n_embed=8,
)


@pytest.fixture
def tiny_config() -> WorldModelConfig:
    """A 4-token, 24-wide world model config (fast on CPU)."""
    return WorldModelConfig(**TINY)


@pytest.fixture
def tiny_model(tiny_config: WorldModelConfig) -> WorldModel:
    """A seeded tiny model in eval mode with non-trivial normalisation statistics."""
    model = WorldModel(tiny_config, seed=3).eval()
    return model.set_normalization(action_mean=[0.1, -0.2], action_std=[0.5, 2.0],
                                   proprio_mean=[1.0, 2.0, 3.0, 4.0], proprio_std=[1.0, 0.5, 2.0, 4.0])


@pytest.fixture(scope="session")
def released(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A released-layout folder outputs/pusht on CPU, DINOv2 weights, and the fixture modules' outputs."""
    return build_released(tmp_path_factory.mktemp("released"))


@pytest.fixture
def make_dinov2_state():
    """The factory of DINOv2-layout random state_dicts: (dim, depth, mlp, patch, pos_grid, seed=0) -> dict."""
    return dinov2_layout_state_dict


@pytest.fixture
def released_builder():
    """``build_released(root, device="cpu", real_accelerate=False) -> dict``, for variants of the released folder."""
    return build_released
