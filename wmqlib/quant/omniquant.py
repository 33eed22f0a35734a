"""OmniQuant (Shao et al. 2023, OpenGVLab/OmniQuant): learnable weight clipping and equivalent transformation.

- LWC: per weight group, ``lo = sigmoid(beta) * min(W)``, ``hi = sigmoid(gamma) * max(W)``, ``gamma = beta = 4``
  at init (range x 0.982); rounding is straight-through, so the loss trains ``gamma`` and ``beta``.
- LET: for every linear fed by a LayerNorm (qkv, fc1), ``X' = (X - d) / s`` and ``W' = W diag(s)``,
  ``b' = b + W d``; the LayerNorm absorbs ``s`` and ``d`` at the end (``fold``).  ``s`` starts from the
  SmoothQuant scale (``alpha``, raw per-channel max ``|X|``) and ``d`` from the channel mid-range
  ``(max + min) / 2`` (OmniQuant's code) or from 0 (``let_shift="zero"``, the reference world-model code).
- Training, unit by unit (``points``: ``blocks.{i}``, ``layers.{i}.0``, ``layers.{i}.1``): minimise the MSE
  between the FP unit's and the quantized unit's outputs on the calibration's captured unit inputs with AdamW
  (weight decay 0; lr ``lwc_lr`` for LWC, ``let_lr`` for LET), in mini-batches of equal-length sequences.
  Activations, when quantized, are quantized during training too.

Choices, documented:
- ``epochs`` defaults to 10 (the OmniQuant repository uses 10-20).  The world-model reference code defaults to 0
  epochs, i.e. it silently trains nothing; ``epochs=0`` reproduces that (LET init + LWC init only).  There the LWC
  factors are switched on after the quantization ranges are fixed, so they have no effect, and the LET shift
  starts at 0: with 0 epochs its OmniQuant is SmoothQuant (alpha 0.5).  ``quantwm_reference("OmniQuant", ...)``
  (``lwc=False, let_shift="zero", epochs=0``, symmetric weights) reproduces that exactly.
  Cost: ``epochs * n_sequences / batch_size`` optimizer steps per unit, each about three unit forwards; with
  the default 32 sequences that is 80 steps per unit.  ``benchmarks/bench_quant.py --omniquant`` measures it: 90 s
  on one CPU core for its toy model (8 units of 196 tokens, 192 / 204 wide), i.e. about 11 s per unit.
- Points outside a trainable unit (``points.Unit.trainable``: the RSSM's convolutions, its encoder.fc and its GRU
  cell's ``ih`` / ``hh``, whose forward takes two inputs) are not trained: they are quantized as plain weights
  (MinMax ranges, no LET), with the recipe's activation quantizer.
- Every unit is trained on the FP inputs captured from the FP model, not on the outputs of already-quantized
  earlier units (OmniQuant's code): units stay independent and need no knowledge of how blocks are chained.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wmqlib.validate import check_choice

from .calibration import Calibration
from wmqlib.validate import check_bool, check_float, check_int
from .fold import set_module
from .points import QuantPoints, Unit
from .recipe import Recipe, register
from .smoothquant import smooth_scale
from .spec import PerTensor, QuantSpec, fake_quantize, group_minmax, scale_shape

LWC_INIT = 4.0
LET_SHIFTS = ("midrange", "zero")
MIN_SCALE = 1e-5


@dataclass(frozen=True)
class OmniQuant(Recipe):
    """OmniQuant (LWC + LET).

    Attributes:
        lwc, let: enable learnable weight clipping / learnable equivalent transformation (at least one).
        epochs: passes over the captured sequences per unit (>= 0; 0 = the reference code's untrained default).
        lwc_lr, let_lr: AdamW learning rates (OmniQuant's defaults 1e-2 and 5e-3), > 0.
        batch_size: sequences per optimizer step, >= 1.
        alpha: SmoothQuant migration strength of LET's initial scale, in [0, 1].
        let_shift: LET's initial shift: "midrange" (the channel's ``(max + min) / 2``, OmniQuant) or "zero"
            (the reference world-model code).
        seed: seed of the mini-batch order.
    """

    w_symmetric: bool = False
    lwc: bool = True
    let: bool = True
    epochs: int = 10
    lwc_lr: float = 1e-2
    let_lr: float = 5e-3
    batch_size: int = 4
    alpha: float = 0.5
    let_shift: str = "midrange"
    seed: int = 0

    needs_calibration = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bool("OmniQuant.lwc", self.lwc)
        check_bool("OmniQuant.let", self.let)
        if not (self.lwc or self.let):
            raise ValueError("OmniQuant needs lwc=True or let=True (with both off it is RTN: use RTN)")
        check_int("OmniQuant.epochs", self.epochs, 0)
        check_float("OmniQuant.lwc_lr", self.lwc_lr, 0.0, 10.0, strict=True)
        check_float("OmniQuant.let_lr", self.let_lr, 0.0, 10.0, strict=True)
        check_int("OmniQuant.batch_size", self.batch_size, 1)
        check_float("OmniQuant.alpha", self.alpha, 0.0, 1.0)
        check_choice("OmniQuant.let_shift", self.let_shift, LET_SHIFTS)
        check_int("OmniQuant.seed", self.seed, 0)


class _OmniLinear(nn.Module):
    """A linear under training: LET on its input / weight, LWC on its weight range, optional activation quant."""

    def __init__(self, linear: nn.Linear, spec: QuantSpec, act_spec: Optional[QuantSpec], lwc: bool,
                 let_init: Optional[tuple[Tensor, Tensor]], act_range: tuple[Tensor, Tensor]) -> None:
        super().__init__()
        self.spec, self.act_spec = spec, act_spec
        self.register_buffer("w", linear.weight.detach().float())
        self.register_buffer("b", torch.zeros(linear.out_features) if linear.bias is None else linear.bias.detach().float())
        self.register_buffer("act_lo", act_range[0].float())
        self.register_buffer("act_hi", act_range[1].float())
        self.scale = self.shift = self.gamma = self.beta = None
        if let_init is not None:
            self.scale, self.shift = (nn.Parameter(t.float().clone()) for t in let_init)
        if lwc:
            init = torch.full(scale_shape(self.w.shape, spec.granularity), LWC_INIT)
            self.gamma, self.beta = nn.Parameter(init.clone()), nn.Parameter(init.clone())

    def transformed(self) -> tuple[Tensor, Tensor]:
        """LET-transformed ``(W', b')`` = ``(W diag(s), b + W d)``."""
        if self.scale is None:
            return self.w, self.b
        return self.w * self.scale.clamp(min=MIN_SCALE), self.b + self.w @ self.shift

    def weight_range(self, w: Tensor) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """LWC range of ``w`` (scale shape), or (None, None) for MinMax."""
        if self.gamma is None:
            return None, None
        lo, hi = group_minmax(w, self.spec.granularity)
        return torch.sigmoid(self.beta) * lo, torch.sigmoid(self.gamma) * hi

    def forward(self, x: Tensor) -> Tensor:
        """``x (..., I)`` -> ``(..., O)`` through the quantized, transformed linear."""
        lo, hi = self.act_lo, self.act_hi
        if self.scale is not None:
            s = self.scale.clamp(min=MIN_SCALE)
            x = (x - self.shift) / s
            lo, hi = (lo - self.shift) / s, (hi - self.shift) / s
        if self.act_spec is not None:
            static = isinstance(self.act_spec.granularity, PerTensor)
            x = fake_quantize(x, self.act_spec, lo.min(), hi.max()) if static else fake_quantize(x, self.act_spec)
        w, b = self.transformed()
        return F.linear(x, fake_quantize(w, self.spec, *self.weight_range(w)), b)

    def export(self, name: str) -> dict[str, Tensor]:
        """The trained quantities as search params for linear ``name``."""
        with torch.no_grad():
            w, _ = self.transformed()
            lo, hi = self.weight_range(w)
            out = {} if lo is None else {f"{name}.weight_lo": lo, f"{name}.weight_hi": hi}
            if self.scale is not None:
                out[f"{name}.input_scale"] = self.scale.clamp(min=MIN_SCALE)
                out[f"{name}.input_shift"] = self.shift
        return {k: v.detach().clone() for k, v in out.items()}


def _batches(seqs: list[Tensor], batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """Shuffled mini-batches of indices of equal-shape sequences."""
    by_shape: dict[tuple, list[int]] = {}
    for i in torch.randperm(len(seqs), generator=generator).tolist():
        by_shape.setdefault(tuple(seqs[i].shape), []).append(i)
    batches = [idx[k:k + batch_size] for idx in by_shape.values() for k in range(0, len(idx), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def train_unit(model: nn.Module, unit: Unit, recipe: OmniQuant, names: list[str], points: QuantPoints,
               calibration: Calibration) -> dict[str, Tensor]:
    """Train LWC / LET of the linears of ``unit`` that are in ``names``; returns their search params."""
    fp_unit = copy.deepcopy(model.get_submodule(unit.name)).float().eval().requires_grad_(False)
    device = next(fp_unit.parameters()).device
    q_unit = copy.deepcopy(fp_unit)
    trained: dict[str, _OmniLinear] = {}
    for name in (n for n in unit.linears.values() if n in names):
        linear = model.get_submodule(name)
        pair = points.pair_into(name)
        let_init = None
        if recipe.let and pair is not None and pair.kind == "norm":
            lo, hi = calibration.channel_range(name)
            shift = (lo + hi) / 2 if recipe.let_shift == "midrange" else torch.zeros_like(lo)
            let_init = (smooth_scale(calibration.absmax(name), linear.weight, recipe.alpha), shift.to(device))
        trained[name] = _OmniLinear(linear, recipe.weight_spec, recipe.act_spec, recipe.lwc, let_init,
                                    calibration.channel_range(name)).to(device)
        set_module(q_unit, name[len(unit.name) + 1:], trained[name])
    groups = [
        {"params": [p for m in trained.values() for p in (m.gamma, m.beta) if p is not None], "lr": recipe.lwc_lr},
        {"params": [p for m in trained.values() for p in (m.scale, m.shift) if p is not None], "lr": recipe.let_lr},
    ]
    groups = [g for g in groups if g["params"]]
    seqs = [s.to(device) for s in calibration.sequences(unit.name)]
    if groups and recipe.epochs:
        with torch.no_grad():
            targets = [fp_unit(s[None])[0] for s in seqs]
        optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
        generator = torch.Generator().manual_seed(recipe.seed)
        with torch.enable_grad():
            for _ in range(recipe.epochs):
                for batch in _batches(seqs, recipe.batch_size, generator):
                    x, y = torch.stack([seqs[i] for i in batch]), torch.stack([targets[i] for i in batch])
                    loss = F.mse_loss(q_unit(x), y)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
    return {k: v for name, m in trained.items() for k, v in m.export(name).items()}


@register(OmniQuant)
def search_omniquant(model: nn.Module, recipe: OmniQuant, names: list[str], points: QuantPoints,
                     calibration: Optional[Calibration]) -> dict[str, Tensor]:
    """Train every trainable unit holding a linear in ``names``; returns LET scales / shifts and LWC ranges."""
    if recipe.weight_spec.passthrough and recipe.act_spec is None:
        return {}
    out: dict[str, Tensor] = {}
    for unit in points.units:
        if unit.trainable and any(n in names for n in unit.linears.values()):
            out.update(train_unit(model, unit, recipe, names, points, calibration))
    return out
