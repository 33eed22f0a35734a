"""OmniQuant: training LWC + LET lowers the unit-output error below its initialisation."""

from __future__ import annotations

import pytest
import torch

from wmqlib.quant import (
    Calibration, OmniQuant, PerGroup, PerTensor, PerToken, SmoothQuant, capture_calibration, quantize,
    quantwm_reference, search_params,
)


def unit_mse(model, qmodel, calibration) -> dict[str, float]:
    """Mean squared error between FP and quantized unit outputs over the captured unit inputs."""
    out = {}
    with torch.no_grad():
        for unit in calibration.units:
            x = torch.stack(calibration.sequences(unit))
            out[unit] = (qmodel.get_submodule(unit)(x) - model.get_submodule(unit)(x)).pow(2).mean().item()
    return out


@pytest.mark.parametrize("recipe,scope", [
    (OmniQuant(3, PerGroup(16), epochs=10, batch_size=1), "all"),
    (OmniQuant(4, PerGroup(16), a_bits=6, a_granularity=PerToken(), epochs=6, batch_size=1), "encoder.blocks.1"),
    (OmniQuant(3, PerGroup(16), let=False, epochs=6, batch_size=1, lwc_lr=5e-2), "predictor.transformer.layers.1"),
])
def test_training_lowers_unit_error(toy_model, calibration, recipe, scope):
    init, _ = quantize(toy_model, OmniQuant(**{**recipe.__dict__, "epochs": 0}), calibration, scope)
    trained, _ = quantize(toy_model, recipe, calibration, scope)
    before, after = unit_mse(toy_model, init, calibration), unit_mse(toy_model, trained, calibration)
    touched = [u for u in before if before[u] > 0]
    assert len(touched) == {"all": 6, "encoder.blocks.1": 1}.get(scope, 2)
    assert sum(after[u] for u in touched) < 0.9 * sum(before[u] for u in touched)
    assert sum(after[u] < before[u] for u in touched) >= max(1, len(touched) - 1)  # (nearly) every unit improves


def test_search_returns_let_and_lwc_params(toy_model, calibration):
    params = search_params(toy_model, OmniQuant(4, PerGroup(16), epochs=1), calibration, scope="predictor")
    p = "predictor.transformer.layers.0"
    assert params[f"{p}.0.to_qkv.input_shift"].shape == (40,) and params[f"{p}.1.net.1.input_scale"].shape == (40,)
    assert f"{p}.1.net.4.input_scale" not in params  # LET only where a LayerNorm absorbs it
    assert params[f"{p}.1.net.4.weight_lo"].shape == (40, 5)  # 72 inputs: groups 16 x 4 + 8


def test_epochs_zero_is_the_untrained_initialisation(toy_model, calibration):
    params = search_params(toy_model, OmniQuant(4, PerGroup(16), epochs=0), calibration, scope="encoder.blocks.0")
    w = toy_model.encoder.blocks[0].mlp.fc2.weight.detach()
    from wmqlib.quant.spec import group_minmax

    _, hi = group_minmax(w, PerGroup(16))
    torch.testing.assert_close(params["encoder.blocks.0.mlp.fc2.weight_hi"], torch.sigmoid(torch.tensor(4.0)) * hi)


@pytest.mark.parametrize("a_bits,a_granularity", [(None, None), (8, PerTensor())])
def test_quantwm_reference_at_0_epochs_is_its_initialisation_smoothquant(toy_model, calibration, eval_inputs,
                                                                         a_bits, a_granularity):
    """QuantWM's OmniQuant (0 epochs, LET shift 0, LWC without effect, symmetric) = SmoothQuant (alpha 0.5)."""
    omni = quantwm_reference("OmniQuant", 4, a_bits=a_bits, a_granularity=a_granularity)
    smooth = quantwm_reference("SmoothQuant", 4, a_bits=a_bits, a_granularity=a_granularity)
    assert omni.epochs == 0 and omni.w_symmetric and omni.w_full_range and not omni.lwc
    params, reference = search_params(toy_model, omni, calibration), search_params(toy_model, smooth, calibration)
    shifts = {k: v for k, v in params.items() if k.endswith(".input_shift")}
    assert shifts and all(torch.equal(v, torch.zeros_like(v)) for v in shifts.values())
    rest = {k: v for k, v in params.items() if k not in shifts}
    assert rest.keys() == reference.keys() and all(torch.equal(rest[k], reference[k]) for k in rest)
    with torch.no_grad():
        got = quantize(toy_model, omni, calibration)[0](eval_inputs)
        want = quantize(toy_model, smooth, calibration)[0](eval_inputs)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)  # only a zero bias on to_qkv differs


def test_let_shift_zero_starts_from_zero(toy_model, calibration):
    params = search_params(toy_model, OmniQuant(4, epochs=0, let_shift="zero"), calibration, scope="predictor")
    mid = search_params(toy_model, OmniQuant(4, epochs=0), calibration, scope="predictor")
    key = "predictor.transformer.layers.0.1.net.1.input_shift"
    assert torch.equal(params[key], torch.zeros_like(params[key])) and bool(mid[key].abs().max() > 0)


def test_deterministic(toy_model, calibration):
    a = search_params(toy_model, OmniQuant(3, PerGroup(16), epochs=1), calibration, scope="encoder.blocks.1")
    b = search_params(toy_model, OmniQuant(3, PerGroup(16), epochs=1), calibration, scope="encoder.blocks.1")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_needs_unit_inputs(toy_model, calib_inputs):
    with torch.no_grad(), capture_calibration(toy_model, max_sequences=0) as calib:
        toy_model(calib_inputs)
    with pytest.raises(ValueError, match="no input sequences for unit 'encoder.blocks.0'"):
        quantize(toy_model, OmniQuant(4), calib)
    with pytest.raises(ValueError, match="OmniQuant needs calibration"):
        quantize(toy_model, OmniQuant(4))
    assert isinstance(calib, Calibration)
