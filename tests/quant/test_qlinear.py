"""QuantLinear (weight quantized once, plain F.linear), its activation quantizers, and QuantConv2d."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from torch import nn

from wmqlib.quant import ActQuantizer, PerChannel, PerTensor, PerToken, QuantLinear, QuantSpec, ScaledActivation, fake_quantize
from wmqlib.quant.points import input_rows, weight_matrix
from wmqlib.quant.qlinear import QuantConv2d

A8_STATIC = QuantSpec(8, PerTensor(), role="activation")
A4_TOKEN = QuantSpec(4, PerToken(), role="activation")


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_weight_only_forward_is_a_plain_linear():
    spec = QuantSpec(4, PerChannel(), symmetric=True)
    w_hat, bias, x = fake_quantize(randn(6, 10), spec), randn(6, seed=1), randn(3, 5, 10, seed=2)
    layer = QuantLinear(w_hat, bias, spec, act=None)
    assert torch.equal(layer(x), F.linear(x, w_hat, bias))
    assert not layer.weight.requires_grad and "bits=4" in repr(layer)


def test_static_quantizer_matches_fake_quantize_with_the_calibrated_range():
    x = randn(4, 7, 16) * 2
    act = ActQuantizer(A8_STATIC, lo=-3.0, hi=5.0)
    assert torch.equal(act(x), fake_quantize(x, A8_STATIC, torch.tensor(-3.0), torch.tensor(5.0)))
    lo, hi = act.range
    assert lo <= -3.0 + 1e-6 and hi >= 5.0 - 8 / 255  # the grid covers the range (zero point rounding shifts it)
    big = act(torch.tensor([[-100.0, 100.0]]))
    assert big[0].tolist() == pytest.approx([lo, hi])  # out-of-range values clip to the ends of the grid


def test_dynamic_per_token_quantizer_uses_each_row():
    x = randn(2, 3, 16)
    x[0, 0] *= 100  # one loud token must not coarsen the others
    act = ActQuantizer(A4_TOKEN)
    out = act(x)
    rows = torch.stack([fake_quantize(r, QuantSpec(4)) for r in x.reshape(-1, 16)]).reshape(x.shape)
    assert torch.equal(out, rows)
    assert (out[1] - x[1]).abs().max() < 0.5


@pytest.mark.parametrize("act", [ActQuantizer(A8_STATIC, -2.0, 2.5), ActQuantizer(A4_TOKEN)], ids=["static", "token"])
def test_fast_inference_path_equals_the_differentiable_path(act):
    x = randn(3, 5, 16) * 1.5
    with torch.no_grad():
        fast = act(x)
    slow = act(x.clone().requires_grad_())
    assert slow.requires_grad and torch.equal(fast, slow.detach())


def test_activation_quantized_linear_gradient_passes_straight_through():
    spec = QuantSpec(8, PerChannel(), symmetric=True)
    layer = QuantLinear(fake_quantize(randn(5, 8), spec), None, spec, ActQuantizer(A4_TOKEN))
    x = randn(3, 8, seed=4).requires_grad_()
    layer(x).sum().backward()
    torch.testing.assert_close(x.grad, layer.weight.sum(0).expand(3, 8))  # d/dx of sum(W x) with identity STE


def test_bf16_through_both_quantizers():
    x = randn(2, 4, 16).bfloat16()
    for act in (ActQuantizer(A8_STATIC, -3.0, 3.0), ActQuantizer(A4_TOKEN)):
        out = act(x)
        assert out.dtype == torch.bfloat16 and bool(torch.isfinite(out).all())
        assert (out.float() - x.float()).abs().max() < 0.5


def test_scaled_activation_divides_channels():
    scale = torch.tensor([1.0, 2.0, 4.0])
    x = randn(5, 3)
    torch.testing.assert_close(ScaledActivation(torch.nn.GELU(), scale)(x), F.gelu(x) / scale)


def test_invalid_activation_quantizers_raise():
    with pytest.raises(ValueError, match="needs the calibrated range lo and hi"):
        ActQuantizer(A8_STATIC)
    with pytest.raises(ValueError, match="asymmetric PerTensor\\(\\) or PerToken\\(\\) spec"):
        ActQuantizer(QuantSpec(8, PerTensor(), symmetric=True))
    with pytest.raises(ValueError, match="asymmetric PerTensor\\(\\) or PerToken\\(\\) spec"):
        ActQuantizer(QuantSpec(8, PerChannel()))


def _hostile(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Activations with a loud outlier, a constant row (zero-width range) and values on rounding ties."""
    x = randn(*shape, seed=seed) * 3
    x[0, 0, 0] = 1e9  # beyond 2^24 quanta: clips either way
    x[0, 1] = 0.25  # constant token: scale falls back to SCALE_EPS-widened range
    x[1, 0, :4] = torch.tensor([0.5, -0.5, 1.5, 2.5]) * (8 / 255)  # exact ties of an 8-bit grid
    return x.to(dtype)


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
@pytest.mark.parametrize("granularity", [PerTensor(), PerToken()], ids=["per-tensor", "per-token"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_inference_chain_is_bit_identical_to_the_differentiable_primitive(bits, granularity, dtype):
    spec = QuantSpec(bits, granularity, role="activation")
    act = ActQuantizer(spec, -1.3, 2.7) if isinstance(granularity, PerTensor) else ActQuantizer(spec)
    x = _hostile((3, 5, 24), dtype, seed=bits)
    with torch.no_grad():
        got = act(x)
    assert got.dtype == dtype
    assert torch.equal(x, _hostile((3, 5, 24), dtype, seed=bits))  # the input is never written to
    lo, hi = (torch.tensor(-1.3), torch.tensor(2.7)) if isinstance(granularity, PerTensor) else (None, None)
    assert torch.equal(got, fake_quantize(x, spec, lo, hi))


@pytest.mark.parametrize("magnitude", [1e-4, 1.0, 300.0, 3e7])
@pytest.mark.parametrize("bits", [3, 4, 8])
def test_inference_chain_matches_the_primitive_on_random_activations(magnitude, bits):
    for seed in range(20):
        x = randn(4, 9, 33, seed=seed) * magnitude + randn(1, 1, 33, seed=seed + 100) * magnitude  # skewed channels
        for act, lo, hi in ((ActQuantizer(QuantSpec(bits, PerToken(), role="activation")), None, None),
                            (ActQuantizer(QuantSpec(bits, PerTensor(), role="activation"), -magnitude, 2 * magnitude),
                             torch.tensor(-magnitude), torch.tensor(2 * magnitude))):
            with torch.no_grad():
                assert torch.equal(act(x), fake_quantize(x, act.spec, lo, hi)), (seed, act)


def test_inference_chain_keeps_nan_and_inf_where_the_primitive_does():
    x = randn(2, 8)
    x[0, 3], x[1, 5] = float("nan"), float("inf")
    for act, lo, hi in ((ActQuantizer(A8_STATIC, -2.0, 2.0), torch.tensor(-2.0), torch.tensor(2.0)),
                        (ActQuantizer(A4_TOKEN), None, None)):
        with torch.no_grad():
            got = act(x)
        ref = fake_quantize(x, act.spec, lo, hi)
        assert torch.equal(got.isnan(), ref.isnan())
        assert torch.equal(got.nan_to_num(), ref.nan_to_num())


@pytest.mark.parametrize("stride, padding", [(2, 1), (1, 0), (1, 2)])
def test_quant_conv_is_the_conv_with_its_weight_quantized_per_output_channel(stride, padding):
    conv = nn.Conv2d(3, 5, 4, stride=stride, padding=padding)
    x = randn(2, 3, 9, 9, seed=3)
    spec = QuantSpec(4, PerChannel(), symmetric=True)
    w_hat = fake_quantize(weight_matrix(conv).detach(), spec)  # (O, C k k): one grid per output channel
    layer = QuantConv2d(conv, QuantLinear(w_hat, conv.bias.detach(), spec, act=None))
    expected = F.conv2d(x, w_hat.reshape(conv.weight.shape), conv.bias, stride, padding)
    torch.testing.assert_close(layer(x), expected)
    grids = {tuple(sorted(set(row.abs().tolist()))) for row in w_hat.reshape(5, -1)}
    assert len(grids) == 5  # each output channel kept its own scale


def test_quant_conv_static_activations_equal_quantizing_the_input_itself():
    """A per-tensor range contains 0, so the padding zeros of the patches stay exact: quantizing patch rows is
    quantizing the image."""
    conv = nn.Conv2d(3, 4, 3, padding=1)
    x = randn(2, 3, 6, 6, seed=4) + 2.0  # all positive: the range still has to reach the padding's 0
    act = ActQuantizer(A8_STATIC, lo=float(x.min()), hi=float(x.max()))
    layer = QuantConv2d(conv, QuantLinear(conv.weight.detach().reshape(4, -1), conv.bias.detach(),
                                          QuantSpec(16), act))
    torch.testing.assert_close(layer(x), conv(act(x)))
    rows = input_rows(conv, x)
    assert rows.shape == (2, 36, 27) and torch.equal(rows, F.unfold(x, 3, padding=1).transpose(1, 2))


def test_conv_geometry_that_is_not_a_patch_linear_is_refused():
    with pytest.raises(ValueError, match="groups=1, zero padding given as numbers, got groups=3"):
        QuantConv2d(nn.Conv2d(3, 3, 3, groups=3), QuantLinear(randn(3, 3), None, QuantSpec(16), None))
    with pytest.raises(ValueError, match="padding_mode='reflect'"):
        input_rows(nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect"), randn(1, 3, 5, 5))
