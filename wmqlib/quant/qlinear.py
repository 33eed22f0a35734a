"""Modules that replace the quantization points: ``QuantLinear``, its ``ActQuantizer`` and ``ScaledActivation``.

The weight is fake-quantized ONCE, when ``QuantLinear`` is built, and kept as a plain dense tensor: a weight-only
forward is exactly ``F.linear`` and costs what ``nn.Linear`` costs.  The input quantizer, if any, is either static
(per-tensor scale / zero point fixed from calibration, one fused ``torch.fake_quantize_per_tensor_affine`` call)
or dynamic per token (min / max of every row at run time, then ``torch.fake_quantize_per_channel_affine`` along
the rows).  Both compute in float32, return the input dtype, and pass gradients straight through inside the range.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .spec import PerTensor, PerToken, QuantSpec, fake_quantize, qparams


class ActQuantizer(nn.Module):
    """Fake-quantizes activations ``(..., C)``: static per-tensor (given range) or dynamic per-token.

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
            scale, zero = qparams(torch.tensor(float(lo)), torch.tensor(float(hi)), spec)
            self.register_buffer("scale", scale.reshape(1))
            self.register_buffer("zero_point", zero.reshape(1).to(torch.int32))

    def forward(self, x: Tensor) -> Tensor:
        """``x (..., C)`` -> fake-quantized ``(..., C)``, same dtype."""
        if not self.static:
            return fake_quantize(x, self.spec)
        y = torch.fake_quantize_per_tensor_affine(x.float(), self.scale, self.zero_point, self.spec.qmin, self.spec.qmax)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        mode = f"static range [{self.range[0]:.4g}, {self.range[1]:.4g}]" if self.static else "dynamic per-token"
        return f"bits={self.spec.bits}, {mode}"

    @property
    def range(self) -> tuple[float, float]:
        """The static range ``(lo, hi)`` actually representable (static quantizers only)."""
        s, z = float(self.scale), int(self.zero_point)
        return (self.spec.qmin - z) * s, (self.spec.qmax - z) * s


class QuantLinear(nn.Module):
    """``y = x_hat @ W_hat^T + b``: a linear whose weight was fake-quantized at construction.

    Args:
        weight: the dequantized weight ``(O, I)`` (already on the quantization grid).
        bias: ``(O,)`` or None.
        weight_spec: the format ``weight`` was quantized with (kept for reports and ``repr``).
        act: input quantizer, or None for weight-only.
    """

    def __init__(self, weight: Tensor, bias: Optional[Tensor], weight_spec: QuantSpec, act: Optional[ActQuantizer]) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.weight_spec = weight_spec
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        """``x (..., I)`` -> ``(..., O)``."""
        if self.act is not None:
            x = self.act(x)
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weight={self.weight_spec}"


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
