"""Recipe validation: every invalid field raises a clear error naming the field and the allowed values."""

from __future__ import annotations

import pytest

from wmqlib.quant import (
    AWQ, OMSE, RTN, OmniQuant, PerChannel, PerGroup, PerTensor, PerToken, SmoothQuant, recipe_from_names,
)

RECIPES = [RTN, OMSE, AWQ, SmoothQuant, OmniQuant]


@pytest.mark.parametrize("cls", RECIPES)
@pytest.mark.parametrize("bits", [0, 1, 9, 17])
def test_bad_weight_bits(cls, bits):
    with pytest.raises(ValueError, match=rf"{cls.__name__}.w_bits must be an int in 2..8, or 16"):
        cls(bits)


@pytest.mark.parametrize("cls", RECIPES)
@pytest.mark.parametrize("bits", [0, 1, 9, 17])
def test_bad_activation_bits(cls, bits):
    with pytest.raises(ValueError, match=rf"{cls.__name__}.a_bits must be an int in 2..8, or 16"):
        cls(8, a_bits=bits, a_granularity=PerToken())


@pytest.mark.parametrize("group", [0, -128])
def test_bad_group_size(group):
    with pytest.raises(ValueError, match="PerGroup.group_size must be a positive int"):
        RTN(4, PerGroup(group))


@pytest.mark.parametrize("cls", RECIPES)
def test_activation_granularity_for_weights(cls):
    with pytest.raises(TypeError, match=rf"{cls.__name__}.w_granularity for weights must be one of PerTensor\(\), "
                                        r"PerChannel\(\), PerGroup\(g\), got PerToken\(\)"):
        cls(4, PerToken())


@pytest.mark.parametrize("granularity", [PerChannel(), PerGroup(16), "per-token"])
def test_weight_granularity_for_activations(granularity):
    with pytest.raises(TypeError, match=r"RTN.a_granularity for activations must be one of PerTensor\(\), PerToken\(\)"):
        RTN(8, a_bits=8, a_granularity=granularity)


@pytest.mark.parametrize("cls", RECIPES)
def test_activation_settings_on_a_weight_only_recipe(cls):
    with pytest.raises(ValueError, match=rf"{cls.__name__}.a_granularity=PerToken\(\) is set but a_bits is None "
                                         r"\(a weight-only recipe\)"):
        cls(4, a_granularity=PerToken())


def test_activation_bits_need_a_granularity():
    with pytest.raises(ValueError, match=r"RTN.a_granularity must be PerTensor\(\) \(static\) or PerToken\(\)"):
        RTN(8, a_bits=8)


@pytest.mark.parametrize("make,message", [
    (lambda: RTN(4, w_symmetric="yes"), "RTN.w_symmetric must be True or False"),
    (lambda: RTN(4, w_symmetric=False, w_full_range=True), "RTN.w_full_range applies to symmetric weights only"),
    (lambda: OMSE(4, clip_min=0.0), r"OMSE.clip_min must be a number in \(0.0, 1.0\]"),
    (lambda: OMSE(4, clip_steps=1), "OMSE.clip_steps must be an int >= 2"),
    (lambda: SmoothQuant(8, alpha=1.5), r"SmoothQuant.alpha must be a number in \[0.0, 1.0\]"),
    (lambda: AWQ(4, scale_targets=("qkv", "ln")), "AWQ.scale_targets must be a tuple of roles from"),
    (lambda: AWQ(4, n_grid=0), "AWQ.n_grid must be an int >= 1"),
    (lambda: AWQ(4, max_shrink=1.0), r"AWQ.max_shrink must be a number in \[0.0, 0.999\]"),
    (lambda: AWQ(4, search_tokens=0), "AWQ.search_tokens must be an int >= 1"),
    (lambda: AWQ(4, clip_qk=1), "AWQ.clip_qk must be True or False"),
    (lambda: OmniQuant(4, let_shift="mean"), r"OmniQuant.let_shift must be one of \['midrange', 'zero'\]"),
    (lambda: OmniQuant(4, lwc=False, let=False), "OmniQuant needs lwc=True or let=True"),
    (lambda: OmniQuant(4, epochs=-1), "OmniQuant.epochs must be an int >= 0"),
    (lambda: OmniQuant(4, lwc_lr=0.0), r"OmniQuant.lwc_lr must be a number in \(0.0, 10.0\]"),
    (lambda: OmniQuant(4, batch_size=0), "OmniQuant.batch_size must be an int >= 1"),
])
def test_method_fields(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


def test_valid_recipes_and_defaults():
    assert RTN(4).weight_spec.symmetric and RTN(4).act_spec is None and RTN(4).label == "W4A16"
    awq = AWQ(4)
    assert awq.w_granularity == PerGroup(128) and not awq.w_symmetric and awq.needs_calibration
    assert OmniQuant(4).epochs > 0 and not OmniQuant(4).w_symmetric and OmniQuant(4).let_shift == "midrange"
    assert not awq.clip_qk and not RTN(4).w_full_range  # wmq's defaults; quantwm_reference sets them
    w4a8 = SmoothQuant(4, a_bits=8, a_granularity=PerTensor())
    assert w4a8.static_activations and w4a8.label == "W4A8" and w4a8.act_spec.role == "activation"
    assert RTN(8, a_bits=16, a_granularity=PerToken()).act_spec is None  # 16-bit activations stay FP
    assert RTN(4) == RTN(4, PerChannel()) and hash(RTN(4)) == hash(RTN(4, PerChannel()))


def test_recipe_builds_each_method_from_names():
    assert recipe_from_names("RTN", 4) == RTN(4, PerChannel())
    assert recipe_from_names("RTN+hadamard", 4) == RTN(4, rotation="hadamard")  # a rotated method by name
    assert recipe_from_names("AWQ", 3, "per-group", 32) == AWQ(3, PerGroup(32))
    sq = recipe_from_names("SmoothQuant", 8, a_bits=8, a_granularity="per-tensor")
    assert sq == SmoothQuant(8, PerChannel(), a_bits=8, a_granularity=PerTensor())
    om = recipe_from_names("OmniQuant", 4, a_bits=4, a_granularity="per-token", epochs=0)
    assert isinstance(om, OmniQuant) and om.epochs == 0 and om.a_granularity == PerToken()


@pytest.mark.parametrize("args, match", [
    (("GPFQ", 4), "method must be one of"),
    (("AWQ+hadamard", 4), "AWQ does not support rotations"),
    (("RTN", 4, "per-row"), "w_granularity must be"),
    (("RTN", 4, "per-group"), "needs a group_size"),
    (("RTN", 4, "per-channel", None, 8, "per-channel"), "a_granularity must be"),
    (("RTN", 9), "w_bits"),
])
def test_recipe_rejects_bad_names(args, match):
    with pytest.raises(ValueError, match=match):
        recipe_from_names(*args)
