"""WorldModelConfig: validation, serialisation, derived sizes and the paper preset."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from wmqlib.models import WorldModel, WorldModelConfig, dinowm_config


def test_paper_preset_sizes() -> None:
    """dino_wm.md: 196 tokens of 384 + 10 + 10 = 404 dims, encoder sees 196 px, actions 5 x 2 = 10."""
    c = dinowm_config("pusht")
    assert (c.num_patches, c.latent_dim, c.encoder_img_size, c.action_dim) == (196, 404, 196, 10)
    assert (c.num_hist, c.proprio_dim, c.decoder_strides) == (3, 4, (4, 4))
    wall = dinowm_config("wall")
    assert (wall.num_hist, wall.proprio_dim, wall.predictor_emb_dropout) == (1, 2, 0.1)


def test_paper_size_model_shapes_on_meta_device() -> None:
    """The paper-size model without allocating it: ~20 M predictor, ~22 M ViT-S/14 encoder, ~10 M decoder."""
    with torch.device("meta"):
        model = WorldModel(dinowm_config("pusht"))
    assert model.predictor.pos_embedding.shape == (1, 3 * 196, 404)
    assert model.predictor.transformer.layers[0][0].to_qkv.weight.shape == (3 * 1024, 404)
    assert model.encoder.pos_embed.shape == (1, 1 + 37 * 37, 384)
    count = {name: sum(p.numel() for p in getattr(model, name).parameters()) / 1e6
             for name in ("predictor", "encoder", "decoder")}
    assert 19 < count["predictor"] < 21 and 21 < count["encoder"] < 23 and 9.5 < count["decoder"] < 10.5


def test_round_trip_through_dict(tiny_config: WorldModelConfig) -> None:
    assert WorldModelConfig.from_dict(tiny_config.to_dict()) == tiny_config


def test_from_dict_names_unknown_fields(tiny_config: WorldModelConfig) -> None:
    with pytest.raises(ValueError, match=r"unknown fields \['hidden'\].*allowed"):
        WorldModelConfig.from_dict({**tiny_config.to_dict(), "hidden": 1})


@pytest.mark.parametrize("change, message", [
    ({"env": "maze"}, r"env must be one of \('pusht', 'wall'\)"),
    ({"num_hist": 0}, "num_hist must be a positive int"),
    ({"patch_size": 2.5}, "patch_size must be a positive int"),
    ({"frameskip": True}, "frameskip must be a positive int"),
    ({"predictor_dropout": 1.0}, r"predictor_dropout must be a float in \[0, 1\)"),
    ({"encoder_heads": 3}, "encoder_dim .16. must be divisible by encoder_heads .3."),
    ({"img_size": 18}, "img_size must be grid_size times one of"),
    ({"img_size": 64}, "img_size must be grid_size times one of"),
])
def test_invalid_fields_are_named(tiny_config: WorldModelConfig, change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_config.replace(**change)


def test_frozen(tiny_config: WorldModelConfig) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        tiny_config.num_hist = 2  # type: ignore[misc]


def test_dinowm_config_unknown_env() -> None:
    with pytest.raises(ValueError, match=r"env must be one of \('pusht', 'wall'\)"):
        dinowm_config("point_maze")
