"""Action and proprio encoders: a per-time-step linear map stored as DINO-WM's Conv1d (kernel 1).

State-dict keys match the released ``models.proprio.ProprioceptiveEmbedding``: ``patch_embed.weight``
(emb_dim, in_dim, 1) and ``patch_embed.bias`` (emb_dim,).
"""

from __future__ import annotations

import torch
from torch import nn


class StepEmbedding(nn.Module):
    """(B, T, in_dim) -> (B, T, emb_dim), the same affine map at every time step."""

    def __init__(self, in_dim: int, emb_dim: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.emb_dim = emb_dim
        self.patch_embed = nn.Conv1d(in_dim, emb_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., T, in_dim) -> (..., T, emb_dim)."""
        # Call the Conv1d module itself (not its weight) so hooks and module swaps, e.g. quantizers, see it.
        steps = x.reshape(-1, *x.shape[-2:]).transpose(1, 2)  # (N, in_dim, T)
        return self.patch_embed(steps).transpose(1, 2).reshape(*x.shape[:-1], self.emb_dim)
