"""RTN: round to nearest with the MinMax range (absmax when symmetric), the reference code's baseline quantizer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor, nn

from .calibration import Calibration
from .points import QuantPoints
from .recipe import Recipe, register


@dataclass(frozen=True)
class RTN(Recipe):
    """Round to nearest; see ``Recipe`` for the fields.  Defaults: symmetric per-channel weights (the reference).

    Supports ``rotation``: RTN then rounds the rotated weight ``W R`` (and, with ``a_bits``, the rotated input).
    """

    supports_rotation = True


@register(RTN)
def search_rtn(model: nn.Module, recipe: RTN, names: list[str], points: QuantPoints,
               calibration: Optional[Calibration]) -> dict[str, Tensor]:
    """RTN searches nothing: the range of every group is its own min / max."""
    return {}
