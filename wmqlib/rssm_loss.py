"""The RSSM's training objective: an observation embedding that the planner can descend, learned through the
model's own imagination, no pixels.

The planner scores a plan by the distance between the imagined observation embedding ``e_hat_H`` (and proprio
embedding ``p_hat_H``) and the goal frame's encoded ``e_goal`` (``wmqlib.models.rssm``). So the embedding must
(a) carry what the actions move, (b) be predictable open loop from one observed frame, and (c) not collapse. This is
the joint-embedding recipe of the DINO-WM models (``wmqlib.joint``: PLDM, LeWM, JEPA-WMs' rollout loss) carried over
to the RSSM, plus the state-space model's own posterior / prior terms (PlaNet, Dreamer). Per window of L = k + 1
frames ``frameskip`` env steps apart (k = ``rollout_steps`` >= 1), with e_t = encoder(o_t) (B, Dv; gradients into
both sides), p_t = the fixed proprio embedding (B, Ep) and a_t the z-scored action between frames t and t+1,

    L = L_roll + L_filter + kl_weight * L_kl + var_weight * L_var + cov_weight * L_cov + idm_weight * L_idm
        (+ rank_weight * L_rank),

- L_roll (what planning computes): ``model.rollout`` from frame 0 (h_0 = 0, s_0 = the posterior mean) through the
  k actions, open loop on the prior means; the embedding error of imagined steps 1..k against the encoded real
  frames, ``embedding_error`` (below). Multi-step and open loop, because errors that compound over the planning
  horizon are what CEM pays for (JEPA-WMs: 2 steps; PLDM: 16).
- L_filter (Dreamer's observation term, in embedding space): the posterior filters the window,
  h_t = GRU(transition([s_{t-1} | a_{t-1}]), h_{t-1}), s_t ~ q(s_t | h_t, e_t, p_t) (reparameterised; the noise
  drawn from the batch generator), and the heads predict (e_t, p_t) from (h_t, s_t) for t = 0..k. It trains the
  posterior to put the frame into the state the heads read, which is how planning's start state s_0 carries the
  start frame (h_0 = 0: all of it passes through s_0).
- L_kl: KL(q(s_t | h_t, e_t, p_t) || p(s_t | h_t)) of the filtered steps t = 1..k, summed over the S dimensions,
  clamped below at ``free_bits`` nats per step (DreamerV3's free bits: no gradient while the posterior is within
  that budget of the prior), averaged over batch and steps. It pulls the prior, whose means planning imagines with,
  towards what the frames say. t = 0 is left out: its prior (at h_0 = 0) knows nothing, and pulling the start
  posterior towards it would squeeze the start frame out of s_0. The weight is small (a regulariser of the
  transition, not a VAE's rate term: the embedding, not pixels, is predicted).
- L_var, L_cov (VICReg, ``wmqlib.joint``): variance hinge and covariance penalty of the embeddings e_0 over the
  batch; without them e = constant minimises every term above.
- L_idm (inverse dynamics, ``wmqlib.joint.InverseDynamics``): the actions predicted from (e_t, e_{t+1}), so what
  the action moves (the Wall's dot) is in the embedding; L_rank: ``joint.temporal_ranking`` (weight 0 = off).

embedding_error(e_hat, e, p_hat, p) = (Dv * MSE(e_hat, e) + Ep * MSE(p_hat, p)) / (Dv + Ep): the MSE over the
concatenated [e | p] features, the weighting of the DINO-WM recipes' rollout term (``fitting.latent_losses``).
The proprio encoder stays at its seeded initialisation (as in the DINO-WM recipes: trained against targets it
produces itself, it could shrink and make the proprio term of the planning objective vanish). A second stage
(``stages.train_rssm_dynamics``) may train the state-space model on the frozen embedding with L_roll + L_filter +
kl_weight * L_kl alone; the decoder is trained last on the frozen encoder, for figures only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from wmqlib.joint import InverseDynamics, JointWeights, regularisers
from wmqlib.models import RSSM
from wmqlib.validate import check_float


@dataclass(frozen=True)
class RSSMWeights:
    """The state-space terms of the objective (module docstring): kl_weight (>= 0) times L_kl, whose per-step KL
    is clamped below at free_bits nats (>= 0; 0 = no clamp)."""

    kl_weight: float = 0.1
    free_bits: float = 1.0

    def __post_init__(self) -> None:
        for name in ("kl_weight", "free_bits"):
            check_float(f"RSSMWeights.{name}", getattr(self, name), minimum=0.0)


def gaussian_kl(mean_q: torch.Tensor, std_q: torch.Tensor, mean_p: torch.Tensor, std_p: torch.Tensor
                ) -> torch.Tensor:
    """KL(N(mean_q, std_q) || N(mean_p, std_p)) of diagonal Gaussians (..., S), summed over S: (...,) nats,

        sum_i log(std_p / std_q) + (std_q^2 + (mean_q - mean_p)^2) / (2 std_p^2) - 1/2."""
    var_q, var_p = std_q.pow(2), std_p.pow(2)
    return (torch.log(std_p / std_q) + (var_q + (mean_q - mean_p).pow(2)) / (2 * var_p) - 0.5).sum(dim=-1)


def free_bits_kl(kl: torch.Tensor, free_bits: float) -> torch.Tensor:
    """Mean over every entry of max(kl, free_bits): per-step KLs (...,) in nats -> a scalar; entries below the
    budget add exactly ``free_bits`` and no gradient."""
    return kl.clamp(min=free_bits).mean()


def embedding_error(e_hat: torch.Tensor, e: torch.Tensor, p_hat: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """(Dv * MSE(e_hat, e) + Ep * MSE(p_hat, p)) / (Dv + Ep): the MSE over concatenated [e | p] features.

    e_hat, e: (..., Dv) observation embeddings; p_hat, p: (..., Ep) proprio embeddings (same leading shape)."""
    dv, ep = e.shape[-1], p.shape[-1]
    return (dv * F.mse_loss(e_hat, e) + ep * F.mse_loss(p_hat, p)) / (dv + ep)


def filter_window(model: RSSM, e: torch.Tensor, p: torch.Tensor, actions: torch.Tensor, gen: torch.Generator
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Posterior filtering of a window (L_filter's recursion in the module docstring).

    e (B, L, Dv), p (B, L, Ep), actions (B, L, Da) (action t between frames t and t+1; the last is not used).
    The posterior samples' noise comes from ``gen`` (a CPU generator), so a run is reproducible on any device.
    Returns the heads' predictions e_hat (B, L, Dv), p_hat (B, L, Ep) from the filtered states (h_t, s_t) and the
    KL (B, L-1) of steps 1..L-1 against the prior."""
    b, length = e.shape[:2]
    s_dim = model.config.stoch_dim
    noise = torch.randn(b, length, s_dim, generator=gen).to(device=e.device, dtype=e.dtype)  # (B, L, S)
    h = e.new_zeros(b, model.config.deter_dim)  # (B, H)
    mean, std = model.gaussian(model.posterior(torch.cat([h, e[:, 0], p[:, 0]], dim=-1)))
    s = mean + std * noise[:, 0]  # (B, S)
    hs, ss, kls = [h], [s], []
    for t in range(1, length):
        h = model.cell(model.transition(torch.cat([s, actions[:, t - 1]], dim=-1)), h)
        prior_mean, prior_std = model.gaussian(model.prior(h))
        mean, std = model.gaussian(model.posterior(torch.cat([h, e[:, t], p[:, t]], dim=-1)))
        s = mean + std * noise[:, t]
        kls.append(gaussian_kl(mean, std, prior_mean, prior_std))  # (B,)
        hs.append(h)
        ss.append(s)
    e_hat, p_hat = model.predict_obs(torch.stack(hs, dim=1), torch.stack(ss, dim=1))  # (B, L, Dv), (B, L, Ep)
    return e_hat, p_hat, torch.stack(kls, dim=1)


def rssm_losses(model: RSSM, e: torch.Tensor, p: torch.Tensor, actions: torch.Tensor, gen: torch.Generator,
                weights: RSSMWeights, idm: InverseDynamics | None = None,
                joint: JointWeights | None = None) -> dict[str, torch.Tensor]:
    """The weighted terms of the objective (module docstring) on one batch of windows; their sum is the loss.

    e (B, L, Dv) encoded frames, p (B, L, Ep) proprio embeddings, actions (B, L, Da) z-scored, L = k + 1 >= 2;
    gen: the posterior noise's generator. Returns {"roll", "filter", "kl"} and, with ``idm`` and ``joint`` (the
    embedding is being trained), ``wmqlib.joint.regularisers``' {"var", "cov", "idm"[, "rank"]}; each already
    times its weight.
    """
    k = e.shape[1] - 1
    imagined = model.rollout({"visual": e[:, :1, None], "proprio": p[:, :1]}, actions[:, :k])
    e_hat, p_hat, kl = filter_window(model, e, p, actions, gen)
    out = {"roll": embedding_error(imagined["visual"][:, 1:, 0], e[:, 1:], imagined["proprio"][:, 1:], p[:, 1:]),
           "filter": embedding_error(e_hat, e, p_hat, p),
           "kl": weights.kl_weight * free_bits_kl(kl, weights.free_bits)}
    if idm is not None and joint is not None:
        out.update(regularisers(e[:, :, None], idm, actions, joint))
    return out
