"""Transforms between environment units and model units: images, z-scores and frameskip stacking.

DINO-WM conventions: frames uint8 -> /255 -> resize -> (x - 0.5) / 0.5, so pixels lie in [-1, 1]; actions and
proprio are z-scored with dataset statistics; a model-step action concatenates the ``frameskip`` env actions
taken between two model frames, ``"(n f) d -> n (f d)"``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def frames_to_visual(frames: torch.Tensor | np.ndarray, size: int, dtype: torch.dtype = torch.float32,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 frames (..., H, W, 3) -> float images (..., 3, size, size) in [-1, 1].

    Square frames of another size are resized (bilinear, antialiased, as torchvision's Resize on tensors).
    """
    frames = torch.as_tensor(frames, device=device)
    if frames.dtype != torch.uint8:
        raise TypeError(f"frames must be uint8 (..., H, W, 3), got dtype {frames.dtype}")
    if frames.ndim < 3 or frames.shape[-1] != 3 or frames.shape[-3] != frames.shape[-2]:
        raise ValueError(f"frames must be square RGB (..., H, H, 3), got shape {tuple(frames.shape)}")
    lead = frames.shape[:-3]
    images = frames.reshape(-1, *frames.shape[-3:]).permute(0, 3, 1, 2).float() / 255.0
    images = resize_images(images, size)
    return (images * 2.0 - 1.0).to(dtype).reshape(*lead, 3, size, size)


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, size, size); bilinear with antialiasing (in float32), a no-op at that size."""
    if images.shape[-2:] == (size, size):
        return images
    # Antialiased resampling has no bf16/fp16 kernels on every device: resize in float32, keep the input dtype.
    resized = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return resized.to(images.dtype)


def zscore(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std over the last axis, computed in float32 (stats (d,), x (..., d)); returns float32."""
    return (x.float() - mean.float()) / std.float()


def unzscore(z: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Inverse of ``zscore``: z * std + mean over the last axis, in float32."""
    return z.float() * std.float() + mean.float()


def stack_frameskip(actions: torch.Tensor, frameskip: int) -> torch.Tensor:
    """Env actions (..., T*f, d) -> model-step actions (..., T, f*d), ``"(n f) d -> n (f d)"``."""
    steps, dim = actions.shape[-2:]
    if steps % frameskip:
        raise ValueError(f"stack_frameskip: {steps} env steps is not a multiple of frameskip {frameskip}")
    return actions.reshape(*actions.shape[:-2], steps // frameskip, frameskip * dim)


def unstack_frameskip(actions: torch.Tensor, frameskip: int) -> torch.Tensor:
    """Model-step actions (..., T, f*d) -> env actions (..., T*f, d), the inverse of ``stack_frameskip``."""
    steps, dim = actions.shape[-2:]
    if dim % frameskip:
        raise ValueError(f"unstack_frameskip: action width {dim} is not a multiple of frameskip {frameskip}")
    return actions.reshape(*actions.shape[:-2], steps * frameskip, dim // frameskip)
