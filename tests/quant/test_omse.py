"""OMSE: the searched clipping never does worse than RTN on any channel, and usually better."""

from __future__ import annotations

import pytest
import torch

from wmqlib.quant import OMSE, RTN, PerChannel, PerGroup, quantize, search_params


def heavy_tailed(shape: tuple[int, int], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * torch.exp(torch.randn(shape, generator=g))  # outliers to clip


@pytest.mark.parametrize("granularity,symmetric", [(PerChannel(), True), (PerGroup(16), False), (PerGroup(16), True)])
def test_channel_error_at_most_rtn(toy_model, granularity, symmetric):
    model = type(toy_model)()
    with torch.no_grad():
        for name in ("encoder.blocks.0.mlp.fc1", "predictor.transformer.layers.1.1.net.4"):
            w = model.get_submodule(name).weight
            w.copy_(heavy_tailed(tuple(w.shape), 3))
    omse, omse_report = quantize(model, OMSE(3, granularity, w_symmetric=symmetric))
    rtn, rtn_report = quantize(model, RTN(3, granularity, w_symmetric=symmetric))
    strictly_better = 0
    for name in omse_report.table.module:
        w = model.get_submodule(name).weight
        err_omse = (omse.get_submodule(name).weight - w).pow(2).sum(1)
        err_rtn = (rtn.get_submodule(name).weight - w).pow(2).sum(1)
        assert bool((err_omse <= err_rtn).all()), name
        strictly_better += int((err_omse < err_rtn * 0.99).sum())
    assert strictly_better > 100  # clipping helps on many channels
    assert omse_report.table.weight_mse.sum() < rtn_report.table.weight_mse.sum()


def test_ranges_come_from_the_ratio_grid(toy_model):
    params = search_params(toy_model, OMSE(4, PerGroup(16), clip_min=0.5, clip_steps=6))
    name = "predictor.transformer.layers.0.1.net.1"
    w = toy_model.get_submodule(name).weight
    assert params[f"{name}.weight_lo"].shape == (72, 3)  # 40 inputs -> groups of 16, 16, 8
    hi = params[f"{name}.weight_hi"][:, 0]
    ratio = hi / w[:, :16].amax(1)
    assert torch.allclose(ratio, (ratio * 10).round() / 10, atol=1e-5)  # one of 0.5, 0.6, ..., 1.0
    assert bool((ratio >= 0.5 - 1e-6).all() and (ratio <= 1 + 1e-6).all())
