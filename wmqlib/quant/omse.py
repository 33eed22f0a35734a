"""OMSE (Choukroun et al. 2019): per group, the clipping range that minimises the weight's squared error.

As in the reference code, the range of every group (channel, row-group or tensor) is shrunk by a ratio from a grid
``linspace(clip_min, 1, clip_steps)`` (0.35..1.0 in 101 steps) and the ratio with the smallest
``||w - Q(w)||^2`` in that group is kept.  Ratio 1 is in the grid and equals RTN, so OMSE's error is never larger
than RTN's on any group.  Only weights are searched (the reference runs use MinMax activations).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from .calibration import Calibration
from wmqlib.validate import check_float, check_int
from .points import QuantPoints, weight_matrix
from .recipe import Recipe, register
from .spec import QuantSpec, fake_quantize, group_minmax, group_sum


@dataclass(frozen=True)
class OMSE(Recipe):
    """OMSE clipping search.

    Attributes:
        clip_min: smallest range ratio searched, in (0, 1].
        clip_steps: number of ratios in ``linspace(clip_min, 1, clip_steps)``, >= 2.
    """

    clip_min: float = 0.35
    clip_steps: int = 101

    def __post_init__(self) -> None:
        super().__post_init__()
        check_float("OMSE.clip_min", self.clip_min, 0.0, 1.0, strict=True)
        check_int("OMSE.clip_steps", self.clip_steps, 2)


def mse_clip_range(w: Tensor, spec: QuantSpec, ratios: Tensor) -> tuple[Tensor, Tensor]:
    """Per group, the range ``(r * min, r * max)`` over ``ratios`` that minimises the squared weight error."""
    lo, hi = group_minmax(w, spec.granularity)
    best_err = torch.full(lo.shape, float("inf"), device=w.device)
    best_ratio = torch.ones_like(lo)
    for ratio in ratios.tolist():
        err = group_sum((w.float() - fake_quantize(w, spec, lo * ratio, hi * ratio).float()).pow(2), spec.granularity)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_ratio = torch.where(better, torch.full_like(best_ratio, ratio), best_ratio)
    return lo * best_ratio, hi * best_ratio


@register(OMSE)
def search_omse(model: nn.Module, recipe: OMSE, names: list[str], points: QuantPoints,
                calibration: Optional[Calibration]) -> dict[str, Tensor]:
    """``{"<linear>.weight_lo"/"weight_hi": range}`` minimising each group's squared weight error."""
    ratios = torch.linspace(recipe.clip_min, 1.0, recipe.clip_steps)
    out = {}
    for name in names:
        if recipe.weight_spec.passthrough:
            continue
        w = weight_matrix(model.get_submodule(name)).detach()
        out[f"{name}.weight_lo"], out[f"{name}.weight_hi"] = mse_clip_range(w, recipe.weight_spec, ratios)
    return out
