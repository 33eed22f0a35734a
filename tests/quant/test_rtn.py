"""RTN cross-checked against torchao's affine quantization primitives (an independent implementation)."""

from __future__ import annotations

import warnings

import pytest
import torch

from wmqlib.quant import (
    RTN, PerChannel, PerGroup, QuantLinear, QuantSpec, fake_quantize, qparams, quantize, quantwm_reference,
)
from wmqlib.quant.spec import group_minmax

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    primitives = pytest.importorskip("torchao.quantization.quant_primitives")


def torchao_fake_quantize(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Quantize + dequantize ``w (O, I)`` with torchao at the same bits, block size and integer range."""
    block = (1, w.shape[1]) if isinstance(spec.granularity, PerChannel) else (1, spec.granularity.group_size)
    mapping = primitives.MappingType.SYMMETRIC if spec.symmetric else primitives.MappingType.ASYMMETRIC
    dtype = torch.int8 if spec.symmetric else torch.uint8
    scale, zero = primitives.choose_qparams_affine(
        w, mapping, block, dtype, spec.qmin, spec.qmax, eps=1e-12, zero_point_dtype=torch.int32
    )
    q = primitives.quantize_affine(w, block, scale, zero, dtype, spec.qmin, spec.qmax)
    return primitives.dequantize_affine(q, block, scale, zero, dtype, spec.qmin, spec.qmax)


def assert_matches_torchao(w: torch.Tensor, ours: torch.Tensor, spec: QuantSpec) -> None:
    """``ours`` equals torchao's result except, by at most one step, at exact rounding ties.

    torchao multiplies by 1/scale, we divide, so an exact tie (x / s = k + 1/2) may round either way.  On the
    full-range grid every group's minimum sits on a tie (-max|w| / s = -(2^b - 1) / 2).
    """
    theirs = torchao_fake_quantize(w, spec)
    scale, _ = qparams(*group_minmax(w, spec.granularity), spec)
    step = scale.repeat_interleave(w.shape[1] // scale.shape[1], dim=1)
    tie = ((w / step).abs() % 1 - 0.5).abs() < 1e-4
    torch.testing.assert_close(ours[~tie], theirs[~tie], rtol=1e-6, atol=1e-7)
    assert bool(((ours - theirs).abs()[tie] <= step[tie] * (1 + 1e-5)).all())
    assert int(tie.sum()) <= (scale.numel() if spec.full_range else 0) + 0.01 * w.numel()  # exemptions stay rare


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
@pytest.mark.parametrize("granularity", [PerChannel(), PerGroup(16), PerGroup(64)])
@pytest.mark.parametrize("symmetric,full_range", [(False, False), (True, False), (True, True)])
def test_rtn_matches_torchao(bits, granularity, symmetric, full_range):
    w = torch.randn(24, 128, generator=torch.Generator().manual_seed(bits)) * 0.1
    w[3, 5] = 2.0  # an outlier
    spec = QuantSpec(bits, granularity, symmetric, full_range)
    assert_matches_torchao(w, fake_quantize(w, spec), spec)


@pytest.mark.parametrize("recipe", [RTN(4, PerGroup(16), w_symmetric=False), RTN(8), RTN(3, PerChannel(), w_full_range=True)])
def test_rtn_model_weights_match_torchao(toy_model, recipe):
    qmodel, report = quantize(toy_model, recipe)
    checked = 0
    for name, module in qmodel.named_modules():
        original = toy_model.get_submodule(name).weight.detach() if isinstance(module, QuantLinear) else None
        if original is None or original.shape[1] % 16:  # torchao rejects ragged groups (in % g != 0)
            continue
        assert_matches_torchao(original, module.weight, recipe.weight_spec)
        checked += 1
    assert checked >= 8 and set(report.table["method"]) == {"RTN"}


def test_rtn_16_bits_leaves_the_model_function_unchanged(toy_model, eval_inputs):
    qmodel, report = quantize(toy_model, RTN(16))
    assert torch.equal(qmodel(eval_inputs), toy_model(eval_inputs))
    assert report.effective_bits == 16 and (report.table["weight_mse"] == 0).all()


def test_reference_grid_is_max_over_7_5_at_4_bits():
    """By hand: max|w| = 1.5, so s = 1.5 / 7.5 = 0.2 and codes run -8..7; the narrow grid has s = 1.5 / 7."""
    w = torch.tensor([[1.5, -1.5, 0.7, 0.2, -0.05]])
    full = quantwm_reference("RTN", 4).weight_spec
    # w / s = 7.5, -7.5, 3.5, 1, -0.25 -> round half to even 8, -8, 4, 1, 0 -> clamp to [-8, 7] -> 7, -8, 4, 1, 0
    torch.testing.assert_close(fake_quantize(w, full), torch.tensor([[1.4, -1.6, 0.8, 0.2, 0.0]]))
    # narrow: w / s = 7, -7, 3.27, 0.93, -0.23 -> 7, -7, 3, 1, 0
    torch.testing.assert_close(fake_quantize(w, RTN(4).weight_spec), torch.tensor([[7, -7, 3, 1, 0]]) * 1.5 / 7)
    scale, _ = qparams(w.amin(1), w.amax(1), quantwm_reference("RTN", 3).weight_spec)
    torch.testing.assert_close(scale, torch.tensor([1.5 / 3.5]))  # max/3.5 at 3 bits


def test_reference_rtn_quantizes_the_model_on_the_full_grid(toy_model):
    qmodel, _ = quantize(toy_model, quantwm_reference("RTN", 4))
    name = "encoder.blocks.0.mlp.fc1"
    w = toy_model.get_submodule(name).weight.detach()
    got = qmodel.get_submodule(name).weight.detach()
    step = w.abs().amax(dim=1, keepdim=True) / 7.5
    codes = got / step
    torch.testing.assert_close(codes, codes.round(), atol=1e-4, rtol=0)  # on the grid of max|w| / 7.5
    assert int(codes.round().min()) >= -8 and int(codes.round().max()) <= 7
    assert (codes.round() == -8).any()  # the full grid's extra code is used
