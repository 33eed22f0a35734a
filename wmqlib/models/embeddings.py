"""Action and proprio encoders: a per-time-step linear map stored as DINO-WM's Conv1d (kernel 1).

State-dict keys match the released ``models.proprio.ProprioceptiveEmbedding``: ``patch_embed.weight``
(emb_dim, in_dim, 1) and ``patch_embed.bias`` (emb_dim,).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class StepEmbedding(nn.Module):
    """(B, T, in_dim) -> (B, T, emb_dim), the same affine map at every time step."""

    def __init__(self, in_dim: int, emb_dim: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.emb_dim = emb_dim
        self.patch_embed = nn.Conv1d(in_dim, emb_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_dim) -> (..., emb_dim)."""
        # A kernel-1 convolution over time is a linear map per step; F.linear on the last axis avoids the two
        # transposes the Conv1d layout would need.
        return F.linear(x, self.patch_embed.weight[:, :, 0], self.patch_embed.bias)
