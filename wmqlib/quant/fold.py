"""Exact equivalent transformations: move per-channel input scales / shifts between a linear and its predecessor.

For a linear ``y = W x + b`` whose input is ``x = prev(...)`` and a per-input-channel scale ``s > 0`` and shift
``d``, ``y = (W diag(s)) ((x - d) / s) + (b + W d)``.  ``fold`` rewrites the predecessor to output
``(x - d) / s`` and the linear to ``W diag(s)``, ``b + W d``: before quantization the model computes the same
function (up to float rounding).  Predecessors (``points.ScalePair.kind``):

- ``norm``: LayerNorm ``gamma, beta -> gamma / s, (beta - d) / s``;
- ``act``: the GELU is replaced by ``ScaledActivation(gelu, s)`` (shift not supported);
- ``v``: the value rows (last third) of the fused qkv linear and its bias are divided by ``s`` (shift not supported).

Arithmetic runs in float32; results are cast back to each parameter's dtype.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn

from .points import QuantPoints
from .qlinear import ScaledActivation


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule called ``name`` by ``module``."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _assign(param: nn.Parameter, value: Tensor) -> None:
    with torch.no_grad():
        param.copy_(value.to(param.dtype))


def _check_vector(value: Tensor, size: int, what: str, positive: bool) -> Tensor:
    if value.shape != (size,):
        raise ValueError(f"{what} must have shape ({size},), got {tuple(value.shape)}")
    if positive and not bool((value > 0).all()):
        raise ValueError(f"{what} must be > 0 everywhere (a scale folded into the model)")
    return value.float()


def fold(model: nn.Module, points: QuantPoints, params: Mapping[str, Tensor], names: list[str]) -> None:
    """In place: fold ``<linear>.input_scale`` / ``.input_shift`` of every linear in ``names`` (see module doc)."""
    for name in names:
        scale, shift = params.get(f"{name}.input_scale"), params.get(f"{name}.input_shift")
        if scale is None and shift is None:
            continue
        pair = points.pair_into(name)
        if pair is None:
            raise ValueError(f"{name} has an input scale/shift but no foldable predecessor (LayerNorm, GELU, v rows)")
        if shift is not None and pair.kind != "norm":
            raise ValueError(f"{name}.input_shift can only fold into a LayerNorm, but {name}'s input comes from {pair.prev}")
        linear = model.get_submodule(name)
        w = linear.weight.detach().float()
        dev = w.device
        if shift is not None:
            shift = _check_vector(shift.to(dev), linear.in_features, f"{name}.input_shift", positive=False)
            bias = w @ shift + (0 if linear.bias is None else linear.bias.detach().float())
            if linear.bias is None:  # the predictor's to_qkv has no bias; the shift needs one
                linear.bias = nn.Parameter(torch.zeros(linear.out_features, dtype=linear.weight.dtype, device=dev))
            _assign(linear.bias, bias)
        scale = torch.ones(linear.in_features, device=dev) if scale is None else scale.to(dev)
        scale = _check_vector(scale, linear.in_features, f"{name}.input_scale", positive=True)
        _assign(linear.weight, w * scale)
        prev = model.get_submodule(pair.prev)
        if pair.kind == "norm":
            beta = prev.bias.detach().float() - (0 if shift is None else shift)
            _assign(prev.weight, prev.weight.detach().float() / scale)
            _assign(prev.bias, beta / scale)
        elif pair.kind == "act":
            set_module(model, pair.prev, ScaledActivation(prev, scale))
        else:
            start = prev.out_features - linear.in_features
            with torch.no_grad():
                prev.weight[start:] = (prev.weight[start:].float() / scale[:, None]).to(prev.weight.dtype)
                if prev.bias is not None:
                    prev.bias[start:] = (prev.bias[start:].float() / scale).to(prev.bias.dtype)
