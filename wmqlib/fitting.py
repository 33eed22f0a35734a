"""The training loop and what every stage of ``wmqlib.train`` shares: the resumable AdamW loop with its learning-rate
schedule, frames as model inputs, the background / foreground split of frames, random training windows, the
teacher-forced and rollout latent losses, and encoding a dataset with a frozen encoder."""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from wmqlib.envs import TrajectoryData
from wmqlib.models import WorldModel, WorldModelBase
from wmqlib.resume import RunState


def lr_at(step: int, total: int, peak: float) -> float:
    """Cosine decay to 0 after a linear warm-up over the first 5% of the steps."""
    warm = max(1, total // 20)
    if step < warm:
        return peak * (step + 1) / warm
    return 0.5 * peak * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def fit(params: list[torch.nn.Parameter], loss_fn: Callable[[torch.Tensor], torch.Tensor], steps: int, lr: float,
         weight_decay: float, gen: torch.Generator, desc: str, progress: bool, run: RunState | None = None,
         model: torch.nn.Module | None = None) -> list[float]:
    """Run ``steps`` AdamW steps of ``loss_fn(step_seed)``; returns the loss of every step.

    With ``run`` (and the ``model`` whose state it saves), the stage named ``desc`` is resumable: a finished stage
    returns its recorded losses at once, a started one continues from its saved step, and progress is saved as
    ``RunState`` says.
    """
    if run is not None and (done := run.finished(desc)) is not None:
        return done
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    losses: list[float] = []
    first, before = 0, run.seconds(desc) if run is not None else 0.0
    if run is not None and (saved := run.started(desc)) is not None:
        with torch.no_grad():
            for p, value in zip(params, saved["params"]):
                p.copy_(value)
        opt.load_state_dict(saved["optimizer"])
        losses, first = list(saved["losses"]), saved["step"]
    t0 = time.perf_counter()
    bar = tqdm(range(first, steps), desc=desc, disable=not progress, mininterval=2.0)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr)
        loss = loss_fn(torch.randint(0, 2**62, (1,), generator=gen))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4g}")
        if run is not None:
            run.step_done(model, desc, step + 1, losses, params, opt, before + time.perf_counter() - t0)
    if run is not None:
        run.stage_done(model, desc, losses, before + time.perf_counter() - t0)
    return losses


def uint8_to_visual(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float32 (..., 3, H, W) in [-1, 1], DINO-WM's normalisation (mean 0.5, std 0.5)."""
    return frames.movedim(-1, -3).float() / 127.5 - 1.0


BACKGROUND_SAMPLE = 1024  # frames whose per-pixel median is the background
FOREGROUND_THRESHOLD = 24  # uint8 levels: a pixel further than this (any channel) from the background is foreground


def background_frame(frames: np.ndarray, seed: int = 0) -> np.ndarray:
    """The per-pixel median of up to ``BACKGROUND_SAMPLE`` frames drawn by ``seed``: uint8 (H, W, 3).

    frames: uint8 (N, H, W, 3). Whatever is drawn in every frame (walls, the goal T) is background; the moving
    objects (the dot, the agent, the block) are not, as long as each pixel is free of them in most frames.
    """
    idx = np.random.default_rng(seed).choice(len(frames), min(len(frames), BACKGROUND_SAMPLE), replace=False)
    return np.median(frames[np.sort(idx)], axis=0).astype(np.uint8)


def foreground_weights(frames: torch.Tensor, background: torch.Tensor, weight: float) -> torch.Tensor:
    """Per-pixel loss weights (B, 1, 1, H, W): 1 + ``weight`` where a frame uint8 (B, H, W, 3) differs from
    ``background`` uint8 (H, W, 3) by more than ``FOREGROUND_THRESHOLD`` in some channel, else 1."""
    differs = (frames.int() - background.int()).abs().amax(dim=-1) > FOREGROUND_THRESHOLD  # (B, H, W)
    return (1.0 + weight * differs.float())[:, None, None]


@torch.no_grad()
def encode_dataset(model: WorldModelBase, data: TrajectoryData, batch: int = 256) -> torch.Tensor:
    """Visual latents of every frame with the frozen encoder: (N, T+1, P, Dv) float32 (an RSSM: P = 1)."""
    n, t1 = data.frames.shape[:2]
    frames = torch.from_numpy(data.frames.reshape(n * t1, *data.frames.shape[2:]))
    out = []
    zeros = torch.zeros(batch, 1, model.config.proprio_dim, device=model.device)
    for lo in range(0, len(frames), batch):
        x = uint8_to_visual(frames[lo:lo + batch].to(model.device))[:, None]
        out.append(model.encode_obs(x, zeros[:len(x)])["visual"][:, 0])
    return torch.cat(out).reshape(n, t1, *out[0].shape[1:])


# the parts a predictor stage trains on a frozen encoder, by the model's ``architecture``: DINO-WM's predictor and
# action encoder; the RSSM's state-space model (posterior, transition, GRU cell, prior and the two heads)
DYNAMICS_PARTS = {"dinowm": ("predictor", "action_encoder"),
                  "rssm": ("posterior", "transition", "cell", "prior", "visual_head", "proprio_head")}


def dynamics_parameters(model: WorldModelBase) -> list[torch.nn.Parameter]:
    """The parameters of ``DYNAMICS_PARTS`` of the model's architecture, in that order."""
    return [p for name in DYNAMICS_PARTS[model.architecture] for p in getattr(model, name).parameters()]


def freeze_encoder(model: WorldModelBase, data: TrajectoryData) -> torch.Tensor:
    """Start a predictor stage: the encoder frozen (the whole model in eval mode, no gradients), every frame of
    ``data`` encoded once (``encode_dataset``), then the ``DYNAMICS_PARTS`` of the model's architecture trainable
    and in train mode (DINO-WM: the predictor and the action encoder). Returns the latents (N, T+1, P, Dv)."""
    model.requires_grad_(False)
    model.eval()
    latents = encode_dataset(model, data)
    for name in DYNAMICS_PARTS[model.architecture]:
        getattr(model, name).requires_grad_(True).train()
    return latents


class Windows:
    """Random training windows over a ``TrajectoryData``: ``length`` frames ``frameskip`` env steps apart, the
    one window sampler of training (``wmqlib.train``) and QAT (``wmqlib.qat``); ``envs.TrajectoryWindows`` is the
    same window as an indexable torch Dataset.

    Actions and proprio are z-scored with ``stats`` (a model's ``normalization()``: "action_mean", "action_std",
    "proprio_mean", "proprio_std") or, when None, the data's own statistics. ``draw(b, gen)`` -> (traj (B,),
    start (B,)) from ``gen`` (trajectory first, then start); ``gather(traj, start)`` -> (frames (B, L) frame
    indices, actions (B, L, frameskip * Da) z-scored, action t taken between frames t and t+1, proprio (B, L, p)
    z-scored) on ``device``; ``pixels(traj, frames)`` -> the uint8 frames (B, L, H, W, 3) on ``device``.
    """

    def __init__(self, data: TrajectoryData, length: int, frameskip: int, device: torch.device | str = "cpu",
                 stats: dict[str, list[float]] | None = None) -> None:
        self.length, self.frameskip, self.device = length, frameskip, torch.device(device)
        self.span = length * frameskip
        self.n, self.starts = len(data), data.traj_len - self.span + 1
        if self.starts < 1:
            raise ValueError(f"dataset trajectories of {data.traj_len} steps are shorter than one window "
                             f"({length} frames x frameskip {frameskip})")
        given = {} if stats is None else {k: np.asarray(v, np.float32) for k, v in stats.items()}
        am, asd, pm, psd = (given.get(k, getattr(data, k)) for k in ("action_mean", "action_std", "proprio_mean",
                                                                      "proprio_std"))
        self.act = torch.from_numpy(((data.actions - am) / asd).astype(np.float32)).to(self.device)
        self.proprio = torch.from_numpy(((data.proprio - pm) / psd).astype(np.float32)).to(self.device)
        self.frames = torch.from_numpy(data.frames).to(self.device)  # uint8 (N, T+1, H, W, 3), once
        self.offsets = torch.arange(length) * frameskip

    def draw(self, b: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``b`` random (trajectory, start) pairs, each (B,) on the CPU."""
        return torch.randint(0, self.n, (b,), generator=gen), torch.randint(0, self.starts, (b,), generator=gen)

    def gather(self, traj: torch.Tensor, start: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        traj, start = traj.to(self.device), start.to(self.device)
        frames = start[:, None] + self.offsets.to(self.device)  # (B, L)
        steps = start[:, None] + torch.arange(self.span, device=self.device)  # (B, L*f) env steps of the actions
        actions = self.act[traj[:, None], steps].reshape(len(traj), self.length, -1)  # "(n f) d -> n (f d)"
        return frames, actions, self.proprio[traj[:, None], frames]

    def pixels(self, traj: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        return self.frames[traj.to(self.device)[:, None], frames.to(self.device)]


def latent_losses(model: WorldModel, vis: torch.Tensor, pemb: torch.Tensor, actions: torch.Tensor, k: int
                   ) -> torch.Tensor:
    """Teacher-forced next-latent MSE plus, for k > 0, the k-step open-loop rollout MSE from frame 0.

    vis (B, L, P, Dv) visual latents, pemb (B, L, Ep) proprio embeddings, actions (B, L, Da) z-scored; the
    proprio slice is weighted Ep / (Dv + Ep) of the rollout term, as in the teacher-forced MSE over all features.
    """
    c = model.config
    h, dv, ep, p = c.num_hist, c.encoder_dim, c.proprio_emb_dim, vis.shape[2]
    aemb = model.action_encoder(actions)
    z = torch.cat([vis, pemb[:, :, None].expand(-1, -1, p, -1), aemb[:, :, None].expand(-1, -1, p, -1)], -1)
    pred = model.predict(z[:, :h])
    loss = F.mse_loss(pred[..., :dv + ep], z[:, 1:h + 1, :, :dv + ep])
    if k:
        imagined = model.rollout({"visual": vis[:, :1], "proprio": pemb[:, :1]}, actions[:, :k])
        loss = loss + (dv * F.mse_loss(imagined["visual"][:, 1:], vis[:, 1:k + 1])
                       + ep * F.mse_loss(imagined["proprio"][:, 1:], pemb[:, 1:k + 1])) / (dv + ep)
    return loss
