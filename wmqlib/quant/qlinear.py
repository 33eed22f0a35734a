"""Modules that replace the quantization points: ``QuantLinear``, its ``ActQuantizer``, ``QuantConv2d`` and
``ScaledActivation``.

The weight is fake-quantized ONCE, when ``QuantLinear`` is built, and kept as a plain dense tensor: a weight-only
forward is exactly ``F.linear`` and costs what ``nn.Linear`` costs.  The input quantizer, if any, is either static
(per-tensor scale / zero point fixed from calibration) or dynamic per token (min / max of every row at run time).
Both compute in float32, return the input dtype, and pass gradients straight through inside the range.

(``torch.fake_quantize_per_tensor_affine`` was measured 1.7x slower than the in-place chain on CPU; a fused chain
with the zero point folded into the clamp bounds planned W8A8 0.81-0.88x as fast, measured alone on the 2-core CPU
with ``benchmarks/bench_plan.py`` in an earlier session, and was removed.)
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .points import check_conv
from .spec import PerTensor, PerToken, QuantSpec, fake_quantize, qparams


class ActQuantizer(nn.Module):
    """Fake-quantizes activations ``(..., C)``: static per-tensor (given range) or dynamic per-token.

    Without autograd (``torch.no_grad`` / inference, or an input that needs no gradient) it runs one in-place
    chain on a float32 copy; with autograd it calls ``fake_quantize`` (straight-through gradient).  Both do the
    same operations in the same order, so they give bit-identical values.

    Args:
        spec: an asymmetric activation spec with ``PerTensor()`` or ``PerToken()`` granularity.
        lo, hi: the static range (float, same units as the activation); required for ``PerTensor()``.
    """

    def __init__(self, spec: QuantSpec, lo: Optional[float] = None, hi: Optional[float] = None) -> None:
        super().__init__()
        if not isinstance(spec.granularity, (PerTensor, PerToken)) or spec.symmetric:
            raise ValueError(f"ActQuantizer needs an asymmetric PerTensor() or PerToken() spec, got {spec}")
        self.spec = spec
        self.static = isinstance(spec.granularity, PerTensor)
        if self.static:
            if lo is None or hi is None:
                raise ValueError("ActQuantizer with PerTensor() (static) needs the calibrated range lo and hi")
            bounds = torch.tensor(float(lo)), torch.tensor(float(hi))
            for name, value in zip(("lo", "hi", "scale", "zero_point"), (*bounds, *qparams(*bounds, spec))):
                self.register_buffer(name, value)

    def forward(self, x: Tensor) -> Tensor:
        """``x (..., C)`` -> fake-quantized ``(..., C)``, same dtype."""
        if torch.is_grad_enabled() and x.requires_grad:
            return fake_quantize(x, self.spec, self.lo, self.hi) if self.static else fake_quantize(x, self.spec)
        y = x.to(torch.float32, copy=True)
        if self.static:
            scale, zero = self.scale, self.zero_point
        else:
            scale, zero = qparams(y.amin(dim=-1, keepdim=True), y.amax(dim=-1, keepdim=True), self.spec)
        y.div_(scale).round_().add_(zero).clamp_(self.spec.qmin, self.spec.qmax).sub_(zero).mul_(scale)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        mode = f"static range [{self.range[0]:.4g}, {self.range[1]:.4g}]" if self.static else "dynamic per-token"
        return f"bits={self.spec.bits}, {mode}"

    @property
    def range(self) -> tuple[float, float]:
        """The static range ``(lo, hi)`` actually representable (static quantizers only)."""
        s, z = float(self.scale), float(self.zero_point)
        return (self.spec.qmin - z) * s, (self.spec.qmax - z) * s


class QuantLinear(nn.Module):
    """``y = act(x R) @ W_hat^T + b``: a linear whose weight was fake-quantized at construction.

    Args:
        weight: the dequantized weight ``(O, I)`` (on the quantization grid; with ``rotation``, the quantized
            ``W R``; a weight-only rotated linear has no ``rotation`` and the dense ``Q(W R) R^T``, see ``api``).
        bias: ``(O,)`` or None.
        weight_spec: the format ``weight`` was quantized with (kept for reports and ``repr``).
        act: input quantizer, or None for weight-only.
        rotation: an orthogonal ``R (I, I)`` applied to the input online (stored in the weight's dtype), or None.
    """

    def __init__(self, weight: Tensor, bias: Optional[Tensor], weight_spec: QuantSpec, act: Optional[ActQuantizer],
                 rotation: Optional[Tensor] = None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        if rotation is not None and rotation.shape != (self.in_features, self.in_features):
            raise ValueError(f"QuantLinear rotation must have shape ({self.in_features}, {self.in_features}), "
                             f"got {tuple(rotation.shape)}")
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.weight_spec = weight_spec
        self.act = act
        self.register_buffer("rotation", None if rotation is None else rotation.to(weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        """``x (..., I)`` -> ``(..., O)``."""
        if self.rotation is not None:
            x = x @ self.rotation  # (..., I) in the rotated coordinates the weight was quantized in
        if self.act is not None:
            x = self.act(x)
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        rotated = "" if self.rotation is None else ", rotated input"
        return f"in_features={self.in_features}, out_features={self.out_features}, weight={self.weight_spec}{rotated}"


class QuantConv2d(nn.Module):
    """A convolution quantized as the linear on its unfolded input patches: ``y = linear(unfold(x))``.

    ``linear`` is the ``QuantLinear`` of the weight matrix ``(O, C k k)`` (``points.weight_matrix``): its rows are
    the output channels, so a per-channel weight grid is one per output channel; its input quantizer and rotation
    act on patch rows (``PerToken()``: one range per patch).  A per-tensor input range is the range of the input
    itself: the zeros that padding adds lie inside every range (ranges contain 0, see ``spec``) and stay exact.

    Args:
        conv: the convolution replaced (its geometry: kernel, stride, padding, dilation; groups 1, zero padding).
        linear: its quantized linear.
    """

    def __init__(self, conv: nn.Conv2d, linear: QuantLinear) -> None:
        super().__init__()
        check_conv(conv)
        self.kernel_size, self.stride, self.padding, self.dilation = (
            conv.kernel_size, conv.stride, conv.padding, conv.dilation)
        self.linear = linear

    def forward(self, x: Tensor) -> Tensor:
        """``x (N, C, H, W)`` -> ``(N, O, H', W')``, H' and W' as the convolution's."""
        h, w = ((size + 2 * p - d * (k - 1) - 1) // s + 1 for size, p, d, k, s in
                zip(x.shape[-2:], self.padding, self.dilation, self.kernel_size, self.stride))
        patches = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # (N, C k k, H' W')
        y = self.linear(patches.transpose(1, 2))  # (N, H' W', O)
        return y.transpose(1, 2).reshape(x.shape[0], -1, h, w)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class ScaledActivation(nn.Module):
    """``act(x) / scale``: an activation whose output channels are divided by a per-channel ``scale (C,)``.

    Inserted where AWQ moves a scale from the input of ``fc2`` into the GELU before it (GELU is not linear, so the
    scale cannot go into ``fc1``).
    """

    def __init__(self, act: nn.Module, scale: Tensor) -> None:
        super().__init__()
        self.act = act
        self.register_buffer("scale", scale)

    def forward(self, x: Tensor) -> Tensor:
        """``x (..., C)`` -> ``act(x) / scale``, ``(..., C)``."""
        return self.act(x) / self.scale.to(x.dtype)
