"""quantwm_reference: QuantWM's configuration of each method, on one (symmetric, full-range) weight grid."""

from __future__ import annotations

import pytest

from wmqlib.quant import (
    AWQ, OMSE, REFERENCE_METHODS, RTN, OmniQuant, PerChannel, PerGroup, PerToken, SmoothQuant, is_quantwm_reference,
    quantwm_reference,
)


@pytest.mark.parametrize("method,cls", [("RTN", RTN), ("OMSE", OMSE), ("AWQ", AWQ), ("SmoothQuant", SmoothQuant),
                                        ("OmniQuant", OmniQuant)])
def test_every_method_on_the_symmetric_full_range_grid(method, cls):
    recipe = quantwm_reference(method, 3, PerGroup(32), a_bits=8, a_granularity=PerToken())
    assert type(recipe) is cls and recipe.w_bits == 3 and recipe.w_granularity == PerGroup(32)
    assert recipe.w_symmetric and recipe.w_full_range
    assert recipe.weight_spec.qmin == -4 and recipe.weight_spec.qmax == 3  # max/3.5 at 3 bits
    assert recipe.a_bits == 8 and recipe.a_granularity == PerToken()


def test_method_specific_choices():
    awq = quantwm_reference("AWQ", 4)
    assert awq.scale_targets == ("fc1",) and awq.clip and awq.clip_qk and awq.w_granularity == PerChannel()
    omni = quantwm_reference("OmniQuant", 4)
    assert (omni.epochs, omni.lwc, omni.let, omni.let_shift, omni.alpha) == (0, False, True, "zero", 0.5)
    assert quantwm_reference("SmoothQuant", 4).alpha == 0.5
    omse = quantwm_reference("OMSE", 4)
    assert (omse.clip_min, omse.clip_steps) == (0.35, 101)
    assert quantwm_reference("RTN", 4) == RTN(4, w_full_range=True)  # the only departure of RTN is the grid
    assert set(REFERENCE_METHODS) == {"RTN", "OMSE", "AWQ", "SmoothQuant", "OmniQuant"}


def test_bad_method_and_fields_name_the_allowed_values():
    with pytest.raises(ValueError, match=r"quantwm_reference method must be one of \['RTN', 'OMSE'"):
        quantwm_reference("GPTQ", 4)
    with pytest.raises(ValueError, match="RTN.w_bits must be an int in 2..8"):
        quantwm_reference("RTN", 1)


def test_is_quantwm_reference_tells_the_rows_apart():
    for method in REFERENCE_METHODS:
        assert is_quantwm_reference(quantwm_reference(method, 4, PerGroup(32), a_bits=8, a_granularity=PerToken()))
    assert not any(is_quantwm_reference(r) for r in (RTN(4), OMSE(4), AWQ(4), SmoothQuant(4), OmniQuant(4)))
    off = AWQ(4, PerChannel(), w_symmetric=True, w_full_range=True, scale_targets=("fc1",))  # clip_qk off
    assert not is_quantwm_reference(off)
