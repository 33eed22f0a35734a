"""Properties of the primitive ``fake_quantize`` and validation of ``QuantSpec`` / granularities."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wmqlib.quant import PerChannel, PerGroup, PerTensor, PerToken, QuantSpec, fake_quantize, qparams, scale_shape
from wmqlib.quant.report import sqnr_db
from wmqlib.quant.spec import group_minmax, group_sum

FAST = settings(max_examples=40, deadline=None)
granularities = st.one_of(
    st.just(PerTensor()), st.just(PerChannel()), st.builds(PerGroup, st.integers(1, 24)), st.just(PerToken())
)


def randn(shape: tuple[int, ...], seed: int, magnitude: float = 1.0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * magnitude


def per_element(t: torch.Tensor, x: torch.Tensor, granularity) -> torch.Tensor:
    """Broadcast a scale-shaped tensor to every element of the 2-D ``x`` it belongs to."""
    if isinstance(granularity, PerGroup):
        return t.repeat_interleave(granularity.group_size, dim=1)[:, : x.shape[1]]
    return t.expand(x.shape)


@FAST
@given(rows=st.integers(1, 8), cols=st.integers(1, 40), bits=st.integers(2, 8), symmetric=st.booleans(),
       granularity=granularities, seed=st.integers(0, 2**16), magnitude=st.sampled_from([1e-3, 1.0, 300.0]))
def test_error_at_most_half_a_step_inside_the_range(rows, cols, bits, symmetric, granularity, seed, magnitude):
    x = randn((rows, cols), seed, magnitude)
    spec = QuantSpec(bits, granularity, symmetric)
    scale, zero = qparams(*group_minmax(x, granularity), spec)
    step = per_element(scale, x, granularity)
    err = (fake_quantize(x, spec) - x).abs()
    assert bool((err <= step / 2 * (1 + 1e-5) + 1e-7 * x.abs()).all())


@FAST
@given(rows=st.integers(1, 8), cols=st.integers(1, 40), bits=st.integers(2, 8), symmetric=st.booleans(),
       granularity=granularities, seed=st.integers(0, 2**16))
def test_idempotent(rows, cols, bits, symmetric, granularity, seed):
    spec = QuantSpec(bits, granularity, symmetric)
    once = fake_quantize(randn((rows, cols), seed), spec)
    torch.testing.assert_close(fake_quantize(once, spec), once, rtol=1e-5, atol=1e-6)


@FAST
@given(rows=st.integers(1, 6), cols=st.integers(1, 50), group=st.integers(1, 20), seed=st.integers(0, 2**16),
       symmetric=st.booleans())
def test_groups_are_contiguous_column_slices_within_one_row(rows, cols, group, seed, symmetric):
    x = randn((rows, cols), seed)
    n_groups = math.ceil(cols / group)
    assert scale_shape(x.shape, PerGroup(group)) == (rows, n_groups)
    got = fake_quantize(x, QuantSpec(3, PerGroup(group), symmetric))
    for r in range(rows):
        for k in range(n_groups):
            piece = x[r, k * group:(k + 1) * group]
            assert torch.equal(got[r, k * group:(k + 1) * group], fake_quantize(piece, QuantSpec(3, PerTensor(), symmetric)))


def test_scale_shapes_per_granularity_including_the_ragged_group():
    assert scale_shape((6, 404), PerTensor()) == ()
    assert scale_shape((6, 404), PerChannel()) == (6, 1)
    assert scale_shape((6, 404), PerGroup(128)) == (6, 4)  # 128, 128, 128, 20
    assert scale_shape((2, 5, 404), PerToken()) == (2, 5, 1)
    x = torch.zeros(2, 404)
    x[0, 384:] = torch.linspace(-50, 50, 20)  # only the ragged last group of row 0 is non-zero
    lo, hi = group_minmax(x, PerGroup(128))
    assert lo.shape == (2, 4) and lo[0, 3] == -50 and hi[0, 3] == 50 and bool((lo[:, :3] == 0).all())
    assert group_sum(torch.ones(2, 404), PerGroup(128)).tolist() == [[128, 128, 128, 20]] * 2
    out = fake_quantize(x, QuantSpec(4, PerGroup(128)))
    assert bool((out[:, :384] == 0).all()) and bool((out[1] == 0).all())
    assert (out[0, 384:] - x[0, 384:]).abs().max() <= 100 / 15 / 2 + 1e-5


def test_per_channel_and_per_token_are_row_wise():
    x = randn((5, 7), 0)
    spec = QuantSpec(4, PerTensor())
    rows = torch.stack([fake_quantize(r, spec) for r in x])
    assert torch.equal(fake_quantize(x, QuantSpec(4, PerChannel())), rows)
    assert torch.equal(fake_quantize(x, QuantSpec(4, PerToken())), rows)
    x3 = x.reshape(1, 5, 7)
    assert torch.equal(fake_quantize(x3, QuantSpec(4, PerToken())), rows.reshape(1, 5, 7))


@given(granularity=granularities, seed=st.integers(0, 2**16))
@FAST
def test_bits_16_is_identity(granularity, seed):
    x = randn((4, 9), seed)
    assert fake_quantize(x, QuantSpec(16, granularity)) is x


@FAST
@given(seed=st.integers(0, 2**16), symmetric=st.booleans(),
       granularity=st.sampled_from([PerTensor(), PerChannel(), PerGroup(32), PerToken()]))
def test_sqnr_rises_with_bits(seed, symmetric, granularity):
    x = randn((8, 96), seed)
    sqnr = [sqnr_db(x, fake_quantize(x, QuantSpec(b, granularity, symmetric))) for b in range(2, 9)]
    assert all(b > a for a, b in zip(sqnr, sqnr[1:])), sqnr


@FAST
@given(rows=st.integers(1, 6), cols=st.integers(2, 30), bits=st.integers(2, 8), seed=st.integers(0, 2**16),
       granularity=granularities)
def test_symmetric_grid_holds_zero_and_is_odd(rows, cols, bits, seed, granularity):
    x = randn((rows, cols), seed)
    x[:, ::2] = 0.0
    spec = QuantSpec(bits, granularity, symmetric=True)
    out = fake_quantize(x, spec)
    assert bool((out[:, ::2] == 0).all())
    assert torch.equal(fake_quantize(-x, spec), -out)
    assert bool((fake_quantize(x, QuantSpec(bits, granularity, symmetric=False))[:, ::2] == 0).all())


@pytest.mark.parametrize("value", [0.0, 1e-30, -2.5, 7.0, 1e30])
@pytest.mark.parametrize("granularity", [PerTensor(), PerChannel(), PerGroup(3), PerToken()])
@pytest.mark.parametrize("symmetric", [False, True])
def test_no_nan_on_constant_tensors(value, granularity, symmetric):
    x = torch.full((4, 7), value)
    out = fake_quantize(x, QuantSpec(4, granularity, symmetric))
    assert bool(torch.isfinite(out).all())
    torch.testing.assert_close(out, x, rtol=1e-5, atol=1e-11)


def test_full_range_symmetric_uses_the_reference_grid():
    x = torch.tensor([[-7.5, -1.0, 0.0, 1.0, 7.5]])
    spec = QuantSpec(4, PerTensor(), symmetric=True, full_range=True)
    assert (spec.qmin, spec.qmax) == (-8, 7)
    scale, _ = qparams(torch.tensor(-7.5), torch.tensor(7.5), spec)
    assert scale.item() == pytest.approx(1.0)  # 7.5 / ((2^4 - 1) / 2)
    assert fake_quantize(x, spec).tolist() == [[-8.0, -1.0, 0.0, 1.0, 7.0]]  # the top code clips, -8 is reachable


def test_gradient_is_straight_through_inside_the_range_and_zero_outside():
    x = randn((3, 10), 0).requires_grad_()
    fake_quantize(x, QuantSpec(3, PerChannel())).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    y = torch.tensor([-3.0, -0.5, 0.2, 0.9, 5.0], requires_grad=True)
    fake_quantize(y, QuantSpec(4, PerTensor()), lo=torch.tensor(-1.0), hi=torch.tensor(1.0)).sum().backward()
    assert y.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_given_range_is_learnable():
    hi = torch.tensor(1.0, requires_grad=True)
    x = torch.linspace(-2, 2, 50)
    (fake_quantize(x, QuantSpec(3), lo=-hi, hi=hi) - x).pow(2).sum().backward()
    assert hi.grad is not None and torch.isfinite(hi.grad) and hi.grad < 0  # widening the clipped range helps


def test_bf16_input_returns_bf16_computed_in_fp32():
    x = randn((4, 16), 3).bfloat16()
    spec = QuantSpec(4, PerGroup(8))
    out = fake_quantize(x, spec)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, fake_quantize(x.float(), spec).bfloat16())


@pytest.mark.parametrize("bits", [0, 1, 9, 17, -4, 4.0, True, "8"])
def test_invalid_bits_raise(bits):
    with pytest.raises(ValueError, match="QuantSpec.bits must be an int in 2..8"):
        QuantSpec(bits)


@pytest.mark.parametrize("group", [0, -1, 2.5, True])
def test_invalid_group_size_raises(group):
    with pytest.raises(ValueError, match="PerGroup.group_size must be a positive int"):
        PerGroup(group)


def test_granularity_must_fit_the_role():
    with pytest.raises(TypeError, match=r"granularity for weights must be one of PerTensor\(\), PerChannel\(\)"):
        QuantSpec(4, PerToken(), role="weight")
    for granularity in (PerChannel(), PerGroup(8)):
        with pytest.raises(TypeError, match=r"activations must be one of PerTensor\(\), PerToken\(\)"):
            QuantSpec(4, granularity, role="activation")
    with pytest.raises(TypeError, match="QuantSpec.granularity must be"):
        QuantSpec(4, "per-channel")
    with pytest.raises(ValueError, match="role must be"):
        QuantSpec(4, role="bias")


def test_other_invalid_inputs_raise():
    with pytest.raises(ValueError, match="full_range applies to symmetric grids only"):
        QuantSpec(4, full_range=True)
    with pytest.raises(ValueError, match="needs a tensor with >= 2 dims"):
        fake_quantize(torch.ones(5), QuantSpec(4, PerChannel()))
    with pytest.raises(ValueError, match=r"lo must broadcast to the scale shape \(3, 1\)"):
        fake_quantize(torch.ones(3, 4), QuantSpec(4, PerChannel()), lo=torch.zeros(4), hi=torch.ones(3, 1))
