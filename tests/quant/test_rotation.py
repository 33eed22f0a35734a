"""Input rotations: the matrices, exact FP equivalence on a real world model, the gains on outlier channels, recipe
validation, cache-key stability and saved searches."""

from __future__ import annotations

import copy
import dataclasses
import zlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import wmqlib.quant.recipe as recipe_module
from wmqlib import sweep
from wmqlib.models import WorldModel
from wmqlib.quant import (AWQ, RTN, OmniQuant, PerGroup, PerTensor, PerToken, QuantLinear, apply_params,
                          capture_calibration, fake_quantize, load_params, quantize, recipe_from_names, save_params,
                          search_params)
from wmqlib.quant.fold import set_module
from wmqlib.quant.rotation import (RotatedCalibration, hadamard, hadamard_available, rotation_matrix, rotation_seed)

from .conftest import toy_inputs

SIZES = [1, 2, 12, 16, 20, 24, 28, 36, 40, 52, 64, 72, 84, 96]


# ---- the matrices ----

@pytest.mark.parametrize("kind", ["hadamard", "random"])
@pytest.mark.parametrize("n", SIZES)
def test_rotations_are_orthogonal(n, kind):
    r = rotation_matrix(n, kind, seed=3)
    assert r.shape == (n, n) and r.dtype == torch.float32
    eye = torch.eye(n, dtype=torch.float64)
    assert torch.allclose(r.double() @ r.double().T, eye, atol=1e-6, rtol=0)
    assert torch.allclose(r.double().T @ r.double(), eye, atol=1e-6, rtol=0)


@pytest.mark.parametrize("n", [n for n in SIZES if n != 52])
def test_hadamard_rotation_has_entries_plus_minus_one_over_sqrt_n(n):
    r = rotation_matrix(n, "hadamard", seed=5)
    assert torch.allclose(r.abs(), torch.full((n, n), n ** -0.5), atol=1e-7, rtol=0)
    assert not torch.equal(r, (hadamard(n) / n ** 0.5).float()) or n == 1  # randomized: column signs flipped


def test_hadamard_constructions_are_exact_up_to_200():
    built = [n for n in range(1, 201) if hadamard_available(n)]
    # powers of two, Paley I (p + 1, p = 3 mod 4), Paley II (2 (p + 1), p = 1 mod 4) and their 2^k multiples
    assert {1, 2, 4, 12, 20, 24, 28, 36, 40, 44, 60, 72, 84, 108, 128, 196}.issubset(built)
    assert not {3, 6, 10, 52, 92, 100, 116, 156, 172, 184, 188} & set(built)
    for n in built:
        h = hadamard(n)
        assert bool((h.abs() == 1).all()) and torch.equal(h @ h.T, n * torch.eye(n, dtype=torch.float64)), n
    with pytest.raises(ValueError, match="no Hadamard matrix of order 52"):
        hadamard(52)


def test_hadamard_without_a_construction_falls_back_to_the_random_rotation():
    assert not hadamard_available(52)
    assert torch.equal(rotation_matrix(52, "hadamard", 9), rotation_matrix(52, "random", 9))


@pytest.mark.parametrize("kind", ["hadamard", "random"])
def test_rotations_are_deterministic_per_seed_and_differ_across_seeds(kind):
    assert torch.equal(rotation_matrix(24, kind, 11), rotation_matrix(24, kind, 11))
    assert not torch.equal(rotation_matrix(24, kind, 11), rotation_matrix(24, kind, 12))


def test_rotation_seed_is_the_crc32_of_the_name():
    assert rotation_seed("encoder.blocks.0.attn.qkv") == 3743169923 == zlib.crc32(b"encoder.blocks.0.attn.qkv")


def test_search_draws_one_rotation_per_linear_repeatably(toy_model):
    recipe = RTN(4, rotation="hadamard")
    first, second = search_params(toy_model, recipe), search_params(toy_model, recipe)
    assert first.keys() == second.keys() and all(torch.equal(v, second[k]) for k, v in first.items())
    rotations = {k: v for k, v in first.items() if k.endswith(".input_rotation")}
    linears = [n for n, m in toy_model.named_modules() if isinstance(m, nn.Linear) and "embed" not in n]
    assert sorted(rotations) == sorted(f"{n}.input_rotation" for n in linears)
    assert not torch.equal(rotations["encoder.blocks.0.attn.qkv.input_rotation"],
                           rotations["encoder.blocks.1.attn.qkv.input_rotation"])


# ---- exactness before quantization ----

@pytest.fixture(scope="module")
def world_model(tiny_planning_model) -> WorldModel:
    return tiny_planning_model()


def wm_outputs(model: WorldModel) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder latents (visual and proprio, flattened) and a predictor step on fixed random inputs."""
    g = torch.Generator().manual_seed(0)
    c = model.config
    visual = torch.rand(2, c.num_hist, 3, c.img_size, c.img_size, generator=g) * 2 - 1
    proprio = torch.randn(2, c.num_hist, c.proprio_dim, generator=g)
    action = torch.randn(2, c.num_hist, model.action_dim, generator=g)
    with torch.no_grad():
        obs = model.encode_obs(visual, proprio)
        return torch.cat([obs["visual"].flatten(), obs["proprio"].flatten()]), model(visual, proprio, action)


def assert_same_function(model: WorldModel, reference: WorldModel) -> None:
    for got, want in zip(wm_outputs(model), wm_outputs(reference)):
        assert torch.allclose(got, want, atol=1e-5, rtol=0), (got - want).abs().max()


@pytest.mark.parametrize("kind", ["hadamard", "random"])
def test_rotated_world_model_computes_the_fp_function(world_model, kind):
    """16-bit weights, no activation quantizer: only the rotation acts, and the outputs stay those of the FP model,
    both as ``apply_params`` builds it weight-only (dense ``W R R^T``) and with the rotation run online
    (``QuantLinear(W R, rotation=R)``, the path activation quantization takes).

    The rotation sits right before each linear (after LayerNorm / GELU / attention), so no LayerNorm changes: the
    test checks that every LayerNorm keeps its parameters."""
    recipe = RTN(16, rotation=kind)
    params = search_params(world_model, recipe)
    rotations = {k.removesuffix(".input_rotation"): v for k, v in params.items() if k.endswith(".input_rotation")}
    assert len(rotations) == 4 * (world_model.config.encoder_depth + world_model.config.predictor_depth)
    assert any(n.endswith("attn.qkv") for n in rotations) and any(n.endswith("to_qkv") for n in rotations)  # post-LN
    folded, report = apply_params(world_model, recipe, params)
    assert not any(isinstance(m, QuantLinear) and m.rotation is not None for m in folded.modules())
    online = copy.deepcopy(world_model)
    for name, r in rotations.items():
        linear = online.get_submodule(name)
        set_module(online, name, QuantLinear(linear.weight.detach() @ r, linear.bias, recipe.weight_spec, None, r))
    for model in (folded, online):
        for name, norm in world_model.named_modules():
            if isinstance(norm, nn.LayerNorm):
                twin = model.get_submodule(name)
                assert torch.equal(twin.weight, norm.weight) and torch.equal(twin.bias, norm.bias)
        assert_same_function(model, world_model)
    # the report compares the effective weight W_hat R^T with the original weight: the same up to float rounding
    assert all(row["weight_mse"] < 1e-12 for row in report.rows)


def test_rotation_runs_online_only_with_activation_quantization(toy_model, calibration):
    name = "encoder.blocks.0.mlp.fc2"
    weight_only = RTN(4, rotation="hadamard")
    params = search_params(toy_model, weight_only)
    r = params[f"{name}.input_rotation"]
    layer = apply_params(toy_model, weight_only, params)[0].get_submodule(name)
    assert layer.rotation is None
    w_hat = fake_quantize(toy_model.get_submodule(name).weight.detach() @ r, weight_only.weight_spec)
    assert torch.allclose(layer.weight, w_hat @ r.T, atol=1e-6, rtol=0)
    w4a8 = RTN(4, a_bits=8, a_granularity=PerToken(), rotation="hadamard")
    layer = quantize(toy_model, w4a8)[0].get_submodule(name)
    assert torch.equal(layer.rotation, r) and torch.equal(layer.weight, w_hat)
    x = calibration.rows(name)
    with torch.no_grad():
        assert torch.equal(layer(x), F.linear(layer.act(x @ r), w_hat, layer.bias))


# ---- what rotation buys at 4 bits ----

def with_outlier_columns(model: nn.Module, factor: float = 30.0) -> nn.Module:
    """A copy whose quantized linears have 3 input columns (0, 5, 7) of their weight scaled by ``factor``."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for name in ("encoder.blocks.0.attn.qkv", "encoder.blocks.1.mlp.fc1", "predictor.transformer.layers.0.0.to_qkv",
                     "predictor.transformer.layers.1.1.net.4"):
            model.get_submodule(name).weight[:, [0, 5, 7]] *= factor
    return model


def output_error(model: nn.Module, qmodel: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        ref = model(x)
        return ((qmodel(x) - ref).pow(2).mean() / ref.pow(2).mean()).item()


def test_rotation_lowers_w4_weight_error_with_outlier_weight_columns(toy_model, eval_inputs):
    model = with_outlier_columns(toy_model)
    plain_model, plain = quantize(model, RTN(4))
    rotated_model, rotated = quantize(model, RTN(4, rotation="hadamard"))
    by_name = {r["module"]: r for r in plain.rows}
    for row in rotated.rows:
        if row["module"] in ("encoder.blocks.0.attn.qkv", "predictor.transformer.layers.0.0.to_qkv"):
            assert row["weight_mse"] < 0.5 * by_name[row["module"]]["weight_mse"], row["module"]
    assert output_error(model, rotated_model, eval_inputs) < output_error(model, plain_model, eval_inputs)


OUTLIER_FED = ["encoder.blocks.0.attn.qkv", "encoder.blocks.1.mlp.fc1", "predictor.transformer.layers.0.0.to_qkv",
               "predictor.transformer.layers.1.1.net.1"]


def test_rotation_costs_a_little_on_light_tailed_weights(toy_model):
    """The toy's weights are uniform (nn.Linear's init): a min / max grid fits them well, and rotation, which makes
    rows close to Gaussian, raises the W4 weight error of every layer (the documented flip side)."""
    plain = {r["module"]: r["weight_mse"] for r in quantize(toy_model, RTN(4))[1].rows}
    rotated = {r["module"]: r["weight_mse"] for r in quantize(toy_model, RTN(4, rotation="hadamard"))[1].rows}
    assert all(rotated[name] > plain[name] for name in plain), (plain, rotated)


def with_outlier_channels(model: nn.Module, factor: float = 10.0) -> nn.Module:
    """A copy with Gaussian weights ``N(0, 1 / C_in)`` (as trained weights are; the toy's default uniform init is
    the one case where rounding a row to its own min / max is already near optimal) and LayerNorms that blow up 3
    channels (0, 5, 7) by ``factor``: outlier input channels of every linear after a LayerNorm (``OUTLIER_FED``)."""
    model = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=g) / module.in_features ** 0.5)
            if isinstance(module, nn.LayerNorm) and name.endswith(("norm1", "norm2", ".norm", "net.0")):
                module.weight[[0, 5, 7]] *= factor
                module.bias[[0, 5, 7]] *= factor
    return model


def layer_errors(model: nn.Module, qmodel: nn.Module, calib, names: list[str]) -> list[float]:
    """Relative output MSE of each quantized linear against the FP one, on its calibration rows."""
    errors = []
    for name in names:
        x = calib.rows(name)
        with torch.no_grad():
            ref, got = model.get_submodule(name)(x), qmodel.get_submodule(name)(x)
        errors.append(((got - ref).pow(2).mean() / ref.pow(2).mean()).item())
    return errors


@pytest.mark.parametrize("a_granularity", [PerToken(), PerTensor()], ids=["per-token", "per-tensor"])
def test_rotation_beats_no_rotation_at_w4a4_with_outlier_input_channels(toy_model, a_granularity):
    model = with_outlier_channels(toy_model)
    with torch.no_grad(), capture_calibration(model, max_tokens=256, max_sequences=0) as calib:
        model(toy_inputs(8, seed=1))
    errors = {kind: layer_errors(model, quantize(model, RTN(4, a_bits=4, a_granularity=a_granularity, rotation=kind),
                                                 calib)[0], calib, OUTLIER_FED)
              for kind in ("none", "hadamard", "random")}
    for kind in ("hadamard", "random"):
        assert all(r < n for r, n in zip(errors[kind], errors["none"])), errors
    assert sum(errors["hadamard"]) < 0.75 * sum(errors["none"]), errors


def test_static_ranges_are_taken_in_rotated_coordinates(toy_model, calibration):
    params = search_params(toy_model, RTN(8, a_bits=8, a_granularity=PerTensor(), rotation="hadamard"), calibration)
    for name in ("encoder.blocks.0.attn.qkv", "predictor.transformer.layers.1.1.net.4"):
        rows = calibration.rows(name) @ params[f"{name}.input_rotation"]
        assert torch.allclose(params[f"{name}.act_lo"], rows.min().reshape(1))
        assert torch.allclose(params[f"{name}.act_hi"], rows.max().reshape(1))


def test_rotated_calibration_view(calibration):
    name = "encoder.blocks.0.mlp.fc2"
    r = rotation_matrix(64, "random", 1)
    view = RotatedCalibration(calibration, {name: r})
    rows = calibration.rows(name) @ r
    assert torch.allclose(view.rows(name), rows)
    assert torch.allclose(view.absmax(name), rows.abs().amax(0))
    assert torch.allclose(view.absmean(name), rows.abs().mean(0))
    lo, hi = view.channel_range(name)
    assert torch.equal(lo, rows.amin(0)) and torch.equal(hi, rows.amax(0))
    other = "encoder.blocks.0.mlp.fc1"  # not rotated: read through
    assert torch.equal(view.rows(other), calibration.rows(other))
    assert torch.equal(view.absmean(other), calibration.absmean(other))
    assert view.linears == calibration.linears and view.units == calibration.units


# ---- recipes ----

def test_recipe_field_keeps_cache_keys_and_positional_fields():
    field = next(f for f in dataclasses.fields(RTN) if f.name == "rotation")
    assert field.metadata[sweep.OMIT_AT_DEFAULT] and field.default == "none" and field.kw_only
    # the canonical form (and key) of RTN(4) before the field existed
    assert sweep.canonical(RTN(4)) == {"__type__": "RTN", "w_bits": 4, "w_granularity": {"__type__": "PerChannel"},
                                       "w_symmetric": True, "w_full_range": False, "a_bits": None,
                                       "a_granularity": None}
    assert sweep.config_key(RTN(4)) == "880f5cfe59b0d7a7"
    assert sweep.config_key(RTN(4, PerGroup(32), a_bits=4, a_granularity=PerToken())) == "d2b10a746bf2c61e"
    assert sweep.canonical(RTN(4, rotation="hadamard"))["rotation"] == "hadamard"
    assert sweep.config_key(RTN(4, rotation="random")) != sweep.config_key(RTN(4))
    assert RTN(4, PerGroup(16), True, False, 8, PerToken()).a_granularity == PerToken()  # positions unchanged


def test_labels_and_names_show_the_rotation():
    assert RTN(4).label == "W4A16"
    assert RTN(4, rotation="hadamard").label == "W4A16+had"
    assert RTN(4, a_bits=4, a_granularity=PerToken(), rotation="random").label == "W4A4+rot"
    made = recipe_from_names("RTN", 4, "per-group", 16, rotation="hadamard")
    assert made == RTN(4, PerGroup(16), rotation="hadamard")


def test_bad_rotations_are_refused_with_the_allowed_values():
    with pytest.raises(ValueError, match=r"RTN\.rotation.*'none', 'hadamard', 'random'.*'givens'"):
        RTN(4, rotation="givens")
    with pytest.raises(ValueError, match=r"AWQ\.rotation='hadamard': AWQ does not support rotations \(methods that "
                                         r"do: .*RTN"):
        AWQ(4, rotation="hadamard")
    with pytest.raises(ValueError, match="OmniQuant does not support rotations"):
        OmniQuant(4, rotation="random")


# ---- saved searches ----

def test_saved_rotated_search_reapplies_identically(toy_model, calibration, eval_inputs, tmp_path):
    recipe = RTN(4, PerGroup(16), a_bits=8, a_granularity=PerTensor(), rotation="hadamard")
    params = search_params(toy_model, recipe, calibration)
    loaded = load_params(save_params(params, tmp_path / "rotated.safetensors"))
    assert loaded.keys() == params.keys() and all(torch.equal(v, loaded[k]) for k, v in params.items())
    qmodel, _ = quantize(toy_model, recipe, calibration)
    again, _ = apply_params(toy_model, recipe, loaded)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in qmodel.state_dict().items())
    with torch.no_grad():
        assert torch.equal(qmodel(eval_inputs), again(eval_inputs))


def test_apply_refuses_params_that_do_not_match_the_recipes_rotation(toy_model):
    rotated = search_params(toy_model, RTN(4, rotation="hadamard"))
    with pytest.raises(ValueError, match="has encoder.blocks.0.attn.qkv.input_rotation but the recipe's rotation "
                                         "is 'none'"):
        apply_params(toy_model, RTN(4), rotated)
    with pytest.raises(ValueError, match="lacks .*input_rotation but the recipe's rotation is 'random'"):
        apply_params(toy_model, RTN(4, rotation="random"), {})
    bad = dict(rotated, **{"encoder.blocks.0.attn.qkv.input_rotation": torch.eye(3)})
    with pytest.raises(ValueError, match=r"input_rotation must have shape \(32, 32\), got \(3, 3\)"):
        apply_params(toy_model, RTN(4, rotation="hadamard"), bad)


def test_rotation_in_an_override_only(toy_model, eval_inputs):
    recipe, overrides = RTN(16), {"predictor": RTN(16, rotation="hadamard")}
    params = search_params(toy_model, recipe, overrides=overrides)
    rotated = [k for k in params if k.endswith(".input_rotation")]
    assert rotated and all(k.startswith("predictor.") for k in rotated)
    qmodel, _ = apply_params(toy_model, recipe, params, overrides=overrides)
    with torch.no_grad():
        assert torch.allclose(qmodel(eval_inputs), toy_model(eval_inputs), atol=1e-5, rtol=0)
