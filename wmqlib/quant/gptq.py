"""GPTQ (Frantar et al. 2022, IST-DASLab/gptq): quantize a weight column by column, each rounding error spread over
the columns not yet quantized so that the linear's OUTPUT on calibration inputs changes as little as possible.

The objective of a linear ``y = x W^T`` with calibration rows ``X (n, C)`` is, per output row ``w``,
``||X w - X q||^2 = (w - q)^T H (w - q) / 2`` with the Hessian ``H = 2 X^T X / n`` ``(C, C)``.  GPTQ is the
Optimal Brain Quantizer in a fixed column order: quantize column ``p`` to ``q_p``, then move the columns after it by
the optimal compensation ``W[:, p+1:] -= (w_p - q_p) / [H^-1]_pp * [H^-1]_{p, p+1:}`` and drop ``p`` from ``H``.
With ``U`` the upper Cholesky factor of ``H^-1`` (``H^-1 = U^T U``) row ``p`` of ``U`` is, up to the factor
``U_pp``, the row of the inverse Hessian of the columns left at step ``p``, so every step is
``e = (w_p - q_p) / U_pp``, ``W[:, p:] -= e U[p, p:]``.  Updates of the columns after the current block of
``block_size`` columns are applied once per block (``W[:, i2:] -= E U[i1:i2, i2:]``: the same numbers, fewer
passes over memory).  All arithmetic runs in float64; each column is rounded in float32 with the ``spec``
primitives, so ``fake_quantize(q, spec, lo, hi)`` reproduces the result bit for bit.

Details (the reference code's choices unless said otherwise):

- Dead inputs (``H_jj = 0``: the channel is 0 on every calibration row) get ``H_jj = 1`` and their weight column
  is set to 0 (it never contributes on the calibration data).
- Damping: ``H += damp * mean(diag H) * I`` before the inverse (``damp = 0.01``).  With fewer calibration rows than
  input channels ``H`` is singular and the damping is what makes it invertible.
- ``act_order``: columns are processed in descending ``diag(H)`` (largest input energy first; ties keep the column
  order).  The quantization groups stay those of the ORIGINAL column index ("static groups"), so the result is an
  ordinary ``PerGroup(g)`` weight that ``apply_params`` rebuilds from ``(lo, hi)``.
- Ranges: the min / max range of a group (per row; ``PerChannel()`` is one group of all columns, ``PerTensor()``
  also spans the rows) is fixed when the sweep reaches the group's first column, from the CURRENT weights of that
  group's columns (all error feedback so far included).  The reference code measures them on the weights as of
  the start of the current block (``W[:, i:i+g]`` misses the current block's feedback when ``g < block_size``),
  and with ``static_groups`` on the original weights; here the result does not depend on ``block_size``.
- The Hessian comes from the FP inputs of the linear (the calibration's reservoir sample of its input rows), also
  when the recipe quantizes activations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
from torch import Tensor, nn

from wmqlib.validate import check_bool, check_float, check_int

from .calibration import Calibration
from .points import QuantPoints, weight_matrix
from .recipe import Recipe, register
from .spec import PerChannel, PerGroup, PerTensor, QuantSpec, qparams, quantize_dequantize, scale_shape


@dataclass(frozen=True)
class GPTQ(Recipe):
    """GPTQ: output-error-compensating rounding, column by column (see the module docstring).

    Attributes:
        act_order: process columns in descending ``diag(H)`` (groups still follow the original column index).
        damp: damping added to ``diag(H)`` as a fraction of its mean, > 0 (0.01 in GPTQ).
        block_size: columns per lazy-update block, >= 1 (128 in GPTQ); changes the speed, not the result.
    """

    act_order: bool = False
    damp: float = 0.01
    block_size: int = 128

    needs_calibration = True
    supports_rotation: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bool("GPTQ.act_order", self.act_order)
        check_float("GPTQ.damp", self.damp, 0.0, strict=True)
        check_int("GPTQ.block_size", self.block_size, 1)


def hessian(x: Tensor) -> Tensor:
    """``H = 2 X^T X / n`` in float64 ``(C, C)`` from input rows ``x (n, C)``."""
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"GPTQ needs input rows (n, C) with n >= 1, got shape {tuple(x.shape)}")
    x = x.double()
    return 2 * (x.T @ x) / x.shape[0]


def _column_groups(columns: int, granularity: object) -> Tensor:
    """Group index of every column ``(C,)``: ``j // g`` for ``PerGroup(g)``, else 0 (one group per row)."""
    j = torch.arange(columns)
    return j // granularity.group_size if isinstance(granularity, PerGroup) else torch.zeros_like(j)


def _inverse_cholesky(h: Tensor, damp: float, name: str) -> Tensor:
    """Upper Cholesky factor ``U`` of ``(H + damp * mean(diag H) * I)^-1`` (``H^-1 = U^T U``), float64."""
    h = h.clone()
    h.diagonal().add_(damp * h.diagonal().mean())
    lower, info = torch.linalg.cholesky_ex(h)
    if int(info) == 0:
        upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
    if int(info) != 0 or not bool(torch.isfinite(lower).all()):
        raise ValueError(f"GPTQ: the damped Hessian of {name} is not positive definite (are its calibration inputs "
                         f"finite?); raise GPTQ.damp (now {damp}) or capture more calibration rows")
    return upper


@torch.no_grad()
def gptq_quantize(w: Tensor, h: Tensor, spec: QuantSpec, act_order: bool = False, damp: float = 0.01,
                  block_size: int = 128, name: str = "weight") -> tuple[Tensor, Tensor, Tensor]:
    """GPTQ-quantize ``w (O, C)`` for the Hessian ``h (C, C)`` (from ``hessian``); see the module docstring.

    Args:
        w: the weight, any float dtype and device; not modified.
        h: ``2 X^T X / n`` of the calibration inputs (float64 preferred), on any device (moved to ``w``'s).
        spec: a weight spec (``PerTensor()``, ``PerChannel()`` or ``PerGroup(g)``, ragged last group allowed).
        act_order, damp, block_size: as in ``GPTQ``.
        name: named in errors.

    Returns:
        ``(q, lo, hi)``: the quantized-dequantized weight ``q (O, C)`` float32 (on the grid) and the range of every
        group, each of shape ``scale_shape(w.shape, spec.granularity)`` float32, such that
        ``fake_quantize(q, spec, lo, hi)`` equals ``q`` exactly.
    """
    rows, columns = w.shape
    if h.shape != (columns, columns):
        raise ValueError(f"GPTQ: the Hessian of {name} must be ({columns}, {columns}), got {tuple(h.shape)}")
    if not isinstance(spec.granularity, (PerTensor, PerChannel, PerGroup)):
        raise ValueError(f"GPTQ quantizes weights per-tensor, per-channel or per-group, got {spec.granularity!r}")
    dev = w.device
    weight = w.detach().to(dev, torch.float64).clone()  # (O, C), updated in place below
    h = h.detach().to(dev, torch.float64).clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    weight[:, dead] = 0.0

    perm = torch.argsort(h.diagonal(), descending=True, stable=True) if act_order else torch.arange(columns, device=dev)
    weight, h = weight[:, perm], h[perm][:, perm]
    upper = _inverse_cholesky(h, damp, name)  # (C, C) in the processing order
    group_of = _column_groups(columns, spec.granularity).to(dev)[perm]  # (C,) group of each processed column
    n_groups = int(group_of.max()) + 1
    lo = torch.zeros(rows, n_groups, device=dev)  # (O, G) float32, filled as groups are reached
    hi = torch.zeros_like(lo)
    scale, zero = torch.ones_like(lo), torch.zeros_like(lo)
    fixed = [False] * n_groups
    groups = group_of.tolist()
    q = torch.zeros(rows, columns, device=dev)  # (O, C) float32, processing order

    for i1 in range(0, columns, block_size):
        i2 = min(i1 + block_size, columns)
        block = weight[:, i1:i2].clone()  # (O, B): the block, updated column by column
        err = torch.zeros_like(block)  # (O, B): scaled errors e of the block's columns
        for i in range(i2 - i1):
            p, k = i1 + i, groups[i1 + i]
            if not fixed[k]:  # first column of group k: its range from the group's current weights
                cols = (group_of == k).nonzero().flatten()  # processing positions of the group, all >= p
                current = (weight[:, cols] - err[:, :i] @ upper[i1:p, cols]).float()  # (O, |group|)
                g_lo, g_hi = current.amin(dim=1), current.amax(dim=1)
                if isinstance(spec.granularity, PerTensor):
                    g_lo, g_hi = g_lo.amin().expand(rows), g_hi.amax().expand(rows)
                lo[:, k], hi[:, k] = g_lo, g_hi
                scale[:, k], zero[:, k] = qparams(g_lo, g_hi, spec)
                fixed[k] = True
            col = block[:, i]  # (O,)
            q[:, p] = quantize_dequantize(col.float(), scale[:, k], zero[:, k], spec)
            e = (col - q[:, p].double()) / upper[p, p]
            block[:, i:] -= e[:, None] * upper[p, p:i2][None, :]
            err[:, i] = e
        weight[:, i2:] -= err @ upper[i1:i2, i2:]

    q = q[:, torch.argsort(perm)]
    shape = scale_shape(w.shape, spec.granularity)
    if isinstance(spec.granularity, PerTensor):
        lo, hi = lo[:1, :1], hi[:1, :1]
    return q, lo.reshape(shape), hi.reshape(shape)


@register(GPTQ)
def search_gptq(model: nn.Module, recipe: GPTQ, names: list[str], points: QuantPoints,
                calibration: Optional[Calibration]) -> dict[str, Tensor]:
    """``{"<linear>.weight": q, "<linear>.weight_lo": lo, "<linear>.weight_hi": hi}`` for every linear in ``names``;
    the Hessian of each from ``calibration.rows(name)`` (the reservoir sample of its input rows)."""
    spec = recipe.weight_spec
    if spec.passthrough:
        return {}
    out = {}
    for name in names:
        w = weight_matrix(model.get_submodule(name)).detach()  # a convolution's (O, C k k), patches as rows
        h = hessian(calibration.rows(name).to(w.device))
        q, lo, hi = gptq_quantize(w, h, spec, recipe.act_order, recipe.damp, recipe.block_size, name)
        out[f"{name}.weight"], out[f"{name}.weight_lo"], out[f"{name}.weight_hi"] = q, lo, hi
    return out
