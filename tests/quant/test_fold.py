"""Folding input scales / shifts into LayerNorm, GELU and v rows is exact before quantization."""

from __future__ import annotations

import pytest
import torch

from wmqlib.quant import RTN, ScaledActivation, apply_params

W16 = RTN(16)


def positive(n: int, seed: int) -> torch.Tensor:
    return torch.exp(torch.randn(n, generator=torch.Generator().manual_seed(seed)))


def params_for(model, names: list[str], shift: bool) -> dict[str, torch.Tensor]:
    out = {}
    for k, name in enumerate(names):
        n = model.get_submodule(name).in_features
        out[f"{name}.input_scale"] = positive(n, k)
        if shift:
            out[f"{name}.input_shift"] = torch.randn(n, generator=torch.Generator().manual_seed(100 + k))
    return out


NORM_FED = ["encoder.blocks.0.attn.qkv", "encoder.blocks.1.mlp.fc1", "predictor.transformer.layers.0.0.to_qkv",
            "predictor.transformer.layers.1.1.net.1"]
ACT_FED = ["encoder.blocks.0.mlp.fc2", "predictor.transformer.layers.0.1.net.4"]
V_FED = ["encoder.blocks.1.attn.proj", "predictor.transformer.layers.1.0.to_out.0"]


@pytest.mark.parametrize("names,shift", [(NORM_FED, True), (NORM_FED, False), (ACT_FED, False), (V_FED, False),
                                         (NORM_FED + ACT_FED + V_FED, False)])
def test_fold_preserves_the_function(toy_model, eval_inputs, names, shift):
    params = params_for(toy_model, names, shift)
    folded, report = apply_params(toy_model, W16, params)
    with torch.no_grad():
        torch.testing.assert_close(folded(eval_inputs), toy_model(eval_inputs), rtol=1e-5, atol=1e-5)
    name = names[0]
    changed = folded.get_submodule(name).weight
    assert not torch.allclose(changed, toy_model.get_submodule(name).weight)  # the weights really moved
    assert report.table["weight_mse"].max() < 1e-10  # the report divides the scales out again


def test_fold_kinds(toy_model):
    folded, _ = apply_params(toy_model, W16, params_for(toy_model, ACT_FED, False))
    assert isinstance(folded.encoder.blocks[0].mlp.act, ScaledActivation)
    assert isinstance(folded.predictor.transformer.layers[0][1].net[2], ScaledActivation)
    shifted, _ = apply_params(toy_model, W16, params_for(toy_model, NORM_FED, True))
    assert toy_model.predictor.transformer.layers[0][0].to_qkv.bias is None
    assert shifted.predictor.transformer.layers[0][0].to_qkv.bias is not None  # the shift created a bias


@pytest.mark.parametrize("key,value,message", [
    ("encoder.blocks.0.mlp.fc2.input_shift", torch.zeros(64), "can only fold into a LayerNorm"),
    ("encoder.blocks.0.attn.qkv.input_scale", -torch.ones(32), "must be > 0 everywhere"),
    ("encoder.blocks.0.attn.qkv.input_scale", torch.ones(31), r"must have shape \(32,\)"),
    ("encoder.blocks.0.attn.qkv.weight_lo", torch.zeros(3), "lo must broadcast to the scale shape"),
    ("encoder.blocks.0.attn.qkv.scales", torch.ones(32), "do not name a linear in scope"),
    ("encoder.norm.input_scale", torch.ones(32), "do not name a linear in scope"),
])
def test_invalid_params_raise(toy_model, key, value, message):
    with pytest.raises(ValueError, match=message):
        apply_params(toy_model, W16 if "weight_lo" not in key else RTN(4), {key: value})
