"""GPTQ: never a worse layer output than RTN, exact on hand-worked cases, equal to a naive unblocked reference and to
brevitas's GPTQ, and rebuilt exactly by ``apply_params`` from its saved weight and ranges."""

from __future__ import annotations

import warnings

import pytest
import torch

from wmqlib.quant import (
    GPTQ, RTN, PerChannel, PerGroup, PerTensor, QuantLinear, QuantSpec, apply_params, fake_quantize, quantize,
    recipe_from_names, recipe_types, search_params,
)
from wmqlib.quant.gptq import gptq_quantize, hessian
from wmqlib.quant.spec import qparams, quantize_dequantize, split_groups
from wmqlib.validate import InvalidValue

IN, OUT, ROWS = 40, 24, 256  # PerGroup(16) on 40 inputs: groups of 16, 16 and a ragged 8


@pytest.fixture(scope="module")
def layer() -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded linear ``w (OUT, IN)`` and its inputs ``x (ROWS, IN)``: correlated channels, 3 of them 6x larger."""
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(IN, IN, generator=g) / IN**0.5 + torch.eye(IN)
    x = torch.randn(ROWS, IN, generator=g) @ mix
    x[:, :3] *= 6.0
    return torch.randn(OUT, IN, generator=g) * 0.1, x


def output_error(x: torch.Tensor, w: torch.Tensor, w_q: torch.Tensor) -> float:
    """``||X W^T - X W_q^T||^2`` in float64."""
    return (x.double() @ (w.double() - w_q.double()).T).pow(2).sum().item()


def naive_gptq(w: torch.Tensor, x: torch.Tensor, spec: QuantSpec, act_order: bool, damp: float) -> torch.Tensor:
    """GPTQ written the slow, direct way: no blocks, no Cholesky; after each column the inverse Hessian of the
    columns left is downdated explicitly (``Hinv -= Hinv[:, j] Hinv[j, :] / Hinv[j, j]``).  Same conventions as
    ``gptq_quantize``: a group's range is fixed from its current weights when its first column is reached."""
    w, h = w.double().clone(), hessian(x)
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * h.diagonal().mean() * torch.eye(h.shape[0], dtype=h.dtype)
    h_inv = torch.linalg.inv(h)
    order = torch.argsort(h.diagonal(), descending=True, stable=True) if act_order else torch.arange(h.shape[0])
    size = spec.granularity.group_size if isinstance(spec.granularity, PerGroup) else h.shape[0]
    ranges: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    left = order.tolist()
    for j in order.tolist():
        k = j // size
        if k not in ranges:
            group = w[:, k * size:(k + 1) * size].float()
            lo, hi = group.amin(dim=1), group.amax(dim=1)
            if isinstance(spec.granularity, PerTensor):
                lo, hi = lo.amin().expand_as(lo), hi.amax().expand_as(hi)
            ranges[k] = qparams(lo, hi, spec)
        q = quantize_dequantize(w[:, j].float(), *ranges[k], spec).double()
        left.remove(j)
        w[:, left] -= ((w[:, j] - q) / h_inv[j, j])[:, None] * h_inv[j, left][None, :]
        w[:, j] = q
        h_inv = h_inv - h_inv[:, j:j + 1] @ h_inv[j:j + 1, :] / h_inv[j, j]
    return w.float()


GRANULARITIES = [PerChannel(), PerGroup(16), PerGroup(7)]


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("granularity", GRANULARITIES, ids=str)
@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("symmetric", [True, False])
def test_output_error_at_most_rtn(layer, bits, granularity, act_order, symmetric):
    w, x = layer
    spec = QuantSpec(bits, granularity, symmetric, role="weight")
    q, _, _ = gptq_quantize(w, hessian(x), spec, act_order=act_order)
    gptq, rtn = output_error(x, w, q), output_error(x, w, fake_quantize(w, spec))
    assert gptq <= rtn
    assert gptq < 0.8 * rtn  # correlated inputs: the error feedback pays clearly


def test_model_layers_output_error_at_most_rtn(toy_model, calibration):
    """Through the recipe: on every linear of the toy world model, at W3 and W4, per-group (ragged) and act-order."""
    for recipe in (GPTQ(3, PerGroup(16), act_order=True), GPTQ(4)):
        gptq, _ = quantize(toy_model, recipe, calibration)
        rtn, _ = quantize(toy_model, RTN(recipe.w_bits, recipe.w_granularity), calibration)
        for name in calibration.linears:
            x, w = calibration.rows(name), toy_model.get_submodule(name).weight.detach()
            e_gptq = output_error(x, w, gptq.get_submodule(name).weight)
            assert e_gptq <= output_error(x, w, rtn.get_submodule(name).weight), (recipe, name)


@pytest.mark.parametrize("granularity", GRANULARITIES, ids=str)
@pytest.mark.parametrize("act_order", [False, True])
def test_identity_hessian_is_rtn(granularity, act_order):
    """Uncorrelated inputs of equal energy: ``H^-1`` is diagonal, no error is fed forward, GPTQ is exactly RTN."""
    w = torch.randn(OUT, IN, generator=torch.Generator().manual_seed(1))
    x = 3.0 * torch.eye(IN)
    spec = QuantSpec(3, granularity, symmetric=False, role="weight")
    q, _, _ = gptq_quantize(w, hessian(x), spec, act_order=act_order)
    assert torch.equal(q, fake_quantize(w, spec))


def test_two_columns_by_hand():
    """Rows x = (1, 1), (1, 0), (0, 1): H = 2/3 [[2, 1], [1, 2]]; damp 0.01 adds 0.01 * 4/3 to the diagonal.

    Per-tensor symmetric 4 bits: max|w| = 0.7, step s = 0.7 / 7 = 0.1.  Row 0 (0.7, 0) is on the grid.
    Row 1 (0.36, 0.26): q_1 = 0.4, error e = 0.36 - 0.4 = -0.04; GPTQ moves column 2 by
    -e [H^-1]_12 / [H^-1]_11 = e H_12 / H_22 = -0.04 * 1 / 2.02 = -0.0198 to 0.2402 -> q_2 = 0.2 (RTN: 0.3).
    Output error (w - q)^T H (w - q) in units of 2/3: RTN (-0.04, -0.04) gives 0.0096, GPTQ (-0.04, 0.06) 0.0056.
    """
    w = torch.tensor([[0.7, 0.0], [0.36, 0.26]])
    x = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    spec = QuantSpec(4, PerTensor(), symmetric=True, role="weight")
    q, lo, hi = gptq_quantize(w, hessian(x), spec)
    torch.testing.assert_close(q, torch.tensor([[0.7, 0.0], [0.4, 0.2]]))
    torch.testing.assert_close(fake_quantize(w, spec), torch.tensor([[0.7, 0.0], [0.4, 0.3]]))
    assert lo.shape == hi.shape == () and float(lo) == 0.0 and float(hi) == pytest.approx(0.7)
    h = torch.tensor([[2.0, 1.0], [1.0, 2.0]])
    for w_q, expected in ((q, 0.0056), (fake_quantize(w, spec), 0.0096)):
        d = (w - w_q)[1]
        assert float(d @ h @ d) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("granularity", [PerTensor(), *GRANULARITIES], ids=str)
@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("bits,symmetric,full_range", [(3, True, False), (4, False, False), (4, True, True)])
def test_matches_naive_reference(layer, granularity, act_order, bits, symmetric, full_range):
    w, x = layer
    spec = QuantSpec(bits, granularity, symmetric, full_range, role="weight")
    q, _, _ = gptq_quantize(w, hessian(x), spec, act_order=act_order, block_size=16)
    torch.testing.assert_close(q, naive_gptq(w, x, spec, act_order, 0.01), rtol=0, atol=1e-5)


def brevitas_gptq(w: torch.Tensor, x: torch.Tensor, bits: int, act_order: bool) -> torch.Tensor:
    """brevitas's GPTQ on a ``QuantLinear`` with a symmetric narrow per-channel grid whose scale is taken ONCE from
    the original weight (``PARAMETER_FROM_STATS``; brevitas's default ``STATS`` would re-measure max|w| on the
    partly updated weight at every column, which no other GPTQ does)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qnn = pytest.importorskip("brevitas.nn")
        from brevitas.graph.gptq import gptq_mode
        from brevitas.inject.enum import ScalingImplType
        from brevitas.quant import Int8WeightPerChannelFloat

    class Weights(Int8WeightPerChannelFloat):
        bit_width = bits
        scaling_impl_type = ScalingImplType.PARAMETER_FROM_STATS

    linear = qnn.QuantLinear(w.shape[1], w.shape[0], bias=False, weight_quant=Weights)
    model = torch.nn.Sequential(linear).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        linear.weight.copy_(w)
        model(x)  # fixes the scale from the original weight
        with gptq_mode(model, act_order=act_order, use_quant_activations=False) as gptq:
            for _ in range(gptq.num_layers):
                gptq.model(x)
                gptq.update()
        return linear.quant_weight().value.detach()


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("act_order", [False, True])
def test_matches_brevitas(layer, bits, act_order):
    """Same Hessian (2 X^T X / n, 1% damping), same grid, same column order: the same weights.  brevitas keeps H in
    float32 and uses 100 blocks; a rounding tie could flip one code, this seeded layer has none."""
    w, x = layer
    theirs = brevitas_gptq(w, x, bits, act_order)
    ours, _, _ = gptq_quantize(w, hessian(x), QuantSpec(bits, PerChannel(), symmetric=True, role="weight"),
                               act_order=act_order)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("block_size", [1, 5, 16, 128])
def test_block_size_changes_nothing(layer, block_size):
    w, x = layer
    spec = QuantSpec(3, PerGroup(16), symmetric=False, role="weight")
    reference, lo_ref, hi_ref = gptq_quantize(w, hessian(x), spec, act_order=True, block_size=40)
    q, lo, hi = gptq_quantize(w, hessian(x), spec, act_order=True, block_size=block_size)
    torch.testing.assert_close(q, reference, rtol=0, atol=1e-6)
    torch.testing.assert_close((lo, hi), (lo_ref, hi_ref), rtol=0, atol=1e-6)


def test_dead_input_channels(layer):
    """A channel that is 0 on every calibration row: its weights become 0, the rest is still quantized finitely."""
    w, x = layer
    x = x.clone()
    x[:, 5] = 0.0
    q, _, _ = gptq_quantize(w, hessian(x), QuantSpec(4, PerGroup(16), role="weight"), act_order=True)
    assert bool((q[:, 5] == 0).all()) and bool(torch.isfinite(q).all())
    assert output_error(x, w, q) <= output_error(x, w, fake_quantize(w, QuantSpec(4, PerGroup(16))))


@pytest.mark.parametrize("recipe", [GPTQ(3, PerGroup(16), act_order=True), GPTQ(4, w_symmetric=False),
                                    GPTQ(2, PerTensor(), w_full_range=True)], ids=str)
def test_apply_rebuilds_the_searched_weights_exactly(toy_model, calibration, recipe):
    params = search_params(toy_model, recipe, calibration)
    qmodel, report = apply_params(toy_model, recipe, params)
    spec = recipe.weight_spec
    assert set(params) == {f"{n}.{k}" for n in calibration.linears for k in ("weight", "weight_lo", "weight_hi")}
    rows = report.table.set_index("module")
    for name in calibration.linears:
        q, lo, hi = params[f"{name}.weight"], params[f"{name}.weight_lo"], params[f"{name}.weight_hi"]
        module = qmodel.get_submodule(name)
        assert isinstance(module, QuantLinear) and torch.equal(module.weight, q)
        assert torch.equal(fake_quantize(q, spec, lo, hi), q)  # idempotent on its own grid
        groups = split_groups(q, spec.granularity)  # (R, G, L), a ragged last group padded with zeros
        ragged = q.shape[1] % spec.granularity.group_size if isinstance(spec.granularity, PerGroup) else 0
        for r in range(groups.shape[0]):
            for k in range(groups.shape[1]):
                values = groups[r, k, :ragged] if ragged and k == groups.shape[1] - 1 else groups[r, k]
                assert values.unique().numel() <= 2**spec.bits
        original = toy_model.get_submodule(name).weight.detach()
        assert rows.loc[name, "weight_mse"] == pytest.approx((q - original).pow(2).mean().item(), rel=1e-6)


def test_deterministic(toy_model, calibration):
    recipe = GPTQ(3, PerGroup(16), act_order=True)
    first, second = search_params(toy_model, recipe, calibration), search_params(toy_model, recipe, calibration)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_16_bits_leaves_the_weights(toy_model, calibration, eval_inputs):
    assert search_params(toy_model, GPTQ(16), calibration) == {}
    qmodel, _ = quantize(toy_model, GPTQ(16), calibration)
    with torch.no_grad():
        assert torch.equal(qmodel(eval_inputs), toy_model(eval_inputs))


def test_registered_and_named():
    assert recipe_types()["GPTQ"] is GPTQ and GPTQ.needs_calibration and GPTQ.supports_rotation
    assert recipe_from_names("GPTQ", 4, "per-group", 16, act_order=True) == GPTQ(4, PerGroup(16), act_order=True)


@pytest.mark.parametrize("field,value,message", [
    ("damp", 0.0, "GPTQ.damp must be a finite number > 0.0"),
    ("damp", -0.1, "GPTQ.damp must be a finite number > 0.0"),
    ("damp", float("nan"), "GPTQ.damp must be a finite number > 0.0"),
    ("block_size", 0, "GPTQ.block_size must be an int >= 1"),
    ("block_size", 2.0, "GPTQ.block_size must be an int >= 1"),
    ("act_order", "yes", "GPTQ.act_order must be True or False"),
])
def test_bad_fields_raise(field, value, message):
    with pytest.raises(InvalidValue, match=message):
        GPTQ(4, **{field: value})


def test_needs_calibration(toy_model):
    with pytest.raises(ValueError, match="GPTQ needs calibration for its search"):
        quantize(toy_model, GPTQ(4))


def test_wrong_weight_shape_or_hessian_raise(toy_model, layer):
    name = "encoder.blocks.0.mlp.fc1"
    with pytest.raises(ValueError, match=f"params {name}.weight has shape \\(3, 3\\)"):
        apply_params(toy_model, GPTQ(4), {f"{name}.weight": torch.zeros(3, 3)})
    w, x = layer
    with pytest.raises(ValueError, match="the Hessian of weight must be \\(40, 40\\), got \\(39, 39\\)"):
        gptq_quantize(w, hessian(x[:, :39]), QuantSpec(4, PerChannel()))
    with pytest.raises(ValueError, match="not positive definite"):
        gptq_quantize(w, hessian(torch.full((4, IN), float("nan"))), QuantSpec(4, PerChannel()))


def test_rotated_gptq_never_loses_to_rotated_rtn(toy_model, calibration):
    """GPTQ searches on the rotated view (weights W R, rows x R): on every linear its output error on the
    calibration rows stays <= RTN's with the same rotation, and a rotated 16-bit GPTQ keeps the FP function."""
    for bits in (3, 4):
        gptq, _ = quantize(toy_model, GPTQ(bits, rotation="hadamard"), calibration)
        rtn, _ = quantize(toy_model, RTN(bits, rotation="hadamard"), calibration)
        for name in calibration.linears:
            x, w = calibration.rows(name), toy_model.get_submodule(name).weight.detach()
            # weight-only rotated linears store the dense Q(W R) R^T, so x W_q^T is the layer's output
            e_gptq = output_error(x, w, gptq.get_submodule(name).weight)
            assert e_gptq <= output_error(x, w, rtn.get_submodule(name).weight) + 1e-6, (bits, name)
    qmodel, _ = quantize(toy_model, GPTQ(16, rotation="hadamard"), calibration)
    x = calibration.rows(calibration.linears[0])
    layer = calibration.linears[0]
    torch.testing.assert_close(qmodel.get_submodule(layer)(x), toy_model.get_submodule(layer)(x), atol=1e-5, rtol=1e-5)
