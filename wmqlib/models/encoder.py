"""A DINOv2-style ViT encoder whose state_dict keys match ``dinov2_vits14_pretrain.pth`` exactly.

Structure (Oquab et al., 2023, DINOv2): a strided-conv patch embedding, a CLS token, a learned position
embedding stored for a ``pos_grid x pos_grid`` grid and interpolated (bicubic) to the input grid, pre-norm blocks
with LayerScale

    x = x + ls1(attn(norm1(x)));  x = x + ls2(mlp(norm2(x)))

and a final LayerNorm (eps 1e-6 everywhere). The output is the normalised patch tokens (``x_norm_patchtokens``),
the CLS token dropped. ``mask_token`` is unused at inference and kept so the pretrained weights load strictly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LN_EPS = 1e-6
# DINOv2 scales the interpolation by (grid + 0.1) / pos_grid instead of asking for the output size (a historical
# guard against float error, see facebookresearch/dino#8); the sampled positions differ slightly, so we keep it.
INTERPOLATE_OFFSET = 0.1


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens: ``proj`` is a Conv2d with kernel = stride = patch_size."""

    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, (H/p)*(W/p), dim), row-major over the patch grid."""
        return self.proj(images).flatten(2).transpose(1, 2)


class LayerScale(nn.Module):
    """Per-channel learned scale ``gamma`` of a residual branch."""

    def __init__(self, dim: int, init_value: float = 1.0) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., dim) -> (..., dim)."""
        return x * self.gamma


class SelfAttention(nn.Module):
    """Full multi-head self-attention with a fused, biased ``qkv`` projection and an output ``proj``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L, dim) -> (N, L, dim)."""
        n, length, dim = x.shape
        qkv = self.qkv(x).reshape(n, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (N, heads, L, dim/heads)
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


class Mlp(nn.Module):
    """fc1 -> act (GELU) -> fc2; ``act`` is a module so activation quantizers can hook it."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., dim) -> (..., dim)."""
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale on both residual branches."""

    def __init__(self, dim: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = SelfAttention(dim, heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, mlp_dim)
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L, dim) -> (N, L, dim)."""
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class ViTEncoder(nn.Module):
    """DINOv2 ViT returning normalised patch tokens; ViT-S/14 is dim 384, depth 12, heads 6, mlp 1536, grid 37."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_dim: int, patch_size: int, pos_grid: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.pos_grid = pos_grid
        self.patch_embed = PatchEmbed(patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + pos_grid**2, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        if self.pos_embed.device.type != "meta":  # a meta build is filled by loading; meta maths costs seconds
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
            nn.init.normal_(self.cls_token, std=1e-6)

    def position_embedding(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """Position embedding for a (grid_h, grid_w) patch grid, CLS first: (1, 1 + grid_h*grid_w, dim).

        The stored grid is used as is when it matches; otherwise it is resized bicubically (in float32, as
        DINOv2 does) with DINOv2's offset scale factors.
        """
        pos = self.pos_embed
        if grid_h == grid_w == self.pos_grid:
            return pos
        dim = pos.shape[-1]
        grid = pos[:, 1:].float().reshape(1, self.pos_grid, self.pos_grid, dim).permute(0, 3, 1, 2)
        scale = ((grid_h + INTERPOLATE_OFFSET) / self.pos_grid, (grid_w + INTERPOLATE_OFFSET) / self.pos_grid)
        grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", align_corners=False)
        grid = grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim).to(pos.dtype)
        return torch.cat([pos[:, :1], grid], dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, 3, H, W) in [-1, 1], H and W multiples of patch_size -> patch tokens (N, H*W/p**2, dim)."""
        n, _, h, w = images.shape
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"ViTEncoder: image size {h}x{w} is not a multiple of patch_size {self.patch_size}")
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(n, -1, -1), x], dim=1)
        x = x + self.position_embedding(h // self.patch_size, w // self.patch_size)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 1:]
