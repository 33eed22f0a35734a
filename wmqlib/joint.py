"""Joint-embedding training of the encoder with the predictor: a latent that planning can descend, no pixels.

A reconstruction autoencoder's patch latent stops changing once an object and its goal lie in different patches,
so CEM gets no signal from far away. Here the encoder is trained through the world model's own task instead
(PLDM, LeWM): predict the next latent from the current one and the action. Per window of L = max(num_hist, k) + 1
frames ``frameskip`` env steps apart, with z_t = encode(frame_t) (B, P, Dv) and gradients into both sides,

    L = L_tf + L_roll + var_weight * L_var + cov_weight * L_cov + idm_weight * L_idm + rank_weight * L_rank,

- L_tf: DINO-WM's teacher-forced MSE between predicted and encoded next frames (visual and proprio slices);
- L_roll: the same MSE after a k-step open-loop ``rollout`` from frame 0 (what planning computes; k = 0 omits it);
- L_var (VICReg's variance hinge): mean over the P * Dv latent coordinates of max(0, 1 - std over the batch), which
  keeps the encoder from collapsing to a constant (the trivial minimiser of L_tf and L_roll);
- L_cov (VICReg's covariance term): the squared off-diagonal covariances of the Dv features, over batch and
  tokens, divided by Dv, so features do not all copy one direction;
- L_idm (inverse dynamics): the MSE of an MLP's estimate of the z-scored actions between frames t and t+1 from
  (z_t, z_{t+1}); what the action moves (the dot, the agent) must therefore be in the latent;
- L_rank (temporal ranking): along a window, the latent MSE from frame 0 should grow with the time apart,
  softplus(log m_k - log m_{k+1} + RANK_MARGIN) averaged over k = 1..L-2 with m_k = MSE(z_0, z_k). In the
  exploratory data, frames further apart in time lie further apart in space, so this shapes the latent distance
  that planning descends to keep growing with distance (no state is used).

The inverse-dynamics head is a training aid and is not saved with the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from wmqlib.validate import check_float

VAR_EPS = 1e-4  # inside VICReg's sqrt(var + eps): a finite gradient at zero variance
RANK_MARGIN = math.log(1.2)  # frame k+1 should be at least 1.2x as far (in latent MSE) from frame 0 as frame k
RANK_EPS = 1e-6  # inside the logs of L_rank


@dataclass(frozen=True)
class JointWeights:
    """Weights of the regularisers against L_tf + L_roll (module docstring); each a float >= 0."""

    var_weight: float = 1.0
    cov_weight: float = 0.04
    idm_weight: float = 1.0
    rank_weight: float = 0.0

    def __post_init__(self) -> None:
        for name in ("var_weight", "cov_weight", "idm_weight", "rank_weight"):
            check_float(f"JointWeights.{name}", getattr(self, name), minimum=0.0)


def variance_hinge(z: torch.Tensor) -> torch.Tensor:
    """VICReg's variance term of z (N, C): mean over the C coordinates of relu(1 - sqrt(var_N + eps)); 0 when
    every coordinate's standard deviation over the N samples is at least 1."""
    std = torch.sqrt(z.var(dim=0) + VAR_EPS)
    return F.relu(1.0 - std).mean()


def covariance_penalty(z: torch.Tensor) -> torch.Tensor:
    """VICReg's covariance term of z (N, C): sum of the squared off-diagonal entries of the C x C covariance
    over the N samples, divided by C; 0 when the coordinates are uncorrelated."""
    n, c = z.shape
    centred = z - z.mean(dim=0)
    cov = centred.T @ centred / max(n - 1, 1)  # (C, C)
    return (cov.pow(2).sum() - cov.diagonal().pow(2).sum()) / c


class InverseDynamics(nn.Module):
    """(z_t, z_t1) visual latents (B, P, Dv) each -> the z-scored model-step action (B, Da) between them.

    An MLP over both frames' flattened tokens (keeps where things are, which a token average would lose).
    Parameters are drawn from ``seed`` without touching the global generator.
    """

    def __init__(self, num_patches: int, dim: int, action_dim: int, hidden: int = 256, seed: int = 0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 * num_patches * dim, hidden), nn.GELU(), nn.Linear(hidden, action_dim))
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for layer in (self.net[0], self.net[2]):
                bound = 1.0 / math.sqrt(layer.in_features)
                layer.weight.copy_(torch.rand(layer.weight.shape, generator=gen) * 2 * bound - bound)
                layer.bias.zero_()

    def forward(self, z_t: torch.Tensor, z_t1: torch.Tensor) -> torch.Tensor:
        """z_t, z_t1 (B, P, Dv) -> (B, Da)."""
        return self.net(torch.cat([z_t.flatten(1), z_t1.flatten(1)], dim=-1))


def temporal_ranking(visual: torch.Tensor) -> torch.Tensor:
    """L_rank of visual latents (B, L, P, Dv), L >= 3: mean over k = 1..L-2 of
    softplus(log m_k - log m_{k+1} + RANK_MARGIN), m_k = per-window MSE(z_0, z_k); 0 for L < 3."""
    if visual.shape[1] < 3:
        return visual.new_zeros(())
    m = (visual[:, 1:] - visual[:, :1]).pow(2).mean(dim=(2, 3))  # (B, L-1): m_1 .. m_{L-1}
    logm = torch.log(m + RANK_EPS)
    return F.softplus(logm[:, :-1] - logm[:, 1:] + RANK_MARGIN).mean()


def regularisers(visual: torch.Tensor, idm: InverseDynamics, actions: torch.Tensor, weights: JointWeights
                 ) -> dict[str, torch.Tensor]:
    """The weighted regularisers of one batch of windows.

    visual: encoded frames (B, L, P, Dv), L >= 2; actions: z-scored model-step actions (B, L, Da), action t taken
    between frames t and t+1. Variance and covariance are taken on frame 0 (every frame is some window's frame 0);
    inverse dynamics on every consecutive pair; temporal ranking along the window. Returns {"var", "cov", "idm",
    "rank"}, each already times its weight ("rank" is omitted at weight 0, so it costs nothing then).
    """
    b, l, p, dv = visual.shape
    first = visual[:, 0]  # (B, P, Dv)
    pairs = idm(visual[:, :-1].reshape(b * (l - 1), p, dv), visual[:, 1:].reshape(b * (l - 1), p, dv))
    out = {"var": weights.var_weight * variance_hinge(first.reshape(b, p * dv)),
           "cov": weights.cov_weight * covariance_penalty(first.reshape(b * p, dv)),
           "idm": weights.idm_weight * F.mse_loss(pairs, actions[:, :-1].reshape(b * (l - 1), -1))}
    if weights.rank_weight:
        out["rank"] = weights.rank_weight * temporal_ranking(visual)
    return out
