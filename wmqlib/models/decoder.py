"""The visualisation decoder: DINO-WM's VQ-VAE decoder with quantisation off, sized by the config.

Two upsampling stacks map the patch grid to pixels: ``upsample_b`` (latent -> latent width) then ``dec``
(latent -> RGB). Each stack is a 3x3 conv, residual blocks, a ReLU and 4x4 stride-2 transposed convs (one for a
2x stack, two for a 4x stack). ``quantize_b`` holds the unused codebook buffers so released decoders load strictly.
State-dict keys match the released ``models.vqvae.VQVAE``. Output has no activation (images in about [-1, 1]).
"""

from __future__ import annotations

import torch
from torch import nn


class Codebook(nn.Module):
    """VQ codebook buffers (embed (dim, n_embed), cluster_size, embed_avg); never used: quantisation is off."""

    def __init__(self, dim: int, n_embed: int) -> None:
        super().__init__()
        self.register_buffer("embed", torch.zeros(dim, n_embed))
        self.register_buffer("cluster_size", torch.zeros(n_embed))
        self.register_buffer("embed_avg", torch.zeros(dim, n_embed))


class ResBlock(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x))))."""

    def __init__(self, channel: int, res_channel: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channel, res_channel, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(res_channel, channel, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, H, W)."""
        return x + self.conv(x)


class UpsampleStack(nn.Module):
    """(N, in_channel, H, W) -> (N, out_channel, H*stride, W*stride) with stride 2 or 4."""

    def __init__(self, in_channel: int, out_channel: int, channel: int, n_res_block: int, res_channel: int,
                 stride: int) -> None:
        super().__init__()
        if stride not in (2, 4):
            raise ValueError(f"UpsampleStack: stride must be 2 or 4, got {stride}")
        blocks: list[nn.Module] = [nn.Conv2d(in_channel, channel, 3, padding=1)]
        blocks += [ResBlock(channel, res_channel) for _ in range(n_res_block)]
        blocks.append(nn.ReLU())
        if stride == 4:
            blocks += [
                nn.ConvTranspose2d(channel, channel // 2, 4, stride=2, padding=1),
                nn.ReLU(),
                nn.ConvTranspose2d(channel // 2, out_channel, 4, stride=2, padding=1),
            ]
        else:
            blocks.append(nn.ConvTranspose2d(channel, out_channel, 4, stride=2, padding=1))
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channel, H, W) -> (N, out_channel, stride*H, stride*W)."""
        return self.blocks(x)


class ConvDecoder(nn.Module):
    """Patch tokens (N, P, latent_dim) on a square grid -> images (N, 3, g*s1*s2, g*s1*s2), g = sqrt(P)."""

    def __init__(self, latent_dim: int, channel: int, n_res_block: int, res_channel: int, n_embed: int,
                 strides: tuple[int, int] = (4, 4)) -> None:
        super().__init__()
        self.quantize_b = Codebook(latent_dim, n_embed)
        self.upsample_b = UpsampleStack(latent_dim, latent_dim, channel, n_res_block, res_channel, strides[0])
        self.dec = UpsampleStack(latent_dim, 3, channel, n_res_block, res_channel, strides[1])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, P, latent_dim) -> (N, 3, H, W)."""
        n, p, dim = tokens.shape
        side = int(round(p**0.5))
        if side * side != p:
            raise ValueError(f"ConvDecoder: {p} tokens do not form a square grid")
        grid = tokens.reshape(n, side, side, dim).permute(0, 3, 1, 2)
        return self.dec(self.upsample_b(grid))
