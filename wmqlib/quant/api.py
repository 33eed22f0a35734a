"""The entry point: ``quantize(model, recipe, calibration, scope, overrides) -> (quantized copy, report)``.

``quantize`` is ``apply_params(model, ..., search_params(model, ...))``: the search returns a plain dict of tensors
keyed ``"<linear>.<quantity>"`` (see ``recipe``) that ``save_params`` / ``load_params`` store as safetensors, and
``apply_params`` is a pure function of the model and that dict::

    params = search_params(model, AWQ(4, PerGroup(128)), calib)
    save_params(params, "awq_w4.safetensors")
    qmodel, report = apply_params(model, AWQ(4, PerGroup(128)), load_params("awq_w4.safetensors"))

Scope and overrides: the quantization points (``points``) matched by ``scope`` get ``recipe``; then, in dict
order, the points in scope matched by each ``overrides`` pattern get that pattern's recipe (the last match wins),
e.g. ``quantize(wm, RTN(4, PerGroup(128)), overrides={"encoder": RTN(8)})``.  A scope or override pattern that
matches nothing raises.  The original model is never modified.

Rotations (``Recipe.rotation``, see ``rotation``): for a rotated recipe, ``search_params`` draws one orthogonal
``R`` per linear, runs the method's search unchanged on a rotated view (a model copy with weights ``W R``, a
calibration whose rows are ``x R``) and stores ``R`` as ``"<linear>.input_rotation"``; ``apply_params`` quantizes
``W R``.  With activation quantization the ``QuantLinear`` rotates its input online (``act(x R) Q(W R)^T``);
weight-only, it stores the dense ``Q(W R) R^T`` instead, the same function without the ``(C_in, C_in)`` matmul per
call (for fc2, ``C_in = 4 C``, that matmul would cost four times the layer itself).  Any method whose search only
reads weights and calibration rows thus works rotated; it declares so with ``supports_rotation = True``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Mapping, Optional

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .calibration import Calibration
from .fold import fold, set_module
from .points import QuantPoints, Scope, find_points, select, weight_matrix
from .qlinear import ActQuantizer, QuantConv2d, QuantLinear
from .recipe import QUANTITIES, SEARCHES, Recipe
from .report import QuantReport, layer_row
from .rotation import RotatedCalibration, rotate_rows, rotated_model, rotation_matrix, rotation_seed
from .spec import fake_quantize

Overrides = Optional[Mapping[str, Recipe]]


def _check_recipe(recipe: object, field: str) -> Recipe:
    if not isinstance(recipe, Recipe) or type(recipe) not in SEARCHES:
        known = ", ".join(sorted(t.__name__ for t in SEARCHES))
        raise TypeError(f"{field} must be a recipe instance ({known}), got {recipe!r}")
    return recipe


def assign_recipes(model: nn.Module, recipe: Recipe, scope: Scope = "all", overrides: Overrides = None
                   ) -> tuple[QuantPoints, dict[str, Recipe]]:
    """The model's quantization points and the recipe of every linear in scope (after overrides), in model order.

    Scope names ("encoder", "predictor") mean what the model's layout declares (``points``), in ``scope`` and in
    the ``overrides`` keys alike."""
    _check_recipe(recipe, "recipe")
    points = find_points(model)
    chosen = {name: recipe for name in points.select(scope)}
    if overrides is not None and not isinstance(overrides, Mapping):
        raise TypeError(f"overrides must be a dict from module-name pattern to recipe, got {type(overrides).__name__}")
    for pattern, other in (overrides or {}).items():
        _check_recipe(other, f"overrides[{pattern!r}]")
        for name in select(list(chosen), pattern, "overrides key (within the scope)", points.scopes):
            chosen[name] = other
    return points, chosen


def _groups(chosen: Mapping[str, Recipe]) -> dict[Recipe, list[str]]:
    groups: dict[Recipe, list[str]] = {}
    for name, recipe in chosen.items():
        groups.setdefault(recipe, []).append(name)
    return groups


def _activation_ranges(names: list[str], params: Mapping[str, Tensor], calib: Calibration | RotatedCalibration
                       ) -> dict[str, Tensor]:
    """Static per-tensor input ranges from per-channel min / max, in the coordinates after the folds.

    For rotated linears ``calib`` is the ``RotatedCalibration`` view: the range is then the min / max of the rotated
    reservoir rows (rotated recipes fold no scales, so no shift / scale applies)."""
    out = {}
    for name in names:
        lo, hi = calib.channel_range(name)
        shift, scale = params.get(f"{name}.input_shift"), params.get(f"{name}.input_scale")
        if shift is not None:
            lo, hi = lo - shift.cpu(), hi - shift.cpu()
        if scale is not None:
            lo, hi = lo / scale.cpu(), hi / scale.cpu()
        out[f"{name}.act_lo"], out[f"{name}.act_hi"] = lo.min().reshape(1), hi.max().reshape(1)
    return out


def search_params(model: nn.Module, recipe: Recipe, calibration: Optional[Calibration] = None,
                  scope: Scope = "all", overrides: Overrides = None) -> dict[str, Tensor]:
    """Run each recipe's search on the linears it owns; returns ``{"<linear>.<quantity>": float32 CPU tensor}``.

    Raises ``ValueError`` when a recipe needs calibration (AWQ, SmoothQuant, OmniQuant, GPTQ, or any static per-tensor
    activation quantizer) and none is given, or when the calibration lacks a linear in scope.
    """
    points, chosen = assign_recipes(model, recipe, scope, overrides)
    params: dict[str, Tensor] = {}
    for rec, names in _groups(chosen).items():
        method = type(rec).__name__
        if rec.needs_calibration or rec.static_activations:
            why = "its search" if rec.needs_calibration else "static per-tensor activation ranges (a_granularity=PerTensor())"
            if calibration is None:
                raise ValueError(
                    f"{method} needs calibration for {why}: capture one with `with capture_calibration(model) as calib:` "
                    "around FP forwards and pass calibration=calib"
                )
            calibration.require(names, f"{method} ({why})")
        view, calib = model, calibration
        rotations = {}
        if rec.rotation != "none":
            rotations = {name: rotation_matrix(weight_matrix(model.get_submodule(name)).shape[1], rec.rotation,
                                               rotation_seed(name)) for name in names}
            view = rotated_model(model, rotations)
            calib = None if calibration is None else RotatedCalibration(calibration, rotations)
        found = SEARCHES[type(rec)](view, rec, names, points, calib)
        folded = [k for k in found if k.rpartition(".")[2] in ("input_scale", "input_shift")]
        if rotations and folded:
            raise ValueError(f"{method} declares supports_rotation but its search folded {folded[:2]}; a rotated "
                             "search must not fold scales (the rotation sits after the folds)")
        found.update({f"{name}.input_rotation": rotation for name, rotation in rotations.items()})
        if rec.static_activations:
            found.update(_activation_ranges(names, found, calib))
        params.update(found)
    return {k: v.detach().float().cpu().contiguous() for k, v in params.items()}


def _check_keys(params: Mapping[str, Tensor], chosen: Mapping[str, Recipe]) -> None:
    bad = []
    for key in params:
        name, _, quantity = key.rpartition(".")
        if name not in chosen or quantity not in QUANTITIES:
            bad.append(key)
    if bad:
        raise ValueError(
            f"params keys {bad[:4]} do not name a linear in scope plus one of {QUANTITIES}; were they searched with "
            "the same model, scope and overrides?"
        )


def _rotation(name: str, rec: Recipe, params: Mapping[str, Tensor], in_features: int) -> Optional[Tensor]:
    """``R (C_in, C_in)`` of linear ``name`` from ``params``, checked against the recipe; None when unrotated."""
    rotation = params.get(f"{name}.input_rotation")
    if (rotation is None) != (rec.rotation == "none"):
        has = "has" if rotation is not None else "lacks"
        raise ValueError(f"params {has} {name}.input_rotation but the recipe's rotation is {rec.rotation!r}: were "
                         "they searched with the same recipe?")
    if rotation is not None and rotation.shape != (in_features, in_features):
        raise ValueError(f"{name}.input_rotation must have shape ({in_features}, {in_features}), "
                         f"got {tuple(rotation.shape)}")
    return rotation


def _effective_weight(w_hat: Tensor, name: str, params: Mapping[str, Tensor], points: QuantPoints) -> Tensor:
    """Undo the rotation (``W R R^T``), the folded input scale (columns) and any v-row scale (rows) to compare with
    the original weight."""
    w = w_hat.float()
    rotation = params.get(f"{name}.input_rotation")
    if rotation is not None:
        w = w @ rotation.to(w.device).T
    scale = params.get(f"{name}.input_scale")
    if scale is not None:
        w = w / scale.to(w.device)
    for pair in points.pairs_from(name):
        v_scale = params.get(f"{pair.linear}.input_scale")
        if pair.kind == "v" and v_scale is not None:
            w = w.clone()
            w[w.shape[0] - v_scale.numel():] *= v_scale.to(w.device)[:, None]
    return w


def apply_params(model: nn.Module, recipe: Recipe, params: Mapping[str, Tensor], scope: Scope = "all",
                 overrides: Overrides = None) -> tuple[nn.Module, QuantReport]:
    """Build the quantized copy from searched ``params`` (pure: same inputs, same weights).

    Steps: deep-copy ``model``; fold every input scale / shift (``fold``); rotate the weight of every linear with an
    ``input_rotation`` ``R`` (``W R``); replace every linear in scope by a ``QuantLinear`` (a convolution by a
    ``QuantConv2d`` holding the ``QuantLinear`` of its weight matrix, ``points.weight_matrix``) whose weight (the
    searched ``<linear>.weight`` when given - already in the folded and rotated coordinates - else the folded,
    rotated weight) is fake-quantized once (clipped to ``weight_lo``/``weight_hi`` when given) and whose input
    quantizer follows the recipe's activation settings.  A rotated ``QuantLinear`` rotates its input by ``R`` online when it quantizes
    activations; weight-only, its weight is ``Q(W R) R^T`` (the rotation undone in the dense simulated weight).
    The report compares with the ORIGINAL weight, so it shows the whole change.
    """
    points, chosen = assign_recipes(model, recipe, scope, overrides)
    _check_keys(params, chosen)
    qmodel = copy.deepcopy(model)
    original = {name: weight_matrix(qmodel.get_submodule(name)).detach().clone() for name in chosen}
    fold(qmodel, points, params, list(chosen))
    rows = []
    for name, rec in chosen.items():
        point = qmodel.get_submodule(name)
        matrix = weight_matrix(point)  # (O, I); a convolution's (O, C k k)
        rotation = _rotation(name, rec, params, matrix.shape[1])
        weight = params.get(f"{name}.weight")  # GPTQ's weight, in the folded (and rotated) coordinates already
        if weight is not None and weight.shape != matrix.shape:
            raise ValueError(f"params {name}.weight has shape {tuple(weight.shape)}, the linear's weight "
                             f"{tuple(matrix.shape)}; were they searched with the same model?")
        if weight is not None:
            weight = weight.to(matrix.device)
        else:
            weight = matrix.detach()
            if rotation is not None:
                weight = rotate_rows(weight, rotation).to(weight.dtype)
        with torch.no_grad():
            w_hat = fake_quantize(weight, rec.weight_spec, params.get(f"{name}.weight_lo"),
                                  params.get(f"{name}.weight_hi")).to(matrix.dtype)
        act = None
        if rec.act_spec is not None:
            lo, hi = params.get(f"{name}.act_lo"), params.get(f"{name}.act_hi")
            if rec.static_activations and (lo is None or hi is None):
                raise ValueError(f"params lack {name}.act_lo/act_hi: static activation ranges come from search_params "
                                 "with a calibration")
            act = ActQuantizer(rec.act_spec, None if lo is None else lo.item(), None if hi is None else hi.item())
        bias = None if point.bias is None else point.bias.detach()
        online = None if act is None else rotation
        stored = w_hat.detach()
        if rotation is not None and online is None:  # weight-only: (x R) Q^T == x (Q R^T)^T
            stored = rotate_rows(stored, rotation.T).to(w_hat.dtype)
        quantized = QuantLinear(stored, bias, rec.weight_spec, act, online)
        if isinstance(point, nn.Conv2d):
            quantized = QuantConv2d(point, quantized)
        set_module(qmodel, name, quantized.to(matrix.device))
        rows.append(layer_row(name, rec, original[name], _effective_weight(w_hat, name, params, points)))
    return qmodel, QuantReport(tuple(rows))


def quantize(model: nn.Module, recipe: Recipe, calibration: Optional[Calibration] = None, scope: Scope = "all",
             overrides: Overrides = None) -> tuple[nn.Module, QuantReport]:
    """Quantize a deep copy of ``model``: ``apply_params(model, recipe, search_params(model, recipe, ...))``.

    Args:
        model: any model with quantization points (``points``); left untouched.
        recipe: ``RTN``, ``OMSE``, ``AWQ``, ``SmoothQuant``, ``OmniQuant``, ``GPTQ`` (or any registered recipe).
        calibration: from ``capture_calibration``; required by AWQ, SmoothQuant, OmniQuant, GPTQ and static
            activations.
        scope: ``"all"``, ``"encoder"``, ``"predictor"``, a pattern, or a list of fnmatch / ``re:`` patterns.
        overrides: ``{pattern: recipe}`` for mixed precision inside the scope.

    Returns:
        ``(quantized copy, QuantReport)``.
    """
    params = search_params(model, recipe, calibration, scope, overrides)
    return apply_params(model, recipe, params, scope, overrides)


def save_params(params: Mapping[str, Tensor], path: str | Path) -> Path:
    """Save searched params to a safetensors file; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in params.items()}, str(path))
    return path


def load_params(path: str | Path) -> dict[str, Tensor]:
    """Load params written by ``save_params``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"params file {path} does not exist")
    return load_file(str(path))
