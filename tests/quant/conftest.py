"""Fixtures: a toy world model with both naming conventions, its inputs and a calibration captured on it."""

from __future__ import annotations

import pytest
import torch

from wmqlib.quant import Calibration, capture_calibration

from .toy import ToyWorldModel

N_TOKENS = 16


def toy_inputs(batch: int, seed: int, in_dim: int = 12) -> torch.Tensor:
    """``(batch, N_TOKENS, in_dim)`` standard normal inputs with a few large input channels."""
    x = torch.randn(batch, N_TOKENS, in_dim, generator=torch.Generator().manual_seed(seed))
    x[..., :2] *= 4.0
    return x


@pytest.fixture(scope="session")
def toy_model() -> ToyWorldModel:
    return ToyWorldModel()


@pytest.fixture(scope="session")
def calib_inputs() -> torch.Tensor:
    return toy_inputs(8, seed=1)


@pytest.fixture(scope="session")
def eval_inputs() -> torch.Tensor:
    return toy_inputs(4, seed=2)


@pytest.fixture(scope="session")
def calibration(toy_model: ToyWorldModel, calib_inputs: torch.Tensor) -> Calibration:
    with torch.no_grad(), capture_calibration(toy_model, max_tokens=256, max_sequences=8, seed=0) as calib:
        for chunk in calib_inputs.split(4):
            toy_model(chunk)
    return calib


def rssm_inputs(model, episodes: int = 3, samples: int = 4, horizon: int = 3, seed: int = 0) -> tuple:
    """Start images (E, 1, 3, img, img), z-scored proprio (E, 1, p) and actions (E * samples, horizon, Da)."""
    g = torch.Generator().manual_seed(seed)
    c = model.config
    visual = torch.rand(episodes, 1, 3, c.img_size, c.img_size, generator=g) * 2 - 1
    proprio = torch.randn(episodes, 1, c.proprio_dim, generator=g)
    return visual, proprio, torch.randn(episodes * samples, horizon, model.action_dim, generator=g)


def rssm_plan_latents(model, inputs: tuple) -> dict[str, torch.Tensor]:
    """What planning computes: encode the starts, roll the actions out; ``{"visual", "proprio"}`` latents."""
    visual, proprio, actions = inputs
    with torch.no_grad():
        return model.rollout(model.encode_obs(visual, proprio), actions)


def rssm_calibration(model) -> Calibration:
    """A calibration of ``model`` captured on the encoder and rollout forwards of ``rssm_inputs`` (seed 1)."""
    with capture_calibration(model, max_tokens=128, max_sequences=8, seed=0) as calib:
        rssm_plan_latents(model, rssm_inputs(model, seed=1))
    return calib
