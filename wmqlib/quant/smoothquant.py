"""SmoothQuant (Xiao et al. 2022): migrate activation outliers into the weights with a per-channel scale.

``s_j = max|X_j|^alpha / max_i |W_ij|^(1 - alpha)`` (clamped >= 1e-5, ``max|W|`` too), ``X_j`` the per-channel
max over calibration.  For ViT blocks only the pairs LN1 -> qkv and LN2 -> fc1 have a foldable predecessor
(LayerNorm weight and bias divided by ``s``, weight columns multiplied): before quantization the block computes
the same function.  proj and fc2 keep ``s = 1`` (as in the reference and the SmoothQuant code for ViTs).  Any
point not fed by a LayerNorm keeps ``s = 1``, i.e. is quantized as plain weights: in the RSSM, its convolutions,
encoder.fc, every MLP's fc2 and the GRU's ih / hh (each MLP's fc1 is smoothed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor, nn

from .calibration import Calibration
from wmqlib.validate import check_float
from .points import QuantPoints
from .recipe import Recipe, register

MIN_SCALE = 1e-5


@dataclass(frozen=True)
class SmoothQuant(Recipe):
    """SmoothQuant; ``alpha`` in [0, 1] is the migration strength (0.5 in the paper and the reference)."""

    alpha: float = 0.5

    needs_calibration = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_float("SmoothQuant.alpha", self.alpha, 0.0, 1.0)


def smooth_scale(act_absmax: Tensor, weight: Tensor, alpha: float) -> Tensor:
    """``s (C,) = max|X|^alpha / max|W[:, j]|^(1 - alpha)`` for activations ``(.., C)`` and weight ``(O, C)``."""
    w_absmax = weight.detach().float().abs().amax(dim=0).clamp(min=MIN_SCALE)
    act = act_absmax.to(w_absmax.device).float().clamp(min=MIN_SCALE)
    return (act.pow(alpha) / w_absmax.pow(1 - alpha)).clamp(min=MIN_SCALE)


@register(SmoothQuant)
def search_smoothquant(model: nn.Module, recipe: SmoothQuant, names: list[str], points: QuantPoints,
                       calibration: Optional[Calibration]) -> dict[str, Tensor]:
    """``{"<linear>.input_scale": s}`` for every linear in ``names`` fed by a LayerNorm."""
    out = {}
    for name in names:
        pair = points.pair_into(name)
        if pair is not None and pair.kind == "norm":
            weight = model.get_submodule(name).weight
            out[f"{name}.input_scale"] = smooth_scale(calibration.absmax(name), weight, recipe.alpha)
    return out
