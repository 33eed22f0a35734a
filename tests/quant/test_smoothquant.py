"""SmoothQuant: exact before quantization, scales from the calibration's channel maxima."""

from __future__ import annotations

import pytest
import torch

from wmqlib.quant import RTN, PerTensor, PerToken, SmoothQuant, quantize, search_params


def test_folding_leaves_block_outputs_unchanged(toy_model, calibration, eval_inputs):
    smoothed, _ = quantize(toy_model, SmoothQuant(16), calibration)
    with torch.no_grad():
        torch.testing.assert_close(smoothed(eval_inputs), toy_model(eval_inputs), rtol=0, atol=1e-5)
        for unit in (toy_model.encoder.blocks[1], toy_model.predictor.transformer.layers[0][1]):
            name = next(n for n, m in toy_model.named_modules() if m is unit)
            x = torch.randn(2, 16, unit.norm1.normalized_shape[0] if hasattr(unit, "norm1") else 40)
            torch.testing.assert_close(smoothed.get_submodule(name)(x), unit(x), rtol=0, atol=1e-5)
    assert not torch.allclose(smoothed.encoder.blocks[0].norm1.weight, toy_model.encoder.blocks[0].norm1.weight)


def test_scales_follow_the_formula_and_only_norm_pairs(toy_model, calibration):
    params = search_params(toy_model, SmoothQuant(8, alpha=0.5), calibration)
    suffixes = {k.rsplit(".", 2)[-2] for k in params}
    assert suffixes == {"qkv", "fc1", "to_qkv", "1"} and len(params) == 8  # qkv and fc1 per unit, never proj / fc2
    name = "encoder.blocks.0.mlp.fc1"
    w = toy_model.get_submodule(name).weight
    expected = (calibration.absmax(name).sqrt() / w.abs().amax(0).sqrt()).clamp(min=1e-5)
    torch.testing.assert_close(params[f"{name}.input_scale"], expected.detach())


def test_alpha_one_moves_all_of_the_activation_range():
    from wmqlib.quant.smoothquant import smooth_scale

    absmax, w = torch.tensor([1.0, 4.0, 100.0]), torch.ones(2, 3)
    assert smooth_scale(absmax, w, 1.0).tolist() == [1.0, 4.0, 100.0]
    assert smooth_scale(absmax, w, 0.0).tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("granularity", [PerTensor(), PerToken()])
def test_w8a8_error_is_small(toy_model, calibration, eval_inputs, granularity):
    qmodel, report = quantize(toy_model, SmoothQuant(8, a_bits=8, a_granularity=granularity), calibration)
    with torch.no_grad():
        y, y_q = toy_model(eval_inputs), qmodel(eval_inputs)
    assert (y_q - y).pow(2).mean() < 1e-2 * y.pow(2).mean()
    assert set(report.table.a_bits) == {8}


def test_needs_calibration(toy_model):
    with pytest.raises(ValueError, match="SmoothQuant needs calibration for its search"):
        quantize(toy_model, SmoothQuant(8))
    with pytest.raises(ValueError, match="RTN needs calibration for static per-tensor activation ranges"):
        quantize(toy_model, RTN(8, a_bits=8, a_granularity=PerTensor()))
