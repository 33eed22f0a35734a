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
