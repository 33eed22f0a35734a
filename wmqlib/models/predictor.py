"""The DINO-WM ViT predictor: frame-causal pre-norm transformer over the tokens of a window of frames.

State-dict keys match the released ``models.vit.ViTPredictor`` exactly: ``pos_embedding``,
``transformer.layers.{i}.0`` (Attention: ``norm``, ``to_qkv`` without bias, ``to_out.0``),
``transformer.layers.{i}.1`` (FeedForward: ``net.0`` LayerNorm, ``net.1`` Linear, ``net.2`` GELU, ``net.3`` Dropout,
``net.4`` Linear, ``net.5`` Dropout) and ``transformer.norm``. Each layer computes

    x = attention(x) + x;  x = feedforward(x) + x

The frame-causal mask (frame i sees every token of frames <= i) is derived from the input length and the tokens
per frame, built on the input's device and cached per (length, device, dtype); it is never part of the state_dict.

``ATTENTION`` (a module attribute, read at every call) selects ``"sdpa"`` (``F.scaled_dot_product_attention``, the
default) or ``"math"`` (DINO-WM's explicit ``softmax(q k^T / sqrt(d) + mask) v``); they agree to float
reassociation, and the tests check it. A cached additive mask and an in-place residual were measured alone on the
2-core CPU (``benchmarks/bench_plan.py``, previous sessions) and did not pay (FP 0.97x), so they were removed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION = "sdpa"
ATTENTION_IMPLS = ("sdpa", "math")


def frame_causal_mask(num_tokens: int, tokens_per_frame: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean (num_tokens, num_tokens) mask, True where query token i may attend to key token j.

    Block lower-triangular by frame: frame(i) >= frame(j), with frame(k) = k // tokens_per_frame.
    """
    frame = torch.arange(num_tokens, device=device) // tokens_per_frame
    return frame[:, None] >= frame[None, :]


class Attention(nn.Module):
    """Pre-norm multi-head attention, frame-causal over windows of ``num_patches``-token frames."""

    def __init__(self, dim: int, heads: int, dim_head: int, num_patches: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        self.num_patches = num_patches
        self.dropout = dropout
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim), nn.Dropout(dropout))
        self._masks: dict[tuple[int, torch.device], torch.Tensor] = {}  # boolean
        self._additive: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}  # 0 / -inf, from _masks

    def mask(self, num_tokens: int, device: torch.device, dtype: torch.dtype = torch.bool) -> torch.Tensor | None:
        """Cached frame-causal mask ``(N, N)`` for ``num_tokens`` tokens on ``device``; None for one frame.

        dtype: ``torch.bool`` (True = may attend) or a float dtype (additive: 0 where allowed, -inf elsewhere).
        """
        if num_tokens % self.num_patches:
            raise ValueError(
                f"Attention: {num_tokens} tokens is not a whole number of {self.num_patches}-token frames"
            )
        if num_tokens == self.num_patches:
            return None  # a single frame attends fully; no mask lets SDPA pick its fastest kernel
        key = (num_tokens, torch.device(device))
        if key not in self._masks:
            self._masks[key] = frame_causal_mask(num_tokens, self.num_patches, device)
        allowed = self._masks[key]
        if dtype == torch.bool:
            return allowed
        if (*key, dtype) not in self._additive:
            self._additive[(*key, dtype)] = torch.zeros(allowed.shape, device=device, dtype=dtype).masked_fill_(
                ~allowed, float("-inf"))
        return self._additive[(*key, dtype)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, dim) with N a multiple of num_patches -> (B, N, dim)."""
        if ATTENTION not in ATTENTION_IMPLS:
            raise ValueError(f"predictor.ATTENTION must be one of {list(ATTENTION_IMPLS)}, got {ATTENTION!r}")
        b, n, _ = x.shape
        qkv = self.to_qkv(self.norm(x)).reshape(b, n, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, heads, N, dim_head) each
        mask = self.mask(n, x.device, x.dtype if ATTENTION == "math" else torch.bool)
        p_drop = self.dropout if self.training else 0.0
        if ATTENTION == "sdpa":
            # SDPA's default scale is dim_head ** -0.5, as in DINO-WM
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p_drop)
        else:
            scores = q @ k.transpose(-2, -1) * self.dim_head**-0.5  # (B, heads, N, N)
            if mask is not None:
                scores = scores + mask
            out = F.dropout(scores.softmax(dim=-1), p_drop, self.training) @ v  # (B, heads, N, dim_head)
        return self.to_out(out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head))


class FeedForward(nn.Module):
    """Pre-norm MLP: LayerNorm -> Linear -> GELU -> Dropout -> Linear -> Dropout."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., dim) -> (..., dim)."""
        return self.net(x)


class Transformer(nn.Module):
    """``depth`` residual (Attention, FeedForward) pairs then a final LayerNorm."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int, num_patches: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([
                Attention(dim, heads, dim_head, num_patches, dropout),
                FeedForward(dim, mlp_dim, dropout),
            ])
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, dim) -> (B, N, dim)."""
        for attention, feedforward in self.layers:
            x = attention(x) + x
            x = feedforward(x) + x
        return self.norm(x)


class ViTPredictor(nn.Module):
    """Learned position embedding over ``num_frames * num_patches`` tokens, dropout, frame-causal transformer.

    Output token t of frame f predicts the latent of frame f + 1 (DINO-WM's num_pred = 1).
    """

    def __init__(self, num_patches: int, num_frames: int, dim: int, depth: int, heads: int, dim_head: int,
                 mlp_dim: int, dropout: float = 0.0, emb_dropout: float = 0.0) -> None:
        super().__init__()
        self.num_patches = num_patches
        self.num_frames = num_frames
        self.pos_embedding = nn.Parameter(torch.empty(1, num_frames * num_patches, dim))
        if self.pos_embedding.device.type != "meta":  # a meta build is filled by loading; meta maths costs seconds
            nn.init.normal_(self.pos_embedding)  # unit Gaussian, as DINO-WM's randn
        self.dropout = nn.Dropout(emb_dropout)
        self.transformer = Transformer(dim, depth, heads, dim_head, mlp_dim, num_patches, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T*P, dim), T <= num_frames frames of P = num_patches tokens -> (B, T*P, dim)."""
        n = x.shape[1]
        if n > self.pos_embedding.shape[1]:
            raise ValueError(
                f"ViTPredictor: {n} tokens exceed its window of {self.num_frames} frames x {self.num_patches} tokens"
            )
        return self.transformer(self.dropout(x + self.pos_embedding[:, :n]))
