"""The recipe base class and the registry from recipe type to its search function.

A method is one frozen dataclass (subclass of ``Recipe``, validated in ``__post_init__``) plus one search
function registered with ``@register(ThatRecipe)``.  A search function has the signature::

    search(model, recipe, names, points, calibration) -> dict[str, Tensor]

It reads (never modifies) ``model`` and returns a plain dict keyed ``"<linear name>.<quantity>"``; ``apply``
(``api.apply_params``) is one generic, pure function of that dict.  The quantities (all optional per linear):

- ``input_scale (C_in,)``: the linear's input channels are divided by it: weight columns multiplied, the scale
  pair's predecessor divided (LayerNorm weight/bias, a scaled GELU, or the v rows of the fused qkv).
- ``input_shift (C_in,)``: subtracted from the input (LayerNorm bias only); the linear's bias absorbs ``W @ shift``.
- ``weight (O, C_in)``: a replacement for the linear's weight, in the coordinates AFTER the folds above (GPTQ's
  error-compensated weight); ``apply`` fake-quantizes it instead of the model's (folded) weight.
- ``weight_lo``, ``weight_hi`` (scale shape): the clipping range of the weight AFTER the folds above.
- ``act_lo``, ``act_hi`` ``(1,)``: static per-tensor activation range, in the folded (and rotated) input's
  coordinates (added by ``api.search_params`` from calibration for every recipe with ``a_granularity=PerTensor()``).
- ``input_rotation (C_in, C_in)``: an orthogonal ``R``; the linear computes ``act(x @ R) @ Q(W R)^T`` (``rotation``).
  Added by ``api.search_params`` for every recipe with ``rotation != "none"``; the search itself runs on a rotated
  view (weights ``W R``, calibration rows ``x R``), so everything it returns is in rotated coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional, Union

from torch import Tensor, nn

from .calibration import Calibration
from wmqlib.sweep import added_field
from wmqlib.validate import check_bool, check_choice
from .rotation import ROTATIONS
from .points import QuantPoints
from .spec import (
    PASS_THROUGH_BITS, Granularity, PerChannel, PerTensor, PerToken, QuantSpec, check_bits, check_granularity,
    granularity_from_name,
)

SearchFn = Callable[[nn.Module, "Recipe", list[str], QuantPoints, Optional[Calibration]], dict[str, Tensor]]
QUANTITIES = ("input_scale", "input_shift", "weight", "weight_lo", "weight_hi", "act_lo", "act_hi", "input_rotation")
SEARCHES: dict[type, SearchFn] = {}
ROTATION_TAGS = {"hadamard": "had", "random": "rot"}  # the suffix ``label`` gives a rotated recipe


def register(recipe_type: type) -> Callable[[SearchFn], SearchFn]:
    """Decorator: make ``fn`` the search function of ``recipe_type``."""

    def wrap(fn: SearchFn) -> SearchFn:
        SEARCHES[recipe_type] = fn
        return fn

    return wrap


@dataclass(frozen=True)
class Recipe:
    """Fields shared by every method.

    Attributes:
        w_bits: weight bits, 2..8, or 16 to keep weights in floating point.
        w_granularity: ``PerTensor()``, ``PerChannel()`` (one scale per output row) or ``PerGroup(g)``.
        w_symmetric: symmetric weight grid (no zero point); False = asymmetric with a zero point.
        w_full_range: symmetric weights on the reference code's full signed grid (``/7.5`` at 4 bits).
        a_bits: None for weight-only, else input-activation bits of every quantized linear (2..8, 16 = FP).
        a_granularity: with ``a_bits``: ``PerTensor()`` (static, asymmetric, range from calibration) or
            ``PerToken()`` (dynamic, asymmetric, per row at run time); must be None without ``a_bits``.
        rotation: ``"none"``, ``"hadamard"`` (randomized Hadamard) or ``"random"`` (random orthogonal): rotate every
            linear's input by an orthogonal ``R`` before quantizing (see ``rotation``); only for methods with
            ``supports_rotation``.  Keyword-only; left out of cache keys while ``"none"``.
    """

    w_bits: int
    w_granularity: Granularity = PerChannel()
    w_symmetric: bool = True
    w_full_range: bool = False
    a_bits: Optional[int] = None
    a_granularity: Optional[Union[PerTensor, PerToken]] = None
    rotation: str = added_field("none", kw_only=True)

    needs_calibration: ClassVar[bool] = False
    supports_rotation: ClassVar[bool] = False  # its search and apply work in rotated coordinates (no folds)

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_choice(f"{name}.rotation", self.rotation, ROTATIONS)
        if self.rotation != "none" and not self.supports_rotation:
            able = ", ".join(sorted(t.__name__ for t in SEARCHES if t.supports_rotation))
            raise ValueError(f"{name}.rotation={self.rotation!r}: {name} does not support rotations (methods that "
                             f"do: {able}); use rotation='none'")
        check_bits(self.w_bits, f"{name}.w_bits")
        check_granularity(self.w_granularity, "weight", f"{name}.w_granularity")
        check_bool(f"{name}.w_symmetric", self.w_symmetric)
        check_bool(f"{name}.w_full_range", self.w_full_range)
        if self.w_full_range and not self.w_symmetric:
            raise ValueError(f"{name}.w_full_range applies to symmetric weights only (w_symmetric=True)")
        if self.a_bits is None:
            if self.a_granularity is not None:
                raise ValueError(
                    f"{name}.a_granularity={self.a_granularity!r} is set but a_bits is None (a weight-only recipe); "
                    "set a_bits (2..8, or 16) or leave a_granularity=None"
                )
            return
        check_bits(self.a_bits, f"{name}.a_bits")
        if self.a_granularity is None:
            raise ValueError(f"{name}.a_granularity must be PerTensor() (static) or PerToken() (dynamic) with a_bits")
        check_granularity(self.a_granularity, "activation", f"{name}.a_granularity")

    @property
    def weight_spec(self) -> QuantSpec:
        """The weight number format."""
        return QuantSpec(self.w_bits, self.w_granularity, self.w_symmetric, self.w_full_range, role="weight")

    @property
    def act_spec(self) -> Optional[QuantSpec]:
        """The input-activation number format (always asymmetric), or None when activations stay FP."""
        if self.a_bits is None or self.a_bits == PASS_THROUGH_BITS:
            return None
        return QuantSpec(self.a_bits, self.a_granularity, symmetric=False, role="activation")

    @property
    def static_activations(self) -> bool:
        """True when activations use a static per-tensor range that must come from calibration."""
        return self.act_spec is not None and isinstance(self.a_granularity, PerTensor)

    @property
    def label(self) -> str:
        """Short name like ``W4A8``, ``W4A16`` (weight-only) or ``W4A4+had`` (Hadamard-rotated; ``+rot``: random)."""
        tag = "" if self.rotation == "none" else f"+{ROTATION_TAGS[self.rotation]}"
        return f"W{self.w_bits}A{self.a_bits or PASS_THROUGH_BITS}{tag}"


def recipe_types() -> dict[str, type[Recipe]]:
    """The registered methods by class name ({"RTN": RTN, "AWQ": AWQ, ...}): the one list of methods, filled by
    ``@register``, so a new method module is found without being named anywhere else."""
    return {recipe_type.__name__: recipe_type for recipe_type in SEARCHES}


def recipe_from_names(method: str, w_bits: int, w_granularity: str = "per-channel", group_size: int | None = None,
                a_bits: int | None = None, a_granularity: str | None = None, **options: Any) -> Recipe:
    """A quantization recipe from plain names (as a notebook's parameters cell holds them).

    method: a registered method (``recipe_types()``: RTN, OMSE, AWQ, SmoothQuant, OmniQuant, GPTQ, ...), with
    ``+<rotation>`` for a rotated one ("GPTQ+hadamard": ``rotation="hadamard"``, see ``ROTATIONS``); w_granularity: "per-tensor" | "per-channel" | "per-group" (needs group_size); a_bits / a_granularity: None for
    weight-only, else bits and "per-tensor" (static) | "per-token" (dynamic); options: further fields of the
    method's dataclass (e.g. ``epochs`` for OmniQuant, ``act_order`` for GPTQ, ``rotation="hadamard"`` for RTN and
    GPTQ). Validated by the recipe.
    """
    methods = recipe_types()
    method, plus, rotation = method.partition("+") if isinstance(method, str) else (method, "", "")
    check_choice("method", method, sorted(methods))
    if plus:
        options = {**options, "rotation": rotation}
    w_gran = granularity_from_name(w_granularity, "weight", group_size, "w_granularity")
    a_gran = None if a_granularity is None else granularity_from_name(a_granularity, "activation",
                                                                      field="a_granularity")
    return methods[method](w_bits=w_bits, w_granularity=w_gran, a_bits=a_bits, a_granularity=a_gran, **options)
