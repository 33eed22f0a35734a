"""QuantWM's configuration of each method, as wmq recipes: the "QuantWM reference" rows of the study.

QuantWM is the code released with the paper (huawei-noah/noah-research, folder ``QuantWM``; its choices were read
from its code, not run).  ``quantwm_reference(method, w_bits, ...)``
returns the recipe that reproduces its choices as far as a wmq recipe can express them; wmq's own defaults
(``RTN(4)``, ``AWQ(4)``, ...) differ where the table below says so.  Use both side by side: the defaults are what
the method papers and their maintained code do, the reference is what the paper's numbers were produced with.

Every place where wmq's default departs from QuantWM, and why ("reference" = what ``quantwm_reference`` sets):

==================  ===============================  =============================  ====================================
place               QuantWM                          wmq default                    why; what the reference sets
==================  ===============================  =============================  ====================================
weight grid (all    signed [-2^(b-1), 2^(b-1)-1], s  [-(2^(b-1)-1), 2^(b-1)-1], s   the narrow grid is symmetric and
methods)            = max|w| / ((2^b-1)/2): max/7.5  = max|w| / (2^(b-1)-1):        keeps +-max|w| exact (the full grid
                    at 4 bits, max/3.5 at 3          max/7, max/3 (7% / 17%         clips +max|w| to 7/7.5 of it), as
                                                     coarser at 4 / 3 bits)         torchao and most PTQ code;
                                                                                    reference: w_full_range=True

weight groups       the FLATTENED weight cut into    groups inside each output      a group across two channels mixes
(g128)              rows of 128: groups straddle     row, the last one shorter      their ranges; not reproduced (per-
                    output rows where in % 128 != 0  (404 = 3 x 128 + 20)           channel, the reference's default, is
                    (predictor to_qkv, fc1: 404                                     unaffected)
                    inputs)

AWQ weight          searched asymmetric (zero        asymmetric with a zero point,  llm-awq's format; reference:
symmetry            point); deployed symmetric with  searched and deployed alike;   symmetric full-range, searched and
                    ranges fixed at the first        g128                           deployed on one grid (ranges fixed
                    calibration forward, BEFORE AWQ                                 before the rescale look like an
                    rescales the weights                                            ordering accident: not reproduced)

AWQ scale pairs     LN2 -> fc1 only                  LN1 -> qkv, v -> proj, LN2 ->  llm-awq's four ViT pairs; reference:
                                                     fc1, GELU -> fc2               scale_targets=("fc1",)

AWQ scale loss      MSE of the MLP output (fc1 ->    MSE of the scaled linear's     needs no unit re-execution; not
                    GELU -> fc2)                     own output                     reproduced (for fc1 the two differ
                                                                                    by GELU and fc2)

AWQ clip, q / k     clipped (its name filter looks   skipped (llm-awq: their error  reference: clip_qk=True
rows                for q / k projections and        passes the softmax)
                    misses the fused qkv)

AWQ clip, ragged    per-channel when in % group !=   ragged groups searched as      not reproduced; no effect per-
groups              0                                they are                       channel

AWQ rows searched   scales: every captured input;    up to search_tokens=1024       both subsample; not reproduced
                    clipping: 512 sampled tokens     reservoir rows for both        exactly

OmniQuant epochs    0 (trains nothing unless asked)  10 (OmniQuant's code: 10-20)   reference: epochs=0

OmniQuant weights   symmetric                        asymmetric with a zero point   reference: symmetric, full range
                                                     (OmniQuant's code)

OmniQuant LWC       switched on after the ranges     trained from sigmoid(4) =      reference: lwc=False (MinMax ranges,
                    are fixed: no effect             0.982 x the MinMax range       as QuantWM's in effect)

OmniQuant LET       initialised to 0                 channel mid-range (max + min)  reference: let_shift="zero"; at 0
shift                                                / 2 (OmniQuant's code)         epochs QuantWM's OmniQuant is then
                                                                                    SmoothQuant (alpha 0.5)

OmniQuant inputs    (unused at 0 epochs)             each unit trained on its FP    units stay independent; irrelevant
                                                     inputs                         at 0 epochs

RTN, OMSE,          as wmq apart from the grid       the same                       reference: the full-range grid
SmoothQuant         (OMSE: 0.35..1.0 in 101 steps;
                    SmoothQuant: alpha 0.5 on LN1
                    -> qkv, LN2 -> fc1)
==================  ===============================  =============================  ====================================

Outside the recipes (the study's protocol, not set here): activations are unsigned asymmetric in both (per-tensor
static from calibration, or per-token dynamic); the calibration run is FP planning for 2 MPC rounds on separate
episodes in both (QuantWM: 50 episodes; wmq: the profile's ``n_calib``); between MPC rounds both replay every
action so far from the start state (``MPCConfig.replay``, DINO-WM's evaluator).
"""

from __future__ import annotations

from typing import Optional, Union

from wmqlib.validate import check_choice

from .awq import AWQ
from .omniquant import OmniQuant
from .omse import OMSE
from .recipe import Recipe
from .rtn import RTN
from .smoothquant import SmoothQuant
from .spec import Granularity, PerChannel, PerTensor, PerToken

REFERENCE_METHODS = ("RTN", "OMSE", "AWQ", "SmoothQuant", "OmniQuant")


def quantwm_reference(method: str, w_bits: int, w_granularity: Granularity = PerChannel(),
                      a_bits: Optional[int] = None, a_granularity: Optional[Union[PerTensor, PerToken]] = None
                      ) -> Recipe:
    """QuantWM's configuration of ``method`` as a recipe (see the module docstring for every field it sets).

    Args:
        method: one of "RTN", "OMSE", "AWQ", "SmoothQuant", "OmniQuant".
        w_bits: weight bits (2..8, or 16 for FP weights).
        w_granularity: ``PerChannel()`` (QuantWM's default) or ``PerGroup(g)`` / ``PerTensor()``.
        a_bits, a_granularity: input-activation bits and ``PerTensor()`` (static) / ``PerToken()`` (dynamic), or
            None for weight-only; as in every recipe.

    Returns:
        The recipe: symmetric weights on the full-range grid for every method, plus AWQ
        ``scale_targets=("fc1",), clip_qk=True`` and OmniQuant ``epochs=0, lwc=False, let_shift="zero"``.
    """
    check_choice("quantwm_reference method", method, REFERENCE_METHODS)
    common = dict(w_bits=w_bits, w_granularity=w_granularity, w_symmetric=True, w_full_range=True, a_bits=a_bits,
                  a_granularity=a_granularity)
    if method == "RTN":
        return RTN(**common)
    if method == "OMSE":
        return OMSE(**common)
    if method == "AWQ":
        return AWQ(**common, scale_targets=("fc1",), clip_qk=True)
    if method == "SmoothQuant":
        return SmoothQuant(**common, alpha=0.5)
    return OmniQuant(**common, epochs=0, lwc=False, let=True, let_shift="zero", alpha=0.5)


def is_quantwm_reference(recipe: Recipe) -> bool:
    """True when ``recipe`` is exactly ``quantwm_reference`` of its method, bits, granularities (a table's "QuantWM
    reference" column; ``Recipe.label`` alone does not tell the two configurations apart)."""
    method = type(recipe).__name__
    if method not in REFERENCE_METHODS:
        return False
    return recipe == quantwm_reference(method, recipe.w_bits, recipe.w_granularity, recipe.a_bits, recipe.a_granularity)
