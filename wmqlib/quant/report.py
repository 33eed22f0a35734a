"""What a quantization did, per layer: bits, granularity, method, weight error and storage cost.

Storage model (documented here only): a quantized weight costs ``bits`` per element, plus per group
(one group per tensor / row / row-group) a 16-bit scale and, when asymmetric, a ``bits``-bit zero point (llm-awq
packs zero points at the weight's bit width).  A pass-through weight (``bits=16``) costs 16 bits per element
(FP16 / BF16 storage) and nothing else.  Biases and everything outside the quantization points are not counted.

Granularity is reported as it acts on each weight: ``PerGroup(g)`` on a layer whose rows have at most ``g`` columns
is one group per row and is reported as ``"per-channel"`` (``QuantReport.w_granularities`` lists what a whole
quantization amounts to).

Weight error is measured on the EFFECTIVE weight, in the original model's coordinates: any input scale folded into
the weight (SmoothQuant, AWQ, OmniQuant's LET) is divided out again, so methods are comparable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor

from .recipe import Recipe
from .spec import (
    PASS_THROUGH_BITS, Granularity, PerChannel, PerGroup, PerTensor, QuantSpec, effective_granularity, scale_shape,
)

SCALE_BITS = 16


def describe(granularity: Granularity | None, shape: torch.Size | tuple[int, ...] | None = None) -> str:
    """``"per-tensor"``, ``"per-channel"``, ``"per-group(128)"``, ``"per-token"`` or ``"-"`` for None.

    With the weight's ``shape``, the granularity it amounts to (``effective_granularity``): a ``PerGroup(g)`` at
    least as wide as the rows is described as ``"per-channel"``, which it is.
    """
    if granularity is None:
        return "-"
    if shape is not None:
        granularity = effective_granularity(shape, granularity)
    if isinstance(granularity, PerGroup):
        return f"per-group({granularity.group_size})"
    return {PerTensor: "per-tensor", PerChannel: "per-channel"}.get(type(granularity), "per-token")


def weight_storage_bits(shape: torch.Size | tuple[int, ...], spec: QuantSpec) -> tuple[float, int]:
    """Total storage bits of a weight of ``shape`` in format ``spec`` and its number of groups (see module doc)."""
    n = math.prod(shape)
    if spec.passthrough:
        return float(n * PASS_THROUGH_BITS), 0
    groups = math.prod(scale_shape(shape, spec.granularity))
    per_group = SCALE_BITS + (0 if spec.symmetric else spec.bits)
    return float(n * spec.bits + groups * per_group), groups


def sqnr_db(x: Tensor, x_hat: Tensor) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(sum x^2 / sum (x - x_hat)^2)`` in dB (inf when exact)."""
    noise = (x.float() - x_hat.float()).pow(2).sum().item()
    signal = x.float().pow(2).sum().item()
    return math.inf if noise == 0 else 10 * math.log10(max(signal, 1e-30) / noise)


def layer_row(name: str, recipe: Recipe, w: Tensor, w_eff: Tensor) -> dict:
    """One report row for linear ``name``: ``w`` is the original weight ``(O, I)``, ``w_eff`` the effective one."""
    spec = recipe.weight_spec
    bits, groups = weight_storage_bits(w.shape, spec)
    return {
        "module": name,
        "method": type(recipe).__name__,
        "w_bits": recipe.w_bits,
        "w_granularity": describe(recipe.w_granularity, w.shape),  # a group as wide as a row is per-channel
        "w_symmetric": recipe.w_symmetric,
        "a_bits": recipe.a_bits or PASS_THROUGH_BITS,
        "a_granularity": describe(recipe.a_granularity),
        "out_features": w.shape[0],
        "in_features": w.shape[1],
        "n_weights": w.numel(),
        "n_groups": groups,
        "weight_mse": (w.float() - w_eff.float()).pow(2).mean().item(),
        "sqnr_db": sqnr_db(w, w_eff),
        "weight_bytes": bits / 8,
        "fp_weight_bytes": w.numel() * w.element_size(),
        "effective_bits": bits / w.numel(),
    }


@dataclass(frozen=True)
class QuantReport:
    """Per-layer rows of a quantization (``table``) and model-level totals over the quantization points."""

    rows: tuple[dict, ...]

    @property
    def table(self) -> pd.DataFrame:
        """One row per quantized linear: module, method, bits, granularity, weight_mse, sqnr_db, bytes, ..."""
        return pd.DataFrame(list(self.rows))

    @property
    def w_granularities(self) -> tuple[str, ...]:
        """The weight granularities the layers actually got, sorted (e.g. ``("per-channel",)`` for ``PerGroup(512)``
        on a model whose widest row has 404 columns, ``("per-channel", "per-group(128)")`` when only some are)."""
        return tuple(sorted({r["w_granularity"] for r in self.rows}))

    @property
    def weight_bytes(self) -> float:
        """Bytes of all quantized weights including scale / zero-point overhead."""
        return sum(r["weight_bytes"] for r in self.rows)

    @property
    def fp_weight_bytes(self) -> int:
        """Bytes of the same weights in the model's original floating-point dtype."""
        return sum(r["fp_weight_bytes"] for r in self.rows)

    @property
    def effective_bits(self) -> float:
        """Storage bits per weight over all quantization points, overhead included."""
        return 8 * self.weight_bytes / max(sum(r["n_weights"] for r in self.rows), 1)
