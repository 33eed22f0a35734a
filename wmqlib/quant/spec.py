"""The one quantization primitive: granularity types, ``QuantSpec`` and ``fake_quantize``.

Number formats (the conventions of torchao and PyTorch's observers; QuantWM's full-range grid is ``full_range``):

- Asymmetric ``b`` bits: the range ``[lo, hi]`` is first widened to contain 0 (so zero is exact, as in torchao
  and PyTorch observers), then ``s = (hi - lo) / (2^b - 1)``, ``z = clamp(round(-lo / s), 0, 2^b - 1)``,
  ``q = clamp(round(x / s) + z, 0, 2^b - 1)``, ``x_hat = (q - z) * s``.
- Symmetric ``b`` bits (default, "narrow" grid): ``s = max|x| / (2^(b-1) - 1)``, ``q`` in
  ``[-(2^(b-1) - 1), 2^(b-1) - 1]``; zero and the grid are symmetric.
- Symmetric with ``full_range=True``: the reference code's (FQ-ViT's) signed grid ``q`` in
  ``[-2^(b-1), 2^(b-1) - 1]`` with ``s = max|x| / ((2^b - 1) / 2)`` (``/7.5`` at 4 bits, the top code clips).

Granularity says which elements share one (scale, zero point):

- ``PerTensor()``: all of them.  Scale shape ``()``.
- ``PerChannel()``: each output row of a weight ``(O, I, ...)``.  Scale shape ``(O, 1)``.
- ``PerGroup(g)``: ``g`` contiguous input columns within one row of ``(O, I)``; when ``I % g != 0`` the last group
  of every row is shorter (``I=404, g=128 -> 128, 128, 128, 20``).  Groups never straddle rows (the reference
  code reshapes the flattened weight and does straddle them; this is a deliberate difference).
  Scale shape ``(O, ceil(I / g))``.  A group at least as wide as the row (``g >= I``) is one group per row, i.e.
  exactly ``PerChannel()``: ``effective_granularity`` says so, and the report labels such layers "per-channel".
- ``PerToken()``: each row of an activation ``(..., C)``, computed at run time.  Scale shape ``(..., 1)``.

Rounding is round-half-to-even (``torch.round``).  All arithmetic runs in float32 and the result is cast back to
the input dtype.  The gradient is straight-through: rounding passes the gradient unchanged, the clamp to the grid
stops it for values outside the range, and ranges taken from the data are constants (detached); ranges passed in
as ``lo``/``hi`` keep their gradient (learnable weight clipping uses this).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Optional, Union

import torch
from torch import Tensor

from wmqlib.validate import check_bool

PASS_THROUGH_BITS = 16
ALLOWED_BITS = (2, 3, 4, 5, 6, 7, 8, PASS_THROUGH_BITS)
# Smallest scale: a zero-width range (constant group) gets this instead of 0, so x / s never divides by zero.
SCALE_EPS = 1e-12


@dataclass(frozen=True)
class PerTensor:
    """One scale (and zero point) for the whole tensor."""

    name: ClassVar[str] = "per-tensor"


@dataclass(frozen=True)
class PerChannel:
    """One scale per output row of a weight ``(O, I, ...)`` (dim 0)."""

    name: ClassVar[str] = "per-channel"


@dataclass(frozen=True)
class PerGroup:
    """One scale per ``group_size`` contiguous input columns within a weight row; the last group may be shorter."""

    group_size: int
    name: ClassVar[str] = "per-group"

    def __post_init__(self) -> None:
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size <= 0:
            raise ValueError(f"PerGroup.group_size must be a positive int, got {self.group_size!r}")


@dataclass(frozen=True)
class PerToken:
    """One scale per row of an activation ``(..., C)``, computed dynamically at run time."""

    name: ClassVar[str] = "per-token"


Granularity = Union[PerTensor, PerChannel, PerGroup, PerToken]
WEIGHT_GRANULARITIES = (PerTensor, PerChannel, PerGroup)
ACTIVATION_GRANULARITIES = (PerTensor, PerToken)
_ROLES = {"weight": WEIGHT_GRANULARITIES, "activation": ACTIVATION_GRANULARITIES}


def granularity_from_name(name: str, role: str, group_size: int | None = None,
                          field: str = "granularity") -> Granularity:
    """The granularity called ``name`` (each class's ``name``: "per-tensor", "per-channel", "per-group",
    "per-token") for ``role`` "weight" or "activation"; "per-group" needs ``group_size``. ValueError naming
    ``field`` and the allowed names otherwise."""
    kinds = {kind.name: kind for kind in _ROLES[role]}
    if not isinstance(name, str) or name not in kinds:
        raise ValueError(f"{field} must be one of {list(kinds)} ({role}), got {name!r}")
    if kinds[name] is PerGroup:
        if group_size is None:
            raise ValueError(f"{field} 'per-group' needs a group_size")
        return PerGroup(group_size)
    return kinds[name]()


def check_bits(bits: object, field: str) -> None:
    """Raise ``ValueError`` naming ``field`` unless ``bits`` is an int in 2..8 or 16 (pass-through)."""
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in ALLOWED_BITS:
        raise ValueError(f"{field} must be an int in 2..8, or 16 for pass-through (no quantization), got {bits!r}")


def check_granularity(granularity: object, role: str, field: str) -> None:
    """Raise ``TypeError`` naming ``field`` unless ``granularity`` is allowed for ``role`` ("weight"/"activation")."""
    allowed = _ROLES[role]
    if not isinstance(granularity, allowed):
        names = ", ".join(f"{cls.__name__}()" if cls is not PerGroup else "PerGroup(g)" for cls in allowed)
        raise TypeError(f"{field} for {role}s must be one of {names}, got {granularity!r}")


@dataclass(frozen=True)
class QuantSpec:
    """How to fake-quantize one tensor.

    Attributes:
        bits: 2..8, or 16 meaning pass-through (``fake_quantize`` returns its input).
        granularity: ``PerTensor()``, ``PerChannel()``, ``PerGroup(g)`` or ``PerToken()``.
        symmetric: symmetric grid around zero (no zero point) instead of an asymmetric one with a zero point.
        full_range: symmetric only; use the reference code's signed grid ``[-2^(b-1), 2^(b-1) - 1]`` with
            ``s = max|x| / ((2^b - 1) / 2)`` instead of the narrow grid ``[-(2^(b-1) - 1), 2^(b-1) - 1]``.
        role: ``"weight"`` (granularity in PerTensor/PerChannel/PerGroup), ``"activation"`` (PerTensor/PerToken),
            or None to accept any granularity.
    """

    bits: int
    granularity: Granularity = PerTensor()
    symmetric: bool = False
    full_range: bool = False
    role: Optional[str] = None

    def __post_init__(self) -> None:
        check_bits(self.bits, "QuantSpec.bits")
        check_bool("QuantSpec.symmetric", self.symmetric)
        check_bool("QuantSpec.full_range", self.full_range)
        if self.role is not None and self.role not in _ROLES:
            raise ValueError(f"QuantSpec.role must be 'weight', 'activation' or None, got {self.role!r}")
        if self.role is not None:
            check_granularity(self.granularity, self.role, "QuantSpec.granularity")
        if not isinstance(self.granularity, (*WEIGHT_GRANULARITIES, PerToken)):
            raise TypeError(
                "QuantSpec.granularity must be PerTensor(), PerChannel(), PerGroup(g) or PerToken(), "
                f"got {self.granularity!r}"
            )
        if self.full_range and not self.symmetric:
            raise ValueError("QuantSpec.full_range applies to symmetric grids only; set symmetric=True or drop it")

    @property
    def passthrough(self) -> bool:
        """True when ``bits == 16``: the tensor is left in floating point."""
        return self.bits == PASS_THROUGH_BITS

    @property
    def qmin(self) -> int:
        """Smallest integer code of the grid."""
        if not self.symmetric:
            return 0
        return -(2 ** (self.bits - 1)) if self.full_range else -(2 ** (self.bits - 1) - 1)

    @property
    def qmax(self) -> int:
        """Largest integer code of the grid."""
        return 2**self.bits - 1 if not self.symmetric else 2 ** (self.bits - 1) - 1


class _RoundSTE(torch.autograd.Function):
    """Round to nearest (half to even) with an identity gradient (no ``round(x) - x + x`` trick: inf - inf is NaN)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: D102
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: D102
        return grad


def round_ste(x: Tensor) -> Tensor:
    """``round(x)`` whose gradient is the identity (straight-through estimator)."""
    return _RoundSTE.apply(x)


def scale_shape(shape: torch.Size | tuple[int, ...], granularity: Granularity) -> tuple[int, ...]:
    """Shape of the scale / zero-point tensor for a tensor of ``shape`` at ``granularity`` (see module docstring)."""
    if isinstance(granularity, PerTensor):
        return ()
    if len(shape) < 2 and not isinstance(granularity, PerToken):
        raise ValueError(f"{type(granularity).__name__} needs a tensor with >= 2 dims (O, I), got shape {tuple(shape)}")
    if isinstance(granularity, PerChannel):
        return (shape[0], 1)
    if isinstance(granularity, PerGroup):
        cols = math.prod(shape[1:])
        return (shape[0], -(-cols // granularity.group_size))
    return (*shape[:-1], 1)


def effective_granularity(shape: torch.Size | tuple[int, ...], granularity: Granularity) -> Granularity:
    """What ``granularity`` amounts to on a weight of ``shape`` ``(O, I, ...)``: ``PerGroup(g)`` with ``g`` at least
    the row length ``I * ...`` is ``PerChannel()`` (one group per row, the same scales and the same numbers);
    anything else is returned unchanged."""
    if isinstance(granularity, PerGroup) and len(shape) >= 2 and granularity.group_size >= math.prod(shape[1:]):
        return PerChannel()
    return granularity


def _grouped(x: Tensor, granularity: Granularity) -> Tensor:
    """View ``x`` as ``(R, G, L)``: rows x groups per row x elements per group (ragged groups padded).

    The padding of a ragged last group repeats the row's last element, which changes neither the group's min nor
    max; the padded columns are dropped again by ``_ungrouped``.
    """
    if isinstance(granularity, PerTensor):
        return x.reshape(1, 1, -1)
    if isinstance(granularity, PerChannel):
        return x.reshape(x.shape[0], 1, -1)
    if isinstance(granularity, PerToken):
        return x.reshape(-1, 1, x.shape[-1])
    rows = x.reshape(x.shape[0], -1)
    g = granularity.group_size
    pad = -rows.shape[1] % g
    if pad:
        rows = torch.cat([rows, rows[:, -1:].expand(-1, pad)], dim=1)
    return rows.reshape(rows.shape[0], -1, g)


def _ungrouped(xg: Tensor, shape: torch.Size, granularity: Granularity) -> Tensor:
    """Inverse of ``_grouped``: drop the padding of ragged groups and restore ``shape``."""
    if isinstance(granularity, PerGroup):
        return xg.reshape(xg.shape[0], -1)[:, : math.prod(shape[1:])].reshape(shape)
    return xg.reshape(shape)


def _bound(b: Tensor | float, shape: tuple[int, ...], xg: Tensor, name: str) -> Tensor:
    """A user-given range bound broadcast to the scale shape, then viewed as ``(R, G, 1)`` to match ``xg``."""
    b = torch.as_tensor(b, device=xg.device).float()
    try:
        b = b.expand(shape)
    except RuntimeError as err:
        raise ValueError(f"fake_quantize {name} must broadcast to the scale shape {shape}, got {tuple(b.shape)}") from err
    return b.reshape(xg.shape[0], xg.shape[1], 1)


def group_minmax(x: Tensor, granularity: Granularity) -> tuple[Tensor, Tensor]:
    """Per-group ``(min, max)`` of ``x`` as float32, each of shape ``scale_shape(x.shape, granularity)``.

    Differentiable (learnable weight clipping scales these); pass ``x.detach()`` for constants.
    """
    shape = scale_shape(x.shape, granularity)
    xg = _grouped(x.float(), granularity)
    return xg.amin(dim=-1).reshape(shape), xg.amax(dim=-1).reshape(shape)


def split_groups(x: Tensor, granularity: Granularity) -> Tensor:
    """``x`` as float32 ``(R, G, L)`` (rows x groups x elements), ragged groups padded with ZEROS.

    Zero padding suits sums and dot products (a padded column adds nothing); ranges use min/max-neutral padding.
    """
    scale_shape(x.shape, granularity)  # validates the dims
    if not isinstance(granularity, PerGroup):
        return _grouped(x.float(), granularity)
    rows = x.float().reshape(x.shape[0], -1)
    rows = torch.nn.functional.pad(rows, (0, -rows.shape[1] % granularity.group_size))
    return rows.reshape(rows.shape[0], -1, granularity.group_size)


def group_sum(x: Tensor, granularity: Granularity) -> Tensor:
    """Float32 sum of ``x`` over every quantization group (e.g. squared errors), shape ``scale_shape``."""
    return split_groups(x, granularity).sum(dim=-1).reshape(scale_shape(x.shape, granularity))


def qparams(lo: Tensor, hi: Tensor, spec: QuantSpec) -> tuple[Tensor, Tensor]:
    """Scale and zero point from a range; differentiable in ``lo``/``hi``.

    Args:
        lo, hi: range bounds of any (equal, broadcastable) shape, e.g. ``scale_shape(...)``; widened to hold 0.
        spec: the number format.

    Returns:
        ``(scale, zero)`` float32, same shape as ``lo``/``hi``; ``zero`` is an integer-valued float (0 when symmetric).
    """
    lo = torch.clamp(lo.float(), max=0.0)
    hi = torch.clamp(hi.float(), min=0.0)
    span = spec.qmax - spec.qmin
    if spec.symmetric:
        scale = torch.clamp(torch.maximum(-lo, hi) / (span / 2), min=SCALE_EPS)
        return scale, torch.zeros_like(scale)
    scale = torch.clamp((hi - lo) / span, min=SCALE_EPS)
    zero = torch.clamp(round_ste(-lo / scale), spec.qmin, spec.qmax)
    return scale, zero


def quantize_dequantize(x: Tensor, scale: Tensor, zero: Tensor, spec: QuantSpec) -> Tensor:
    """``(clamp(round(x / s) + z, qmin, qmax) - z) * s`` with straight-through rounding; broadcasting shapes."""
    q = torch.clamp(round_ste(x / scale) + zero, spec.qmin, spec.qmax)
    return (q - zero) * scale


def fake_quantize(x: Tensor, spec: QuantSpec, lo: Optional[Tensor] = None, hi: Optional[Tensor] = None) -> Tensor:
    """Quantize ``x`` to the grid of ``spec`` and map it back to floating point.

    Args:
        x: weight ``(O, I, ...)`` or activation ``(..., C)``, any float dtype.
        spec: bits, granularity, symmetric; ``spec.bits == 16`` returns ``x`` itself.
        lo, hi: optional clipping range per group, shape ``scale_shape(x.shape, spec.granularity)`` (or
            broadcastable); defaults to the per-group min / max of ``x``.  Gradients flow into them.

    Returns:
        ``x_hat``, same shape and dtype as ``x``.
    """
    if spec.passthrough:
        return x
    shape = scale_shape(x.shape, spec.granularity)
    xg = _grouped(x.float(), spec.granularity)
    lo = xg.detach().amin(dim=-1, keepdim=True) if lo is None else _bound(lo, shape, xg, "lo")
    hi = xg.detach().amax(dim=-1, keepdim=True) if hi is None else _bound(hi, shape, xg, "hi")
    scale, zero = qparams(lo, hi, spec)
    return _ungrouped(quantize_dequantize(xg, scale, zero, spec), x.shape, spec.granularity).to(x.dtype)
