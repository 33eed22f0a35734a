"""Sensitivity-driven mixed precision: how much the planning objective feels each linear's quantization, and where
an average-bits budget is best spent.

Sensitivity (``layer_sensitivity``). J (E, S) is the planning objective of S candidate action sequences on each of
E calibration episodes (lower is better; the caller builds the callable, see ``wmqlib.mixed_study``). Quantizing
ONLY linear l at b bits (every other weight FP) changes it by D = J_lb - J, and with Var_e the variance of J[e, :]
over the S sequences and Dbar_e the mean of D[e, :]:

    sensitivity(l, b) = mean_{e,s} (D[e,s] - Dbar_e)^2 / mean_e Var_e      shift(l, b) = mean_e Dbar_e^2 / mean_e Var_e

CEM ranks the candidates of one episode against each other, so a change shared by all of them (Dbar_e: e.g. an
encoder layer moving the goal latent's distance to everything alike) cannot change a plan; ``sensitivity`` is the
rest, the part that can reorder candidates, relative to the spread the planner ranks by (dimensionless: 1.0 = the
perturbation is as large as that spread). Their sum is the plain mean squared change over the mean variance. On three
layers of the tiny test model at 2 bits (RTN) the shared part was 10-400x the rest: left in, it would rank layers by
what the planner ignores.
``sensitivity_low`` / ``sensitivity_high``: its 95% percentile bootstrap interval over the episodes (the units: E
episodes resampled with replacement ``BOOTSTRAP`` times, seed 0, the ratio recomputed on each resample).
``rank_corr`` is the Spearman rank correlation of J_lb[e] with J[e], averaged over episodes: what CEM's top-k sees
(1 = the same order). As in CEM, a non-finite cost counts as +inf: the ranks see it, and both ratios are +inf.

Allocation (``allocate_bits``). With n_l the weight count of linear l and b_l in ``choices``:

    minimise sum_l sensitivity(l, b_l)   subject to   sum_l n_l b_l <= budget * sum_l n_l

Greedy: every layer starts at its lowest allowed choice; repeatedly take the upgrade (any layer, to any higher
choice) with the largest drop in sensitivity per added bit * weight, among the upgrades that still fit the budget;
stop when none fits. The result meets the budget, and no single upgrade of any layer would still fit (as close to
the budget as one more step allows). Sensitivities add only approximately (layers interact), which is why this is a
heuristic and not an exact knapsack. The allocation is NOT monotone in the budget: a larger budget can afford an
expensive upgrade early and then lack room for a cheap one a smaller budget took (tests/quant/test_mixed.py).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Optional, Union

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from wmqlib.validate import check_float, check_int, check_type

from .api import quantize
from .calibration import Calibration
from .points import Scope, find_points, select
from .recipe import Recipe
from .spec import ALLOWED_BITS

ObjectiveFn = Callable[[nn.Module], Tensor]
"""``model -> (S,) or (E, S)``: the planning objective of fixed candidate sequences under ``model`` (lower = better)."""
RecipeFn = Callable[[int], Recipe]
"""``bits -> Recipe`` with ``w_bits == bits``, e.g. ``lambda b: RTN(b, PerGroup(32))``."""
COLUMNS = ("name", "part", "block", "role", "params", "bits", "sensitivity", "sensitivity_low", "sensitivity_high",
           "shift", "rank_corr")
BOOTSTRAP = 1000  # episode resamples of the sensitivity's interval
FREE_BITS = 8  # a choice >= 8 bits not in the table counts as sensitivity 0 (W8 plans like FP in the paper)


def _objective(objective_fn: ObjectiveFn, model: nn.Module, what: str) -> np.ndarray:
    """The objective as float64 (E, S); a (S,) result is one episode."""
    with torch.no_grad():
        out = objective_fn(model)
    if not isinstance(out, Tensor) or out.ndim not in (1, 2) or out.shape[-1] < 2:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"objective_fn({what}) must return a tensor (S,) or (E, S) with S >= 2 sequences, got {shape}")
    return out.detach().double().cpu().numpy().reshape(-1, out.shape[-1])


def _ranks(x: np.ndarray) -> np.ndarray:
    """(E, S) -> average ranks along S (ties share their mean rank), centred per row; NaN counts as +inf."""
    r = pd.DataFrame(np.nan_to_num(x, nan=np.inf)).rank(axis=1, method="average").to_numpy()
    return r - r.mean(axis=1, keepdims=True)


def spearman(fp: np.ndarray, other: np.ndarray) -> float:
    """Spearman rank correlation of ``other`` with ``fp`` per row of (E, S), averaged over rows. A row where
    ``other`` is constant carries no ranking information and counts 0."""
    a, b = _ranks(fp), _ranks(other)
    den = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    corr = np.divide((a * b).sum(axis=1), den, out=np.zeros(len(a)), where=den > 0)
    return float(corr.mean())


def _block(unit: str) -> int:
    """Index of the transformer block of a unit ("encoder.blocks.3" -> 3, "predictor...layers.2.1" -> 2), or -1."""
    found = re.search(r"(?:^|\.)(\d+)(?:\.|$)", unit)
    return int(found.group(1)) if found else -1


def _bits_list(bits: object, field: str) -> tuple[int, ...]:
    values = check_type(field, bits, (tuple, list), f"a non-empty tuple of distinct bit widths from {ALLOWED_BITS}")
    if not values or len(set(values)) != len(values):
        raise ValueError(f"{field} must be a non-empty tuple of distinct bit widths from {ALLOWED_BITS}, got {bits!r}")
    for b in values:
        check_int(f"{field}[]", b, 2, 16)
        if b not in ALLOWED_BITS:
            raise ValueError(f"{field} must hold bit widths from {ALLOWED_BITS}, got {b}")
    return tuple(sorted(int(b) for b in values))


def _recipe(make_recipe: RecipeFn, bits: int, field: str) -> Recipe:
    recipe = make_recipe(bits)
    check_type(f"{field}({bits})", recipe, Recipe, "a wmqlib.quant recipe")
    if recipe.w_bits != bits:
        raise ValueError(f"{field}({bits}) must return a recipe with w_bits={bits}, got w_bits={recipe.w_bits}")
    return recipe


def layer_sensitivity(model: nn.Module, objective_fn: ObjectiveFn, recipe_for_bits: RecipeFn,
                      bits: Sequence[int] = (2, 3, 4), names: Optional[Scope] = None,
                      calibration: Optional[Calibration] = None) -> pd.DataFrame:
    """Sensitivity of the planning objective to quantizing each linear alone (module docstring).

    model: the FP model (left untouched). objective_fn: ``model -> (S,) | (E, S)`` costs of fixed candidate
    sequences, evaluated under ``torch.no_grad`` (``wmqlib.mixed_study.planning_objective`` builds it; it must encode
    the start and goal with the model it is given, or the encoder's layers show no effect). recipe_for_bits:
    ``bits -> Recipe``. bits: the bit widths to measure. names: None (every quantization point) or a scope
    (pattern(s), as ``quantize``'s). calibration: for recipes that need one (AWQ, GPTQ, static activations).

    Returns one row per (linear, bits), linears in model order: name, part (its scope as the architecture declares
    it, ``QuantPoints.part``: "encoder" / "predictor"), block (index of its transformer block), role (qkv / proj / fc1 / fc2), params (weight count), bits,
    sensitivity, shift, rank_corr (module docstring). Deterministic when ``objective_fn`` and the recipes are.
    """
    widths = _bits_list(bits, "layer_sensitivity.bits")
    recipes = {b: _recipe(recipe_for_bits, b, "layer_sensitivity.recipe_for_bits") for b in widths}
    points = find_points(model)
    chosen = points.linears if names is None else points.select(names, "layer_sensitivity.names")
    fp = _objective(objective_fn, model, "the FP model")
    if not np.isfinite(fp).all():
        raise ValueError("objective_fn(the FP model) returned non-finite costs; sensitivity is measured against FP")
    spread = fp.var(axis=1)  # (E,) within-episode variance
    if not (spread > 0).all():
        raise ValueError(f"the FP objective is constant over the sequences of episode(s) {np.flatnonzero(spread == 0)}"
                         "; sensitivity divides by that spread - use distinct candidate sequences")
    resamples = np.random.default_rng(0).integers(0, len(spread), (BOOTSTRAP, len(spread)))  # (B, E) episodes
    rows = []
    for name in chosen:
        unit = points.unit_of(name)
        weight = model.get_submodule(name).weight
        for b in widths:
            qmodel, report = quantize(model, recipes[b], calibration, scope=[name])
            if len(report.rows) != 1:  # an exact name selects exactly its own linear
                raise ValueError(f"scope=[{name!r}] quantized {len(report.rows)} linears, expected 1")
            got = _objective(objective_fn, qmodel, f"{name} at {b} bits")
            if got.shape != fp.shape:
                raise ValueError(f"objective_fn returned {got.shape} for {name} at {b} bits, {fp.shape} for FP")
            change = got - fp  # (E, S)
            shared = change.mean(axis=1, keepdims=True)  # (E, 1): moves every candidate of an episode alike
            finite = bool(np.isfinite(got).all())
            per_episode = ((change - shared) ** 2).mean(axis=1)  # (E,)
            sens = float(per_episode.mean() / spread.mean()) if finite else math.inf
            low, high = np.percentile(per_episode[resamples].mean(axis=1) / spread[resamples].mean(axis=1),
                                      [2.5, 97.5]) if finite else (math.inf, math.inf)
            shift = float((shared ** 2).mean() / spread.mean()) if finite else math.inf
            rows.append({"name": name, "part": points.part(name), "block": _block(unit.name),
                         "role": points.role(name), "params": int(weight.numel()), "bits": b,
                         "sensitivity": sens, "sensitivity_low": float(low), "sensitivity_high": float(high),
                         "shift": shift, "rank_corr": spearman(fp, got)})
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _layers(table: pd.DataFrame) -> tuple[list[str], dict[str, int]]:
    """Layer names in table order and their weight counts; errors for a malformed table."""
    check_type("table", table, pd.DataFrame, "a pandas DataFrame from layer_sensitivity")
    missing = [c for c in ("name", "params", "bits", "sensitivity") if c not in table.columns]
    if missing or table.empty:
        raise ValueError(f"table must be layer_sensitivity's table (columns name, params, bits, sensitivity, one row "
                         f"per layer and bit width); missing columns {missing}" if missing else "table has no rows")
    if table.duplicated(["name", "bits"]).any():
        raise ValueError("table holds several rows for one (name, bits); give one measurement per layer and width")
    sens = table["sensitivity"].to_numpy(dtype=float)
    if np.isnan(sens).any() or (sens < 0).any():
        raise ValueError("table.sensitivity must be >= 0 (or +inf for a model that produced NaN / inf), got NaN or a "
                         "negative value")
    params = table.groupby("name", sort=False)["params"].agg(["min", "max"])
    if (params["min"] != params["max"]).any() or (params["min"] < 1).any():
        raise ValueError("table.params must be one positive weight count per layer")
    return list(params.index), {name: int(n) for name, n in params["min"].items()}


def _floors(names: list[str], min_bits: Union[None, int, Mapping[str, int]], choices: tuple[int, ...],
            parts: Mapping[str, tuple[str, ...]]) -> dict:
    """Starting choice per layer: the lowest choice >= its floor (``min_bits``: one int, or {pattern: int} where
    the last matching pattern wins; a pattern naming a part, "encoder" / "predictor", stands for its layers)."""
    floor = {name: choices[0] for name in names}
    if min_bits is None:
        return floor
    rules = {"all": min_bits} if not isinstance(min_bits, Mapping) else dict(min_bits)
    for pattern, value in rules.items():
        field = "allocate_bits.min_bits" + ("" if not isinstance(min_bits, Mapping) else f"[{pattern!r}]")
        check_int(field, value, choices[0], choices[-1], why=" (within the choices)")
        for name in select(names, pattern, "allocate_bits.min_bits key", parts):
            floor[name] = value
    return {name: next(c for c in choices if c >= value) for name, value in floor.items()}


def allocate_bits(table: pd.DataFrame, budget: float, choices: Sequence[int] = (2, 3, 4, 8),
                  min_bits: Union[None, int, Mapping[str, int]] = None) -> dict[str, int]:
    """Bits per layer meeting a parameter-weighted average-bits ``budget`` (greedy; see the module docstring).

    table: ``layer_sensitivity``'s table; it must hold every choice below 8 bits for every layer (a choice of 8 or 16
    not in it counts as sensitivity 0). budget: average weight bits, in [min(choices), max(choices)]. min_bits:
    None, a floor for every layer, or {pattern: floor} (e.g. ``{"encoder": 4}``; the last matching pattern wins).
    Returns ``{name: bits}`` in the table's order, with ``average_bits(result, table) <= budget``.
    """
    names, params = _layers(table)
    choices = _bits_list(choices, "allocate_bits.choices")
    budget = check_float("allocate_bits.budget", budget, choices[0], choices[-1])
    measured = {(n, int(b)): float(s) for n, b, s in table[["name", "bits", "sensitivity"]].itertuples(index=False)}
    lacking = sorted({c for n in names for c in choices if c < FREE_BITS and (n, c) not in measured})
    if lacking:
        raise ValueError(f"table lacks the sensitivity at bits {lacking} (every choice below {FREE_BITS} must be "
                         f"measured: layer_sensitivity(..., bits={tuple(c for c in choices if c < FREE_BITS)}))")
    sens = {n: {c: measured.get((n, c), 0.0) for c in choices} for n in names}
    parts = ({} if "part" not in table.columns else  # the parts of layer_sensitivity's table, as its model declares
             {part: tuple(table.loc[table["part"] == part, "name"].unique()) for part in table["part"].unique()})
    bits = _floors(names, min_bits, choices, parts)
    total = sum(params.values())
    room = budget * total - sum(params[n] * bits[n] for n in names)  # bit * weights still free
    if room < -1e-9 * total:
        raise ValueError(f"min_bits already needs {average_bits(bits, table):.3f} average bits, above the budget "
                         f"{budget}")
    while True:
        best = None  # (ratio, -cost, -index) is maximised: best drop per bit-weight, then cheaper, then model order
        for index, name in enumerate(names):
            for c in choices:
                cost = params[name] * (c - bits[name])
                if c <= bits[name] or cost > room + 1e-9 * total:
                    continue
                here, there = sens[name][bits[name]], sens[name][c]
                drop = 0.0 if here == there else here - there  # inf - inf counts as no drop
                key = (drop / cost, -cost, -index)
                if best is None or key > best[0]:
                    best = (key, name, c, cost)
        if best is None:
            return bits
        _, name, c, cost = best
        bits[name], room = c, room - cost


def mixed_overrides(bits: Mapping[str, int], make_recipe: RecipeFn) -> dict[str, Recipe]:
    """``quantize`` overrides realising an allocation: ``{exact linear name: make_recipe(bits)}`` in the order of
    ``bits`` (``allocate_bits`` gives model order), e.g. ``quantize(model, RTN(8), overrides=mixed_overrides(...))``."""
    check_type("mixed_overrides.bits", bits, Mapping, "a dict {linear name: bits} from allocate_bits")
    recipes: dict[int, Recipe] = {}
    out = {}
    for name, b in bits.items():
        if b not in recipes:
            recipes[b] = _recipe(make_recipe, check_int(f"mixed_overrides.bits[{name!r}]", b, 2, 16),
                                 "mixed_overrides.make_recipe")
        out[name] = recipes[b]
    return out


def average_bits(bits: Mapping[str, int], table: pd.DataFrame) -> float:
    """Parameter-weighted average weight bits of an allocation: sum n_l b_l / sum n_l over the layers in ``bits``
    (nominal bits: no scale / zero-point overhead; ``QuantReport.effective_bits`` counts that)."""
    _, params = _layers(table)
    unknown = [name for name in bits if name not in params]
    if unknown or not bits:
        raise ValueError(f"bits names layers absent from the table: {unknown[:4]}" if unknown else "bits is empty")
    return sum(params[n] * b for n, b in bits.items()) / sum(params[n] for n in bits)
