"""Toy ViT blocks with the two naming conventions the quantizer recognises (no dependency on wmqlib.models).

- ``ToyEncoder``: DINOv2-style ``blocks.{i}`` with norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.act,
  mlp.fc2, ls2.gamma: ``x = x + ls1(attn(norm1(x))); x = x + ls2(mlp(norm2(x)))``.
- ``ToyPredictor``: DINO-WM-style ``transformer.layers.{i}.0`` Attention (norm, to_qkv without bias, to_out.0,
  a causal mask built from the input length) and ``.1`` FeedForward (net.0 LN, net.1, net.2 GELU, net.3 dropout,
  net.4, net.5 dropout): ``x = layers.i.0(x) + x; x = layers.i.1(x) + x``.
- ``ToyWorldModel``: ``encoder`` then ``predictor``; input ``(B, N, in_dim)`` -> ``(B, N, pred_dim)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DinoAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class LayerScale(nn.Module):
    def __init__(self, dim: int, value: float = 0.5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), value))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class DinoBlock(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1, self.attn, self.ls1 = nn.LayerNorm(dim), DinoAttention(dim, heads), LayerScale(dim)
        self.norm2, self.mlp, self.ls2 = nn.LayerNorm(dim), Mlp(dim, hidden), LayerScale(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class ToyEncoder(nn.Module):
    def __init__(self, in_dim: int, dim: int, depth: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.patch_embed = nn.Linear(in_dim, dim)
        self.blocks = nn.ModuleList(DinoBlock(dim, heads, hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim), nn.Dropout(0.1))

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in self.to_qkv(self.norm(x)).chunk(3, -1))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # mask built from n, never stored
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.1),
                                 nn.Linear(hidden, dim), nn.Dropout(0.1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Transformer(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, hidden: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([Attention(dim, heads, dim_head), FeedForward(dim, hidden)]) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        for attn, ff in self.layers:
            x = attn(x) + x
            x = ff(x) + x
        return self.norm(x)


class ToyPredictor(nn.Module):
    def __init__(self, in_dim: int, dim: int, depth: int, heads: int, dim_head: int, hidden: int) -> None:
        super().__init__()
        self.embed = nn.Linear(in_dim, dim)
        self.transformer = Transformer(dim, depth, heads, dim_head, hidden)

    def forward(self, x: Tensor) -> Tensor:
        return self.transformer(self.embed(x))


class ToyWorldModel(nn.Module):
    """``encoder`` (DINOv2 blocks) then ``predictor`` (DINO-WM layers); ``(B, N, in_dim) -> (B, N, pred_dim)``.

    Default sizes make ragged groups: with ``PerGroup(16)`` the predictor's 40-wide and 72-wide inputs leave
    last groups of 8.
    """

    def __init__(self, in_dim: int = 12, enc_dim: int = 32, enc_depth: int = 2, enc_heads: int = 4,
                 pred_dim: int = 40, pred_depth: int = 2, pred_heads: int = 2, dim_head: int = 16,
                 hidden: int = 72, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.encoder = ToyEncoder(in_dim, enc_dim, enc_depth, enc_heads, 2 * enc_dim)
        self.predictor = ToyPredictor(enc_dim, pred_dim, pred_depth, pred_heads, dim_head, hidden)
        with torch.no_grad():  # non-trivial norms, so scale folds are exercised
            for module in self.modules():
                if isinstance(module, nn.LayerNorm):
                    module.weight.uniform_(0.5, 1.5)
                    module.bias.uniform_(-0.2, 0.2)
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        return self.predictor(self.encoder(x))
