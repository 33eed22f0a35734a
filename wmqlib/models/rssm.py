"""``RSSM``: a recurrent state-space world model (PlaNet, Hafner et al. 2019; Dreamer) behind the planning API.

The state after t actions is ``(h_t, s_t)``: a deterministic ``h`` (H wide, a GRU's state) and a stochastic ``s``
(S wide, a diagonal Gaussian). With e the observation embedding and a the z-scored model-step action:

    encoder      e_t = fc(flatten(convs(o_t)))                                   (Dv,)
    posterior    q(s_t | h_t, e_t, p_t) = N(mu, sigma),  [mu | sigma] from MLP([h_t | e_t | proprio_emb(p_t)])
    transition   h_t = GRU(MLP([s_{t-1} | a_{t-1}]), h_{t-1})
    prior        p(s_t | h_t) = N(mu, sigma),  [mu | sigma] from MLP(h_t)
    heads        e_hat_t = visual_head([h_t | s_t]),  p_hat_t = proprio_head([h_t | s_t])
    decoder      an image from an embedding e (figures only)

with ``sigma = softplus(.) + min_std`` (PlaNet). Every MLP is pre-norm, ``fc2(act(fc1(LayerNorm(x))))``.

Planning latents have ``WorldModel``'s keys and shapes with one token (P = 1):
``{"visual": (B, T, 1, Dv), "proprio": (B, T, Ep)}``: the observation embedding ``e`` and the proprio embedding
for observed frames, and their predictions ``e_hat`` / ``p_hat`` for imagined ones. So the planning objective
compares a predicted observation embedding with the goal's encoded one, as DINO-WM compares predicted with encoded
patch tokens, and needs no recurrent state for the goal. Planning is deterministic: every ``s`` is a Gaussian's
mean (the posterior's for the start, given ``h_0 = 0``; the prior's for imagined steps); sigma only serves
training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wmqlib.models.base import WorldModelBase
from wmqlib.models.config import RSSMConfig
from wmqlib.models.embeddings import StepEmbedding


class Mlp(nn.Module):
    """``fc2(act(fc1(norm(x))))``: (..., in_dim) -> (..., out_dim); without ``out_dim`` it ends at ``act`` (hidden)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.act = nn.SiLU()
        if out_dim is not None:
            self.fc2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_dim) -> (..., out_dim), or (..., hidden_dim) without fc2."""
        x = self.act(self.fc1(self.norm(x)))
        return self.fc2(x) if hasattr(self, "fc2") else x


class GRUCell(nn.Module):
    """``torch.nn.GRUCell``'s equations with its input and recurrent matrices as two linears, ``ih`` (I -> 3H) and
    ``hh`` (H -> 3H), gates in torch's order (r, z, n), so that each matrix is a quantization point:

        r = sigmoid(x W_ir + h W_hr),  z = sigmoid(x W_iz + h W_hz),  n = tanh(x W_in + r * (h W_hn)),
        h' = (1 - z) * n + z * h       (biases inside every product).
    """

    def __init__(self, in_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.ih = nn.Linear(in_dim, 3 * hidden_dim)
        self.hh = nn.Linear(hidden_dim, 3 * hidden_dim)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """x (B, I), h (B, H) -> h' (B, H)."""
        x_r, x_z, x_n = self.ih(x).chunk(3, dim=-1)
        h_r, h_z, h_n = self.hh(h).chunk(3, dim=-1)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        return (1 - z) * n + z * h


class ConvEncoder(nn.Module):
    """Images (N, 3, img, img) in [-1, 1] -> embeddings (N, Dv): stride-2 4x4 convolutions (padding 1, each halves
    the side) with SiLU, flattened, then the linear ``fc``."""

    def __init__(self, widths: tuple[int, ...], grid: int, embed_dim: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1)
                                   for c_in, c_out in zip((3, *widths[:-1]), widths))
        self.fc = nn.Linear(widths[-1] * grid * grid, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, img, img) -> (N, Dv)."""
        for conv in self.convs:
            x = F.silu(conv(x))
        return self.fc(x.flatten(1))


class EmbeddingDecoder(nn.Module):
    """Embeddings (N, Dv) -> images (N, 3, img, img), about [-1, 1]: the linear ``fc`` to the encoder's last
    feature map, then stride-2 4x4 transposed convolutions mirroring the encoder (SiLU between, none at the end)."""

    def __init__(self, widths: tuple[int, ...], grid: int, embed_dim: int) -> None:
        super().__init__()
        self.grid, self.width = grid, widths[-1]
        self.fc = nn.Linear(embed_dim, widths[-1] * grid * grid)
        outs = (*widths[-2::-1], 3)
        self.deconvs = nn.ModuleList(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1)
                                     for c_in, c_out in zip(widths[::-1], outs))

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        """(N, Dv) -> (N, 3, img, img)."""
        x = self.fc(e).reshape(-1, self.width, self.grid, self.grid)
        for i, deconv in enumerate(self.deconvs):
            x = deconv(x if i == 0 else F.silu(x))
        return x


class RSSM(WorldModelBase):
    """A recurrent state-space world model sized by ``config``; parameters drawn from ``seed`` (global RNG untouched).

    Submodules (module docstring): ``encoder`` (ConvEncoder), ``proprio_encoder`` (StepEmbedding), ``posterior``,
    ``transition`` (an Mlp without fc2), ``cell`` (GRUCell), ``prior``, ``visual_head``, ``proprio_head`` (Mlps),
    ``decoder`` (EmbeddingDecoder). The z-score statistics, ``provenance``, the env-unit conversions and
    ``from_state_dict`` come from ``WorldModelBase``.
    """

    architecture = "rssm"  # the quantization points ``wmqlib.quant.points`` declares for this layout

    def __init__(self, config: RSSMConfig, seed: int = 0) -> None:
        if not isinstance(config, RSSMConfig):
            raise TypeError(f"RSSM needs an RSSMConfig, got {type(config).__name__}")
        super().__init__(config)
        c = config
        h, s, hidden, dv, ep = c.deter_dim, c.stoch_dim, c.hidden_dim, c.embed_dim, c.proprio_emb_dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.encoder = ConvEncoder(c.conv_widths, c.feature_grid, dv)
            self.proprio_encoder = StepEmbedding(c.proprio_dim, ep)
            self.posterior = Mlp(h + dv + ep, hidden, 2 * s)
            self.transition = Mlp(s + c.action_dim, hidden)
            self.cell = GRUCell(hidden, h)
            self.prior = Mlp(h, hidden, 2 * s)
            self.visual_head = Mlp(h + s, hidden, dv)
            self.proprio_head = Mlp(h + s, hidden, ep)
            self.decoder = EmbeddingDecoder(c.conv_widths, c.feature_grid, dv)

    @property
    def device(self) -> torch.device:
        """Device of the model's weights."""
        return self.proprio_encoder.patch_embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the model's weights (inputs are cast to it)."""
        return self.proprio_encoder.patch_embed.weight.dtype

    # ----- the state-space model, one step at a time -----

    def gaussian(self, stats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior or prior output (..., 2S) -> (mean, std), each (..., S), std = softplus(.) + min_std."""
        mean, raw = stats.chunk(2, dim=-1)
        return mean, F.softplus(raw) + self.config.min_std

    def start_state(self, e: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of start observations e (B, Dv), p (B, Ep) -> (h_0 = 0 (B, H), s_0 = posterior mean (B, S))."""
        h = e.new_zeros(e.shape[0], self.config.deter_dim)
        return h, self.gaussian(self.posterior(torch.cat([h, e, p], dim=-1)))[0]

    def step(self, h: torch.Tensor, s: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(h (B, H), s (B, S)) and a z-scored action (B, Da) -> the next (h, s = prior mean)."""
        h = self.cell(self.transition(torch.cat([s, action], dim=-1)), h)
        return h, self.gaussian(self.prior(h))[0]

    def predict_obs(self, h: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A state (h (B, H), s (B, S)) -> its predicted embeddings (e_hat (B, Dv), p_hat (B, Ep))."""
        feature = torch.cat([h, s], dim=-1)
        return self.visual_head(feature), self.proprio_head(feature)

    # ----- the planning API (as WorldModel's) -----

    def encode_obs(self, visual: torch.Tensor, proprio: torch.Tensor) -> dict[str, torch.Tensor]:
        """visual (B, T, 3, img, img) in [-1, 1], z-scored proprio (B, T, p) ->
        {"visual": (B, T, 1, Dv), "proprio": (B, T, Ep)}."""
        c = self.config
        visual = self._input("visual", visual, (None, None, 3, c.img_size, c.img_size))
        proprio = self._input("proprio", proprio, (visual.shape[0], visual.shape[1], c.proprio_dim))
        b, t = visual.shape[:2]
        e = self.encoder(visual.reshape(b * t, 3, c.img_size, c.img_size)).reshape(b, t, 1, c.embed_dim)
        return {"visual": e, "proprio": self.proprio_encoder(proprio)}

    def rollout(self, z0: dict[str, torch.Tensor], actions: torch.Tensor) -> dict[str, torch.Tensor]:
        """Imagine H steps from encoded start observations.

        z0: {"visual": (B0, 1, 1, Dv), "proprio": (B0, 1, Ep)} from ``encode_obs``; actions: z-scored (B, H, Da).
        B0 divides B: sequence b starts from z0[b // (B // B0)] (episode-major, B = episodes * samples); the start
        state is inferred once per start and then repeated. Returns {"visual": (B, H+1, 1, Dv), "proprio":
        (B, H+1, Ep)}, index 0 the start's embeddings, index k the prediction after k actions. Differentiable
        with respect to ``actions``.
        """
        c = self.config
        actions = self._input("actions", actions, (None, None, self.action_dim))
        b, horizon = actions.shape[:2]
        visual0 = self._input("z0['visual']", z0["visual"], (None, 1, 1, c.embed_dim))
        b0 = visual0.shape[0]
        proprio0 = self._input("z0['proprio']", z0["proprio"], (b0, 1, c.proprio_emb_dim))
        if b % b0:
            raise ValueError(f"RSSM.rollout: {b0} start latents do not divide {b} action sequences")
        e, p = visual0[:, 0, 0], proprio0[:, 0]  # (B0, Dv), (B0, Ep)
        h, s = (x.repeat_interleave(b // b0, dim=0) for x in self.start_state(e, p))  # (B, H), (B, S)
        visual, proprio = [e.repeat_interleave(b // b0, dim=0)], [p.repeat_interleave(b // b0, dim=0)]
        for k in range(horizon):
            h, s = self.step(h, s, actions[:, k])
            e_hat, p_hat = self.predict_obs(h, s)
            visual.append(e_hat)
            proprio.append(p_hat)
        return {"visual": torch.stack(visual, dim=1)[:, :, None], "proprio": torch.stack(proprio, dim=1)}

    def decode(self, visual: torch.Tensor) -> torch.Tensor:
        """Visual latents (B, T, 1, Dv) -> images (B, T, 3, img_size, img_size), about [-1, 1] (visualisation)."""
        c = self.config
        visual = self._input("visual latents", visual, (None, None, 1, c.embed_dim))
        b, t = visual.shape[:2]
        return self.decoder(visual.reshape(b * t, c.embed_dim)).reshape(b, t, 3, c.img_size, c.img_size)
