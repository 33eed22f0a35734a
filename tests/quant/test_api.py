"""The entry point: copies, scopes, overrides, saved searches, gradients and dtypes; every registered method on
both architectures (the DINO-WM-layout toy and a tiny RSSM)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from wmqlib.quant import (AWQ, GPTQ, OMSE, RTN, OmniQuant, PerGroup, PerTensor, PerToken, QuantLinear, SmoothQuant,
                          apply_params, find_points, load_params, quantize, recipe_types, save_params, search_params)
from wmqlib.quant.points import ALL_ROLES, weight_matrix
from wmqlib.quant.qlinear import QuantConv2d

from .conftest import rssm_calibration, rssm_inputs, rssm_plan_latents
from .toy import ToyWorldModel

ALL_METHODS = [
    RTN(4, PerGroup(16), a_bits=8, a_granularity=PerToken()),
    OMSE(4, PerGroup(16), clip_steps=11),
    AWQ(4, PerGroup(16), n_grid=5),
    SmoothQuant(8, a_bits=8, a_granularity=PerTensor()),
    OmniQuant(4, PerGroup(16), epochs=1),
    GPTQ(4, PerGroup(16), act_order=True, a_bits=8, a_granularity=PerTensor()),
]


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("recipe", ALL_METHODS, ids=lambda r: type(r).__name__)
def test_original_untouched_and_saved_search_reapplies_identically(toy_model, calibration, eval_inputs, recipe, tmp_path):
    before = state(toy_model)
    qmodel, _ = quantize(toy_model, recipe, calibration)
    assert all(torch.equal(v, toy_model.state_dict()[k]) for k, v in before.items())
    assert all(isinstance(m, (nn.Linear, nn.GELU)) for n, m in toy_model.named_modules() if n.endswith(("qkv", "act")))
    params = search_params(toy_model, recipe, calibration)
    path = save_params(params, tmp_path / "search.safetensors")
    again, _ = apply_params(toy_model, recipe, load_params(path))
    assert qmodel.state_dict().keys() == again.state_dict().keys()
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in qmodel.state_dict().items())
    with torch.no_grad():
        assert torch.equal(qmodel(eval_inputs), again(eval_inputs))


def test_scope_selects_encoder_or_predictor(toy_model):
    enc, report = quantize(toy_model, RTN(4), scope="encoder")
    assert all(m.startswith("encoder.") for m in report.table.module) and len(report.table) == 8
    assert isinstance(enc.encoder.blocks[0].attn.qkv, QuantLinear)
    assert type(enc.predictor.transformer.layers[0][0].to_qkv) is nn.Linear
    assert torch.equal(enc.predictor.transformer.layers[0][0].to_qkv.weight,
                       toy_model.predictor.transformer.layers[0][0].to_qkv.weight)
    _, report = quantize(toy_model, RTN(4), scope=["predictor.transformer.layers.1", "re:.*blocks\\.0\\.mlp\\..*"])
    assert len(report.table) == 4 + 2


def test_overrides_give_mixed_precision(toy_model, calibration):
    _, report = quantize(toy_model, RTN(4, PerGroup(16)), calibration,
                         overrides={"encoder": RTN(8), "*.to_qkv": AWQ(3, PerGroup(16), n_grid=4)})
    table = report.table.set_index("module")
    assert set(table.loc[[m for m in table.index if m.startswith("encoder")], "w_bits"]) == {8}
    assert table.loc["predictor.transformer.layers.1.0.to_qkv", "method"] == "AWQ"
    assert table.loc["predictor.transformer.layers.1.0.to_qkv", "w_bits"] == 3
    assert table.loc["predictor.transformer.layers.1.1.net.1", "w_granularity"] == "per-group(16)"


def test_empty_scope_or_override_match_raises(toy_model):
    with pytest.raises(ValueError, match="scope='decoder' matches none"):
        quantize(toy_model, RTN(4), scope="decoder")
    with pytest.raises(ValueError, match=r"overrides key \(within the scope\)='encoder' matches none of the 8"):
        quantize(toy_model, RTN(4), scope="predictor", overrides={"encoder": RTN(8)})
    with pytest.raises(TypeError, match="overrides must be a dict"):
        quantize(toy_model, RTN(4), overrides=[("encoder", RTN(8))])


def test_non_recipes_raise(toy_model):
    with pytest.raises(TypeError, match="recipe must be a recipe instance"):
        quantize(toy_model, "RTN")
    with pytest.raises(TypeError, match=r"overrides\['encoder'\] must be a recipe instance"):
        quantize(toy_model, RTN(4), overrides={"encoder": 8})


def test_calibration_from_another_model_raises(toy_model, calibration):
    with pytest.raises(ValueError, match="calibration has no statistics for"):
        quantize(toy_model.predictor, AWQ(4), calibration)  # names lack the "predictor." prefix


def test_static_ranges_missing_from_params_raise(toy_model):
    with pytest.raises(ValueError, match="params lack .*act_lo/act_hi"):
        apply_params(toy_model, RTN(8, a_bits=8, a_granularity=PerTensor()), {})


def test_gradient_passes_straight_through_the_quantized_model(toy_model, calibration, eval_inputs):
    for recipe in (RTN(4, a_bits=4, a_granularity=PerToken()), SmoothQuant(4, a_bits=8, a_granularity=PerTensor())):
        qmodel, _ = quantize(toy_model, recipe, calibration)
        x = eval_inputs.clone().requires_grad_()
        qmodel(x).pow(2).sum().backward()
        assert bool(torch.isfinite(x.grad).all()) and x.grad.abs().sum() > 0
        x_fp = eval_inputs.clone().requires_grad_()
        toy_model(x_fp).pow(2).sum().backward()
        cos = torch.nn.functional.cosine_similarity(x.grad.flatten(), x_fp.grad.flatten(), dim=0)
        assert cos > 0.5  # the straight-through gradient still points where the FP gradient does


def test_bf16_model(calib_inputs, eval_inputs):
    from wmqlib.quant import capture_calibration

    model = ToyWorldModel().to(torch.bfloat16)
    x, xc = eval_inputs.bfloat16(), calib_inputs.bfloat16()
    with torch.no_grad(), capture_calibration(model, max_sequences=4) as calib:
        model(xc)
    for recipe in (RTN(8, a_bits=8, a_granularity=PerToken()), AWQ(4, PerGroup(16), n_grid=4),
                   SmoothQuant(8, a_bits=8, a_granularity=PerTensor()), OmniQuant(8, epochs=1), GPTQ(4, PerGroup(16))):
        qmodel, _ = quantize(model, recipe, calib)
        with torch.no_grad():
            y, y_q = model(x), qmodel(x)
        assert y_q.dtype == torch.bfloat16 and bool(torch.isfinite(y_q).all())
        assert (y_q.float() - y.float()).pow(2).mean() < 0.05 * y.float().pow(2).mean(), type(recipe).__name__
        assert qmodel.encoder.blocks[0].attn.qkv.weight.dtype == torch.bfloat16


# Fast 4-bit settings of every registered method on the RSSM (AWQ searches every pair, the GRU input's included).
RSSM_METHODS = {
    "RTN": RTN(4, PerGroup(8), a_bits=8, a_granularity=PerToken()),
    "OMSE": OMSE(4, clip_steps=11),
    "AWQ": AWQ(4, PerGroup(8), n_grid=4, scale_targets=ALL_ROLES),
    "SmoothQuant": SmoothQuant(4, a_bits=8, a_granularity=PerTensor()),
    "OmniQuant": OmniQuant(4, PerGroup(8), epochs=1),
    "GPTQ": GPTQ(4, PerGroup(8), act_order=True, a_bits=8, a_granularity=PerTensor()),
}
RSSM_RECIPES = [*RSSM_METHODS.values(), *(dataclasses.replace(r, rotation="hadamard") for r in RSSM_METHODS.values()
                                          if r.supports_rotation)]


def test_every_registered_method_is_run_on_the_rssm():
    assert set(RSSM_METHODS) == set(recipe_types())


@pytest.fixture(scope="module")
def rssm_and_calibration(tiny_rssm):
    model = tiny_rssm()
    return model, rssm_calibration(model)


@pytest.mark.parametrize("recipe", RSSM_RECIPES, ids=lambda r: f"{type(r).__name__}-{r.label}")
def test_every_method_quantizes_exactly_the_declared_rssm_points(rssm_and_calibration, recipe):
    model, calib = rssm_and_calibration
    before = state(model)
    qmodel, report = quantize(model, recipe, calib)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the original is untouched
    points = find_points(model)
    assert list(report.table.module) == points.linears
    for name in points.linears:
        fp, quantized = model.get_submodule(name), qmodel.get_submodule(name)
        assert type(quantized) is (QuantConv2d if isinstance(fp, nn.Conv2d) else QuantLinear)
        matrix = (quantized.linear if isinstance(quantized, QuantConv2d) else quantized).weight
        assert matrix.shape == weight_matrix(fp).shape and not torch.equal(matrix, weight_matrix(fp)), name
    # everything else is bit for bit the FP model's, but the predecessors an exact scale fold rewrites
    folded = {p.prev for u in points.units for p in u.pairs}
    kept = {k: v for k, v in before.items() if not k.startswith(tuple(f"{n}." for n in points.linears + [*folded]))}
    assert kept and all(torch.equal(v, qmodel.state_dict()[k]) for k, v in kept.items())
    inputs = rssm_inputs(model)
    fp, got = rssm_plan_latents(model, inputs), rssm_plan_latents(qmodel, inputs)
    assert torch.isfinite(got["visual"]).all() and not torch.equal(got["visual"], fp["visual"])
    assert (got["visual"] - fp["visual"]).pow(2).mean() < 0.25 * fp["visual"].pow(2).mean()


@pytest.mark.parametrize("recipe", [RTN(4), AWQ(4, PerGroup(8), n_grid=4, scale_targets=ALL_ROLES)],
                         ids=["RTN", "AWQ"])
def test_rssm_encoder_and_predictor_scopes_touch_only_their_modules(rssm_and_calibration, recipe):
    model, calib = rssm_and_calibration
    points = find_points(model)
    visual, proprio, actions = rssm_inputs(model)
    with torch.no_grad():
        fp_obs = model.encode_obs(visual, proprio)
    for scope, other in (("encoder", "predictor"), ("predictor", "encoder")):
        qmodel, report = quantize(model, recipe, calib, scope=scope)
        assert list(report.table.module) == points.select(scope)
        untouched = tuple(f"{n}." for n in points.scopes[other])
        assert all(torch.equal(v, qmodel.state_dict()[k]) for k, v in model.state_dict().items()
                   if k.startswith(untouched))
        with torch.no_grad():
            obs = qmodel.encode_obs(visual, proprio)
        # the goal's and the start's embeddings come from the conv encoder alone
        assert torch.equal(obs["visual"], fp_obs["visual"]) == (scope == "predictor")
        assert not torch.equal(rssm_plan_latents(qmodel, (visual, proprio, actions))["visual"],
                               rssm_plan_latents(model, (visual, proprio, actions))["visual"])
