"""AWQ (Lin et al. 2023, mit-han-lab/llm-awq): activation-aware scale search, then a clipping search.

1. Scale search, per scale pair ``prev -> linear`` whose target role is in ``scale_targets`` (LN1 -> qkv,
   v -> proj, LN2 -> fc1, GELU -> fc2): with ``s_x`` the per-input-channel mean ``|x|`` over ALL calibration tokens,
   for ``ratio = i / n_grid`` (i = 0..n_grid-1) take ``s = s_x^ratio`` (clamped >= 1e-4) normalised by
   ``sqrt(max(s) min(s))``, quantize ``W diag(s)``, and keep the ``s`` with the lowest loss.  ``i = 0`` is RTN, so
   AWQ never does worse than RTN on that loss.
2. Clip search, per output channel / group of every linear after the scales are folded: clip to
   ``[max(min, -m), min(max, m)]`` with ``m = max|w| (1 - i / n_grid)`` for ``i < max_shrink * n_grid`` and keep
   the best per group.  Query / key rows of the fused qkv are skipped (as llm-awq skips q_proj / k_proj): their
   error is amplified by the softmax and not measured by a linear-output loss.  ``clip_qk=True`` clips them too,
   as the reference world-model code does (its name filter looks for q / k projections and misses the fused qkv).

The loss (our choice, documented): the mean squared error of the OUTPUT OF THE AFFECTED LINEAR over up to
``search_tokens`` calibration rows (the reservoir sample), ``||X W^T - (X / s) Q(W diag(s))^T||^2``; for the clip
search, per group, the error of that group's partial output (llm-awq's per-group criterion).  llm-awq measures the
scale search on the output of the whole block: with the linear-output loss units need no re-execution, so any
model with these naming conventions works, and the search is a pure function of weights and calibration rows.

Differences to the reference world-model code: it searches scales only on LN2 -> fc1 (``scale_targets=("fc1",)``
reproduces that), measures the scale search on the MLP's output, clips q / k rows (``clip_qk=True`` reproduces
that) and falls back to per-channel clipping when ``in_features % group != 0``; here ragged groups are searched
as they are.  ``wmqlib.quant.quantwm_reference("AWQ", ...)`` gives the reference configuration.
The v -> proj pair is used only when the qkv linear is quantized by the same recipe.  Points without a scale
pair, or whose role is not in ``scale_targets``, get the clip search alone (the RSSM's convolutions, encoder.fc
and GRU recurrent matrix ``hh`` have no pair; its GRU input matrix ``ih`` has an exact one from the transition's
activation, searched when "ih" is in ``scale_targets``).  With ``PerTensor()`` weights
the clip search is skipped.  Weights default to asymmetric with a zero point, g128.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from .calibration import Calibration
from wmqlib.validate import check_bool, check_float, check_int
from .points import ALL_ROLES, ROLES, QuantPoints, weight_matrix
from .recipe import Recipe, register
from .spec import Granularity, PerGroup, PerTensor, QuantSpec, fake_quantize, group_minmax, split_groups

MIN_SCALE = 1e-4
# Elements of the (tokens, rows, groups) partial-output tensor per chunk of the clip search (memory bound).
CLIP_CHUNK_ELEMENTS = 2**22


@dataclass(frozen=True)
class AWQ(Recipe):
    """Activation-aware weight quantization.

    Attributes:
        scale_targets: roles whose input scales are searched: a subset of ``points.ALL_ROLES``; the default is
            DINO-WM's four ("qkv", "proj", "fc1", "fc2"), which covers the RSSM's fc1 / fc2 but not "ih".
        clip: run the clipping search after the scale search.
        clip_qk: also clip the query / key rows of a fused qkv linear (the reference code does; llm-awq does not).
        n_grid: grid size of both searches (20 in llm-awq), >= 1.
        max_shrink: the clip search tries shrinks ``i / n_grid < max_shrink`` (0.5 in llm-awq), in [0, 1).
        search_tokens: calibration rows used per linear (at most the calibration's ``max_tokens``), >= 1.
    """

    w_granularity: Granularity = PerGroup(128)
    w_symmetric: bool = False
    scale_targets: tuple[str, ...] = ROLES
    clip: bool = True
    clip_qk: bool = False
    n_grid: int = 20
    max_shrink: float = 0.5
    search_tokens: int = 1024

    needs_calibration = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.scale_targets, tuple) or not set(self.scale_targets) <= set(ALL_ROLES):
            raise ValueError(f"AWQ.scale_targets must be a tuple of roles from {ALL_ROLES}, got "
                             f"{self.scale_targets!r}")
        check_bool("AWQ.clip", self.clip)
        check_bool("AWQ.clip_qk", self.clip_qk)
        check_int("AWQ.n_grid", self.n_grid, 1)
        check_float("AWQ.max_shrink", self.max_shrink, 0.0, 0.999)
        check_int("AWQ.search_tokens", self.search_tokens, 1)


def search_scale(x: Tensor, w: Tensor, x_absmean: Tensor, spec: QuantSpec, n_grid: int) -> Tensor:
    """Best input scale ``s (C,)`` for inputs ``x (T, C)`` and weight ``w (O, C)`` (see module doc, step 1)."""
    y = x @ w.T
    best_loss, best = float("inf"), torch.ones_like(x_absmean)
    for i in range(n_grid):
        s = x_absmean.pow(i / n_grid).clamp(min=MIN_SCALE)
        s = s / (s.max() * s.min()).sqrt()
        w_q = fake_quantize(w * s, spec) / s
        loss = (x @ w_q.T - y).pow(2).mean().item()
        if loss < best_loss:
            best_loss, best = loss, s
    return best


def search_clip(x: Tensor, w: Tensor, spec: QuantSpec, n_grid: int, max_shrink: float) -> tuple[Tensor, Tensor]:
    """Best per-group range ``(lo, hi)`` (scale shape) for inputs ``x (T, C)`` and weight ``w (O, C)`` (step 2)."""
    lo0, hi0 = group_minmax(w, spec.granularity)
    amax = torch.maximum(-lo0, hi0)
    best_lo, best_hi = lo0.clone(), hi0.clone()
    xg = split_groups(x, spec.granularity)  # (T, G, L): tokens are rows, like the weight's output rows
    n_shrink = int(max_shrink * n_grid)
    chunk = max(1, CLIP_CHUNK_ELEMENTS // (x.shape[0] * lo0.shape[1]))
    for start in range(0, w.shape[0], chunk):
        rows = slice(start, start + chunk)
        wg = split_groups(w[rows], spec.granularity)  # (R, G, L)
        ref = torch.einsum("tgl,rgl->trg", xg, wg)
        best_err = torch.full_like(lo0[rows], float("inf"))
        for i in range(n_shrink):
            m = amax[rows] * (1 - i / n_grid)
            lo, hi = torch.maximum(lo0[rows], -m), torch.minimum(hi0[rows], m)
            wq = split_groups(fake_quantize(w[rows], spec, lo, hi), spec.granularity)
            err = (torch.einsum("tgl,rgl->trg", xg, wq) - ref).pow(2).mean(dim=0)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_lo[rows] = torch.where(better, lo, best_lo[rows])
            best_hi[rows] = torch.where(better, hi, best_hi[rows])
    return best_lo, best_hi


@register(AWQ)
def search_awq(model: nn.Module, recipe: AWQ, names: list[str], points: QuantPoints,
               calibration: Optional[Calibration]) -> dict[str, Tensor]:
    """``{"<linear>.input_scale": s}`` for searched pairs and ``weight_lo``/``weight_hi`` for every linear."""
    spec = recipe.weight_spec
    if spec.passthrough:
        return {}
    weights = {n: weight_matrix(model.get_submodule(n)).detach().float() for n in names}
    inputs = {n: calibration.rows(n)[: recipe.search_tokens].to(weights[n].device) for n in names}
    scales = {}
    for name in names:
        pair = points.pair_into(name)
        if pair is None or points.role(name) not in recipe.scale_targets or (pair.kind == "v" and pair.prev not in names):
            continue
        absmean = calibration.absmean(name).to(weights[name].device)
        scales[name] = search_scale(inputs[name], weights[name], absmean, spec, recipe.n_grid)
    out = {f"{n}.input_scale": s for n, s in scales.items()}
    if not recipe.clip or isinstance(spec.granularity, PerTensor):
        return out
    for name in names:
        w, x = weights[name], inputs[name]
        if name in scales:
            w, x = w * scales[name], x / scales[name]
        for pair in points.pairs_from(name):
            if pair.kind == "v" and pair.linear in scales:
                w = w.clone()
                w[-scales[pair.linear].numel():] /= scales[pair.linear][:, None]
        lo, hi = group_minmax(w, spec.granularity)
        skip = 2 * w.shape[0] // 3 if points.role(name) == "qkv" and not recipe.clip_qk else 0
        lo[skip:], hi[skip:] = search_clip(x, w[skip:], spec, recipe.n_grid, recipe.max_shrink)
        out[f"{name}.weight_lo"], out[f"{name}.weight_hi"] = lo, hi
    return out
